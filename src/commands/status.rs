//! `envclone status [ENV] [--json]`: each environment's last snapshot, its
//! age and consistency, and each schedule's next and last run and counters
//! and each standby's restored point and lag (see [`crate::daemon::status`]);
//! and, for each environment a standby serves, the active side, the epoch,
//! the primary's fence and every return of an old primary, after running
//! the fence guard (see [`crate::ops::failover::fence`]), and the way home:
//! the newest snapshot all carried home by the home sync, its age (the lag
//! of the way home) and the bytes carried; and every operation left
//! interrupted that touches the environments shown. Meanwhile it renews
//! the start gate's leases on the hosts of `[hosts]` (see
//! `commands::gate`): never for an environment that is failed over.

use chrono::{DateTime, Utc};

use super::session::Records;
use super::{load_config, Output};
use crate::catalog::{FailoverState, FenceEvent, Operation};
use crate::cli::{GlobalArgs, StatusArgs};
use crate::daemon::status::{self, human_age, EnvironmentStatus, StatusReport};
use crate::exit::ExitCode;
use crate::ops::failover::SwitchStatus;
use crate::ops::standby::StandbySummary;
use crate::Result;

pub fn run(global: &GlobalArgs, args: &StatusArgs, out: &Output) -> Result<ExitCode> {
    let config = load_config(global)?;
    if let Some(env) = &args.environment {
        config.environment(env)?;
    }
    let Records { config, catalog } = Records::with_config(config)?;
    let failed_over = super::gate::failed_over(&config, &catalog)?;
    let lease_hosts = lease_hosts(&config, args.environment.as_deref());
    // The guard first: an old primary that came back is fenced again, and
    // the report says so. The start gate's leases are renewed meanwhile,
    // on a thread of their own: a host that does not answer holds neither.
    let (failovers, leases) = std::thread::scope(|scope| {
        let renewal = scope.spawn(|| super::gate::renew_for_status(&config, &failed_over, &lease_hosts, out));
        let failovers = super::guard::check(&config, &catalog, args.environment.as_deref(), out);
        (failovers, renewal.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let mut report = status::build(&config, &catalog, Utc::now(), args.environment.as_deref())?;
    report.failovers = failovers?;
    report.leases = leases;
    out.report(&report, human);
    Ok(ExitCode::Ok)
}

/// The hosts whose start gate leases `status` renews: every host of
/// `[hosts]`, or only `env`'s.
fn lease_hosts(config: &crate::config::Config, env: Option<&str>) -> Vec<String> {
    match env {
        Some(env) => {
            config.hosts.get_key_value(config.host_of(env)).map(|(host, _)| host.clone()).into_iter().collect()
        }
        None => config.hosts.keys().cloned().collect(),
    }
}

fn human(report: &StatusReport) -> String {
    // Problems gather from every section and print together at the end, in
    // section order, so they stand out below the tables.
    let mut errors = Vec::new();
    let mut text = environments_table(&report.environments);
    if let Some(schedules) = schedules_table(&report.environments, &mut errors) {
        text.push('\n');
        text.push_str(&schedules);
    }
    if !report.standbys.is_empty() {
        text.push('\n');
        text.push_str(&standbys_table(&report.standbys, &mut errors));
    }
    if !report.failovers.is_empty() {
        text.push('\n');
        text.push_str(&failovers_table(&report.failovers, &mut errors));
    }
    if !report.interrupted.is_empty() {
        text.push('\n');
        text.push_str(&interrupted_table(&report.interrupted, &mut errors));
    }
    if report.leases.iter().any(|host| host.installed || host.error.is_some()) {
        text.push('\n');
        text.push_str(&leases_table(&report.leases, &mut errors));
    }
    if !errors.is_empty() {
        text.push('\n');
        for error in errors {
            text.push_str(&error);
            text.push('\n');
        }
    }
    text
}

fn environments_table(environments: &[EnvironmentStatus]) -> String {
    let mut rows = vec![row(&["ENVIRONMENT", "LAST SNAPSHOT", "AGE", "CONSISTENCY", "SNAPSHOTS", "FAILURES"])];
    for env in environments {
        let (name, age, consistency) = match &env.last_snapshot {
            Some(s) => (s.name.clone(), human_age(s.age_seconds), s.consistency.clone()),
            None => ("-".into(), "-".into(), "-".into()),
        };
        rows.push(vec![env.name.clone(), name, age, consistency, env.snapshots.to_string(), env.failures.to_string()]);
    }
    table(&rows)
}

/// `None` when no environment shown has a schedule: the table is left out
/// rather than printed as a lone header.
fn schedules_table(environments: &[EnvironmentStatus], errors: &mut Vec<String>) -> Option<String> {
    let mut rows = vec![row(&[
        "SCHEDULE",
        "ENVIRONMENT",
        "TRIGGER",
        "NEXT RUN",
        "LAST RUN",
        "RESULT",
        "RUNS",
        "FAILED",
        "MISSED",
        "OVERLAP",
    ])];
    for env in environments {
        for schedule in &env.schedules {
            let last = schedule.last_run.as_ref();
            let next = if schedule.due { "due now".to_owned() } else { time(schedule.next_run) };
            let counters = &schedule.counters;
            rows.push(vec![
                schedule.name.clone(),
                env.name.clone(),
                schedule.trigger.clone(),
                next,
                time(last.map(|run| run.started_at)),
                last.map_or("-".to_owned(), |run| run.result.to_string()),
                counters.runs.to_string(),
                counters.failures.to_string(),
                counters.missed.to_string(),
                counters.overlapping.to_string(),
            ]);
            if let (Some(error), Some(at)) = (&counters.last_error, counters.last_error_at) {
                errors.push(format!("{}: last error {}: {error}", schedule.name, time(Some(at))));
            }
            if let Some(error) = last.and_then(|run| run.retention_error.as_ref()) {
                errors.push(format!("{}: last retention error: {error}", schedule.name));
            }
        }
    }
    (rows.len() > 1).then(|| table(&rows))
}

fn standbys_table(standbys: &[StandbySummary], errors: &mut Vec<String>) -> String {
    let mut rows = vec![row(&[
        "STANDBY",
        "PRIMARY",
        "HOST",
        "RESTORED POINT",
        "LAG",
        "BEHIND",
        "PENDING",
        "AUTORESTORE",
        "LAST TRANSFER",
    ])];
    for standby in standbys {
        let lag = &standby.lag;
        rows.push(vec![
            standby.name.clone(),
            standby.primary.clone(),
            standby.host.clone(),
            lag.snapshot.clone().unwrap_or_else(|| "-".into()),
            lag.lag_seconds.map_or("-".to_owned(), human_age),
            match (&standby.merging, &lag.behind) {
                (Some(merging), _) => format!("merge to {merging} interrupted"),
                (None, Some(newest)) => newest.clone(),
                (None, None) => "-".into(),
            },
            if lag.behind.is_some() { super::standby::bytes(lag.pending_bytes) } else { "-".into() },
            if standby.autorestore { "on" } else { "off" }.into(),
            standby
                .last_sync
                .as_ref()
                .map_or("-".to_owned(), |s| format!("{} {}", s.mode, super::standby::bytes(s.bytes))),
        ]);
        if standby.merging.is_some() {
            errors.push(format!("{}: a sync stopped half way through its merge: run `envclone recover`", standby.name));
        }
    }
    table(&rows)
}

fn failovers_table(failovers: &[SwitchStatus], errors: &mut Vec<String>) -> String {
    let mut rows = vec![row(&[
        "FAILED OVER",
        "ACTIVE SIDE",
        "EPOCH",
        "MODE",
        "SINCE",
        "PRIMARY DOMAINS",
        "RETURNS",
        "HOME (LAG, CARRIED)",
    ])];
    for switch in failovers {
        rows.push(failover_row(switch));
        if let Some(reason) = &switch.unchecked_reason {
            errors.push(format!("{}: the old primary could not be checked: {reason}", switch.env));
        }
        errors.extend(switch.returns.iter().map(|event| old_primary_returned(switch, event)));
    }
    table(&rows)
}

fn failover_row(switch: &SwitchStatus) -> Vec<String> {
    let fences: Vec<String> = switch.primary.iter().map(|f| format!("{} {}", f.domain, f.fence.as_str())).collect();
    vec![
        switch.env.clone(),
        switch.active.clone(),
        switch.epoch.to_string(),
        match switch.state {
            FailoverState::Active => switch.mode.to_string(),
            state => format!("{}, {state}", switch.mode),
        },
        time(Some(switch.since)),
        fences.join(", "),
        switch.returns.len().to_string(),
        match (&switch.home_snapshot, switch.home_lag_seconds) {
            (Some(snapshot), lag) => format!(
                "{snapshot} ({}, {})",
                lag.map_or("-".to_owned(), human_age),
                super::standby::bytes(switch.bytes_home)
            ),
            (None, _) => "-".into(),
        },
    ]
}

/// Shouted in capitals: two sides serving one epoch is the split brain the
/// fence exists to prevent, and an operator must not miss it.
fn old_primary_returned(switch: &SwitchStatus, event: &FenceEvent) -> String {
    format!(
        "!!! {}: OLD PRIMARY RETURNED: domain {} was found running at {} while {} serves epoch {}: {} \
         ({})",
        switch.env,
        event.domain,
        time(Some(event.at)),
        switch.active,
        event.epoch,
        match event.kind {
            crate::catalog::FenceKind::ReturnedRefenced => "FENCED AGAIN",
            _ => "FENCING IT FAILED: stop it by hand",
        },
        event.detail.as_deref().unwrap_or("")
    )
}

fn interrupted_table(interrupted: &[Operation], errors: &mut Vec<String>) -> String {
    let mut rows = vec![row(&["INTERRUPTED", "KIND", "ENVIRONMENT", "ALSO TOUCHES", "STARTED", "STATE"])];
    for op in interrupted {
        rows.push(vec![
            format!("operation {}", op.id),
            op.kind.to_string(),
            op.env.clone(),
            if op.touches.is_empty() { "-".to_owned() } else { op.touches.join(", ") },
            time(Some(op.started_at)),
            op.state.to_string(),
        ]);
        errors.push(format!(
            "{}: {} operation {} did not finish: run `envclone recover {}`",
            op.env, op.kind, op.id, op.env
        ));
    }
    table(&rows)
}

/// The start gate's leases this `status` renewed (or withheld), per host;
/// a host without the gate is left out.
fn leases_table(hosts: &[crate::host::gate::HostRenewal], errors: &mut Vec<String>) -> String {
    let mut rows = vec![row(&["GATE HOST", "LEASES RENEWED", "WITHHELD (FAILED OVER)"])];
    for host in hosts {
        if let Some(error) = &host.error {
            rows.push(vec![host.host.clone(), "-".into(), "-".into()]);
            errors.push(format!("host {}: leases not renewed: {error}", host.host));
            continue;
        }
        if !host.installed {
            continue;
        }
        let granted: Vec<String> = host
            .granted
            .iter()
            .map(|lease| format!("{} ({})", lease.env, human_age(lease.expires_in_seconds)))
            .collect();
        rows.push(vec![
            host.host.clone(),
            if granted.is_empty() { "-".into() } else { granted.join(", ") },
            if host.withheld.is_empty() { "-".into() } else { host.withheld.join(", ") },
        ]);
    }
    table(&rows)
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|cell| cell.to_string()).collect()
}

fn time(time: Option<DateTime<Utc>>) -> String {
    time.map_or("-".to_owned(), |time| time.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// Left-aligned columns two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}
