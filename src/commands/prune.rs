//! `envclone prune ENV [--dry-run]`: applies the schedules' (and the
//! environment's) retention and deletes what it does not keep, through the
//! same code as `delete-snapshot`. Deferred deletes are reported, not
//! failures; a delete that fails is an error (exit code 1) once the others
//! ran and the report is printed. The work is in [`crate::ops::prune`].

use super::session::Session;
use super::Output;
use crate::cli::{GlobalArgs, PruneArgs};
use crate::exit::ExitCode;
use crate::ops::context::Event;
use crate::ops::delete::DeleteSettings;
use crate::ops::prune::{self, PruneReport, PruneRequest};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &PruneArgs, out: &Output) -> Result<ExitCode> {
    let session = Session::open(global)?;
    let (config, _catalog) = (&session.config, &session.catalog);
    config.environment(&args.environment)?;
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = session.context_for(&args.environment, &progress)?;
    let request = PruneRequest { env: args.environment.clone(), dry_run: args.dry_run };
    let report = prune::prune(&ctx, &request, &DeleteSettings::default())?;
    out.report(&report, human);
    if let Some(first) = report.failed.first() {
        return Err(Error::PruneIncomplete {
            env: report.env.clone(),
            failed: report.failed.len(),
            total: report.candidates.len(),
            first: first.snapshot.clone(),
        });
    }
    Ok(ExitCode::Ok)
}

fn human(report: &PruneReport) -> String {
    let mut text = String::new();
    if report.candidates.is_empty() {
        text.push_str(&format!("nothing to prune in environment '{}'\n", report.env));
    }
    for candidate in &report.candidates {
        let name = &candidate.snapshot;
        if report.dry_run {
            match candidate.would_defer.is_empty() {
                true => text.push_str(&format!("would delete {name} ({})\n", candidate.why)),
                false => text.push_str(&format!(
                    "would defer {name} ({}): {}\n",
                    candidate.why,
                    candidate.would_defer.join("; ")
                )),
            }
            for file in &candidate.would_remove {
                text.push_str(&format!("  would remove {}\n", file.display()));
            }
        }
    }
    for delete in &report.deletes {
        text.push_str(&super::delete_snapshot::human(delete));
    }
    for failed in &report.failed {
        text.push_str(&format!("delete of {} FAILED: {}\n", failed.snapshot, failed.error));
    }
    if !report.dry_run {
        text.push_str(&format!(
            "prune of '{}': {} deleted, {} deferred, {} failed, {} kept, {} freed\n",
            report.env,
            report.deleted.len(),
            report.deferred.len(),
            report.failed.len(),
            report.kept.len(),
            bytesize::ByteSize(report.freed_bytes)
        ));
    }
    text
}
