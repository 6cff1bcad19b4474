//! What every takeover of a switch shares, planned or unplanned, with the
//! primary's addresses or SB's own: which takeover SB does
//! ([`network_mode`]), SB's domains on fresh epoch overlays, ENV's
//! environment as reached in SB's domains. The takeover with the primary's
//! MACs and networks is here ([`with_primary_addresses`]); the one with SB's
//! own addresses is `readdress.rs`, which builds on these parts; planned's
//! `take_over` picks one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::drill::{fresh_overlay, start_domains, wait_for_agents, Run};
use super::{undo, FailoverError};
use crate::catalog::{ImageFormat, StandbyDomain, StandbyRecord, UndoAction};
use crate::config::{AgentEndpoint, Config, Environment, StandbyNetwork};
use crate::hypervisor::{DomainDef, HvError, NetworkDef};
use crate::ops::context::OpContext;
use crate::ops::journal::Journaled as _;

/// One VM of SB after the takeover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverVm {
    pub vm: String,
    pub domain: String,
    /// The primary's domain, fenced.
    pub primary_domain: String,
    /// The primary's MACs it now has, interface by interface.
    pub macs: Vec<String>,
    /// The primary's networks it is now on.
    pub networks: Vec<String>,
    /// The primary's address its agent answers at.
    pub address: String,
    /// The overlays it runs on, one per disk on SB's synced copy:
    /// everything SB writes from the switch on is in them (what failback
    /// carries home), SB's copy stays its restored point; none: on SB's own
    /// disks (a switch recorded by an older envclone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<PathBuf>,
}

/// How `standby` takes over, checked against its primary's config: one
/// that readdresses needs the primary's `[readdress]` and `[rewrite]`.
/// Refused here, before anything is fenced.
pub(crate) fn network_mode(
    ctx: &OpContext<'_>,
    standby: &str,
    primary: &Environment,
    env: &str,
) -> Result<StandbyNetwork, FailoverError> {
    let mode = ctx.config.standbys.get(standby).map(|s| s.network).unwrap_or_default();
    if mode == StandbyNetwork::Readdress {
        let missing = |missing| FailoverError::ReaddressNotConfigured {
            env: env.to_owned(),
            standby: standby.to_owned(),
            missing,
        };
        if primary.readdress.is_none() {
            return Err(missing("readdress"));
        }
        if !primary.rewrite.as_ref().is_some_and(|r| !r.files.is_empty()) {
            return Err(missing("rewrite"));
        }
    }
    Ok(mode)
}

/// SB takes over with the primary's MACs and networks, on fresh epoch
/// overlays: each domain redefined, started, its agents awaited at the
/// primary's addresses (safe: the primary is fenced first).
pub(super) fn with_primary_addresses(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
    epoch: i64,
) -> Result<Vec<TakeoverVm>, FailoverError> {
    let ctx = run.ctx;
    let networks: std::collections::BTreeMap<String, String> =
        standby.resources.networks.iter().map(|n| (n.name.clone(), n.source.clone())).collect();
    let mut vms = Vec::new();
    for domain in &standby.resources.domains {
        let current = super::inspect(ctx, &domain.domain)?;
        let redefine = |e: HvError| FailoverError::Redefine { domain: domain.domain.clone(), source: Box::new(e) };
        let mut def = current.def.clone();
        let mut on = Vec::new();
        for (index, iface) in current.def.interfaces().iter().enumerate() {
            if let Some(mac) = domain.primary_macs.get(index).filter(|m| !m.is_empty()) {
                def.set_interface_mac(index, mac).map_err(redefine)?;
            }
            let network = iface.network.as_ref().and_then(|n| networks.get(n)).cloned();
            if let Some(network) = network {
                def.set_interface_network(index, &network).map_err(redefine)?;
                on.push(network);
            }
        }
        let overlays = epoch_overlays(run, standby, domain, epoch, &mut def)?;
        let what = format!(
            "take over {}'s identity on {}: {}",
            domain.primary_domain,
            domain.domain,
            domain.primary_macs.join(", ")
        );
        run.step(&what, undo::redefine(&current.def, ctx.host.name()), |run| {
            run.ctx.host.hypervisor().define_domain(&def).map(drop).map_err(redefine)
        })?;
        let address = primary.vms.get(&domain.vm).map(|v| v.agent.address.clone()).unwrap_or_default();
        vms.push(TakeoverVm {
            vm: domain.vm.clone(),
            domain: domain.domain.clone(),
            primary_domain: domain.primary_domain.clone(),
            macs: domain.primary_macs.clone(),
            networks: on,
            address,
            overlays,
        });
    }
    primary_networks_here(run, standby, vms.iter().flat_map(|vm| vm.networks.iter()))?;
    start_domains(run, vms.iter().map(|vm| vm.domain.as_str()))?;
    let environment = in_standby_domains(primary, &vms, reached_on(ctx.config, &standby.primary, ctx.host.name()));
    let what = format!("wait for {}'s agents at {}'s addresses", standby.name, standby.primary);
    wait_for_agents(run, &what, &environment)?;
    Ok(vms)
}

