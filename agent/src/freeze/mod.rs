//! `freeze`, `thaw`: placeholder until the freeze lease lands.

use clap::Args;
use envclone_agent::{AgentError, ExitStatus};

#[derive(Debug, Args)]
pub struct FreezeArgs {}

pub fn freeze(_args: &FreezeArgs) -> Result<(), (ExitStatus, AgentError)> {
    Err(crate::unsupported("freeze"))
}

pub fn thaw() -> Result<(), (ExitStatus, AgentError)> {
    Err(crate::unsupported("thaw"))
}
