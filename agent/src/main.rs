//! `envclone-agent`: runs inside every guest; the controller calls it over
//! SSH. Each subcommand prints one JSON [`Envelope`] on stdout and exits with
//! a code from [`ExitStatus`]. Diagnostics go to stderr only: later, while
//! filesystems are frozen, the agent must not write to them.

mod status;

use clap::{Parser, Subcommand};
use envclone_agent::{AgentError, Envelope, ExitStatus};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "envclone-agent",
    version,
    about = "In-guest agent of envclone. Prints one JSON object per call.",
    after_help = "Exit codes: 0 done; 1 failed in the guest; 2 invalid request; 3 refused because of the guest's state (busy)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agent version, hostname, guest clock, frozen filesystems.
    Status,
}

fn main() {
    let cli = Cli::parse();
    let status = match cli.command {
        Command::Status => answer(status::collect()),
    };
    std::process::exit(status.code());
}

/// Prints the envelope for `result` and returns the exit status to use.
fn answer<T: Serialize>(result: Result<T, (ExitStatus, AgentError)>) -> ExitStatus {
    let (envelope, status) = match result {
        Ok(payload) => (Envelope::ok(payload), ExitStatus::Ok),
        Err((status, error)) => (Envelope::error(error), status),
    };
    match serde_json::to_string(&envelope) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("envclone-agent: cannot encode answer: {e}");
            return ExitStatus::Failed;
        }
    }
    status
}
