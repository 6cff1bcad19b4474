//! `envclone snapshot ENV [--memory] [--label L] [--quiesce POLICY] [--scheduled S]`: one
//! consistent point in time of every VM of the environment (of its active
//! side: the standby's domains while a standby serves it). The work is in
//! [`crate::ops::snapshot`]; this file wires libvirt, the catalog, the
//! agents and the progress lines, and prints the report. A manual snapshot
//! taken while a standby whose config sets `failback_on_manual_snapshot`
//! serves ENV then fails ENV back (both reports in one document; see
//! [`crate::ops::failover::on_snapshot`]).

use super::session::Session;
use super::Output;
use crate::cli::{GlobalArgs, SnapshotArgs};
use crate::exit::ExitCode;
use crate::ops::context::Event;
use crate::ops::failover::on_snapshot::{self, Snapshotted};
use crate::ops::failover::{self, DrillRequest};
use crate::ops::snapshot::{self, SnapshotReport, SnapshotRequest};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &SnapshotArgs, out: &Output) -> Result<ExitCode> {
    let session = Session::open(global)?;
    let (config, catalog) = (&session.config, &session.catalog);
    let env = config.environment(&args.environment)?;
    // An old primary that came back is fenced first; while a standby serves
    // ENV, the snapshot is of the standby's domains (the config above has
    // them as ENV's), recorded as ENV's.
    let switches = super::guard::check(config, catalog, Some(&args.environment), out)?;
    let sides = on_snapshot::sides(config, switches, &args.environment, args.scheduled.is_some());
    for switch in &sides.served {
        out.progress(&format!(
            "{} is served by standby {} (epoch {}): the snapshot is of {}'s domains",
            switch.env, switch.active, switch.epoch, switch.active
        ));
    }
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = session.context_for(&args.environment, &progress)?;
    let schedule = match &args.scheduled {
        Some(name) => match config.schedules.get(name) {
            Some(schedule) if schedule.environment == args.environment => Some(schedule),
            _ => {
                return Err(Error::Usage(format!(
                    "no schedule named {name:?} for environment '{}' in the config",
                    args.environment
                )))
            }
        },
        None => None,
    };
    let request = SnapshotRequest {
        env: args.environment.clone(),
        label: args.label.clone(),
        memory: args.memory || schedule.is_some_and(|s| s.memory),
        quiesce: args.quiesce.map(Into::into),
        schedule: args.scheduled.clone(),
    };
    let quiescer = snapshot::agent_quiescer(&ctx, env);
    // The failback works on ENV's own config (no clones, no active side),
    // wired as `envclone failback` wires it.
    let failback = |request: &DrillRequest| {
        super::failover::with_tools(global, &args.environment, super::failover::On::Environment, out, |ctx, tools| {
            failover::failback(ctx, request, tools).map_err(Error::operation("failback triggered by the snapshot"))
        })
    };
    match on_snapshot::take(&ctx, &request, &quiescer, sides.failback_from.as_deref(), failback)? {
        Snapshotted::Taken(report) => out.report(&report, human),
        Snapshotted::FailedBack(both) => {
            out.report(&both, |both| human(&both.snapshot) + &super::failback::human(&both.failback))
        }
    }
    Ok(ExitCode::Ok)
}

fn human(report: &SnapshotReport) -> String {
    let label = report.label.as_ref().map(|l| format!(" ({l})")).unwrap_or_default();
    let mut text = format!(
        "snapshot {}/{}{label} taken in {:.1} s\n",
        report.env,
        report.name,
        report.duration_ms as f64 / 1000.0
    );
    match report.freeze_window_ms {
        Some(window) => text.push_str(&format!("  freeze window: {window} ms (limit {} ms)\n", report.freeze_limit_ms)),
        None => text.push_str("  freeze window: none (nothing frozen)\n"),
    }
    let width = report.vms.iter().map(|vm| vm.vm.len()).max().unwrap_or(0);
    for vm in &report.vms {
        let memory = if vm.memory_image.is_some() { " + memory" } else { "" };
        let reason = vm.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
        text.push_str(&format!("  {:width$}  {}{memory}{reason}\n", vm.vm, vm.consistency));
    }
    text
}
