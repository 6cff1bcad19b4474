//! The controller's top-level error, for the commands and the daemon: one
//! variant per module, each keeping the module's typed error as its source
//! so the binary can print the whole chain once; every error says its own
//! exit code and hint ([`Failure`]). A failed operation is one variant,
//! [`Error::Operation`], so a new operation adds none.

use std::fmt;

use crate::catalog::CatalogError;
use crate::config::{ConfigError, LookupError};
use crate::daemon::DaemonError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::GuestError;
use crate::hypervisor::HvError;
use crate::lab::LabError;
use crate::ops::shared::{OperationError, Shared};
use crate::ops::{Busy, LockError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{context}")]
    Hypervisor {
        context: String,
        #[source]
        source: Box<HvError>,
    },
    /// A host's storage (over SSH for a host of `[hosts]`) failed.
    #[error("storage of host {host}")]
    Storage {
        host: String,
        #[source]
        source: Box<crate::host::StorageError>,
    },
    #[error("VM '{vm}'")]
    Guest {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error(transparent)]
    Lab(#[from] Box<LabError>),
    #[error(transparent)]
    Catalog(#[from] Box<CatalogError>),
    /// Another operation holds the environment (exit code 3).
    #[error(transparent)]
    Busy(#[from] Box<Busy>),
    /// The environment's lock could not be taken for a reason other than
    /// another holder; a busy lock becomes [`Error::Busy`].
    #[error(transparent)]
    Lock(Box<LockError>),
    /// An operation (`snapshot`, `clone`, `failover --test`...) failed at
    /// one of its own steps; its error names the step.
    #[error(transparent)]
    Operation(OperationFailed),
    #[error("{failed} of {total} live checks failed")]
    CheckFailed { failed: usize, total: usize },
    /// `envclone prune`: the other deletes ran, these did not.
    #[error("prune of '{env}': {failed} of {total} deletes failed (the first: snapshot {first})")]
    PruneIncomplete { env: String, failed: usize, total: usize, first: String },
    #[error("{0}")]
    Usage(String),
    /// `envclone daemon` and `envclone schedule run`.
    #[error(transparent)]
    Daemon(Box<DaemonError>),
    /// `envclone recover` ran, and some undo, refusal or check failed
    /// (its report lists each).
    #[error("recovery incomplete, {} failure(s): {}", failures.len(), failures.join("; "))]
    RecoverIncomplete { failures: Vec<String> },
}

/// "snapshot failed", with the operation's own error as the source.
#[derive(Debug)]
pub struct OperationFailed {
    pub operation: &'static str,
    pub source: Box<dyn Failure>,
}

impl fmt::Display for OperationFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.operation)
    }
}

impl std::error::Error for OperationFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Error {
    /// An operation's error, for `map_err`: a busy lock and an unknown
    /// environment keep their own variants (and exit codes); everything
    /// else is "`operation` failed".
    pub fn operation<E: OperationError>(operation: &'static str) -> impl FnOnce(E) -> Error {
        move |error| match error.into_shared() {
            Ok(Shared::Lock(lock)) => Error::from(lock),
            Ok(Shared::Lookup(lookup)) => Error::Lookup(lookup),
            Err(own) => Error::Operation(OperationFailed { operation, source: Box::new(own) }),
        }
    }
}

impl<E: OperationError> From<E> for Error {
    /// For `?`: the operation is named after the error's own
    /// ([`OperationError::OPERATION`]).
    fn from(error: E) -> Self {
        Error::operation(E::OPERATION)(error)
    }
}

impl From<DaemonError> for Error {
    fn from(error: DaemonError) -> Self {
        Error::Daemon(Box::new(error))
    }
}

impl From<LabError> for Error {
    fn from(error: LabError) -> Self {
        Error::Lab(Box::new(error))
    }
}

impl From<CatalogError> for Error {
    fn from(error: CatalogError) -> Self {
        Error::Catalog(Box::new(error))
    }
}

