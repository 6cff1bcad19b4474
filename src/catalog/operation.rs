//! The journal's vocabulary: operations, their steps, the two state
//! machines, how each step is undone, and who owns an operation.
//!
//! An operation is `running` while its owner works through its steps.
//! Each step is recorded `running` *before* it acts, with the action that
//! undoes it, so after a crash the journal always says what may have been
//! done. A failure or `envclone recover` rolls back: the steps' undo
//! actions run newest first, each step ends `undone`, the operation ends
//! `rolled-back`. An undo that fails leaves the step `undo-failed` and the
//! operation `failed`, to be retried by `recover` (loudly: a thaw that did
//! not happen is never a warning).
//!
//! ```text
//! operation: running ──> completed
//!               │  └───> failed <──┐
//!               └──> rolling-back ─┤──> rolled-back
//!                        ^         │
//!                        └─────────┘ (failed -> rolling-back: retry)
//! step:      running ──> done ──────┬──> undone
//!               ├──────> failed ────┤
//!               │                   └──> undo-failed ──> undone
//!               └──────> undone / undo-failed  (interrupted mid-step)
//! ```

use std::fmt;
use std::fs;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use super::model::{row_id, text_enum};

row_id!(
    /// A journaled operation's row id.
    OperationId
);
row_id!(
    /// A journaled step's row id.
    StepId
);

text_enum!(
    /// What an operation does; one per multi-step command.
    OperationKind {
        Snapshot => "snapshot",
        Restore => "restore",
        DeleteSnapshot => "delete-snapshot",
        Prune => "prune",
        Clone => "clone",
        DeleteClone => "delete-clone",
        Failover => "failover",
        StandbyCreate => "standby-create",
        StandbySync => "standby-sync",
        StandbyDestroy => "standby-destroy",
        Recover => "recover",
    }
);

text_enum!(
    /// Where an operation is in its life. See [`OperationState::valid_transition`].
    OperationState {
        /// Its owner is working through its steps.
        Running => "running",
        /// Every step done; nothing to undo.
        Completed => "completed",
        /// Undoing its steps, newest first.
        RollingBack => "rolling-back",
        /// Every step undone.
        RolledBack => "rolled-back",
        /// Stopped with steps that could not be undone; needs `envclone recover`.
        Failed => "failed",
    }
);

text_enum!(
    /// Where one step is. See [`StepState::valid_transition`].
    StepState {
        /// Recorded and started; it may or may not have acted.
        Running => "running",
        Done => "done",
        /// It failed and may have acted partly: it is still undone.
        Failed => "failed",
        Undone => "undone",
        UndoFailed => "undo-failed",
    }
);

impl OperationState {
    /// The one place that says which state changes an operation may make.
    pub fn valid_transition(self, to: OperationState) -> bool {
        use OperationState::*;
        match self {
            Running => matches!(to, Completed | RollingBack | Failed),
            RollingBack => matches!(to, RolledBack | Failed),
            Failed => matches!(to, RollingBack),
            Completed | RolledBack => false,
        }
    }

    /// Whether an owner is (or was, if it died) still working on it.
    pub fn is_active(self) -> bool {
        matches!(self, OperationState::Running | OperationState::RollingBack)
    }
}

impl StepState {
    /// The one place that says which state changes a step may make.
    /// `undo-failed -> undo-failed` is a retried undo that failed again.
    pub fn valid_transition(self, to: StepState) -> bool {
        use StepState::*;
        match self {
            Running => matches!(to, Done | Failed | Undone | UndoFailed),
            Done | Failed => matches!(to, Undone | UndoFailed),
            UndoFailed => matches!(to, Undone | UndoFailed),
            Undone => false,
        }
    }

    /// Whether the step may have acted and has not been undone yet.
    pub fn needs_undo(self) -> bool {
        !matches!(self, StepState::Undone)
    }
}

/// How to undo one step. Every action must be idempotent: it may run for a
/// step that never acted (interrupted before it did) or that was already
/// partly undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum UndoAction {
    /// The step changes nothing that needs undoing (a check, a read).
    Nothing,
    /// Remove a file the step creates (an overlay, a memory file).
    DeleteFile { path: PathBuf },
    /// Thaw the filesystems the step froze in a VM.
    ThawAgent { vm: String },
    /// Resume a domain the step paused.
    ResumeDomain { domain: String },
    /// Point a domain's disk back at the image it used before the step.
    PivotBack { domain: String, disk: String, image: PathBuf },
    /// Remove a domain the step defines.
    UndefineDomain { name: String },
    /// Mark a snapshot the step records as failed in the catalog.
    FailSnapshot { snapshot: super::SnapshotId },
    /// Anything else: `kind` names the handler, `data` its arguments.
    Custom { kind: String, data: serde_json::Value },
}

/// What [`super::Catalog::record_step`] records before a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// What the step does, for messages and `recover` ("freeze db").
    pub name: String,
    pub undo: UndoAction,
}

impl StepRecord {
    pub fn new(name: impl Into<String>, undo: UndoAction) -> Self {
        Self { name: name.into(), undo }
    }
}

