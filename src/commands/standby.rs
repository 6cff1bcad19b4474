//! `envclone standby create|sync|list|destroy`: standby environments kept
//! current by autorestore. The work is in [`crate::ops::standby`]; this
//! file wires libvirt, the catalog and qemu-img, and prints the reports.
//! While SB serves its primary, `standby sync SB` is the home sync
//! ([`crate::ops::failover::sync_home`]), wired like a failover.

use chrono::Utc;

use super::session::Records;
use super::{load_config, Output};
use crate::catalog::{Catalog, FailoverMode};
use crate::cli::{GlobalArgs, StandbyCommand};
use crate::config::Config;
use crate::daemon::status::human_age;
use crate::exit::ExitCode;
use crate::ops::context::Event;
use crate::ops::failover::{self, HomeSyncReport};
use crate::ops::standby::{self, CreateReport, CreateRequest, DestroyReport, StandbySummary, SyncMode, SyncReport};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, command: StandbyCommand, out: &Output) -> Result<ExitCode> {
    let records = Records::with_config(load_config(global)?)?;
    if let StandbyCommand::List = command {
        let lines = standby::summaries(&records.catalog, None, Utc::now())?;
        out.report(&lines, |lines| list(lines));
        return Ok(ExitCode::Ok);
    }
    if let StandbyCommand::Sync(args) = &command {
        if let Some(env) = serving(&records.catalog, &args.name)? {
            // SB serves ENV: its sync runs towards ENV's storage, with
            // failover's wiring (the fence guard first).
            drop(records);
            return super::failover::with_tools(global, &env, super::failover::On::Environment, out, |ctx, tools| {
                let report = failover::sync_home(ctx, &args.name, tools).map_err(Error::operation("standby sync"))?;
                out.report(&report, home_synced);
                Ok(ExitCode::Ok)
            });
        }
    }
    // The operation runs on the primary's host; the standby's is found through the context's hosts.
    let primary = match &command {
        StandbyCommand::Create(args) => Some(args.environment.clone()),
        StandbyCommand::Sync(args) | StandbyCommand::Destroy(args) => primary_of(&records, &args.name)?,
        StandbyCommand::List => None,
    };
    let session = records.connect()?;
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = match &primary {
        Some(env) => session.context_for(env, &progress)?,
        None => session.context(&progress)?,
    };
    match command {
        StandbyCommand::Create(args) => {
            let request = CreateRequest {
                primary: args.environment.clone(),
                name: args.name.clone(),
                storage: args.storage.clone(),
                autorestore: args.no_autorestore.then_some(false),
                host: args.host.clone(),
            };
            let report = standby::create(&ctx, &request).map_err(Error::operation("standby create"))?;
            out.report(&report, created);
        }
        StandbyCommand::Sync(args) => {
            let report = standby::sync(&ctx, &args.name).map_err(Error::operation("standby sync"))?;
            out.report(&report, |report| synced(report, &session.config));
        }
        StandbyCommand::Destroy(args) => {
            let report = standby::destroy(&ctx, &args.name).map_err(Error::operation("standby destroy"))?;
            out.report(&report, destroyed);
        }
        StandbyCommand::List => unreachable!("listed above"),
    }
    Ok(ExitCode::Ok)
}

/// The primary of `standby`, as recorded or configured.
fn primary_of(records: &Records, standby: &str) -> Result<Option<String>> {
    if let Some(record) = records.catalog.standby_named(standby)? {
        return Ok(Some(record.primary));
    }
    Ok(records.config.standbys.get(standby).map(|configured| configured.primary.clone()))
}

/// The primary `standby` serves (a role switch in force), if it does.
fn serving(catalog: &Catalog, standby: &str) -> Result<Option<String>> {
    Ok(catalog.open_failover(standby)?.filter(|open| open.mode != FailoverMode::Test).map(|open| open.env))
}

fn home_synced(report: &HomeSyncReport) -> String {
    let (env, sb) = (&report.env, &report.standby);
    let point = match (&report.snapshot, report.lag_seconds) {
        (Some(snapshot), Some(age)) => format!("{snapshot} ({} old)", human_age(age)),
        (Some(snapshot), None) => snapshot.clone(),
        (None, _) => "none yet".to_owned(),
    };
    let mut text = if report.copied.is_empty() && report.dropped.is_empty() {
        format!(
            "{sb} serves {env} (epoch {}): nothing new to carry home; {} images home already\n",
            report.epoch, report.already_home
        )
    } else {
        let already = match report.already_home {
            0 => String::new(),
            n => format!("; {n} home already"),
        };
        format!(
            "carried {} images ({:.1} MiB) of {env} home to {env}'s storage while {sb} serves (epoch {}){already}\n",
            report.copied.len(),
            report.bytes as f64 / (1024.0 * 1024.0),
            report.epoch,
        )
    };
    text.push_str(&format!(
        "  home: snapshot {point}, {} in {env}'s storage; the rest moves at failback\n",
        bytes(report.bytes_home)
    ));
    for copy in &report.copied {
        text.push_str(&format!(
            "  {}/{} {} -> {} ({}{})\n",
            copy.vm,
            copy.disk,
            copy.from.display(),
            copy.path.display(),
            bytes(copy.bytes),
            if copy.verified { ", verified" } else { "" }
        ));
    }
    for path in &report.dropped {
        text.push_str(&format!("  dropped {} (merged away on {sb})\n", path.display()));
    }
    text
}

