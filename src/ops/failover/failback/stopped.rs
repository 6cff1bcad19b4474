//! Failback steps 4 to 6: SB's domains stopped (downtime begins), the
//! rest of SB's chains carried home, and every disk's chain at home
//! compared with SB's before anything switches.

use std::time::Instant;

use super::serving::{carry, Carried, Serving};
use super::{FailbackDisk, FailbackVm};
use crate::catalog::{StandbyRecord, UndoAction};
use crate::config::Environment;
use crate::host::Host;
use crate::ops::failover::drill::Run;
use crate::ops::failover::{undo, FailoverError};
use crate::ops::journal::Journaled as _;

/// What steps 4 to 6 hand on.
pub(super) struct Stopped {
    pub snapshots: Vec<String>,
    pub carried: Carried,
    pub bytes_while_serving: u64,
    pub bytes_after_stop: u64,
    /// When SB stopped: the downtime's start.
    pub at: Instant,
    /// ENV's VMs with their disks at home (`superseded` not known yet).
    pub vms: Vec<FailbackVm>,
}

/// Steps 4 to 6 of the module documentation, under ENV's lock.
pub(super) fn stop_and_carry(
    run: &mut Run<'_, '_>,
    sb: &dyn Host,
    standby: &StandbyRecord,
    primary: &Environment,
    serving: Serving,
) -> Result<Stopped, FailoverError> {
    let Serving { snapshots, mut carried, bytes_while_serving } = serving;
    let at = Instant::now();
    let domains: Vec<String> = standby.resources.domains.iter().map(|d| d.domain.clone()).collect();
    // In parallel: each stop is seconds of QEMU teardown, all of it downtime.
    run.step(&format!("stop {}", domains.join(", ")), undo::restart(&domains, sb.name()), |_| {
        let hv = sb.hypervisor();
        let results = crate::ops::parallel::each(&domains, |domain| {
            hv.destroy_domain(domain).map_err(|e| FailoverError::Stop { domain: domain.clone(), source: Box::new(e) })
        });
        results.into_iter().try_for_each(|result| result.unwrap_or(Err(FailoverError::Panicked)))
    })?;
    let bytes_after_stop = carry(run, sb, standby, primary, &mut carried, true)?;
    let vms = verify(run, sb, standby, primary, &carried)?;
    Ok(Stopped { snapshots, carried, bytes_while_serving, bytes_after_stop, at, vms })
}

/// Step 6: every disk's chain at home reads like SB's, checked before
/// anything switches; returns ENV's VMs with their disks at home. On one
/// host `qemu-img compare` reads both chains; across hosts no tool reads
/// both, and each carried file arrived verified by SHA-256 on both hosts,
/// so the chain at home is checked (`qemu-img check`) and its lowest copy
/// must back onto ENV's image of SB's point.
fn verify(
    run: &mut Run<'_, '_>,
    sb: &dyn Host,
    standby: &StandbyRecord,
    primary: &Environment,
    carried: &Carried,
) -> Result<Vec<FailbackVm>, FailoverError> {
    let mut vms = Vec::new();
    for domain in &standby.resources.domains {
        let vm = domain.vm.as_str();
        let mut disks = Vec::new();
        for ((_, disk), carry) in carried.iter().filter(|((v, _), _)| v == vm) {
            let (Some(lowest), Some(top)) = (carry.images.first(), carry.images.last()) else { continue };
            let (standby_top, home_top) = (carry.standby_top.clone(), top.to.clone());
            let same_host = crate::ops::transfer::same_host(sb, run.ctx.host);
            let step = if same_host { format!("compare {vm}/{disk}") } else { format!("check {vm}/{disk} at home") };
            run.step(&step, UndoAction::Nothing, |run| {
                let home = run.ctx.host.storage();
                let compared = if same_host {
                    home.same_content(&standby_top, &home_top)
                } else {
                    crate::ops::failover::carry::chain_sound(home, &home_top, &lowest.backing_path)
                };
                match compared {
                    Ok(true) if top.from == standby_top => Ok(()),
                    Ok(_) => Err(FailoverError::CompareFailed {
                        vm: vm.to_owned(),
                        disk: disk.clone(),
                        standby: standby_top.clone(),
                        home: home_top.clone(),
                    }),
                    Err(source) => Err(FailoverError::Carry {
                        vm: vm.to_owned(),
                        disk: disk.clone(),
                        step: "compare",
                        path: home_top.clone(),
                        source: Box::new(source),
                    }),
                }
            })?;
            disks.push(FailbackDisk {
                disk: disk.clone(),
                home_top,
                carried: carry.images.iter().map(|c| c.to.clone()).collect(),
                point: lowest.backing_path.clone(),
                bytes: carry.bytes,
                superseded: None,
            });
        }
        vms.push(FailbackVm {
            vm: vm.to_owned(),
            domain: primary.vms.get(vm).map(|v| v.domain.clone()).unwrap_or_else(|| domain.primary_domain.clone()),
            standby_domain: domain.domain.clone(),
            address: primary.vms.get(vm).map(|v| v.agent.address.clone()).unwrap_or_default(),
            disks,
        });
    }
    Ok(vms)
}
