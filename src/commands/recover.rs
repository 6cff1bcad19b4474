//! `envclone recover [ENV] [--dry-run]`: finishes or rolls back interrupted
//! operations and checks the environment as it is. The work is in
//! [`crate::ops::recover`]; this file wires libvirt, the catalog and the
//! agents, prints the report and picks the exit code: 0 when everything is
//! recovered (or there was nothing to do), 1 when an undo or a check
//! failed (each listed), 3 when an environment with work left is busy.

use super::session::Session;
use super::Output;
use crate::cli::{GlobalArgs, RecoverArgs};
use crate::exit::ExitCode;
use crate::guest::agents::SshRecoveryAgents;
use crate::ops::context::Event;
use crate::ops::recover::{self, CheckStatus, Outcome, RecoverReport, RecoverRequest, RerunOutcome, UndoStatus};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &RecoverArgs, out: &Output) -> Result<ExitCode> {
    let session = Session::open(global)?;
    let (config, _catalog) = (&session.config, &session.catalog);
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = match &args.environment {
        Some(env) => session.context_for(env, &progress)?,
        None => session.context(&progress)?,
    };
    let request = RecoverRequest { env: args.environment.clone(), dry_run: args.dry_run };
    let report = recover::recover(&ctx, &SshRecoveryAgents::new(config), &request)?;
    out.report(&report, human);
    let failures = report.failures();
    if !failures.is_empty() {
        return Err(Error::RecoverIncomplete { failures });
    }
    if let Some(busy) = report.busy().first() {
        return Err(Error::from((*busy).clone()));
    }
    Ok(ExitCode::Ok)
}

fn human(report: &RecoverReport) -> String {
    let mut text = String::new();
    if report.dry_run {
        text.push_str("dry run: nothing changed\n");
    }
    if report.nothing_to_do() && report.busy().is_empty() {
        text.push_str("nothing to recover\n");
    }
    for env in &report.environments {
        if let Some(busy) = &env.busy {
            text.push_str(&format!("{}: skipped, {busy}\n", env.env));
            continue;
        }
        if env.operations.is_empty() && env.checks.iter().all(|c| c.status == CheckStatus::Ok) {
            text.push_str(&format!("{}: no interrupted operation; every check passed\n", env.env));
            continue;
        }
        text.push_str(&format!("{}:\n", env.env));
        for op in &env.operations {
            let outcome = match op.outcome {
                Outcome::RolledBack => "rolled back",
                Outcome::Completed => "completed (its work was all done)",
                Outcome::Failed => "ROLLBACK INCOMPLETE",
                Outcome::Refused => "REFUSED",
                Outcome::WouldRollBack => "would roll back",
                Outcome::WouldComplete => "would complete (its work was all done)",
            };
            text.push_str(&format!(
                "  operation {} {} (started {} by pid {}, {}): {outcome}\n",
                op.id,
                op.kind,
                op.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                op.owner_pid,
                op.was
            ));
            if let Some(error) = op.error.as_ref().filter(|_| op.outcome == Outcome::Refused) {
                text.push_str(&format!("    {error}\n"));
            }
            for undo in &op.undo {
                let status = match undo.status {
                    UndoStatus::Done => "done",
                    UndoStatus::Kept => "kept",
                    UndoStatus::Failed => "FAILED",
                    UndoStatus::Planned => "plan",
                };
                let detail = undo.detail.as_deref().unwrap_or(&undo.action);
                text.push_str(&format!("    {status:6} step {:>2} {}: {detail}\n", undo.seq, undo.step));
            }
        }
        for rerun in &env.deletes {
            let what = match (rerun.outcome, &rerun.report) {
                (RerunOutcome::Finished, Some(done)) => format!(
                    "finished ({} merged, {} released, {} files removed)",
                    done.merged.len(),
                    done.released.len(),
                    done.removed.len()
                ),
                (RerunOutcome::Deferred, Some(done)) => {
                    format!("deferred: {}", done.reason.as_deref().unwrap_or("something needs its images"))
                }
                (RerunOutcome::WouldRun, _) => "would run it again".to_owned(),
                _ => format!("FAILED: {}", rerun.error.as_deref().unwrap_or("unknown error")),
            };
            text.push_str(&format!("  delete of snapshot {} run again: {what}\n", rerun.snapshot));
        }
        for check in env.checks.iter().filter(|c| c.status != CheckStatus::Ok) {
            let status = match check.status {
                CheckStatus::Ok => "ok",
                CheckStatus::Fixed => "fixed",
                CheckStatus::Recorded => "recorded",
                CheckStatus::WouldFix => "would fix",
                CheckStatus::Warning => "note",
                CheckStatus::Problem => "PROBLEM",
            };
            text.push_str(&format!("  {status:9} {} {}: {}\n", check.vm, check.subject, check.detail));
        }
        let ok = env.checks.iter().filter(|c| c.status == CheckStatus::Ok).count();
        if ok > 0 {
            text.push_str(&format!("  {ok} other checks passed\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogError;
    use crate::config::LookupError;
    use crate::error::Failure;
    use crate::ops::recover::RecoverError;
    use crate::ops::{Busy, LockError};

    #[test]
    fn recover_errors_map_to_their_documented_codes() {
        let busy = Busy { env: "demo".into(), holder: None };
        let cases = [
            (Error::RecoverIncomplete { failures: vec!["THAW FAILED".into()] }, ExitCode::Failed),
            (RecoverError::Lock(LockError::Busy(busy.clone())).into(), ExitCode::Busy),
            (Error::from(busy), ExitCode::Busy),
            (
                RecoverError::Lookup(LookupError::UnknownEnvironment { name: "x".into(), known: vec![] }).into(),
                ExitCode::NotFound,
            ),
            (RecoverError::Catalog(CatalogError::NotFound { what: "operation 3".into() }).into(), ExitCode::Failed),
        ];
        for (error, code) in cases {
            assert_eq!(ExitCode::from_error(&error), code, "{error}");
            assert!(error.hint().is_some(), "{error}");
        }
    }

    #[test]
    fn recover_parses_an_optional_environment_and_dry_run() {
        use crate::cli::{Cli, Command};
        use clap::Parser;

        let cli = Cli::try_parse_from(["envclone", "recover", "demo", "--dry-run", "--json"]).unwrap();
        let Command::Recover(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert!(cli.global.json && args.dry_run && args.environment.as_deref() == Some("demo"));
        let cli = Cli::try_parse_from(["envclone", "recover"]).unwrap();
        assert!(matches!(cli.command, Command::Recover(RecoverArgs { environment: None, dry_run: false })));
    }

    #[test]
    fn human_report_says_when_there_is_nothing_to_recover() {
        let report = RecoverReport { dry_run: true, environments: Vec::new() };

        assert_eq!(human(&report), "dry run: nothing changed\nnothing to recover\n");
    }
}
