//! `readdress`, `set-clock`, `reset-identity`: what a clone changes so that
//! it stops posing as its source. One file per subcommand; every argument is
//! validated ([`validate`]) before anything in the guest changes.

mod error;
mod host_keys;
mod hosts;
mod listener;
mod readdress;
mod reset_identity;
mod set_clock;
mod system;
mod validate;

use envclone_agent::{AgentError, ExitStatus, ReaddressReport, ResetIdentityReport, SetClockReport};

pub use error::IdentityError;
pub use readdress::ReaddressArgs;
pub use reset_identity::ResetIdentityArgs;
pub use set_clock::SetClockArgs;

pub fn readdress(args: &ReaddressArgs) -> Result<ReaddressReport, (ExitStatus, AgentError)> {
    readdress::readdress(args).map_err(IdentityError::into_answer)
}

pub fn set_clock(args: &SetClockArgs) -> Result<SetClockReport, (ExitStatus, AgentError)> {
    set_clock::set_clock(args).map_err(IdentityError::into_answer)
}

pub fn reset_identity(args: &ResetIdentityArgs) -> Result<ResetIdentityReport, (ExitStatus, AgentError)> {
    reset_identity::reset_identity(args).map_err(IdentityError::into_answer)
}