/// The primary's `networks` on SB's host, active: one missing there (SB
/// lives on another host than its primary) is defined from the definition
/// `standby create` recorded, one step each, undone by removing it.
fn primary_networks_here<'n>(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    networks: impl Iterator<Item = &'n String>,
) -> Result<(), FailoverError> {
    let mut seen = std::collections::BTreeSet::new();
    for network in networks.filter(|n| seen.insert(*n)) {
        let fail = |e: HvError| FailoverError::DefineNetwork { network: network.clone(), source: Box::new(e) };
        let hv = run.ctx.host.hypervisor();
        match hv.network(network) {
            Ok(found) if found.active => {}
            Ok(_) => run.step(&format!("start network {network}"), UndoAction::Nothing, |run| {
                run.ctx.host.hypervisor().start_network(network).map_err(fail)
            })?,
            Err(HvError::NoSuchNetwork { .. }) => {
                let Some(xml) = standby.resources.primary_networks.get(network) else { continue };
                let def = NetworkDef::parse(xml).map_err(fail)?;
                let what = format!("define {}'s network {network} on host {}", standby.primary, run.ctx.host.name());
                let undo = UndoAction::Custom {
                    kind: crate::ops::clone::undo::UNDO_REMOVE_NETWORK.to_owned(),
                    data: serde_json::json!({ "network": network }),
                };
                run.step(&what, undo, |run| {
                    run.ctx.host.hypervisor().define_network(&def).map_err(fail)?;
                    run.ctx.host.hypervisor().start_network(network).map_err(fail)
                })?;
            }
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

/// How an agent of ENV is reached once its VM runs on host `host`: an
/// endpoint entered through the namespace of ENV's host (its
/// `guest_netns`, a lab's) is entered through `host`'s instead. Routed
/// guest networks (no `guest_netns`) need nothing.
pub(crate) fn reached_on(config: &Config, env: &str, host: &str) -> impl Fn(&TakeoverVm, &mut AgentEndpoint) {
    let guest_netns = |host: &str| config.hosts.get(host).and_then(|h| h.guest_netns.clone());
    let (from, to) = (guest_netns(config.host_of(env)), guest_netns(host));
    move |_, agent| {
        if from.is_some() && agent.netns == from {
            agent.netns.clone_from(&to);
        }
    }
}

/// A fresh overlay per disk of `domain` on SB's synced copy for `epoch`
/// (one a rolled-back failover left is replaced), `def` pointed at them.
/// SB's copy stays its restored point; what SB writes is kept apart.
pub(super) fn epoch_overlays(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    domain: &StandbyDomain,
    epoch: i64,
    def: &mut DomainDef,
) -> Result<Vec<PathBuf>, FailoverError> {
    let mut overlays = Vec::new();
    for disk in standby.disks.iter().filter(|d| d.vm == domain.vm) {
        let overlay = epoch_overlay_path(standby, &domain.vm, &disk.disk, epoch);
        let step = format!("overlay {}/{} for epoch {epoch}", domain.vm, disk.disk);
        fresh_overlay(run, &step, UndoAction::DeleteFile { path: overlay.clone() }, disk, &overlay)?;
        def.set_disk_source(&disk.disk, &overlay, ImageFormat::Qcow2.as_str())
            .map_err(|e| FailoverError::Redefine { domain: domain.domain.clone(), source: Box::new(e) })?;
        overlays.push(overlay);
    }
    Ok(overlays)
}

/// Where SB's domain runs from the switch of `epoch` on, for `disk` of `vm`.
pub fn epoch_overlay_path(standby: &StandbyRecord, vm: &str, disk: &str, epoch: i64) -> PathBuf {
    standby.storage.join(vm).join(format!("{}.{disk}.epoch-{epoch}.qcow2", standby.name))
}

/// ENV as reached in SB: each of `vms` in its SB domain, its agent
/// endpoint ENV's as `endpoint` leaves it (another address, a namespace).
pub(super) fn in_standby_domains(
    primary: &Environment,
    vms: &[TakeoverVm],
    endpoint: impl Fn(&TakeoverVm, &mut AgentEndpoint),
) -> Environment {
    let mut environment = primary.clone();
    for vm in vms {
        if let Some(config) = environment.vms.get_mut(&vm.vm) {
            config.domain = vm.domain.clone();
            endpoint(vm, &mut config.agent);
        }
    }
    environment
}
