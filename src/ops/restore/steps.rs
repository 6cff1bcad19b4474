//! The restore's state machine and its journal.
//!
//! ```text
//! Lock -> Resolve -> Stop -> [UndoSnapshot] -> NewOverlays -> Redefine -> Start -> Record -> [Discard] -> Done
//!           \__________\__________\________________\______________\__________\---> Failed
//! ```
//!
//! `UndoSnapshot` is left out with `--discard`, `Discard` without it.
//! Every step is journaled (with how to undo it) before it runs; rolling
//! back runs the undo actions newest first ([`Journal::roll_back`]).
//! Nothing after `Record` rolls back: from then on the catalog says the
//! VMs run on their new overlays, and so they do.
//!
//! The undo actions a restore journals beyond the catalog's own are
//! [`UndoAction::Custom`] kinds, named by the constants below; each is
//! idempotent and [`super::undo::undo_action`] runs them (so does
//! `envclone recover`).

use crate::ops::journal::PhaseMachine;
use serde::{Deserialize, Serialize};

use crate::catalog::UndoAction;

/// Start the domain again unless it runs: undoes the stop of a VM that was
/// running. `data`: [`DomainRef`].
pub const UNDO_START_DOMAIN: &str = "restore-start-domain";
/// Stop (destroy) the domain if it runs: undoes a start on the new
/// overlays. `data`: [`DomainRef`].
pub const UNDO_STOP_DOMAIN: &str = "restore-stop-domain";
/// Point the domain's persistent definition back at the disks it used
/// before the restore (the domain must be shut off). `data`: [`DiskSources`].
pub const UNDO_REDEFINE_DISKS: &str = "restore-redefine-disks";

/// `data` of [`UNDO_START_DOMAIN`] and [`UNDO_STOP_DOMAIN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRef {
    pub domain: String,
}

/// `data` of [`UNDO_REDEFINE_DISKS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSources {
    pub domain: String,
    pub disks: Vec<DiskSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSource {
    /// Guest target, e.g. `vda`.
    pub target: String,
    pub path: std::path::PathBuf,
    /// `qcow2` or `raw`.
    pub format: String,
}

impl DomainRef {
    pub fn undo(kind: &str, domain: &str) -> UndoAction {
        UndoAction::Custom {
            kind: kind.to_owned(),
            data: serde_json::to_value(DomainRef { domain: domain.to_owned() }).unwrap_or_default(),
        }
    }
}

impl DiskSources {
    pub fn undo(&self) -> UndoAction {
        UndoAction::Custom {
            kind: UNDO_REDEFINE_DISKS.to_owned(),
            data: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Lock,
    Resolve,
    Stop,
    UndoSnapshot,
    NewOverlays,
    Redefine,
    Start,
    Record,
    Discard,
    Done,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::Lock,
        Phase::Resolve,
        Phase::Stop,
        Phase::UndoSnapshot,
        Phase::NewOverlays,
        Phase::Redefine,
        Phase::Start,
        Phase::Record,
        Phase::Discard,
        Phase::Done,
        Phase::Failed,
    ];
}

impl PhaseMachine for Phase {
    const OPERATION: &'static str = "restore";

    fn valid_transition(self, to: Phase) -> bool {
        use Phase::*;
        match (self, to) {
            (Done | Failed, _) => false,
            (_, Failed) => true,
            (Lock, Resolve)
            | (Resolve, Stop)
            | (Stop, UndoSnapshot | NewOverlays)
            | (UndoSnapshot, NewOverlays)
            | (NewOverlays, Redefine)
            | (Redefine, Start)
            | (Start, Record)
            | (Record, Discard | Done)
            | (Discard, Done) => true,
            _ => false,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Phase::Lock => "lock",
            Phase::Resolve => "resolve",
            Phase::Stop => "stop",
            Phase::UndoSnapshot => "undo-snapshot",
            Phase::NewOverlays => "new-overlays",
            Phase::Redefine => "redefine",
            Phase::Start => "start",
            Phase::Record => "record",
            Phase::Discard => "discard",
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
            (Lock, &[Resolve, Failed]),
            (Resolve, &[Stop, Failed]),
            (Stop, &[UndoSnapshot, NewOverlays, Failed]),
            (UndoSnapshot, &[NewOverlays, Failed]),
            (NewOverlays, &[Redefine, Failed]),
            (Redefine, &[Start, Failed]),
            (Start, &[Record, Failed]),
            (Record, &[Discard, Done, Failed]),
            (Discard, &[Done, Failed]),
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

    #[test]
    fn custom_undo_data_round_trips() {
        let sources = DiskSources {
            domain: "demo-web".into(),
            disks: vec![DiskSource { target: "vda".into(), path: "/img/web.qcow2".into(), format: "qcow2".into() }],
        };
        let UndoAction::Custom { kind, data } = sources.undo() else { panic!() };
        assert_eq!(kind, UNDO_REDEFINE_DISKS);
        assert_eq!(serde_json::from_value::<DiskSources>(data).unwrap(), sources);
        let UndoAction::Custom { kind, data } = DomainRef::undo(UNDO_STOP_DOMAIN, "demo-db") else { panic!() };
        assert_eq!((kind.as_str(), data["domain"].as_str()), (UNDO_STOP_DOMAIN, Some("demo-db")));
    }
}
