//! The restore's **Record** phase (one catalog transaction: the new
//! overlays are the disks' active images, the undo snapshot is complete
//! and pins the previous images), **Discard** (`--discard`: each previous
//! image deleted if nothing needs it) and the report.

use std::path::PathBuf;

use super::undo_snapshot::UndoSnapshot;
use super::{resolve, DiskReport, KeptImage, RestoreError, RestoreReport, Restored, Run, StartKind, VmPlan, VmReport};
use crate::catalog::{ImageFormat, ImageKind, NewImage, RestoreRecord, UndoAction, UndoSnapshotRecord};
use crate::ops::journal::Journaled as _;
use crate::ops::snapshot::snapshot_dependent;

impl Run<'_, '_> {
    /// The catalog commit: see [`Catalog::record_restore`](crate::catalog::Catalog::record_restore).
    pub(super) fn record(&self, plans: &[VmPlan], undo_snapshot: Option<&UndoSnapshot>) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        let now = ctx.clock.now();
        let files = self.ctx.host.storage();
        let mut overlays = Vec::new();
        let mut previous = Vec::new();
        for plan in plans {
            for disk in &plan.disks {
                overlays.push(NewImage {
                    path: disk.overlay.clone(),
                    vm: plan.vm.clone(),
                    disk: Some(disk.target.clone()),
                    kind: ImageKind::Overlay,
                    format: ImageFormat::Qcow2,
                    size_bytes: files.size(&disk.overlay).unwrap_or(0),
                    backing: Some(disk.image.id),
                    snapshot: None,
                    created_at: now,
                });
                previous.push(NewImage {
                    path: disk.previous.clone(),
                    vm: plan.vm.clone(),
                    disk: Some(disk.target.clone()),
                    kind: ImageKind::Base,
                    format: resolve::image_format(&disk.previous_format),
                    size_bytes: files.size(&disk.previous).unwrap_or(0),
                    backing: None,
                    snapshot: None,
                    created_at: now,
                });
            }
        }
        let undo = undo_snapshot.map(|undo| UndoSnapshotRecord {
            snapshot: undo.id,
            dependent: snapshot_dependent(&self.request.env, &undo.name),
            images: previous,
        });
        ctx.catalog.record_restore(&RestoreRecord { overlays, undo })?;
        Ok(())
    }

    /// Deletes each previous image of `plans` that nothing needs any more;
    /// returns those deleted and those kept, with why.
    pub(super) fn discard(&mut self, plans: &[VmPlan]) -> (Vec<PathBuf>, Vec<KeptImage>) {
        let ctx = self.ctx;
        let (mut discarded, mut kept) = (Vec::new(), Vec::new());
        let mut previous: Vec<PathBuf> =
            plans.iter().flat_map(|p| p.disks.iter().map(|d| d.previous.clone())).collect();
        previous.sort();
        previous.dedup();
        let step = match self.journal().record("discard the previous overlays", UndoAction::Nothing) {
            Ok(step) => step,
            Err(e) => {
                let reason = format!("not deleted: the journal failed: {}", crate::error::chain(&e));
                kept.extend(previous.into_iter().map(|path| KeptImage { path, reason: reason.clone() }));
                return (discarded, kept);
            }
        };
        let timer = ctx.begin("discard the previous overlays");
        for path in previous {
            let image = match ctx.catalog.image_by_path(&path) {
                Ok(Some(image)) => image,
                Ok(None) => {
                    let reason = "not in the catalog: envclone deletes only images it made".to_owned();
                    kept.push(KeptImage { path, reason });
                    continue;
                }
                Err(e) => {
                    kept.push(KeptImage { path, reason: crate::error::chain(&e) });
                    continue;
                }
            };
            // The record goes first (with the check, in one transaction):
            // a crash in between leaves an orphan file, never a record of a
            // file that is gone.
            match ctx.catalog.remove_image(image.id) {
                Ok(_) => match self.ctx.host.storage().remove(&path) {
                    Ok(()) => discarded.push(path),
                    Err(e) => {
                        let reason = format!("forgotten by the catalog but not deleted: {e}");
                        ctx.note(format!("{}: {reason}", path.display()));
                        kept.push(KeptImage { path, reason });
                    }
                },
                Err(crate::catalog::CatalogError::Refused(refusal)) => {
                    let reasons: Vec<String> = refusal.reasons.iter().map(ToString::to_string).collect();
                    kept.push(KeptImage { path, reason: reasons.join("; ") });
                }
                Err(e) => kept.push(KeptImage { path, reason: crate::error::chain(&e) }),
            }
        }
        timer.done();
        if let Err(e) = self.journal().done(step) {
            tracing::error!("journal: cannot mark the discard done: {e}");
        }
        (discarded, kept)
    }

    /// The report of the restore done: `restored`, then `discarded` and
    /// `kept` by Discard.
    pub(super) fn report(&self, restored: &Restored, discarded: Vec<PathBuf>, kept: Vec<KeptImage>) -> RestoreReport {
        RestoreReport {
            env: self.request.env.clone(),
            snapshot: self.request.snapshot.clone(),
            label: restored.snapshot.label.clone(),
            memory: self.request.memory,
            discard: self.request.discard,
            undo_snapshot: restored.undo_snapshot.as_ref().map(|undo| undo.name.clone()),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            vms: restored
                .plans
                .iter()
                .map(|plan| {
                    let undo = restored.undo_snapshot.as_ref().and_then(|_| restored.consistency.get(&plan.vm));
                    VmReport {
                        vm: plan.vm.clone(),
                        domain: plan.domain.clone(),
                        start: if self.request.memory { StartKind::Memory } else { StartKind::Boot },
                        was_running: plan.was_active,
                        undo_consistency: undo.map(|(c, _)| *c),
                        undo_reason: undo.and_then(|(_, r)| r.clone()),
                        clock_step_ms: restored.clock_steps.get(&plan.vm).copied(),
                        disks: plan
                            .disks
                            .iter()
                            .map(|d| DiskReport {
                                disk: d.target.clone(),
                                image: d.image.path.clone(),
                                overlay: d.overlay.clone(),
                                previous: d.previous.clone(),
                            })
                            .collect(),
                    }
                })
                .collect(),
            discarded,
            kept,
        }
    }
}
