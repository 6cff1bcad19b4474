//! `readdress`, `set-clock`, `reset-identity`: placeholder until they land.

use clap::Args;
use envclone_agent::{AgentError, ExitStatus};

#[derive(Debug, Args)]
pub struct ReaddressArgs {}

#[derive(Debug, Args)]
pub struct SetClockArgs {}

#[derive(Debug, Args)]
pub struct ResetIdentityArgs {}

pub fn readdress(_args: &ReaddressArgs) -> Result<(), (ExitStatus, AgentError)> {
    Err(crate::unsupported("readdress"))
}

pub fn set_clock(_args: &SetClockArgs) -> Result<(), (ExitStatus, AgentError)> {
    Err(crate::unsupported("set-clock"))
}

pub fn reset_identity(_args: &ResetIdentityArgs) -> Result<(), (ExitStatus, AgentError)> {
    Err(crate::unsupported("reset-identity"))
}
