//! Failback steps 7 to 10, the role switch: the epoch marked failing
//! back, the images carried home recorded at home, ENV's domains given
//! their disks at home, unfenced, started and awaited (downtime ends), then
//! SB's domains given their own identity back.

use std::collections::{BTreeMap, BTreeSet};

use super::stopped::Stopped;
use super::Done;
use crate::catalog::{DependentKind, FailoverRecord, FailoverState, ImageFormat, ImageMove, StandbyRecord};
use crate::config::Environment;
use crate::host::Host;
use crate::hypervisor::HvError;
use crate::ops::failover::carry::CarryImage;
use crate::ops::failover::drill::{wait_for_agents, Run};
use crate::ops::failover::{undo, FailoverError};
use crate::ops::journal::Journaled as _;

/// Steps 7 to 10 of the module documentation.
pub(super) fn switch(
    run: &mut Run<'_, '_>,
    sb: &dyn Host,
    standby: &StandbyRecord,
    primary: &Environment,
    switch: &FailoverRecord,
    stopped: Stopped,
) -> Result<Done, FailoverError> {
    let ctx = run.ctx;
    let env = standby.primary.as_str();
    let Stopped { snapshots, carried, bytes_while_serving, bytes_after_stop, at: stopped, mut vms } = stopped;
    run.step(&format!("mark epoch {} failing back", switch.epoch.unwrap_or(0)), undo::unmark(switch.id), |run| {
        run.ctx
            .catalog
            .set_switch_state(switch.id, FailoverState::Active, FailoverState::FailingBack)
            .map(drop)
            .map_err(FailoverError::from)
    })?;
    let moves: Vec<ImageMove> = carried.values().flat_map(|d| d.images.iter().map(CarryImage::moved)).collect();
    // The undo needs what each image was: read before the step records it.
    let mut previous = Vec::with_capacity(moves.len());
    let mut carried_snapshots = BTreeSet::new();
    for moved in &moves {
        let image = ctx.catalog.image(moved.id)?;
        for dependent in ctx.catalog.dependents_of(image.id)? {
            if dependent.kind == DependentKind::Snapshot {
                let name = dependent.name.strip_prefix(&format!("{env}/")).unwrap_or(&dependent.name);
                carried_snapshots.insert(name.to_owned());
            }
        }
        previous.push(ImageMove { id: image.id, path: image.path, kind: image.kind, backing: image.backing });
    }
    run.step(&format!("record the {} images carried home", moves.len()), undo::unmove(&previous), |run| {
        run.ctx.catalog.move_images(&moves).map(drop).map_err(FailoverError::from)
    })?;

    let mut autostart = BTreeMap::new();
    for vm in &mut vms {
        let found = crate::ops::failover::inspect(ctx, &vm.domain)?;
        let mut def = found.def.clone();
        let redefine = |e: HvError| FailoverError::Redefine { domain: vm.domain.clone(), source: Box::new(e) };
        for disk in &mut vm.disks {
            disk.superseded = found.def.disks().into_iter().find(|d| d.target == disk.disk).and_then(|d| d.source);
            def.set_disk_source(&disk.disk, &disk.home_top, ImageFormat::Qcow2.as_str()).map_err(redefine)?;
        }
        autostart.insert(vm.domain.clone(), found.def.fence_stamp().and_then(|stamp| stamp.autostart));
        def.clear_fence_stamp();
        run.step(
            &format!("give {} its disks at home, unfenced", vm.domain),
            undo::redefine(&found.def, ctx.host.name()),
            |run| run.ctx.host.hypervisor().define_domain(&def).map(drop).map_err(redefine),
        )?;
    }
    // The start gate withholds ENV's lease at home while its switch is in
    // force: ENV's domains start under one granted now (their stamps gone).
    let home = ctx.host.name();
    crate::host::gate::grant(ctx.config, home, env).map_err(|source| FailoverError::StartGate {
        env: env.to_owned(),
        host: home.to_owned(),
        source: Box::new(source),
    })?;
    crate::ops::failover::drill::start_domains(run, vms.iter().map(|vm| vm.domain.as_str()))?;
    wait_for_agents(run, &format!("wait for {env}'s agents at its addresses"), primary)?;
    // SB served at its own addresses: ENV's guests came home with SB's
    // host names and connection strings, and serve only once they are theirs.
    let readdressed = super::switch_report(switch)?.readdressed;
    if let Some(readdressed) = &readdressed {
        crate::ops::failover::readdress::give_back(run, primary, readdressed)?;
    }
    let downtime = stopped.elapsed();

    own_identity(run, sb, standby, readdressed.as_ref())?;
    Ok(Done {
        snapshots,
        carried_snapshots: carried_snapshots.into_iter().collect(),
        bytes_home_before: carried.values().map(|d| d.home_before).sum(),
        carried: carried.into_values().flat_map(|d| d.images).collect(),
        bytes_while_serving,
        bytes_after_stop,
        downtime,
        vms,
        readdressed,
        autostart,
    })
}

/// Step 10: each SB domain back to its own MACs, isolated networks and
/// synced copy, shut off as it waited before the switch.
fn own_identity(
    run: &mut Run<'_, '_>,
    sb: &dyn Host,
    standby: &StandbyRecord,
    readdressed: Option<&crate::ops::failover::Readdressed>,
) -> Result<(), FailoverError> {
    let ctx = crate::ops::context::OpContext { host: sb, ..*run.ctx };
    // The switch put SB's interfaces on the primary's networks, or on its
    // served ones: back on SB's copies.
    let mut networks: BTreeMap<String, String> =
        standby.resources.networks.iter().map(|n| (n.source.clone(), n.name.clone())).collect();
    for served in readdressed.map(|r| r.networks.as_slice()).unwrap_or_default() {
        if let Some(isolated) = networks.get(&served.source).cloned() {
            networks.insert(served.name.clone(), isolated);
        }
    }
    for domain in &standby.resources.domains {
        let current = crate::ops::failover::inspect(&ctx, &domain.domain)?;
        let redefine = |e: HvError| FailoverError::Redefine { domain: domain.domain.clone(), source: Box::new(e) };
        let mut def = current.def.clone();
        for (index, iface) in current.def.interfaces().iter().enumerate() {
            if let Some(mac) = domain.macs.get(index).filter(|m| !m.is_empty()) {
                def.set_interface_mac(index, mac).map_err(redefine)?;
            }
            if let Some(network) = iface.network.as_ref().and_then(|n| networks.get(n)) {
                def.set_interface_network(index, network).map_err(redefine)?;
            }
        }
        for disk in standby.disks.iter().filter(|d| d.vm == domain.vm) {
            def.set_disk_source(&disk.disk, &disk.path, ImageFormat::Qcow2.as_str()).map_err(redefine)?;
        }
        let what = format!("give {} its own identity back: {}", domain.domain, domain.macs.join(", "));
        run.step(&what, undo::redefine(&current.def, sb.name()), |_| {
            sb.hypervisor().define_domain(&def).map(drop).map_err(redefine)
        })?;
    }
    Ok(())
}
