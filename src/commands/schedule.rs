//! `envclone schedule run NAME`: one run of a schedule now, recorded and
//! counted like the daemon's runs; what systemd timers and cron call.

use super::session::Records;
use super::{load_config, Output};
use crate::catalog::RunState;
use crate::cli::{GlobalArgs, ScheduleCommand, ScheduleRunArgs};
use crate::daemon::{self, CliRunner, DaemonError, RunError, RunReport};
use crate::exit::ExitCode;
use crate::Result;

pub fn run(global: &GlobalArgs, command: ScheduleCommand, out: &Output) -> Result<ExitCode> {
    match command {
        ScheduleCommand::Run(args) => run_schedule(global, &args, out),
    }
}

fn run_schedule(global: &GlobalArgs, args: &ScheduleRunArgs, out: &Output) -> Result<ExitCode> {
    let Records { config, catalog } = Records::with_config(load_config(global)?)?;
    let runner = CliRunner::current(
        &global.config,
        global.libvirt_uri.as_deref(),
        config.controller.state_dir.clone(),
        args.run.run_timeout,
    )?;
    let executed = daemon::run_one(&config.schedules, &args.schedule, catalog, &runner, daemon::system_clock())?;
    let report = executed.report;
    match executed.error {
        Some(source) => Err(DaemonError::Run { schedule: report.schedule, run: report.run.0, source }.into()),
        None if report.result == RunState::Succeeded => {
            out.report(&report, human);
            Ok(ExitCode::Ok)
        }
        // Every run that is not a success carries its error.
        None => Err(DaemonError::Run {
            schedule: report.schedule,
            run: report.run.0,
            source: RunError::Panicked { message: format!("run ended {} without an error", report.result) },
        }
        .into()),
    }
}

fn human(report: &RunReport) -> String {
    let mut text = format!(
        "schedule '{}': run {} took snapshot {} of environment '{}'\n",
        report.schedule,
        report.run,
        report.snapshot.as_deref().unwrap_or("?"),
        report.env
    );
    if let Some(retention) = &report.retention {
        text.push_str(&format!(
            "retention: kept {}, deleted {}, deferred {}, failed {}\n",
            retention.kept.len(),
            retention.deleted.len(),
            retention.deferred.len(),
            retention.failed.len()
        ));
        for failed in &retention.failed {
            text.push_str(&format!("  delete {} failed: {}\n", failed.snapshot, failed.error));
        }
    }
    if let Some(error) = &report.retention_error {
        text.push_str(&format!("retention failed: {error}\n"));
    }
    text
}
