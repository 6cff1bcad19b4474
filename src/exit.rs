//! envclone's exit codes: one documented enum, mapped from errors in one
//! place ([`ExitCode::from_error`]) so runbooks and timers can branch on them.

use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::daemon::{DaemonError, RunError};
use crate::guest::GuestError;
use crate::hypervisor::HvError;
use crate::lab::LabError;
use crate::ops::clone::CloneError;
use crate::ops::delete::DeleteError;
use crate::ops::failover::FailoverError;
use crate::ops::restore::RestoreError;
use crate::ops::snapshot::SnapshotError;
use crate::ops::standby::StandbyError;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Done.
    Ok = 0,
    /// The operation failed; the message says which step.
    Failed = 1,
    /// Bad command line or invalid configuration; nothing was done.
    Usage = 2,
    /// Another operation holds the environment; try again later.
    Busy = 3,
    /// An environment, VM, domain or network named does not exist.
    NotFound = 4,
    /// A guest agent or libvirt could not be reached.
    Unreachable = 5,
}

impl ExitCode {
    pub const ALL: [ExitCode; 6] =
        [ExitCode::Ok, ExitCode::Failed, ExitCode::Usage, ExitCode::Busy, ExitCode::NotFound, ExitCode::Unreachable];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn describe(self) -> &'static str {
        match self {
            ExitCode::Ok => "done",
            ExitCode::Failed => "the operation failed; the message says which step",
            ExitCode::Usage => "bad command line or invalid configuration; nothing was done",
            ExitCode::Busy => "another operation holds the environment",
            ExitCode::NotFound => "an environment, VM, domain or network named does not exist",
            ExitCode::Unreachable => "a guest agent or libvirt could not be reached",
        }
    }

    pub fn from_error(error: &Error) -> ExitCode {
        match error {
            Error::Config(ConfigError::Read { .. } | ConfigError::Invalid { .. }) => ExitCode::Usage,
            Error::Usage(_) => ExitCode::Usage,
            Error::Lookup(_) => ExitCode::NotFound,
            Error::Hypervisor { source, .. } => match **source {
                HvError::NoSuchDomain { .. } | HvError::NoSuchNetwork { .. } => ExitCode::NotFound,
                HvError::Connect { .. } => ExitCode::Unreachable,
                _ => ExitCode::Failed,
            },
            Error::Guest { source, .. } => guest_code(source),
            Error::Lab(lab) if matches!(**lab, LabError::Busy { .. }) => ExitCode::Busy,
            Error::Busy(_) => ExitCode::Busy,
            Error::Catalog(catalog) => match **catalog {
                CatalogError::NotFound { .. } => ExitCode::NotFound,
                _ => ExitCode::Failed,
            },
            Error::Lock(_) => ExitCode::Failed,
            Error::Snapshot(snapshot) => ExitCode::from_snapshot_error(snapshot),
            Error::Delete(delete) => ExitCode::from_delete_error(delete),
            Error::Restore(restore) => ExitCode::from_restore_error(restore),
            Error::Clone { source, .. } => ExitCode::from_clone_error(source),
            Error::Standby { source, .. } => ExitCode::from_standby_error(source),
            Error::Failover { source, .. } => ExitCode::from_failover_error(source),
            Error::Lab(_) | Error::CheckFailed { .. } | Error::PruneIncomplete { .. } => ExitCode::Failed,
            Error::Daemon(daemon) => daemon_code(daemon),
            Error::Recover(_) | Error::RecoverIncomplete { .. } => ExitCode::Failed,
        }
    }

    fn from_snapshot_error(error: &SnapshotError) -> ExitCode {
        match error {
            SnapshotError::Lookup(_) | SnapshotError::DomainMissing { .. } => ExitCode::NotFound,
            SnapshotError::Lock(crate::ops::LockError::Busy(_)) => ExitCode::Busy,
            SnapshotError::AgentNotReady { source, .. } => guest_code(source),
            SnapshotError::InspectDomain { source, .. } if matches!(**source, HvError::Connect { .. }) => {
                ExitCode::Unreachable
            }
            SnapshotError::CleanupFailed { cause, .. } => ExitCode::from_snapshot_error(cause),
            _ => ExitCode::Failed,
        }
    }

    /// An unknown or incomplete snapshot is "not found"; `--memory` for a
    /// snapshot without memory is a bad command line (nothing was done).
    fn from_restore_error(error: &RestoreError) -> ExitCode {
        match error {
            RestoreError::Lookup(_) | RestoreError::UnknownSnapshot { .. } | RestoreError::DomainMissing { .. } => {
                ExitCode::NotFound
            }
            RestoreError::Lock(crate::ops::LockError::Busy(_)) => ExitCode::Busy,
            RestoreError::NoMemoryImage { .. } => ExitCode::Usage,
            RestoreError::AgentNotReady { source, .. } => guest_code(source),
            RestoreError::InspectDomain { source, .. } if matches!(**source, HvError::Connect { .. }) => {
                ExitCode::Unreachable
            }
            RestoreError::CleanupFailed { cause, .. } => ExitCode::from_restore_error(cause),
            RestoreError::Several { first, .. } => ExitCode::from_restore_error(first),
            _ => ExitCode::Failed,
        }
    }

    /// An unknown snapshot is "not found"; a bad name, an option not
    /// supported yet or a destroy of a non-clone is a bad command line.
    fn from_clone_error(error: &CloneError) -> ExitCode {
        match error {
            CloneError::Lookup(_) | CloneError::UnknownSnapshot { .. } => ExitCode::NotFound,
            CloneError::Lock(crate::ops::LockError::Busy(_)) => ExitCode::Busy,
            CloneError::BadName { .. }
            | CloneError::Unsupported { .. }
            | CloneError::NotAClone { .. }
            | CloneError::InUse { .. }
            | CloneError::NoMemoryImage { .. }
            | CloneError::ReaddressNotConfigured { .. }
            | CloneError::AddressPlan { .. } => ExitCode::Usage,
            CloneError::Snapshot { source, .. } => ExitCode::from_snapshot_error(source),
            CloneError::AgentNotReady { source, .. } | CloneError::Agent { source, .. } => guest_code(source),
            CloneError::CleanupFailed { cause, .. } => ExitCode::from_clone_error(cause),
            _ => ExitCode::Failed,
        }
    }

    /// No standby (or not the one named) is "not found"; several standbys
    /// without `--standby`, or a mode not built yet, a bad command line.
    fn from_failover_error(error: &FailoverError) -> ExitCode {
        match error {
            FailoverError::Lookup(_)
            | FailoverError::NoStandby { .. }
            | FailoverError::UnknownStandby { .. }
            | FailoverError::NotSynced { .. } => ExitCode::NotFound,
            FailoverError::Lock(crate::ops::LockError::Busy(_)) => ExitCode::Busy,
            FailoverError::SeveralStandbys { .. }
            | FailoverError::Unsupported { .. }
            | FailoverError::PrimaryHealthy { .. }
            | FailoverError::NoSwitch { .. }
            | FailoverError::NotServing { .. }
            | FailoverError::FailbackDrillRunning { .. }
            | FailoverError::ReaddressNotConfigured { .. }
            | FailoverError::PrimaryRunning { .. } => ExitCode::Usage,
            FailoverError::AgentNotReady { source, .. } if guest_code(source) == ExitCode::Unreachable => {
                ExitCode::Unreachable
            }
            FailoverError::InspectDomain { source, .. }
            | FailoverError::InspectNetwork { source, .. }
            | FailoverError::Start { source, .. }
                if matches!(**source, HvError::Connect { .. }) =>
            {
                ExitCode::Unreachable
            }
            FailoverError::CleanupFailed { cause, .. } => ExitCode::from_failover_error(cause),
            _ => ExitCode::Failed,
        }
    }

    /// An unknown standby, or a primary without a snapshot to bring it to,
    /// is "not found"; a bad name or an unsupported interface is a bad
    /// command line.
    fn from_standby_error(error: &StandbyError) -> ExitCode {
        match error {
            StandbyError::Lookup(_) | StandbyError::UnknownStandby { .. } | StandbyError::NoSnapshot { .. } => {
                ExitCode::NotFound
            }
            StandbyError::Lock(crate::ops::LockError::Busy(_)) => ExitCode::Busy,
            StandbyError::BadName { .. } | StandbyError::Unsupported { .. } | StandbyError::ActiveSide { .. } => {
                ExitCode::Usage
            }
            StandbyError::InspectDomain { source, .. } | StandbyError::InspectNetwork { source, .. }
                if matches!(**source, HvError::Connect { .. }) =>
            {
                ExitCode::Unreachable
            }
            StandbyError::CleanupFailed { cause, .. } => ExitCode::from_standby_error(cause),
            _ => ExitCode::Failed,
        }
    }

    /// An unknown snapshot is "not found"; a deferred delete is no error at all.
    fn from_delete_error(error: &DeleteError) -> ExitCode {
        match error {
            DeleteError::Lookup(_) | DeleteError::UnknownSnapshot { .. } => ExitCode::NotFound,
            DeleteError::Lock(crate::ops::LockError::Busy(_)) => ExitCode::Busy,
            DeleteError::InspectDomain { source, .. } if matches!(**source, HvError::Connect { .. }) => {
                ExitCode::Unreachable
            }
            DeleteError::CleanupFailed { cause, .. } => ExitCode::from_delete_error(cause),
            _ => ExitCode::Failed,
        }
    }

    /// The table printed in `--help` and kept in README.
    pub fn table() -> String {
        ExitCode::ALL.iter().map(|code| format!("  {:>2}  {}\n", code.code(), code.describe())).collect()
    }
}

