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

use std::time::{Duration, Instant};

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

/// The one "wait until" of these subcommands: polls `probe` every
/// `interval` until it gives a value or `deadline` has passed.
fn wait_until<T>(deadline: Duration, interval: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_the_first_value_or_gives_up_at_the_deadline() {
        let mut calls = 0;
        assert_eq!(
            wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
                calls += 1;
                (calls == 3).then_some(calls)
            }),
            Some(3)
        );
        let start = Instant::now();
        assert_eq!(wait_until(Duration::from_millis(30), Duration::from_millis(5), || None::<()>), None);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
