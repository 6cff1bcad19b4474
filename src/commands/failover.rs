//! `envclone failover ENV [--force] [--primary-uri URI]` (unplanned),
//! `--planned`, and `--test [--end]` (a DR drill of ENV's standby). The
//! work is in [`crate::ops::failover`]; this file wires libvirt (the
//! primary's, with a deadline), the catalog, qemu-img, `ip` and the agents,
//! runs the fence guard first, and prints the report.

use super::session::Session;
use super::{load_config, Output};
use crate::catalog::FailoverMode;
use crate::cli::{FailoverArgs, GlobalArgs};
use crate::config::Environment;
use crate::exit::ExitCode;
use crate::guest::agents::{CloneAgents, SshAgents};
use crate::ops::context::{Event, OpContext};
use crate::ops::failover::{
    self, DrillAction, DrillReport, DrillRequest, PrimaryHost, StepTime, SwitchAction, SwitchReport, Tools, Unplanned,
};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &FailoverArgs, out: &Output) -> Result<ExitCode> {
    // A failover changes the standby's host; the primary's is reached (or
    // found gone) on its own.
    let on = On::Standby(args.standby.as_deref());
    with_tools(global, &args.environment, on, out, |ctx, tools| {
        let request = DrillRequest { env: args.environment.clone(), standby: args.standby.clone() };
        if args.planned {
            let report = failover::planned(ctx, &request, tools).map_err(Error::operation("failover --planned"))?;
            out.report(&report, switched);
            return Ok(ExitCode::Ok);
        }
        if !args.test {
            // The primary's libvirt: the controller's connection unless ENV
            // lives on another host; one that does not answer is no reason
            // to wait (the fence is recorded unconfirmed).
            let config = ctx.config;
            let uri = config.libvirt_uri_of(ctx.host.name()).unwrap_or(&config.controller.libvirt_uri);
            let primary_uri =
                args.primary_uri.as_deref().or_else(|| config.libvirt_uri_of(config.host_of(&args.environment)));
            let elsewhere = primary_uri.filter(|u| *u != uri);
            let connection =
                elsewhere.map(|other| super::guard::connect_within(other, super::guard::PRIMARY_CONNECT_WITHIN));
            let host =
                connection.as_ref().map_or(PrimaryHost::Answers(ctx.host.hypervisor()), super::guard::Connection::host);
            let how = Unplanned { force: args.force, host, primary_uri: elsewhere };
            let report = failover::unplanned(ctx, &request, how, tools).map_err(Error::operation("failover"))?;
            out.report(&report, switched);
            return Ok(ExitCode::Ok);
        }
        let report = if args.end {
            failover::end_drill(ctx, &request, tools).map_err(Error::operation("failover --test --end"))?
        } else {
            failover::start_drill(ctx, &request, tools).map_err(Error::operation("failover --test"))?
        };
        out.report(&report, human);
        Ok(ExitCode::Ok)
    })
}

/// What `failover` and `failback` both wire before their work: the config,
/// the fence guard (an old primary that came back is fenced before
/// anything else), libvirt, the catalog, qemu-img, `ip` and the agents
/// (of the side that serves ENV: the primary's, or while a standby serves
/// it, the standby's, at the primary's addresses or its own).
pub(super) fn with_tools<T>(
    global: &GlobalArgs,
    env: &str,
    on: On<'_>,
    out: &Output,
    work: impl FnOnce(&OpContext<'_>, Tools<'_>) -> Result<T>,
) -> Result<T> {
    let session = Session::with_config(load_config(global)?)?;
    let (config, catalog) = (&session.config, &session.catalog);
    let primary = config.environment(env)?.clone();
    super::guard::check(config, catalog, Some(env), out)?;
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = match on.standby_host(catalog, env)? {
        Some(host) => session.context_on(&host, &progress)?,
        None => session.context_for(env, &progress)?,
    };
    let controller = config.controller.clone();
    let agents = move |env: &Environment| -> Box<dyn CloneAgents> { Box::new(SshAgents::new(&controller, env)) };
    let serving = failover::active_environment(catalog, env)?.map_or(primary, |(active, _)| active);
    let quiescer = crate::ops::snapshot::agent_quiescer(&ctx, &serving);
    let tools = Tools { agents: &agents, quiescer: &quiescer };
    work(&ctx, tools)
}

/// Which host an operation of `with_tools` runs on.
#[derive(Debug, Clone, Copy)]
pub(super) enum On<'a> {
    /// ENV's (the active side's, while a standby serves it).
    Environment,
    /// The standby's that takes over: the one named, else ENV's only one.
    Standby(Option<&'a str>),
}

impl On<'_> {
    /// The standby's host, when the operation runs there.
    fn standby_host(self, catalog: &crate::catalog::Catalog, env: &str) -> Result<Option<String>> {
        let On::Standby(named) = self else { return Ok(None) };
        let standbys = catalog.standbys(Some(env))?;
        let standby = match named {
            Some(name) => standbys.into_iter().find(|s| s.name == name),
            None if standbys.len() == 1 => standbys.into_iter().next(),
            // Several and none named: the operation refuses, naming them.
            None => None,
        };
        Ok(standby.map(|s| s.host))
    }
}