fn created(report: &CreateReport) -> String {
    if !report.created {
        return format!("standby {} of {} exists already: nothing done\n", report.standby, report.primary);
    }
    let mut text = format!(
        "standby {} of {} in {} (autorestore {})\n",
        report.standby,
        report.primary,
        report.storage.display(),
        if report.autorestore { "on" } else { "off" }
    );
    for network in &report.networks {
        text.push_str(&format!(
            "  network {} -> {} (bridge {}, isolated)\n",
            network.source, network.name, network.bridge
        ));
    }
    for domain in &report.domains {
        text.push_str(&format!(
            "  {} -> {} (defined, shut off; takes over {} on failover)\n",
            domain.primary_domain,
            domain.domain,
            domain.primary_macs.join(", ")
        ));
    }
    match (&report.sync, &report.sync_skipped) {
        (Some(sync), _) => text.push_str(&sync_lines(sync)),
        (None, Some(why)) => text.push_str(&format!("  not synced: {why}\n")),
        (None, None) => {}
    }
    text
}

fn synced(report: &SyncReport, _config: &Config) -> String {
    if report.mode == SyncMode::UpToDate {
        return format!(
            "standby {} is at snapshot {} of {} already: nothing moved\n",
            report.standby, report.snapshot, report.primary
        );
    }
    sync_lines(report)
}

fn sync_lines(report: &SyncReport) -> String {
    let mut text = format!(
        "standby {} brought to snapshot {} of {} ({}, {} in {:.1} s; was {})\n",
        report.standby,
        report.snapshot,
        report.primary,
        report.mode.as_str(),
        bytes(report.bytes),
        report.duration_ms as f64 / 1000.0,
        report.previous.as_deref().unwrap_or("empty")
    );
    for disk in &report.disks {
        text.push_str(&format!(
            "  {}/{} {} {} -> {}{}\n",
            disk.vm,
            disk.disk,
            disk.mode.as_str(),
            bytes(disk.bytes),
            disk.path.display(),
            disk.sha256.as_ref().map(|s| format!(" (sha256 {})", &s[..s.len().min(12)])).unwrap_or_default()
        ));
    }
    text
}

fn destroyed(report: &DestroyReport) -> String {
    if !report.existed {
        return format!("no standby named {}: nothing to destroy\n", report.standby);
    }
    let mut text = format!("standby {} destroyed in {:.1} s\n", report.standby, report.duration_ms as f64 / 1000.0);
    for domain in &report.domains {
        text.push_str(&format!("  domain {domain} removed\n"));
    }
    for network in &report.networks {
        text.push_str(&format!("  network {network} removed\n"));
    }
    for path in &report.deleted {
        text.push_str(&format!("  deleted {}\n", path.display()));
    }
    text
}

fn list(lines: &[StandbySummary]) -> String {
    if lines.is_empty() {
        return "no standbys\n".to_owned();
    }
    lines
        .iter()
        .map(|s| {
            let point = match (&s.lag.snapshot, s.lag.lag_seconds) {
                (Some(snapshot), Some(age)) => format!("at {snapshot}, lag {}", human_age(age)),
                _ => "not synced yet".to_owned(),
            };
            let behind = s.lag.behind.as_ref().map(|b| format!(", behind {b}")).unwrap_or_default();
            let merging = s
                .merging
                .as_ref()
                .map(|m| format!(", MERGE TO {m} INTERRUPTED (run envclone recover)"))
                .unwrap_or_default();
            let last = s
                .last_sync
                .as_ref()
                .map(|l| format!("; last transfer {} {}", l.mode, bytes(l.bytes)))
                .unwrap_or_default();
            format!(
                "{}  of {}: {point}{behind}{merging}; autorestore {}{last}: {}\n",
                s.name,
                s.primary,
                if s.autorestore { "on" } else { "off" },
                s.domains.join(", ")
            )
        })
        .collect()
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::failover::HomeCopied;

    fn home(copied: Vec<HomeCopied>, already_home: usize) -> HomeSyncReport {
        HomeSyncReport {
            env: "demo".into(),
            standby: "sb".into(),
            mode: "home".into(),
            epoch: 1,
            snapshot: Some("s2".into()),
            lag_seconds: Some(12),
            bytes: copied.iter().map(|c| c.bytes).sum(),
            copied,
            dropped: Vec::new(),
            already_home,
            bytes_home: 3 * 1024 * 1024,
            steps: Vec::new(),
            duration_ms: 300,
        }
    }

    #[test]
    fn a_home_sync_says_what_it_carried_home_while_the_standby_serves() {
        let copy = HomeCopied {
            vm: "db".into(),
            disk: "vda".into(),
            path: "/home/db/sb.vda.epoch-1.qcow2".into(),
            from: "/sb/db/sb.vda.epoch-1.qcow2".into(),
            bytes: 3 * 1024 * 1024,
            verified: true,
        };

        let text = home_synced(&home(vec![copy], 2));

        assert!(
            text.starts_with(
                "carried 1 images (3.0 MiB) of demo home to demo's storage while sb serves (epoch 1); 2 home already\n"
            ),
            "{text}"
        );
        assert!(text.contains("home: snapshot s2 (12s old), 3.0 MiB in demo's storage"), "{text}");
        assert!(text.contains("(3.0 MiB, verified)"), "{text}");
    }

    #[test]
    fn a_home_sync_with_nothing_new_says_so() {
        let text = home_synced(&home(Vec::new(), 4));

        assert!(
            text.starts_with("sb serves demo (epoch 1): nothing new to carry home; 4 images home already"),
            "{text}"
        );
    }
}
