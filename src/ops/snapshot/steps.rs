//! The snapshot's state machine and its journal.
//!
//! ```text
//! Preflight -> OpenSessions -> Freeze -> DiskSnapshot -> Thaw -> [Memory] -> Record -> Done
//!      \____________\______________\__________\____________\________\__________\---> Failed
//! ```
//!
//! Each phase's steps are journaled (with how to undo them) before they
//! run. The barrier's steps (Freeze, DiskSnapshot, Thaw and the memory
//! points) are journaled together just before the first freeze, so no
//! catalog write lands inside the freeze window; afterwards each is marked
//! done or failed (or "not reached") from the barrier's outcome.
//! Rolling back runs the undo actions newest first: see [`Journal::roll_back`].

use chrono::{DateTime, Utc};

use crate::catalog::{Catalog, CatalogError, OperationId, OperationKind, Owner, StepId, StepRecord, UndoAction};

/// The kind of [`UndoAction::Custom`] recorded before the snapshot's
/// catalog row exists: `data` is `{"env": ..., "snapshot": ...}`; undoing
/// it marks that snapshot failed if it is still in progress.
pub const UNDO_FAIL_SNAPSHOT_NAMED: &str = "fail-snapshot-named";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Preflight,
    OpenSessions,
    Freeze,
    DiskSnapshot,
    Thaw,
    Memory,
    Record,
    Done,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Preflight,
        Phase::OpenSessions,
        Phase::Freeze,
        Phase::DiskSnapshot,
        Phase::Thaw,
        Phase::Memory,
        Phase::Record,
        Phase::Done,
        Phase::Failed,
    ];

    /// The one place that says which phase may follow which.
    pub fn valid_transition(self, to: Phase) -> bool {
        use Phase::*;
        match (self, to) {
            (Done | Failed, _) => false,
            (_, Failed) => true,
            (Preflight, OpenSessions)
            | (OpenSessions, Freeze)
            | (Freeze, DiskSnapshot)
            | (DiskSnapshot, Thaw)
            | (Thaw, Memory | Record)
            | (Memory, Record)
            | (Record, Done) => true,
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::OpenSessions => "open-sessions",
            Phase::Freeze => "freeze",
            Phase::DiskSnapshot => "disk-snapshot",
            Phase::Thaw => "thaw",
            Phase::Memory => "memory",
            Phase::Record => "record",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

/// The journaled operation of one snapshot.
#[derive(Debug)]
pub struct Journal<'c> {
    catalog: &'c Catalog,
    pub op: OperationId,
    /// Recorded and neither done nor failed yet.
    open: Vec<StepId>,
}

impl<'c> Journal<'c> {
    pub fn begin(catalog: &'c Catalog, env: &str, now: DateTime<Utc>) -> Result<Journal<'c>, CatalogError> {
        let op = catalog.begin_operation(OperationKind::Snapshot, env, &Owner::current(), now)?;
        Ok(Journal { catalog, op, open: Vec::new() })
    }

    /// Records a step before it runs.
    pub fn record(&mut self, name: impl Into<String>, undo: UndoAction) -> Result<StepId, CatalogError> {
        let step = self.catalog.record_step(self.op, &StepRecord::new(name, undo))?;
        self.open.push(step);
        Ok(step)
    }

    pub fn done(&mut self, step: StepId) -> Result<(), CatalogError> {
        self.catalog.finish_step(step)?;
        self.open.retain(|s| *s != step);
        Ok(())
    }

    pub fn failed(&mut self, step: StepId, error: &str) -> Result<(), CatalogError> {
        self.catalog.fail_step(step, error)?;
        self.open.retain(|s| *s != step);
        Ok(())
    }

    pub fn complete(self) -> Result<(), CatalogError> {
        self.catalog.complete_operation(self.op)
    }

    /// Marks every step still open as failed, then undoes every step that
    /// may have acted, newest first, with `undo`. Returns the undo failures
    /// (also recorded: the operation then ends `failed`, for `recover`).
    pub fn roll_back(mut self, cause: &str, mut undo: impl FnMut(&UndoAction) -> Result<(), String>) -> Vec<String> {
        let mut failures = Vec::new();
        let note = |what: &str, result: Result<(), CatalogError>| {
            if let Err(e) = result {
                tracing::error!("journal: cannot {what}: {e}");
            }
        };
        for step in std::mem::take(&mut self.open) {
            note("fail a step", self.catalog.fail_step(step, cause));
        }
        if let Err(e) = self.catalog.begin_rollback(self.op, cause) {
            tracing::error!("journal: cannot start the rollback: {e}");
        }
        let plan = match self.catalog.undo_plan(self.op) {
            Ok(plan) => plan,
            Err(e) => {
                failures.push(format!("cannot read the journal's undo plan: {e}"));
                return failures;
            }
        };
        for (step, action) in plan {
            match undo(&action) {
                Ok(()) => note("mark a step undone", self.catalog.mark_undone(step)),
                Err(error) => {
                    note("record a failed undo", self.catalog.fail_undo(step, &error));
                    failures.push(error);
                }
            }
        }
        if failures.is_empty() {
            note("finish the rollback", self.catalog.finish_rollback(self.op));
        } else {
            note("mark the operation failed", self.catalog.fail_operation(self.op, &failures.join("; ")));
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_transitions_per_phase() {
        use Phase::*;
        let allowed: &[(Phase, &[Phase])] = &[
            (Preflight, &[OpenSessions, Failed]),
            (OpenSessions, &[Freeze, Failed]),
            (Freeze, &[DiskSnapshot, Failed]),
            (DiskSnapshot, &[Thaw, Failed]),
            (Thaw, &[Memory, Record, Failed]),
            (Memory, &[Record, Failed]),
            (Record, &[Done, Failed]),
            (Done, &[]),
            (Failed, &[]),
        ];
        assert_eq!(allowed.len(), Phase::ALL.len());
        for (from, targets) in allowed {
            for to in Phase::ALL {
                assert_eq!(from.valid_transition(to), targets.contains(&to), "{} -> {}", from.as_str(), to.as_str());
            }
        }
    }
}
