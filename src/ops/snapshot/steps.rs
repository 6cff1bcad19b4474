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

use crate::ops::journal::PhaseMachine;

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
}

impl PhaseMachine for Phase {
    const OPERATION: &'static str = "snapshot";

    fn valid_transition(self, to: Phase) -> bool {
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

    fn as_str(self) -> &'static str {
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
