//! `envclone daemon [--once [--now TIME]]`: runs the config's schedules
//! (see [`crate::daemon`]).

use std::sync::Arc;

use super::session::Records;
use super::{load_config, Output};
use crate::cli::{DaemonArgs, GlobalArgs};
use crate::daemon::{self, CliRunner, DaemonError, DaemonStats, OnceReport, Reload};
use crate::exit::ExitCode;
use crate::Result;

pub fn run(global: &GlobalArgs, args: &DaemonArgs, out: &Output) -> Result<ExitCode> {
    let Records { config, catalog } = Records::with_config(load_config(global)?)?;
    let runner = Arc::new(CliRunner::current(
        &global.config,
        global.libvirt_uri.as_deref(),
        config.controller.state_dir.clone(),
        args.run.run_timeout,
    )?);
    if args.once {
        let report = daemon::run_once(&config, catalog, runner, args.now)?;
        out.report(&report, human_once);
        let failed = report.failed();
        if failed > 0 {
            return Err(DaemonError::RunsFailed { failed, total: report.runs.len() }.into());
        }
        return Ok(ExitCode::Ok);
    }
    let stats = daemon::run_forever(&config, catalog, runner, reloader(global), args.shutdown_grace)?;
    out.report(&stats, human_stats);
    Ok(ExitCode::Ok)
}

/// Loads the config the daemon was started with again, with the same
/// overrides (SIGHUP).
fn reloader(global: &GlobalArgs) -> Reload {
    let global = GlobalArgs {
        config: global.config.clone(),
        libvirt_uri: global.libvirt_uri.clone(),
        json: global.json,
        verbose: global.verbose,
        quiet: global.quiet,
    };
    Arc::new(move || load_config(&global))
}

fn human_once(report: &OnceReport) -> String {
    let mut text = String::new();
    for run in &report.runs {
        let what = match (&run.snapshot, &run.error) {
            (Some(snapshot), _) => format!("snapshot {snapshot}"),
            (None, Some(error)) => error.clone(),
            (None, None) => String::new(),
        };
        text.push_str(&format!("{:<12} run {:<5} {:<16} {what}\n", run.schedule, run.run, run.result));
        if let Some(retention) = &run.retention {
            text.push_str(&format!(
                "{:<12} retention: kept {}, deleted {}, deferred {}, failed {}\n",
                "",
                retention.kept.len(),
                retention.deleted.len(),
                retention.deferred.len(),
                retention.failed.len()
            ));
        }
        if let Some(error) = &run.retention_error {
            text.push_str(&format!("{:<12} retention failed: {error}\n", ""));
        }
    }
    for not_due in &report.not_due {
        text.push_str(&format!(
            "{:<12} not due; next run {}\n",
            not_due.schedule,
            not_due.next_run.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    if report.missed > 0 {
        text.push_str(&format!("{} missed runs were counted (one run catches up each schedule)\n", report.missed));
    }
    for sync in &report.standby_syncs {
        let what = match (&sync.synced, &sync.error) {
            (Some(synced), _) => {
                format!("at snapshot {} ({}, {} bytes moved)", synced.snapshot, synced.mode, synced.bytes)
            }
            (None, Some(error)) => format!("FAILED: {error}"),
            (None, None) => String::new(),
        };
        text.push_str(&format!(
            "standby {} of {} (autorestore to {}): {what}\n",
            sync.standby, sync.primary, sync.target
        ));
    }
    for error in &report.errors {
        text.push_str(&format!("error: {error}\n"));
    }
    if text.is_empty() {
        text.push_str("no schedules are configured\n");
    }
    text
}

fn human_stats(stats: &DaemonStats) -> String {
    format!(
        "daemon stopped: {} runs started, {} succeeded, {} failed, {} skipped as overlapping, {} missed\n",
        stats.started, stats.succeeded, stats.failed, stats.skipped_overlap, stats.missed
    )
}
