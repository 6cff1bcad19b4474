//! The restore's **Start** phase: every VM on its new overlays, resumed
//! from the snapshot's memory image (thawed, its clock set) or booted (its
//! agent awaited).

use std::collections::BTreeMap;

use super::steps::{DomainRef, UNDO_STOP_DOMAIN};
use super::{resolve, RestoreError, Run, VmPlan, BOOT_WITHIN, THAW_WITHIN};
use crate::catalog::{ImageFormat, UndoAction};
use crate::hypervisor::HvError;
use crate::ops::journal::Journaled as _;

impl Run<'_, '_> {
    /// Starts every VM of `plans` on its new overlays (from memory, or a
    /// boot), in parallel; then thaws and sets the clock of each, or waits
    /// for its agent. Returns how far each clock was stepped (`--memory`).
    pub(super) fn start(&mut self, plans: &[VmPlan]) -> Result<BTreeMap<String, i64>, RestoreError> {
        let ctx = self.ctx;
        let memory = self.request.memory;
        let mut steps = Vec::new();
        for plan in plans {
            let name = if memory { format!("restore {} from memory", plan.vm) } else { format!("start {}", plan.vm) };
            steps.push(self.journal().record(name, DomainRef::undo(UNDO_STOP_DOMAIN, &plan.domain))?);
        }
        let timer = ctx.begin(format!("start {} VMs{}", plans.len(), if memory { " from memory" } else { "" }));
        let hv = ctx.host.hypervisor();
        let results: Vec<Result<(), RestoreError>> =
            super::joined(crate::ops::parallel::each(plans, |plan| match &plan.memory_image {
                Some(image) if memory => start_from_memory(hv, plan, image),
                _ => hv.start_domain(&plan.domain).map_err(|source| RestoreError::Start {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                }),
            }));
        let results: Vec<_> = steps.into_iter().zip(results).collect();
        let started = timer.finish(self.close_steps(results));
        started?;

        let mut steps = Vec::new();
        for plan in plans {
            let name = if memory {
                format!("thaw {} and set its clock", plan.vm)
            } else {
                format!("wait for the agent of {}", plan.vm)
            };
            steps.push(self.journal().record(name, UndoAction::Nothing)?);
        }
        let timer = ctx.begin(if memory { "thaw and set the clocks" } else { "wait for the agents" });
        let agents = self.tools.agents;
        let results: Vec<Result<Option<i64>, RestoreError>> =
            super::joined(crate::ops::parallel::each(plans, |plan| {
                let vm = plan.vm.as_str();
                if memory {
                    agents
                        .thaw(vm, THAW_WITHIN)
                        .map_err(|source| RestoreError::Thaw { vm: vm.to_owned(), source: Box::new(source) })?;
                    let step = agents
                        .set_clock(vm)
                        .map_err(|source| RestoreError::SetClock { vm: vm.to_owned(), source: Box::new(source) })?;
                    Ok(Some(step))
                } else {
                    agents.wait_ready(vm, BOOT_WITHIN).map_err(|source| RestoreError::AgentNotReady {
                        vm: vm.to_owned(),
                        source: Box::new(source),
                    })?;
                    Ok(None)
                }
            }));
        let mut clock_steps = BTreeMap::new();
        let mut closed = Vec::new();
        for ((plan, step), result) in plans.iter().zip(steps).zip(results) {
            closed.push((
                step,
                result.map(|clock| {
                    if let Some(ms) = clock {
                        clock_steps.insert(plan.vm.clone(), ms);
                    }
                }),
            ));
        }
        timer.finish(self.close_steps(closed))?;
        Ok(clock_steps)
    }
}

/// Restores `plan`'s domain from its memory image, onto its new overlays.
fn start_from_memory(
    hv: &dyn crate::hypervisor::Hypervisor,
    plan: &VmPlan,
    image: &std::path::Path,
) -> Result<(), RestoreError> {
    let fail = |source: HvError| RestoreError::RestoreMemory {
        vm: plan.vm.clone(),
        domain: plan.domain.clone(),
        source: Box::new(source),
    };
    let mut def = resolve::saved_definition(&plan.vm, image)?;
    for disk in &plan.disks {
        def.set_disk_source(&disk.target, &disk.overlay, ImageFormat::Qcow2.as_str()).map_err(fail)?;
    }
    hv.restore_memory(image, Some(&def)).map_err(fail)
}
