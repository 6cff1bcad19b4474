//! `envclone restore ENV SNAP [--memory] [--discard]`: puts the environment
//! back, in place, to a snapshot. The work is in [`crate::ops::restore`];
//! this file wires libvirt, the catalog, the agents, qemu-img and the
//! progress lines, and prints the report.

use super::session::Session;
use super::Output;
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::exit::ExitCode;
use crate::guest::agents::SshAgents;
use crate::ops::context::Event;
use crate::ops::restore::{self, RestoreReport, RestoreRequest, StartKind, Tools};
use crate::ops::snapshot;
use crate::Result;

pub fn run(global: &GlobalArgs, args: &RestoreArgs, out: &Output) -> Result<ExitCode> {
    let session = Session::open(global)?;
    let (config, _catalog) = (&session.config, &session.catalog);
    let env = config.environment(&args.environment)?;
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = session.context_for(&args.environment, &progress)?;
    let request = RestoreRequest {
        env: args.environment.clone(),
        snapshot: args.snapshot.clone(),
        memory: args.memory,
        discard: args.discard,
    };
    let quiescer = snapshot::agent_quiescer(&ctx, env);
    let agents = SshAgents::new(&config.controller, env);
    let tools = Tools { quiescer: &quiescer, agents: &agents };
    let report = restore::restore(&ctx, &request, tools)?;
    out.report(&report, human);
    Ok(ExitCode::Ok)
}

fn human(report: &RestoreReport) -> String {
    let label = report.label.as_ref().map(|l| format!(" ({l})")).unwrap_or_default();
    let how = if report.memory { "resumed from memory" } else { "booted" };
    let mut text = format!(
        "restored {} to snapshot {}{label} in {:.1} s ({how})\n",
        report.env,
        report.snapshot,
        report.duration_ms as f64 / 1000.0
    );
    match &report.undo_snapshot {
        Some(undo) => text.push_str(&format!(
            "  undo snapshot: {undo} holds the state before the restore (`envclone restore {} {undo}` goes back)\n",
            report.env
        )),
        None => text.push_str("  no undo snapshot (--discard)\n"),
    }
    let width = report.vms.iter().map(|vm| vm.vm.len()).max().unwrap_or(0);
    for vm in &report.vms {
        let start = match vm.start {
            StartKind::Memory => "memory",
            StartKind::Boot => "boot",
        };
        let clock = vm.clock_step_ms.map(|ms| format!(", clock stepped {ms} ms")).unwrap_or_default();
        let undo = match (vm.undo_consistency, &vm.undo_reason) {
            (Some(c), Some(reason)) => format!(", undo {c}: {reason}"),
            (Some(c), None) => format!(", undo {c}"),
            (None, _) => String::new(),
        };
        text.push_str(&format!("  {:width$}  {start}{clock}{undo}\n", vm.vm));
        for disk in &vm.disks {
            text.push_str(&format!("  {:width$}    {} -> {}\n", "", disk.disk, disk.overlay.display()));
        }
    }
    for path in &report.discarded {
        text.push_str(&format!("  deleted {}\n", path.display()));
    }
    for kept in &report.kept {
        text.push_str(&format!("  kept {}: {}\n", kept.path.display(), kept.reason));
    }
    text
}
