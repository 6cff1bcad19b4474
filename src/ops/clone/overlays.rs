//! Overlays: each disk of the clone, a qcow2 overlay on the snapshot's
//! image (`--disks full`: a standalone copy), and its NVRAM copied.

use std::time::Instant;

use super::resolve::VmPlan;
use super::{names, CloneError, DiskMode, FullCopyReport, Run};
use crate::catalog::{ClonedDisk, UndoAction};
use crate::ops::context::Event;
use crate::ops::journal::Journaled;

/// The clone's disks as made.
#[derive(Debug)]
pub(super) struct Overlays {
    pub disks: Vec<ClonedDisk>,
    /// `--disks full`: what each copy moved.
    pub full_copies: Vec<FullCopyReport>,
}

impl Run<'_, '_> {
    pub(super) fn overlays(&mut self, plans: &[VmPlan]) -> Result<Overlays, CloneError> {
        let mut made = Overlays { disks: Vec::new(), full_copies: Vec::new() };
        for plan in plans {
            let dir = self.storage.join(&plan.vm);
            self.ctx.host.storage().create_dir(&dir)?;
            for (disk, image) in &plan.images {
                let overlay = names::overlay(&self.storage, &self.request.name, &plan.vm, disk);
                let undo = UndoAction::DeleteFile { path: overlay.clone() };
                let fail = |source| CloneError::CreateOverlay {
                    vm: plan.vm.clone(),
                    disk: disk.clone(),
                    source: Box::new(source),
                };
                if self.request.disks == DiskMode::Full {
                    let step = format!("copy {}/{disk} in full", plan.vm);
                    let started = Instant::now();
                    let bytes = self.step(&step, undo, |run| {
                        let progress = run.ctx.progress;
                        let report = |permille| progress(&Event::Progress { step: step.clone(), permille });
                        run.ctx.host.storage().copy_full(&image.path, &overlay, &report).map_err(fail)
                    })?;
                    made.full_copies.push(FullCopyReport::new(&plan.vm, disk, bytes, started.elapsed()));
                } else {
                    self.step(&format!("create overlay {}/{disk}", plan.vm), undo, |run| {
                        run.ctx.host.storage().create_overlay(&overlay, &image.path, image.format).map_err(fail)
                    })?;
                }
                made.disks.push(ClonedDisk {
                    vm: plan.vm.clone(),
                    disk: disk.clone(),
                    path: overlay,
                    backing: image.path.clone(),
                });
            }
            if let Some((from, to)) = &plan.nvram {
                let undo = UndoAction::DeleteFile { path: to.clone() };
                self.step(&format!("copy the NVRAM of {}", plan.vm), undo, |run| {
                    let storage = run.ctx.host.storage();
                    storage.remove(to)?;
                    storage.copy_file(from, to).map(drop).map_err(CloneError::from)
                })?;
            }
        }
        Ok(made)
    }
}
