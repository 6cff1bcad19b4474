//! `rewrite`, `scan`: placeholder until the rewrite engine lands.

use clap::Args;
use envclone_agent::{AgentError, ExitStatus};

#[derive(Debug, Args)]
pub struct RewriteArgs {}

#[derive(Debug, Args)]
pub struct ScanArgs {}

pub fn rewrite(_args: &RewriteArgs) -> Result<(), (ExitStatus, AgentError)> {
    Err(crate::unsupported("rewrite"))
}

pub fn scan(_args: &ScanArgs) -> Result<(), (ExitStatus, AgentError)> {
    Err(crate::unsupported("scan"))
}
