//! What a scheduled run and the daemon can fail with, each variant with its
//! exit code ([`Failure::exit_code`]).

use std::time::Duration;

use crate::catalog::CatalogError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::schedule::ScheduleError;

/// Why one scheduled run (its snapshot, or one of its retention deletes)
/// did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another operation, or the schedule's previous run, holds the
    /// environment: the run is skipped and counted as overlapping, not failed.
    #[error("{detail}")]
    Busy { env: String, detail: String },
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for `{command}`")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed; `message` is the error it printed.
    #[error("`{command}` failed with exit code {code}: {message}")]
    Command { command: String, code: i32, message: String, hint: Option<String> },
    #[error("`{command}` was killed by signal {signal}")]
    Killed { command: String, signal: i32 },
    #[error("`{command}` did not finish within {}", humantime::format_duration(*after))]
    Timeout { command: String, after: Duration },
    #[error("`{command}` succeeded but its output does not say {what}")]
    BadOutput { command: String, what: &'static str },
    #[error("cannot read the snapshots to apply retention to")]
    Catalog(#[source] Box<CatalogError>),
    #[error("the run panicked: {message}")]
    Panicked { message: String },
}

impl RunError {
    /// Whether the run was refused because the environment is busy.
    pub fn is_busy(&self) -> bool {
        matches!(self, RunError::Busy { .. })
    }
}

impl Failure for RunError {
    /// A run whose command failed exits with the code the command exited
    /// with, so a timer's unit status says "not found" or "unreachable"
    /// like a hand-run snapshot would.
    fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Busy { .. } => ExitCode::Busy,
            RunError::Command { code, .. } => ExitCode::ALL
                .into_iter()
                .find(|known| i32::from(known.code()) == *code && *known != ExitCode::Ok)
                .unwrap_or(ExitCode::Failed),
            RunError::Spawn { .. }
            | RunError::Wait { .. }
            | RunError::Killed { .. }
            | RunError::Timeout { .. }
            | RunError::BadOutput { .. }
            | RunError::Catalog(_)
            | RunError::Panicked { .. } => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            RunError::Busy { .. } => {
                Some("the run is skipped, not queued: the schedule runs again at its next time".into())
            }
            RunError::Spawn { .. } | RunError::Wait { .. } => Some(
                "the daemon runs each snapshot as `envclone snapshot`: check that the binary is still installed".into(),
            ),
            RunError::Command { hint, .. } => hint.clone(),
            RunError::Timeout { .. } => Some("raise --run-timeout, or find out why the snapshot hangs".into()),
            RunError::Catalog(error) => error.hint(),
            RunError::Killed { .. } | RunError::BadOutput { .. } | RunError::Panicked { .. } => None,
        }
    }
}

/// What `envclone daemon` and `envclone schedule run` fail with.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the daemon's async runtime")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for {signal}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the envclone binary to run snapshots with")]
    CurrentExe {
        #[source]
        source: std::io::Error,
    },
    #[error("no schedule named {name:?}")]
    UnknownSchedule { name: String, known: Vec<String> },
    #[error("schedule '{schedule}'")]
    Trigger {
        schedule: String,
        #[source]
        source: ScheduleError,
    },
    /// One run did not succeed: what `envclone schedule run` exits with.
    #[error("schedule '{schedule}': run {run}")]
    Run {
        schedule: String,
        run: i64,
        #[source]
        source: RunError,
    },
    /// `envclone daemon --once`: some of the runs it started failed.
    #[error("{failed} of {total} scheduled runs failed")]
    RunsFailed { failed: usize, total: usize },
    #[error("the daemon's {task} task ended abnormally")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Failure for DaemonError {
    /// `envclone daemon` and `envclone schedule run`: a run that failed
    /// exits with the code its snapshot exited with.
    fn exit_code(&self) -> ExitCode {
        match self {
            DaemonError::UnknownSchedule { .. } => ExitCode::NotFound,
            DaemonError::Trigger { .. } => ExitCode::Usage,
            DaemonError::Run { source, .. } => source.exit_code(),
            DaemonError::RunsFailed { .. }
            | DaemonError::Runtime { .. }
            | DaemonError::Signal { .. }
            | DaemonError::CurrentExe { .. }
            | DaemonError::Task { .. } => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            DaemonError::UnknownSchedule { name, known } if known.is_empty() => {
                Some(format!("define [schedules.{name}] in the config; it has no schedules"))
            }
            DaemonError::UnknownSchedule { name, known } => {
                Some(format!("define [schedules.{name}] or use one of: {}", known.join(", ")))
            }
            DaemonError::Trigger { .. } => Some("`envclone check` says what to fix in the config".into()),
            DaemonError::Run { source, .. } => source.hint(),
            DaemonError::RunsFailed { .. } => Some("`envclone status` shows each schedule's last error".into()),
            DaemonError::CurrentExe { .. } => Some("run envclone from its installed path".into()),
            DaemonError::Runtime { .. } | DaemonError::Signal { .. } | DaemonError::Task { .. } => None,
        }
    }
}