fn human(report: &DrillReport) -> String {
    let (env, sb) = (&report.env, &report.standby);
    let mut text = match report.action {
        DrillAction::NotRunning => return format!("no drill of {env} on standby {sb} runs: nothing to end\n"),
        DrillAction::Started | DrillAction::AlreadyRunning => {
            let already = if report.action == DrillAction::AlreadyRunning { " (it ran already)" } else { "" };
            format!(
                "DR drill of {env}{already}: standby {sb} runs from snapshot {} in its isolated networks; {env} \
                 untouched\n  RPO {} s (the age of the restored point), RTO {:.1} s (until every agent answered)\n",
                report.snapshot.as_deref().unwrap_or("?"),
                report.rpo_seconds.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                report.rto_ms.unwrap_or(0) as f64 / 1000.0
            )
        }
        DrillAction::Ended => {
            format!("DR drill of {env} ended: standby {sb} is shut off on its own disks, as before the drill\n")
        }
    };
    text.push_str(&steps(&report.steps));
    if report.action != DrillAction::Ended {
        if let Some(netns) = &report.gateway_netns {
            text.push_str(&format!("reach it (only through its gateway namespace {netns}):\n"));
            for vm in &report.vms {
                text.push_str(&format!("  envclone ssh {sb} {}    # {} at {}\n", vm.vm, vm.domain, vm.address));
            }
        }
        text.push_str(&format!("end it: envclone failover {env} --test --end\n"));
    }
    text
}

pub(super) fn steps(steps: &[StepTime]) -> String {
    steps
        .iter()
        .map(|step| {
            format!(
                "  +{:>6.1} s  {:<56} {:>6} ms{}\n",
                step.at_ms as f64 / 1000.0,
                step.name,
                step.took_ms,
                if step.ok { "" } else { "  FAILED" }
            )
        })
        .collect()
}

fn switched(report: &SwitchReport) -> String {
    let (env, sb) = (&report.env, &report.standby);
    let at = match report.readdressed {
        Some(_) => "its own addresses".to_owned(),
        None => format!("{env}'s addresses"),
    };
    let mut text = match report.action {
        SwitchAction::AlreadyFailedOver => {
            format!("{env} failed over to standby {sb} already (epoch {}): nothing done\n", report.epoch)
        }
        SwitchAction::FailedOver if report.mode == FailoverMode::Planned => format!(
            "{env} failed over to standby {sb} (planned, epoch {}): {sb} serves at {at}, {} fenced\n  \
             RPO {} s (final snapshot {}; {env} ran on {} ms after it before it was fenced), RTO {:.1} s\n",
            report.epoch,
            report.fenced.join(", "),
            report.rpo_seconds,
            report.snapshot,
            report.unprotected_ms,
            report.rto_ms as f64 / 1000.0
        ),
        SwitchAction::FailedOver => format!(
            "{env} failed over to standby {sb} (unplanned, epoch {}): {sb} serves at {at} from snapshot \
             {}\n  RPO {} s (the age of that point: what {env} wrote after it is not carried over), RTO {:.1} s\n",
            report.epoch,
            report.snapshot,
            report.rpo_seconds,
            report.rto_ms as f64 / 1000.0
        ),
    };
    for fence in &report.fence {
        let what = match fence.fence {
            crate::catalog::FenceKind::FencedUnconfirmed => {
                "FENCED-UNCONFIRMED (envclone fences it when its host \
                                                             answers again)"
            }
            _ => "fenced: stopped, autostart off, epoch stamped",
        };
        text.push_str(&format!(
            "  {} {what}{}\n",
            fence.domain,
            fence.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
        ));
    }
    if report.action == SwitchAction::FailedOver {
        text.push_str(&steps(&report.steps));
        for vm in &report.vms {
            text.push_str(&format!(
                "  {} -> {} at {} ({})\n",
                vm.primary_domain,
                vm.domain,
                vm.address,
                vm.macs.join(", ")
            ));
        }
        if let Some(readdressed) = &report.readdressed {
            let served: Vec<String> = readdressed
                .vms
                .iter()
                .map(|vm| format!("{} {} ({}, was {})", vm.vm, vm.address, vm.hostname, vm.primary_address))
                .collect();
            text.push_str(&format!(
                "  point {env}'s clients at {sb}'s own addresses (DNS, load balancer): {}\n",
                served.join(", ")
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_serving_at_its_own_addresses_is_said_to_and_its_addresses_listed() {
        let report: SwitchReport = serde_json::from_value(serde_json::json!({
            "env": "demo", "standby": "sb", "mode": "planned", "action": "failed-over", "epoch": 1,
            "snapshot": "s1", "rpo_seconds": 0, "unprotected_ms": 40, "rto_ms": 30000, "fenced": ["demo-web"],
            "vms": [{ "vm": "web", "domain": "sb-web", "primary_domain": "demo-web", "macs": ["52:54:00:00:00:02"],
                      "networks": ["sb-s-demo-net"], "address": "10.90.0.11" }],
            "readdressed": { "networks": [], "map": {}, "primary_subnets": ["10.77.1.0/24"],
                "vms": [{ "vm": "web", "address": "10.90.0.11/24", "hostname": "sb-web", "gateway": "10.90.0.1",
                          "primary_address": "10.77.1.11", "primary_hostname": "web" }] },
            "started_at": "2026-12-07T02:00:00Z", "steps": [], "duration_ms": 30000
        }))
        .unwrap();

        let text = switched(&report);

        assert!(text.contains("sb serves at its own addresses, demo-web fenced"), "{text}");
        assert!(text.contains("point demo's clients at sb's own addresses"), "{text}");
        assert!(text.contains("web 10.90.0.11/24 (sb-web, was 10.77.1.11)"), "{text}");
        let takeover = SwitchReport { readdressed: None, ..report };
        assert!(switched(&takeover).contains("sb serves at demo's addresses"));
    }
}
