//! Start: `boot` starts every domain and waits for its agent; `resume`
//! restores each from its memory image, then thaws the guest and sets its
//! clock; `off` leaves the domains defined and shut off.

use super::domains::Domains;
use super::resolve::VmPlan;
use super::{CloneError, Run, StartMode, VmReport, BOOT_WITHIN};
use crate::catalog::UndoAction;
use crate::config::Environment;
use crate::guest::agents::CloneAgents;
use crate::ops::journal::Journaled;

/// The clone's guests: how its environment reaches them now, and what the
/// report says of each.
pub(super) struct Guests<'r> {
    environment: Environment,
    pub vms: Vec<VmReport>,
    make: &'r dyn Fn(&Environment) -> Box<dyn CloneAgents>,
    /// Made on first use and kept (their logins with them) until the
    /// environment changes.
    agents: Option<Box<dyn CloneAgents>>,
}

impl<'r> Guests<'r> {
    fn new(domains: Domains, make: &'r dyn Fn(&Environment) -> Box<dyn CloneAgents>) -> Self {
        Guests { environment: domains.environment, vms: domains.vms, make, agents: None }
    }

    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The clone's agents as its environment stands now.
    pub fn agents(&mut self) -> &dyn CloneAgents {
        let (make, environment) = (self.make, &self.environment);
        &**self.agents.get_or_insert_with(|| make(environment))
    }

    /// From now on the guests are reached as `environment` says.
    pub fn reach(&mut self, environment: Environment) {
        self.environment = environment;
        self.agents = None;
    }

    /// The clone's environment and report lines, once nothing more is
    /// asked of its guests.
    pub fn into_parts(self) -> (Environment, Vec<VmReport>) {
        (self.environment, self.vms)
    }
}

impl std::fmt::Debug for Guests<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guests").field("vms", &self.vms).finish_non_exhaustive()
    }
}

impl<'r> Run<'r, '_> {
    pub(super) fn start(&mut self, plans: &[VmPlan], domains: Domains) -> Result<Guests<'r>, CloneError> {
        let mut guests = Guests::new(domains, self.tools.agents);
        match self.request.start {
            StartMode::Boot => self.boot(plans, &mut guests)?,
            StartMode::Resume => self.resume(plans, &mut guests)?,
            StartMode::Off => {}
        }
        Ok(guests)
    }

    /// Restores every domain from its memory image, then thaws each guest
    /// and sets its clock through the gateway.
    fn resume(&mut self, plans: &[VmPlan], guests: &mut Guests<'_>) -> Result<(), CloneError> {
        for plan in plans {
            let Some((_, copy)) = &plan.memory else { continue };
            self.step(&format!("restore {} from memory", plan.domain), UndoAction::Nothing, |run| {
                run.ctx.host.hypervisor().restore_memory(copy, None).map_err(|source| CloneError::RestoreMemory {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                })?;
                // The copy served its purpose; the snapshot keeps the original.
                if let Err(e) = run.ctx.host.storage().remove(copy) {
                    run.ctx.note(format!("cannot remove {}: {e}", copy.display()));
                }
                Ok(())
            })?;
        }
        for plan in plans {
            let vm = &plan.vm;
            self.step(&format!("thaw {vm} and set its clock"), UndoAction::Nothing, |_| {
                let agents = guests.agents();
                agents
                    .thaw(vm, BOOT_WITHIN)
                    .map_err(|source| CloneError::Thaw { vm: vm.clone(), source: Box::new(source) })?;
                agents
                    .set_clock(vm)
                    .map(drop)
                    .map_err(|source| CloneError::SetClock { vm: vm.clone(), source: Box::new(source) })
            })?;
        }
        Ok(())
    }

    /// Boots every domain, then waits for every agent through the gateway.
    fn boot(&mut self, plans: &[VmPlan], guests: &mut Guests<'_>) -> Result<(), CloneError> {
        for plan in plans {
            self.step(&format!("start {}", plan.domain), UndoAction::Nothing, |run| {
                run.ctx.host.hypervisor().start_domain(&plan.domain).map_err(|source| CloneError::Start {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                })
            })?;
        }
        self.wait_for_agents(guests, "wait for the clone's agents")
    }

    /// Waits for every VM's agent, in parallel.
    pub(super) fn wait_for_agents(&mut self, guests: &mut Guests<'_>, what: &str) -> Result<(), CloneError> {
        let vms: Vec<String> = guests.vms.iter().map(|v| v.vm.clone()).collect();
        self.step(what, UndoAction::Nothing, |_| {
            let agents = guests.agents();
            let results = crate::ops::parallel::each(&vms, |vm| {
                agents
                    .wait_ready(vm, BOOT_WITHIN)
                    .map_err(|source| CloneError::AgentNotReady { vm: vm.clone(), source: Box::new(source) })
            });
            results.into_iter().try_for_each(|result| result.unwrap_or(Err(CloneError::Panicked)))
        })
    }
}