/// Exhaustive on purpose: a new transport error must be placed by hand.
fn guest_code(error: &GuestError) -> ExitCode {
    use GuestError::*;
    match error {
        // Never got to talk to the agent, or refused to (host key).
        Resolve { .. }
        | OpenNetns { .. }
        | EnterNetns { .. }
        | NetnsThread { .. }
        | Connect { .. }
        | Handshake { .. }
        | NoHostKey { .. }
        | KnownHosts { .. }
        | UnknownHostKey { .. }
        | HostKeyMismatch { .. }
        | Auth { .. }
        | AgentMissing { .. } => ExitCode::Unreachable,
        Agent { exit: Some(envclone_agent::ExitStatus::Busy), .. } => ExitCode::Busy,
        OpenChannel { .. }
        | Exec { .. }
        | ChannelIo { .. }
        | CommandTimeout { .. }
        | Pty { .. }
        | LocalTerminal { .. }
        | ArgumentHasNul { .. }
        | ProtocolMismatch { .. }
        | Agent { .. }
        | BadAnswer { .. }
        | LeaseLost { .. }
        | ThawHooksFailed { .. } => ExitCode::Failed,
    }
}

/// `envclone daemon` and `envclone schedule run`: a run that failed exits
/// with the code its snapshot exited with, so a timer's unit status says
/// "not found" or "unreachable" like a hand-run snapshot would.
fn daemon_code(error: &DaemonError) -> ExitCode {
    match error {
        DaemonError::UnknownSchedule { .. } => ExitCode::NotFound,
        DaemonError::Trigger { .. } => ExitCode::Usage,
        DaemonError::Run { source, .. } => run_code(source),
        DaemonError::RunsFailed { .. }
        | DaemonError::Runtime { .. }
        | DaemonError::Signal { .. }
        | DaemonError::CurrentExe { .. }
        | DaemonError::Task { .. } => ExitCode::Failed,
    }
}

fn run_code(error: &RunError) -> ExitCode {
    match error {
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

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LookupError;
    use crate::ops::{Busy, LockError};
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
            assert_eq!(ExitCode::from_error(&Error::clone_op("clone")(error)), code);
        }
        let busy = CloneError::Lock(crate::ops::LockError::Busy(crate::ops::Busy { env: "demo".into(), holder: None }));
        assert!(matches!(Error::clone_op("clone")(busy), Error::Busy(_)));
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
            assert_eq!(ExitCode::from_error(&Error::failover_op("failover")(error)), code);
        }
        let busy = FailoverError::Lock(LockError::Busy(Busy { env: "sb".into(), holder: None }));
        assert!(matches!(Error::failover_op("failover")(busy), Error::Busy(_)));
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
            assert_eq!(ExitCode::from_error(&Error::standby_op("standby sync")(error)), code);
        }
        let busy = StandbyError::Lock(LockError::Busy(Busy { env: "sb".into(), holder: None }));
        assert!(matches!(Error::standby_op("standby sync")(busy), Error::Busy(_)));
    }

    #[test]
    fn codes_are_distinct_and_stable() {
        let numbers: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5]);
    }
}