impl From<Busy> for Error {
    fn from(busy: Busy) -> Self {
        Error::Busy(Box::new(busy))
    }
}

impl From<LockError> for Error {
    fn from(error: LockError) -> Self {
        match error {
            LockError::Busy(busy) => Error::from(busy),
            other => Error::Lock(Box::new(other)),
        }
    }
}

impl Error {
    pub fn hypervisor(context: impl Into<String>) -> impl FnOnce(HvError) -> Error {
        let context = context.into();
        move |source| Error::Hypervisor { context, source: Box::new(source) }
    }

    pub fn storage(host: &str, source: crate::host::StorageError) -> Error {
        Error::Storage { host: host.to_owned(), source: Box::new(source) }
    }

    pub fn guest(vm: impl Into<String>) -> impl FnOnce(GuestError) -> Error {
        let vm = vm.into();
        move |source| Error::Guest { vm, source: Box::new(source) }
    }
}

impl From<crate::host::HostError> for Error {
    fn from(error: crate::host::HostError) -> Self {
        match error {
            crate::host::HostError::Unknown(lookup) => Error::Lookup(lookup),
            crate::host::HostError::Unreachable { host, source } => {
                Error::Hypervisor { context: format!("cannot reach host {host}"), source }
            }
        }
    }
}

impl Failure for Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(e) => e.exit_code(),
            Error::Lookup(e) => e.exit_code(),
            Error::Hypervisor { source, .. } => source.exit_code(),
            Error::Guest { source, .. } => source.exit_code(),
            Error::Storage { .. } => ExitCode::Failed,
            Error::Lab(e) => e.exit_code(),
            Error::Catalog(e) => e.exit_code(),
            Error::Busy(busy) => busy.exit_code(),
            Error::Lock(e) => e.exit_code(),
            Error::Operation(failed) => failed.source.exit_code(),
            Error::Daemon(e) => e.exit_code(),
            Error::Usage(_) => ExitCode::Usage,
            Error::CheckFailed { .. } | Error::PruneIncomplete { .. } | Error::RecoverIncomplete { .. } => {
                ExitCode::Failed
            }
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Error::Config(e) => e.hint(),
            Error::Lookup(e) => e.hint(),
            Error::Hypervisor { source, .. } => source.hint(),
            Error::Guest { source, .. } => source.hint(),
            Error::Storage { host, source } => source.hint().or_else(|| {
                Some(match source.as_ref() {
                    crate::host::StorageError::Io { path, source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        format!("create {} on host {host}, or fix [hosts.{host}] storage", path.display())
                    }
                    _ => format!(
                        "is host {host}'s sshd up, with its key in [hosts.{host}.ssh] known_hosts and the controller's \
                         key authorized for [hosts.{host}.ssh] user?"
                    ),
                })
            }),
            Error::Lab(e) => e.hint(),
            Error::Catalog(e) => e.hint(),
            Error::Busy(busy) => busy.hint(),
            Error::Lock(e) => e.hint(),
            Error::Operation(failed) => failed.source.hint(),
            Error::CheckFailed { .. } => Some("each failed check above says what to fix".into()),
            Error::PruneIncomplete { env, .. } => Some(format!(
                "each failed delete above says why; `envclone recover {env}` finishes or rolls back an interrupted \
                 one, then `envclone prune {env}` again retries what is left"
            )),
            Error::Usage(_) => Some("see `envclone --help`".into()),
            Error::Daemon(e) => e.hint(),
            Error::RecoverIncomplete { .. } => Some(
                "each failure says what to fix; then run `envclone recover` again (it retries what is left)".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every module's error is held to its documented exit code here,
    //! through the top-level error the binary maps.
    use super::*;
    use crate::daemon::RunError;
    use crate::ops::clone::CloneError;
    use crate::ops::failover::FailoverError;
    use crate::ops::restore::RestoreError;
    use crate::ops::snapshot::SnapshotError;
    use crate::ops::standby::StandbyError;
    use std::path::PathBuf;

    #[test]
    fn errors_map_to_their_documented_codes() {
        let cases = [
            (Error::Usage("x".into()), ExitCode::Usage),
            (Error::Lookup(LookupError::UnknownEnvironment { name: "x".into(), known: vec![] }), ExitCode::NotFound),
            (Error::hypervisor("look up")(HvError::NoSuchDomain { name: "x".into() }), ExitCode::NotFound),
            (Error::guest("web")(GuestError::AgentMissing { target: "t".into() }), ExitCode::Unreachable),
            (
                Error::guest("web")(GuestError::CommandTimeout {
                    target: "t".into(),
                    command: "c".into(),
                    after: std::time::Duration::from_secs(1),
                }),
                ExitCode::Failed,
            ),
            (LabError::Busy { labs_dir: PathBuf::from("/l") }.into(), ExitCode::Busy),
            (LabError::NoKernel.into(), ExitCode::Failed),
            (Error::CheckFailed { failed: 1, total: 2 }, ExitCode::Failed),
            (Busy { env: "prod".into(), holder: None }.into(), ExitCode::Busy),
            (LockError::Busy(Busy { env: "prod".into(), holder: None }).into(), ExitCode::Busy),
            (LockError::BadName { env: "a/b".into() }.into(), ExitCode::Failed),
            (CatalogError::NotFound { what: "snapshot 3".into() }.into(), ExitCode::NotFound),
            (CatalogError::NewerSchema { path: PathBuf::from("/c"), found: 3, supported: 2 }.into(), ExitCode::Failed),
            (SnapshotError::Lock(LockError::Busy(Busy { env: "prod".into(), holder: None })).into(), ExitCode::Busy),
            (
                SnapshotError::AgentNotReady {
                    vm: "db".into(),
                    source: Box::new(GuestError::Connect {
                        netns: None,
                        addr: "10.0.0.2:22".parse().unwrap(),
                        source: std::io::ErrorKind::ConnectionRefused.into(),
                    }),
                }
                .into(),
                ExitCode::Unreachable,
            ),
            (
                SnapshotError::AgentNotReady {
                    vm: "db".into(),
                    source: Box::new(GuestError::AgentMissing { target: "t".into() }),
                }
                .into(),
                ExitCode::Unreachable,
            ),
            (
                SnapshotError::Freeze {
                    vm: "db".into(),
                    source: Box::new(GuestError::Agent {
                        target: "t".into(),
                        kind: "hook-failed".into(),
                        message: "pre-freeze hook 10-db exited with status 3".into(),
                        hint: None,
                        exit: None,
                    }),
                }
                .into(),
                ExitCode::Failed,
            ),
            (SnapshotError::DomainMissing { vm: "db".into(), domain: "demo-db".into() }.into(), ExitCode::NotFound),
            (SnapshotError::NoSpace { path: PathBuf::from("/srv"), free: 1, needed: 2 }.into(), ExitCode::Failed),
        ];
        for (error, code) in cases {
            assert_eq!(ExitCode::from_error(&error), code, "{error}");
        }
    }

    #[test]
    fn clone_errors_map_to_their_documented_codes() {
        let unknown = CloneError::UnknownSnapshot { env: "demo".into(), name: "s9".into(), state: None, known: vec![] };
        let start = || CloneError::Start {
            vm: "web".into(),
            domain: "c1-web".into(),
            source: Box::new(HvError::NoSuchDomain { name: "c1-web".into() }),
        };
        let cases = [
            (unknown, ExitCode::NotFound),
            (CloneError::BadName { name: "C".into(), reason: "upper case".into() }, ExitCode::Usage),
            (CloneError::Unsupported { what: "--network readdress".into() }, ExitCode::Usage),
            (CloneError::NotAClone { name: "demo".into() }, ExitCode::Usage),
            (start(), ExitCode::Failed),
            (CloneError::CleanupFailed { cause: Box::new(start()), failures: vec!["x".into()] }, ExitCode::Failed),
        ];
        for (error, code) in cases {
            assert_eq!(ExitCode::from_error(&Error::operation("clone")(error)), code);
        }
        let busy = CloneError::Lock(crate::ops::LockError::Busy(crate::ops::Busy { env: "demo".into(), holder: None }));
        assert!(matches!(Error::operation("clone")(busy), Error::Busy(_)));
    }

    #[test]
    fn restore_errors_map_to_their_documented_codes() {
        let unknown = |state| RestoreError::UnknownSnapshot {
            env: "demo".into(),
            name: "s9".into(),
            state,
            known: vec!["s1".into()],
        };
        let cases = [
            (unknown(None), ExitCode::NotFound),
            (unknown(Some(crate::catalog::SnapshotState::Failed)), ExitCode::NotFound),
            (RestoreError::NoMemoryImage { snapshot: "s1".into(), vm: None, with_memory: vec![] }, ExitCode::Usage),
            (RestoreError::Lock(LockError::Busy(Busy { env: "demo".into(), holder: None })), ExitCode::Busy),
            (RestoreError::DomainMissing { vm: "db".into(), domain: "demo-db".into() }, ExitCode::NotFound),
            (
                RestoreError::AgentNotReady {
                    vm: "db".into(),
                    source: Box::new(GuestError::AgentMissing { target: "t".into() }),
                },
                ExitCode::Unreachable,
            ),
            (
                RestoreError::CleanupFailed {
                    cause: Box::new(RestoreError::Start {
                        vm: "web".into(),
                        domain: "demo-web".into(),
                        source: Box::new(HvError::NoSuchDomain { name: "demo-web".into() }),
                    }),
                    failures: vec!["x".into()],
                },
                ExitCode::Failed,
            ),
        ];
        for (error, code) in cases {
            let error = Error::from(error);
            assert_eq!(ExitCode::from_error(&error), code, "{error}");
        }
    }

    #[test]
    fn daemon_errors_map_to_their_documented_codes() {
        let run = |source| DaemonError::Run { schedule: "nightly".into(), run: 1, source };
        let command =
            |code| RunError::Command { command: "envclone snapshot".into(), code, message: "m".into(), hint: None };
        let cases = [
            (DaemonError::UnknownSchedule { name: "x".into(), known: vec![] }, ExitCode::NotFound),
            (run(RunError::Busy { env: "prod".into(), detail: "busy".into() }), ExitCode::Busy),
            (run(command(4)), ExitCode::NotFound),
            (run(command(5)), ExitCode::Unreachable),
            (run(command(0)), ExitCode::Failed),
            (run(command(101)), ExitCode::Failed),
            (run(RunError::Panicked { message: "boom".into() }), ExitCode::Failed),
            (DaemonError::RunsFailed { failed: 1, total: 2 }, ExitCode::Failed),
        ];
        for (error, code) in cases {
            let error = Error::from(error);
            assert_eq!(ExitCode::from_error(&error), code, "{error}");
        }
    }

    #[test]
    fn delete_errors_map_to_their_documented_codes() {
        use crate::ops::delete::DeleteError;
        let busy = || LockError::Busy(Busy { env: "prod".into(), holder: None });
        let unknown = || DeleteError::UnknownSnapshot { env: "prod".into(), snapshot: "s9".into() };
        let cases = [
            (unknown(), ExitCode::NotFound),
            (DeleteError::Lock(busy()), ExitCode::Busy),
            (DeleteError::InProgress { env: "prod".into(), snapshot: "s1".into() }, ExitCode::Failed),
            (
                DeleteError::CommitVanished { vm: "web".into(), disk: "vda".into(), top: PathBuf::from("/a") },
                ExitCode::Failed,
            ),
            (DeleteError::CleanupFailed { cause: Box::new(unknown()), failures: vec![] }, ExitCode::NotFound),
        ];
        for (error, code) in cases {
            let error = Error::from(error);
            assert_eq!(ExitCode::from_error(&error), code, "{error}");
        }
    }

    #[test]
    fn an_incomplete_prune_fails_with_exit_1_naming_the_first_failure_and_the_way_on() {
        let error = Error::PruneIncomplete { env: "demo".into(), failed: 1, total: 3, first: "s1".into() };
        assert_eq!(ExitCode::from_error(&error), ExitCode::Failed);
        assert_eq!(error.to_string(), "prune of 'demo': 1 of 3 deletes failed (the first: snapshot s1)");
        assert!(error.hint().unwrap().contains("envclone recover demo"));
    }

    #[test]
    fn failover_errors_map_to_their_documented_codes() {
        let cases = [
            (FailoverError::NoStandby { env: "demo".into() }, ExitCode::NotFound),
            (FailoverError::NotSynced { standby: "sb".into() }, ExitCode::NotFound),
            (FailoverError::SeveralStandbys { env: "demo".into(), standbys: vec![] }, ExitCode::Usage),
            (FailoverError::Unsupported { what: "planned failover".into() }, ExitCode::Usage),
            (FailoverError::PrimaryHealthy { env: "demo".into() }, ExitCode::Usage),
            (FailoverError::NoSwitch { env: "demo".into() }, ExitCode::Usage),
            (FailoverError::FailbackDrillRunning { env: "demo".into(), standby: "sb2".into() }, ExitCode::Usage),
            (FailoverError::PrimaryRunning { env: "demo".into(), domain: "web".into() }, ExitCode::Usage),
            (FailoverError::NotServing { standby: "sb".into(), env: "demo".into() }, ExitCode::Usage),
            (
                FailoverError::HomeCopyDiffers {
                    vm: "db".into(),
                    disk: "vda".into(),
                    from: "/sb/a.qcow2".into(),
                    to: "/home/a.qcow2".into(),
                },
                ExitCode::Failed,
            ),
            (FailoverError::FailbackInterrupted { env: "demo".into(), epoch: 1 }, ExitCode::Failed),
            (FailoverError::StandbyRunning { standby: "sb".into(), domain: "sb-web".into() }, ExitCode::Failed),
            (
                FailoverError::CleanupFailed {
                    cause: Box::new(FailoverError::NoStandby { env: "demo".into() }),
                    failures: vec!["x".into()],
                },
                ExitCode::NotFound,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(ExitCode::from_error(&Error::operation("failover")(error)), code);
        }
        let busy = FailoverError::Lock(LockError::Busy(Busy { env: "sb".into(), holder: None }));
        assert!(matches!(Error::operation("failover")(busy), Error::Busy(_)));
    }

    #[test]
    fn standby_errors_map_to_their_documented_codes() {
        let cases = [
            (StandbyError::UnknownStandby { name: "sb".into(), known: vec![] }, ExitCode::NotFound),
            (StandbyError::NoSnapshot { env: "demo".into(), standby: "sb".into() }, ExitCode::NotFound),
            (StandbyError::BadName { name: "SB".into(), reason: "upper case".into() }, ExitCode::Usage),
            (StandbyError::StandbyRunning { standby: "sb".into(), domain: "sb-web".into() }, ExitCode::Failed),
            (StandbyError::MergePending { standby: "sb".into(), snapshot: "s1".into() }, ExitCode::Failed),
            (
                StandbyError::CleanupFailed {
                    cause: Box::new(StandbyError::NoSnapshot { env: "demo".into(), standby: "sb".into() }),
                    failures: vec!["x".into()],
                },
                ExitCode::NotFound,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(ExitCode::from_error(&Error::operation("standby sync")(error)), code);
        }
        let busy = StandbyError::Lock(LockError::Busy(Busy { env: "sb".into(), holder: None }));
        assert!(matches!(Error::operation("standby sync")(busy), Error::Busy(_)));
    }
}