/// The process that owns an operation, identified well enough that a
/// reused pid or a reboot is not mistaken for the owner still being alive:
/// the pid, the process's start time in clock ticks since boot
/// (`/proc/PID/stat` field 22) and the kernel's boot id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start_ticks: Option<u64>,
    pub boot_id: Option<String>,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner { pid, start_ticks: start_ticks(pid), boot_id: boot_id() }
    }

    /// Whether the owner still runs: the pid exists, is not a zombie, and
    /// (where recorded) started at the same tick of the same boot. When
    /// `/proc` cannot tell, `kill(pid, 0)` decides.
    pub fn is_alive(&self) -> bool {
        if let (Some(recorded), Some(now)) = (&self.boot_id, boot_id()) {
            if *recorded != now {
                return false;
            }
        }
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => match parse_stat(&stat) {
                Some((state, ticks)) => {
                    !matches!(state, 'Z' | 'X') && self.start_ticks.map_or(true, |recorded| recorded == ticks)
                }
                None => true,
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => kill_zero(self.pid),
        }
    }
}

fn kill_zero(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno != nix::errno::Errno::ESRCH,
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks)
}

fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|id| id.trim().to_owned())
}

/// The state and start time from `/proc/PID/stat`. The command name in
/// parentheses may itself hold spaces and parentheses, so fields are
/// counted after the last ')'.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3) comes field 4; start time is field 22.
    let ticks = fields.nth(18)?.parse().ok()?;
    Some((state, ticks))
}

/// A journaled operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub id: OperationId,
    pub kind: OperationKind,
    /// The environment it is journaled under.
    pub env: String,
    /// The other environments it acts on (a clone's source), by name.
    pub touches: Vec<String>,
    pub owner: Owner,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub state: OperationState,
    /// Why it failed or was rolled back.
    pub error: Option<String>,
    /// The host it acts on, when recorded (a standby's); none: its
    /// environment's.
    pub host: Option<String>,
}

impl Operation {
    /// Whether it is journaled under `env` or acts on it.
    pub fn touches_env(&self, env: &str) -> bool {
        self.env == env || self.touches.iter().any(|touched| touched == env)
    }
}

/// One journaled step of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub id: StepId,
    pub operation: OperationId,
    /// 1, 2, 3... in the order the steps were recorded.
    pub seq: u32,
    pub name: String,
    pub undo: UndoAction,
    pub state: StepState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// An [`UndoAction`] as stored: JSON text.
pub(super) struct UndoJson(pub UndoAction);

impl ToSql for UndoJson {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        serde_json::to_string(&self.0)
            .map(ToSqlOutput::from)
            .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))
    }
}

impl FromSql for UndoJson {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?).map(UndoJson).map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_transitions_per_state() {
        use OperationState::*;
        let allowed: &[(OperationState, &[OperationState])] = &[
            (Running, &[Completed, RollingBack, Failed]),
            (Completed, &[]),
            (RollingBack, &[RolledBack, Failed]),
            (RolledBack, &[]),
            (Failed, &[RollingBack]),
        ];
        assert_eq!(allowed.len(), OperationState::ALL.len());
        for (from, targets) in allowed {
            for to in OperationState::ALL {
                assert_eq!(from.valid_transition(*to), targets.contains(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn step_transitions_per_state() {
        use StepState::*;
        let allowed: &[(StepState, &[StepState])] = &[
            (Running, &[Done, Failed, Undone, UndoFailed]),
            (Done, &[Undone, UndoFailed]),
            (Failed, &[Undone, UndoFailed]),
            (Undone, &[]),
            (UndoFailed, &[Undone, UndoFailed]),
        ];
        assert_eq!(allowed.len(), StepState::ALL.len());
        for (from, targets) in allowed {
            for to in StepState::ALL {
                assert_eq!(from.valid_transition(*to), targets.contains(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn undo_actions_serialize_as_tagged_json() {
        let action = UndoAction::PivotBack { domain: "web".into(), disk: "vda".into(), image: "/img/a.qcow2".into() };
        let json = serde_json::to_string(&action).unwrap();
        assert_eq!(json, r#"{"action":"pivot-back","domain":"web","disk":"vda","image":"/img/a.qcow2"}"#);
        assert_eq!(serde_json::from_str::<UndoAction>(&json).unwrap(), action);
        assert!(serde_json::from_str::<UndoAction>(r#"{"action":"format-disk"}"#).is_err());
    }

    #[test]
    fn parses_proc_stat_with_a_tricky_command_name() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive() {
        let owner = Owner::current();
        assert!(owner.start_ticks.is_some());
        assert!(owner.is_alive());
    }

    #[test]
    fn owner_with_a_reused_pid_is_not_alive() {
        let mut owner = Owner::current();
        owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);

        assert!(!owner.is_alive());
    }

    #[test]
    fn owner_from_another_boot_is_not_alive() {
        let owner = Owner { boot_id: Some("not-this-boot".into()), ..Owner::current() };

        assert!(!owner.is_alive());
    }

    #[test]
    fn owner_that_exited_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();

        assert!(!Owner { pid, start_ticks: None, boot_id: None }.is_alive());
    }
}
