//! `envclone clone ENV --name NEW ...`: a new, isolated environment from a
//! snapshot of ENV. The work is in [`crate::ops::clone`]; this file wires
//! libvirt, the catalog, the agents, qemu-img and `ip`, and prints the report.

use super::session::Session;
use super::Output;
use crate::cli::{CloneArgs, CloneDisks, CloneNetwork, CloneStart, GlobalArgs};
use crate::config::Environment;
use crate::exit::ExitCode;
use crate::guest::agents::{CloneAgents, SshAgents};
use crate::ops::clone::{self, CloneReport, CloneRequest, DiskMode, NetworkMode, StartMode, Tools};
use crate::ops::context::Event;
use crate::ops::snapshot;
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &CloneArgs, out: &Output) -> Result<ExitCode> {
    let session = Session::open(global)?;
    let (config, _catalog) = (&session.config, &session.catalog);
    let env = config.environment(&args.environment)?;
    let progress = |event: &Event| out.event(event);
    let ctx = session.context_for(&args.environment, &progress)?;
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
        new_host_keys: args.new_host_keys,
    };
    let quiescer = snapshot::agent_quiescer(&ctx, env);
    let controller = config.controller.clone();
    let agents = move |env: &Environment| -> Box<dyn CloneAgents> { Box::new(SshAgents::new(&controller, env)) };
    let tools = Tools { quiescer: &quiescer, agents: &agents };
    let report = clone::clone(&ctx, &request, tools).map_err(Error::operation("clone"))?;
    let libvirt_netns = config.controller.libvirt_netns.clone();
    out.report(&report, |report| human(report, libvirt_netns.as_deref()));
    Ok(ExitCode::Ok)
}

/// The report, then how to reach the clone: through its gateway namespace
/// (isolated), or at its own addresses from where libvirtd's bridges are
/// (`libvirt_netns`, the host's namespace when unset: readdressed).
fn human(report: &CloneReport, libvirt_netns: Option<&str>) -> String {
    let name = &report.name;
    let taken = if report.snapshot_taken { " (taken now)" } else { "" };
    let mut text = format!(
        "clone {name} of {} from snapshot {}{taken}: {} disks, {} networks, start {}\n",
        report.source,
        report.snapshot,
        kebab(&report.disks),
        kebab(&report.network),
        kebab(&report.start),
    );
    // What it cost: the source's freeze window (its one interruption) and the clone's time.
    let freeze = match (report.snapshot_taken, report.source_freeze_window_ms) {
        (true, Some(ms)) => format!("{} frozen {ms} ms for the snapshot, then ran on", report.source),
        (true, None) => format!("{} not frozen (nothing to quiesce)", report.source),
        (false, _) => format!("{} not touched (an existing snapshot)", report.source),
    };
    text.push_str(&format!("  cost: {freeze}; clone made in {}\n", seconds(report.duration_ms)));
    for copy in &report.full_copies {
        text.push_str(&format!(
            "  copied {}/{} in full: {} in {} ({} MiB/s)\n",
            copy.vm,
            copy.disk,
            bytesize::ByteSize::b(copy.bytes).display().iec(),
            seconds(copy.duration_ms),
            copy.mib_per_second
        ));
    }
    for network in &report.networks {
        text.push_str(&format!(
            "  network {} -> {} (bridge {}, {}{})\n",
            network.source,
            network.name,
            network.bridge,
            if report.network == NetworkMode::Isolated { "isolated" } else { "its own subnet" },
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
    if report.start == StartMode::Off {
        let domains: Vec<&str> = report.vms.iter().map(|vm| vm.domain.as_str()).collect();
        text.push_str(&format!("its domains are defined and shut off: {}\n", domains.join(", ")));
    }
    let (how, prefix) = match (&report.gateway_netns, libvirt_netns) {
        (Some(netns), _) => (format!("only through its gateway namespace {netns}"), format!("ip netns exec {netns} ")),
        (None, Some(netns)) => (format!("from libvirtd's namespace {netns}"), format!("ip netns exec {netns} ")),
        (None, None) => ("from this host".to_owned(), String::new()),
    };
    text.push_str(&format!("reach it ({how}):\n"));
    for vm in &report.vms {
        text.push_str(&format!("  envclone ssh {name} {:width$}   # {} at {}\n", vm.vm, vm.vm, vm.address));
    }
    // A service of the VM named `web` if there is one, else of the first.
    if let Some(vm) = report.vms.iter().find(|vm| vm.vm == "web").or(report.vms.first()) {
        text.push_str(&format!("  {prefix}curl http://{}/\n", vm.address));
    }
    text.push_str(&format!("remove it: envclone destroy {name}\n"));
    text
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The mode as the command line spells it.
fn kebab(mode: &impl serde::Serialize) -> String {
    serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
