//! `envclone-agent`: runs inside every guest; the controller calls it over
//! SSH. Each subcommand prints one JSON [`Envelope`] on stdout (`freeze`
//! prints two: `frozen`, then its final report) and exits with a code from
//! [`ExitStatus`]. Diagnostics go to stderr only: while
//! filesystems are frozen the agent must not write to them.

mod atomic;
mod forced;
mod freeze;
mod identity;
mod rewrite;
mod status;
mod wait;

use clap::{Parser, Subcommand};
use envclone_agent::{AgentError, Envelope, ExitStatus};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "envclone-agent",
    version,
    about = "In-guest agent of envclone. Prints one JSON object per call on stdout (freeze: two lines).",
    after_help = "Exit codes:\n   0  done\n   1  failed in the guest (the answer says what and why)\n   2  invalid request (bad argument, refused path, refused forced command)\n   3  refused because of the guest's state (e.g. already frozen)\n\nUnder a forced-command key (authorized_keys `command=\"envclone-agent --forced-command\"`) the\nsubcommand is taken from SSH_ORIGINAL_COMMAND and nothing but envclone-agent subcommands runs."
)]
pub struct Cli {
    /// Take the real command line from SSH_ORIGINAL_COMMAND (authorized_keys `command=`).
    #[arg(long, hide = true)]
    forced_command: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Agent version, hostname, guest clock, frozen filesystems.
    Status,
    /// Run pre-freeze hooks, freeze filesystems and hold the freeze as a lease on stdin.
    Freeze(freeze::FreezeArgs),
    /// Thaw whatever is frozen (the recovery path; safe when nothing is).
    Thaw,
    /// Rewrite connection strings in files, from a JSON plan on stdin.
    Rewrite(rewrite::RewriteArgs),
    /// Report files that still name any of the given addresses or hostnames.
    Scan(rewrite::ScanArgs),
    /// Set a new address, prefix, gateway and hostname.
    Readdress(identity::ReaddressArgs),
    /// Set the guest clock.
    SetClock(identity::SetClockArgs),
    /// New machine-id and, on request, new SSH host keys.
    ResetIdentity(identity::ResetIdentityArgs),
}

fn main() {
    let cli = Cli::parse();
    let command = if cli.forced_command {
        match forced::command_from_env() {
            Ok(command) => command,
            Err(error) => std::process::exit(answer::<()>(Err((ExitStatus::Usage, error))).code()),
        }
    } else if let Some(command) = cli.command {
        command
    } else {
        let error = AgentError {
            kind: "bad-argument".into(),
            message: "no subcommand given".into(),
            hint: Some("see envclone-agent --help".into()),
        };
        std::process::exit(answer::<()>(Err((ExitStatus::Usage, error))).code());
    };
    std::process::exit(dispatch(command).code());
}

fn dispatch(command: Command) -> ExitStatus {
    match command {
        Command::Status => answer(status::collect()),
        // The one subcommand that prints two lines: it emits them itself.
        Command::Freeze(args) => freeze::freeze(&args),
        Command::Thaw => answer(freeze::thaw()),
        Command::Rewrite(args) => answer(rewrite::rewrite(&args)),
        Command::Scan(args) => answer(rewrite::scan(&args)),
        Command::Readdress(args) => answer(identity::readdress(&args)),
        Command::SetClock(args) => answer(identity::set_clock(&args)),
        Command::ResetIdentity(args) => answer(identity::reset_identity(&args)),
    }
}

/// Prints the envelope for `result` and returns the exit status to use.
pub fn answer<T: Serialize>(result: Result<T, (ExitStatus, AgentError)>) -> ExitStatus {
    let (envelope, status) = match result {
        Ok(payload) => (Envelope::ok(payload), ExitStatus::Ok),
        Err((status, error)) => (Envelope::error(error), status),
    };
    emit(&envelope);
    status
}

/// `error` and all its sources, each once: "step: cause: root cause".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// One JSON line on stdout, flushed at once: the controller may be waiting
/// for it while the agent holds a freeze.
pub fn emit<T: Serialize>(value: &T) {
    use std::io::Write;
    match serde_json::to_string(value) {
        Ok(line) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // Not eprintln!: it panics when stderr is a closed pipe,
                // which is exactly the case of a lost SSH connection.
                let _ = writeln!(std::io::stderr(), "envclone-agent: cannot write the answer to stdout");
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "envclone-agent: cannot encode answer: {e}");
        }
    }
}
