//! `rewrite`, `scan`: connection strings in the guest's files.
//!
//! `rewrite` reads a [`RewritePlan`] on stdin (old -> new addresses and host
//! names, the files or globs to edit, the roots they must lie in), replaces
//! whole tokens only ([`envclone_agent::matcher`]), writes each file
//! atomically with its mode and owner and keeps the original under
//! [`envclone_agent::BACKUP_DIR`]. `--dry-run` writes nothing and returns a
//! unified diff per file. `scan` reads a [`ScanRequest`] and lists every line
//! in the roots that still names one of the needles.

mod error;
mod paths;
mod plan;
mod scan;
mod text;

use clap::Args;
use envclone_agent::{AgentError, ExitStatus, RewritePlan, RewriteReport, ScanReport, ScanRequest, BACKUP_DIR};
use error::RewriteError;
use serde::de::DeserializeOwned;
use std::io::Read;

/// A plan or scan request larger than this is refused rather than read.
const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct RewriteArgs {
    /// Write nothing; report what would change, with a unified diff per file.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ScanArgs {}

/// `envclone-agent rewrite [--dry-run]`, plan on stdin.
pub fn rewrite(args: &RewriteArgs) -> Result<RewriteReport, (ExitStatus, AgentError)> {
    let settings = plan::Settings { dry_run: args.dry_run, backup_base: BACKUP_DIR.into() };
    read_request::<RewritePlan>().and_then(|plan| plan::apply(&plan, &settings)).map_err(Into::into)
}

/// `envclone-agent scan`, request on stdin.
pub fn scan(_args: &ScanArgs) -> Result<ScanReport, (ExitStatus, AgentError)> {
    let settings = scan::Settings { backup_base: BACKUP_DIR.into() };
    read_request::<ScanRequest>().and_then(|request| scan::scan(&request, &settings)).map_err(Into::into)
}

fn read_request<T: DeserializeOwned>() -> Result<T, RewriteError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_REQUEST_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|source| RewriteError::ReadRequest { source })?;
    serde_json::from_slice(&bytes).map_err(|source| RewriteError::ParseRequest { source })
}
