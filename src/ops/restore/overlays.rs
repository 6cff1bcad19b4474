//! The restore's **NewOverlays** and **Redefine** phases: one qcow2
//! overlay per disk on the snapshot's image (the snapshot's images are
//! never written, so it can be restored any number of times), then each
//! domain's persistent definition pointed at its new overlays.

use std::collections::BTreeMap;

use super::steps::{DiskSource, DiskSources};
use super::{resolve, RestoreError, Run, VmPlan};
use crate::catalog::{ImageFormat, UndoAction};
use crate::hypervisor::{DomainDef, HvError};
use crate::ops::journal::Journaled as _;

impl Run<'_, '_> {
    /// Gives each disk of `plans` its new overlay's path and creates it;
    /// hands the plans on with their overlays.
    pub(super) fn new_overlays(&mut self, mut plans: Vec<VmPlan>) -> Result<Vec<VmPlan>, RestoreError> {
        let ctx = self.ctx;
        let storage = self.env.storage_dir(ctx.config, &self.request.env);
        resolve::assign_overlays(
            ctx.catalog,
            self.ctx.host.storage(),
            &mut plans,
            &storage,
            &self.request.snapshot,
            ctx.clock.now(),
        )?;
        for plan in &plans {
            let dir = storage.join(&plan.vm);
            self.ctx.host.storage().create_dir(&dir)?;
            for disk in &plan.disks {
                let undo = UndoAction::DeleteFile { path: disk.overlay.clone() };
                self.step(&format!("create overlay {}/{}", plan.vm, disk.target), undo, |run| {
                    run.ctx.host.storage().create_overlay(&disk.overlay, &disk.image.path, disk.image.format).map_err(
                        |source| RestoreError::CreateOverlay {
                            vm: plan.vm.clone(),
                            disk: disk.target.clone(),
                            source: Box::new(source),
                        },
                    )
                })?;
            }
        }
        Ok(plans)
    }

    /// Points each domain of `plans` at its new overlays: the definition
    /// it had once stopped (`stopped`), or its plan's for a transient one.
    pub(super) fn redefine(
        &mut self,
        plans: &[VmPlan],
        stopped: &BTreeMap<String, DomainDef>,
    ) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        for plan in plans {
            let previous = DiskSources {
                domain: plan.domain.clone(),
                disks: plan
                    .disks
                    .iter()
                    .map(|d| DiskSource {
                        target: d.target.clone(),
                        path: d.previous.clone(),
                        format: d.previous_format.clone(),
                    })
                    .collect(),
            };
            self.step(&format!("redefine {} on its new overlays", plan.vm), previous.undo(), |_| {
                let redefine = |source: HvError| RestoreError::Redefine {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                };
                let mut def = stopped.get(&plan.vm).cloned().unwrap_or_else(|| plan.def.clone());
                for disk in &plan.disks {
                    def.set_disk_source(&disk.target, &disk.overlay, ImageFormat::Qcow2.as_str()).map_err(redefine)?;
                }
                ctx.host.hypervisor().define_domain(&def).map_err(redefine)?;
                Ok(())
            })?;
        }
        Ok(())
    }
}
