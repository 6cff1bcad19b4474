//! The journal of one delete, and how its steps are undone.
//!
//! Every step is recorded `running`, with its undo action, before it acts.
//! Only one step of a delete can leave something to undo: a block commit
//! job still running on a disk ([`UNDO_ABORT_BLOCK_JOB`]); aborting it
//! leaves the disk on its old, intact chain. Every other step either
//! changes nothing a still-valid chain depends on (a commit that finished
//! leaves the merged image's file in place and still readable until the
//! last step removes it) or is a single catalog transaction. So rolling
//! back a delete means: abort any job, keep the snapshot `deleted`, keep
//! its remaining pins; running the delete again (or `prune`) finishes it.
//! `envclone recover` rolls an interrupted delete back so, then runs it
//! again.

use crate::catalog::UndoAction;
use crate::hypervisor::Hypervisor;

/// The kind of [`UndoAction::Custom`] recorded before a block commit:
/// `data` is `{"domain": ..., "disk": ...}`; undoing it aborts the block
/// job on that disk if one still runs (the disk stays on its chain).
pub const UNDO_ABORT_BLOCK_JOB: &str = "abort-block-job";

/// The undo action of a block commit on `domain`'s `disk`.
pub fn abort_block_job(domain: &str, disk: &str) -> UndoAction {
    UndoAction::Custom {
        kind: UNDO_ABORT_BLOCK_JOB.to_owned(),
        data: serde_json::json!({ "domain": domain, "disk": disk }),
    }
}

/// Runs one undo action a delete journaled (`envclone recover` calls this
/// for an interrupted delete). Idempotent.
pub fn undo(hv: &dyn Hypervisor, action: &UndoAction) -> Result<(), String> {
    match action {
        UndoAction::Nothing => Ok(()),
        UndoAction::Custom { kind, data } if kind == UNDO_ABORT_BLOCK_JOB => {
            let (Some(domain), Some(disk)) = (data["domain"].as_str(), data["disk"].as_str()) else {
                return Err(format!("{UNDO_ABORT_BLOCK_JOB} without a domain and a disk: {data}"));
            };
            let chain = |e: &dyn std::error::Error| crate::error::chain(e);
            match hv.domain(domain) {
                Ok(d) if d.state.is_active() => {}
                // No QEMU, no job.
                Ok(_) | Err(crate::hypervisor::HvError::NoSuchDomain { .. }) => return Ok(()),
                Err(e) => return Err(format!("cannot look up domain {domain}: {}", chain(&e))),
            }
            match hv.block_job(domain, disk) {
                Ok(None) => Ok(()),
                Ok(Some(_)) => hv
                    .block_job_abort(domain, disk)
                    .map_err(|e| format!("cannot abort the block job on {domain}/{disk}: {}", chain(&e))),
                Err(e) => Err(format!("cannot read the block job on {domain}/{disk}: {}", chain(&e))),
            }
        }
        other => Err(format!("no undo for {other:?} in a delete")),
    }
}
