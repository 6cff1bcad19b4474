//! The restore's **UndoSnapshot** phase (not with `--discard`): the disks
//! the VMs wrote to until the stop become a snapshot, recorded in progress
//! here and completed by Record, that `envclone restore ENV <it>` brings
//! back.

use super::stop::UndoConsistency;
use super::{resolve, RestoreError, Run, VmPlan};
use crate::catalog::{Consistency, NewSnapshot, SnapshotId, UndoAction, VmConsistency};
use crate::ops::journal::Journaled as _;
use crate::ops::snapshot::UNDO_FAIL_SNAPSHOT_NAMED;

/// The undo snapshot recorded: what Record completes and the report names.
pub(super) struct UndoSnapshot {
    pub id: SnapshotId,
    pub name: String,
}

impl Run<'_, '_> {
    /// Records the undo snapshot of `plans`' VMs, in progress until Record
    /// completes it.
    pub(super) fn record_undo_snapshot(
        &mut self,
        plans: &[VmPlan],
        consistency: &UndoConsistency,
    ) -> Result<UndoSnapshot, RestoreError> {
        let ctx = self.ctx;
        let now = ctx.clock.now();
        let name = resolve::undo_snapshot_name(ctx.catalog, &self.request.env, now)?;
        let undo = UndoAction::Custom {
            kind: UNDO_FAIL_SNAPSHOT_NAMED.to_owned(),
            data: serde_json::json!({ "env": self.request.env, "snapshot": name }),
        };
        let id = self.step(&format!("record undo snapshot {name}"), undo, |run| {
            let id = ctx.catalog.create_snapshot(&NewSnapshot {
                env: run.request.env.clone(),
                name: name.clone(),
                label: Some(format!("undo-before-restore-{}", run.request.snapshot)),
                schedule: None,
                created_at: now,
                memory: false,
            })?;
            for plan in plans {
                let (consistency, reason) = consistency
                    .get(&plan.vm)
                    .cloned()
                    .unwrap_or((Consistency::CrashConsistent, Some("not frozen".to_owned())));
                ctx.catalog.record_vm_consistency(id, &VmConsistency { vm: plan.vm.clone(), consistency, reason })?;
            }
            Ok(id)
        })?;
        Ok(UndoSnapshot { id, name })
    }
}
