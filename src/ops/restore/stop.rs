//! The restore's **Stop** phase: every running VM frozen (best effort)
//! and destroyed while frozen; what the undo snapshot's consistency is per
//! VM, and each domain's definition once stopped, handed on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::steps::{DomainRef, UNDO_START_DOMAIN};
use super::{RestoreError, Run, VmPlan, LEASE_MARGIN};
use crate::catalog::{Consistency, UndoAction};
use crate::config::QuiescePolicy;
use crate::guest::agents::FreezeInfo;
use crate::hypervisor::{DomainDef, HvError};
use crate::ops::journal::Journaled as _;

/// Per VM, how consistent its part of the undo snapshot is, and why not
/// app-consistent.
pub(super) type UndoConsistency = BTreeMap<String, (Consistency, Option<String>)>;

/// What Stop hands on.
pub(super) struct Stopped {
    /// Each domain's definition once stopped: what Redefine edits (none
    /// for a transient domain, defined again from its plan).
    pub defs: BTreeMap<String, DomainDef>,
    pub consistency: UndoConsistency,
}

impl Run<'_, '_> {
    /// Freezes (best effort) and stops every running VM of `plans`; reads
    /// each domain's definition once stopped.
    pub(super) fn stop(&mut self, plans: &[VmPlan]) -> Result<Stopped, RestoreError> {
        let ctx = self.ctx;
        let freeze = !self.request.discard && self.env.quiesce != QuiescePolicy::Off;
        let active: Vec<VmPlan> = plans.iter().filter(|p| p.was_active).cloned().collect();
        let mut frozen_at: BTreeMap<String, Instant> = BTreeMap::new();
        let mut consistency = UndoConsistency::new();
        if freeze && !active.is_empty() {
            let mut steps = Vec::new();
            for plan in &active {
                let undo = UndoAction::ThawAgent { vm: plan.vm.clone() };
                steps.push(self.journal().record(format!("freeze {} (best effort)", plan.vm), undo)?);
            }
            let timer = ctx.begin(format!("freeze {} guests (best effort)", active.len()));
            let quiescer = self.tools.quiescer;
            let results = crate::ops::parallel::each(&active, |plan| {
                let frozen = quiescer.prepare(&plan.vm).and_then(|()| quiescer.freeze(&plan.vm));
                // The agent's lease runs from its first FIFREEZE, before its answer.
                let at = |info: FreezeInfo| Instant::now().checked_sub(info.freezing);
                let frozen = frozen.map(|(guest, info)| (guest, at(info).unwrap_or_else(Instant::now)));
                (plan.vm.clone(), frozen)
            });
            timer.done();
            for (step, result) in steps.into_iter().zip(results) {
                // A best-effort freeze that falls back did its job.
                self.journal().done(step)?;
                let Ok((vm, frozen)) = result else {
                    tracing::error!("a freeze thread panicked");
                    continue;
                };
                match frozen {
                    Ok((guest, at)) => {
                        self.frozen.insert(vm.clone(), guest);
                        frozen_at.insert(vm, at);
                    }
                    Err(error) => {
                        let reason = format!("not frozen: {}", crate::error::chain(&error));
                        ctx.note(format!("{vm}: the undo snapshot will be crash-consistent ({reason})"));
                        consistency.insert(vm, (Consistency::CrashConsistent, Some(reason)));
                    }
                }
            }
        }
        let lease: Duration = self.env.freeze_timeout.into();
        for plan in plans.iter().filter(|p| !p.was_active) {
            let reason = "it was not running".to_owned();
            consistency.insert(plan.vm.clone(), (Consistency::CrashConsistent, Some(reason)));
        }
        // Every VM at once: the freezes' window is the slowest stop, not their sum.
        let mut steps = Vec::new();
        for plan in &active {
            let undo = DomainRef::undo(UNDO_START_DOMAIN, &plan.domain);
            steps.push(self.journal().record(format!("stop {}", plan.vm), undo)?);
        }
        let timer = ctx.begin(format!("stop {} VMs", active.len()));
        let hv = ctx.host.hypervisor();
        let results: Vec<Result<Instant, RestoreError>> = super::joined(crate::ops::parallel::each(&active, |plan| {
            hv.destroy_domain(&plan.domain).map(|()| Instant::now()).map_err(|source| RestoreError::Stop {
                vm: plan.vm.clone(),
                domain: plan.domain.clone(),
                source: Box::new(source),
            })
        }));
        let mut closed = Vec::new();
        for ((plan, step), result) in active.iter().zip(steps).zip(results) {
            if let Ok(stopped_at) = &result {
                // The guest is gone and its freeze with it: the lease's
                // channel closes without waiting, and its warning about a
                // lease dropped unthawed would only be noise here.
                if let Some(guest) = self.frozen.remove(&plan.vm) {
                    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || drop(guest));
                    tracing::debug!(vm = %plan.vm, "its freeze ended with the VM");
                }
                let reached = match frozen_at.get(&plan.vm) {
                    Some(at) if stopped_at.duration_since(*at) + LEASE_MARGIN < lease => {
                        (Consistency::AppConsistent, None)
                    }
                    Some(_) => (
                        Consistency::CrashConsistent,
                        Some("the freeze's lease ran out before the VM stopped".to_owned()),
                    ),
                    None => consistency
                        .remove(&plan.vm)
                        .unwrap_or((Consistency::CrashConsistent, Some("quiesce is off".to_owned()))),
                };
                consistency.insert(plan.vm.clone(), reached);
            }
            closed.push((step, result.map(|_| ())));
        }
        timer.finish(self.close_steps(closed))?;
        let mut defs = BTreeMap::new();
        for plan in plans {
            match ctx.host.hypervisor().domain(&plan.domain) {
                Ok(domain) => {
                    defs.insert(plan.vm.clone(), domain.def);
                }
                // A transient domain is gone once stopped: define it from what it ran with.
                Err(HvError::NoSuchDomain { .. }) => {
                    ctx.note(format!("{}: domain {} was transient; it is defined again", plan.vm, plan.domain));
                }
                Err(source) => {
                    return Err(RestoreError::InspectDomain {
                        vm: plan.vm.clone(),
                        domain: plan.domain.clone(),
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(Stopped { defs, consistency })
    }
}
