//! `envclone failback ENV [--standby SB]`: ENV back from the standby that
//! serves it. The work is in [`crate::ops::failover::failback`]; the wiring
//! (the fence guard first, libvirt, the catalog, qemu-img, the agents) is
//! `failover`'s, and this file prints the report.

use super::Output;
use crate::cli::{FailbackArgs, GlobalArgs};
use crate::exit::ExitCode;
use crate::ops::failover::{self, DrillRequest, FailbackAction, FailbackReport};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &FailbackArgs, out: &Output) -> Result<ExitCode> {
    super::failover::with_tools(global, &args.environment, super::failover::On::Environment, out, |ctx, tools| {
        let request = DrillRequest { env: args.environment.clone(), standby: args.standby.clone() };
        let report = failover::failback(ctx, &request, tools).map_err(Error::operation("failback"))?;
        out.report(&report, human);
        Ok(ExitCode::Ok)
    })
}

pub(super) fn human(report: &FailbackReport) -> String {
    let (env, sb) = (&report.env, &report.standby);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut text = match report.action {
        FailbackAction::AlreadyHome => {
            return format!("{env} is home, epoch {}: nothing to do (failed back from standby {sb})\n", report.epoch);
        }
        FailbackAction::FailedBack => format!(
            "{env} failed back from standby {sb}: {env} serves at its addresses again, epoch {} (was {})\n  downtime \
             {:.1} s (from {sb}'s stop until every agent of {env} answered); carried home {:.1} MiB ({:.1} MiB while \
             {sb} served, {:.1} MiB after it stopped; {:.1} MiB were home already, carried by the home sync)\n",
            report.epoch,
            report.previous_epoch,
            report.downtime_ms as f64 / 1000.0,
            mib(report.bytes_home),
            mib(report.bytes_while_serving),
            mib(report.bytes_after_stop),
            mib(report.bytes_home_before)
        ),
    };
    text.push_str(&super::failover::steps(&report.steps));
    for vm in &report.vms {
        text.push_str(&format!(
            "  {} at {} ({} shut off, its own identity back)\n",
            vm.domain, vm.address, vm.standby_domain
        ));
        for disk in &vm.disks {
            text.push_str(&format!("    {} -> {}\n", disk.disk, disk.home_top.display()));
            if let Some(old) = &disk.superseded {
                text.push_str(&format!("         kept: {} (its disk before the failback)\n", old.display()));
            }
        }
    }
    if !report.carried_snapshots.is_empty() {
        text.push_str(&format!("  snapshots carried home: {}\n", report.carried_snapshots.join(", ")));
    }
    text.push_str(&format!("  autostart of {env}'s domains: {}\n", report.autostart));
    text
}
