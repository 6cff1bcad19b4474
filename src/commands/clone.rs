//! `envclone clone ENV --name NEW ...`: a new, isolated environment from a
//! snapshot of ENV. The work is in [`crate::ops::clone`]; this file wires
//! libvirt, the catalog, the agents, qemu-img and `ip`, and prints the report.

use super::{load_config, Output};
use crate::catalog::Catalog;
use crate::cli::{CloneArgs, CloneDisks, CloneNetwork, CloneStart, GlobalArgs};
use crate::config::Environment;
use crate::exit::ExitCode;
use crate::hypervisor::LibvirtHypervisor;
use crate::ops::clone::{
    self, CloneReport, CloneRequest, DiskMode, IpCommand, NetworkMode, QemuImgConvert, StartMode, Tools,
};
use crate::ops::context::{Event, OpContext, SystemClock};
use crate::ops::restore::{GuestAgents, QemuImg, SshAgents};
use crate::ops::snapshot;
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &CloneArgs, out: &Output) -> Result<ExitCode> {
    let config = load_config(global)?;
    let env = config.environment(&args.environment)?;
    let uri = &config.controller.libvirt_uri;
    let hv = LibvirtHypervisor::connect(uri).map_err(Error::hypervisor(format!("connect to libvirt at {uri}")))?;
    let catalog = Catalog::open(&config.controller.state_dir)?;
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = OpContext { config: &config, hv: &hv, catalog: &catalog, progress: &progress, clock: &SystemClock };
    let request = CloneRequest {
        source: args.environment.clone(),
        name: args.name.clone(),
        from: args.from.clone(),
        disks: match args.disks {
            CloneDisks::Linked => DiskMode::Linked,
            CloneDisks::Full => DiskMode::Full,
        },
        start: match args.start {
            CloneStart::Resume => StartMode::Resume,
            CloneStart::Boot => StartMode::Boot,
            CloneStart::Off => StartMode::Off,
        },
        network: match args.network {
            CloneNetwork::Isolated => NetworkMode::Isolated,
            CloneNetwork::Readdress => NetworkMode::Readdress,
        },
    };
    let quiescer = snapshot::agent_quiescer(&ctx, env);
    let controller = config.controller.clone();
    let agents = move |env: &Environment| -> Box<dyn GuestAgents> { Box::new(SshAgents::new(&controller, env)) };
    let tools =
        Tools { quiescer: &quiescer, agents: &agents, files: &QemuImg, copier: &QemuImgConvert, net: &IpCommand };
    let report = clone::clone(&ctx, &request, tools).map_err(Error::clone_op("clone"))?;
    out.report(&report, human);
    Ok(ExitCode::Ok)
}

fn human(report: &CloneReport) -> String {
    let taken = if report.snapshot_taken { " (taken now)" } else { "" };
    let mut text = format!(
        "clone {} of {} from snapshot {}{taken} made in {:.1} s ({:?} disks, {:?} networks, start {:?})\n",
        report.name,
        report.source,
        report.snapshot,
        report.duration_ms as f64 / 1000.0,
        report.disks,
        report.network,
        report.start,
    )
    .to_lowercase();
    if let Some(netns) = &report.gateway_netns {
        text.push_str(&format!("  gateway namespace: {netns} (`envclone ssh {} VM` goes through it)\n", report.name));
    }
    for network in &report.networks {
        text.push_str(&format!(
            "  network {} -> {} (bridge {}, isolated{})\n",
            network.source,
            network.name,
            network.bridge,
            network.gateway.as_ref().map(|g| format!(", gateway {g}")).unwrap_or_default()
        ));
    }
    let width = report.vms.iter().map(|vm| vm.vm.len()).max().unwrap_or(0);
    for vm in &report.vms {
        text.push_str(&format!("  {:width$}  {} at {} (uuid {})\n", vm.vm, vm.domain, vm.address, vm.uuid));
        for disk in &vm.disks {
            text.push_str(&format!("  {:width$}    {} -> {}\n", "", disk.disk, disk.path.display()));
        }
    }
    text
}
