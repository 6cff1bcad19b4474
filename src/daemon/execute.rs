//! One run of a schedule with its bookkeeping, shared by the daemon and
//! `envclone schedule run`: record the run (`begin`), take the snapshot and
//! apply retention through the runner (`carry_out`), record how it ended.
//!
//! `begin` and `carry_out` are separate so that the daemon records a run
//! before its next tick can look at the schedule again, while the slow part
//! runs on a blocking thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::retention::RetentionResult;
use super::{Now, RunError, ScheduledRunner};
use crate::catalog::{Begun, Catalog, NewRun, Owner, RetentionTally, RunEnd, RunOrigin, RunState, ScheduleRunId};
use crate::config::Retention;
use crate::Result;

/// The schedule a run belongs to, as the config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub schedule: String,
    pub env: String,
    pub retention: Retention,
    pub origin: RunOrigin,
    pub started_at: DateTime<Utc>,
    /// Fire times missed before this run (see [`crate::schedule::Due::missed`]).
    pub missed: u32,
}

/// How one run went: the `--json` report of `envclone schedule run` and
/// one entry of `envclone daemon --once`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub schedule: String,
    pub env: String,
    pub run: ScheduleRunId,
    pub origin: RunOrigin,
    pub result: RunState,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub missed: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why the run failed or was skipped (the whole error chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionResult>,
    /// Why retention could not run at all (the snapshot itself succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_error: Option<String>,
}

/// A finished run and, unless it succeeded, the error that ended it.
#[derive(Debug)]
pub struct Executed {
    pub report: RunReport,
    pub error: Option<RunError>,
}

/// What `begin` decided.
#[derive(Debug)]
pub enum Began {
    /// Recorded `running`: hand it to [`carry_out`].
    Started(ScheduleRunId),
    /// Recorded `skipped-overlap`: the previous run still runs.
    Skipped(Box<Executed>),
}

/// Records the run before anything happens, or its skip when the previous
/// run of the schedule still runs.
pub fn begin(catalog: &Mutex<Catalog>, request: &RunRequest, owner: &Owner) -> Result<Began> {
    let new = NewRun {
        schedule: request.schedule.clone(),
        env: request.env.clone(),
        origin: request.origin,
        started_at: request.started_at,
        missed: request.missed,
        owner: owner.clone(),
    };
    let begun = lock(catalog).begin_run(&new)?;
    Ok(match begun {
        Begun::Started(id) => Began::Started(id),
        Begun::Overlap { skipped, running } => {
            let error = RunError::Busy {
                env: request.env.clone(),
                detail: format!(
                    "busy: run {} of this schedule (pid {}) is still running",
                    running.id, running.owner.pid
                ),
            };
            let mut report = report(request, skipped, RunState::SkippedOverlap, request.started_at);
            report.error = Some(crate::error::chain(&error));
            Began::Skipped(Box::new(Executed { report, error: Some(error) }))
        }
    })
}

/// Takes the snapshot and applies retention through `runner`, then records
/// how the run ended. A panic in the runner is a failed run, never a
/// crashed caller.
pub fn carry_out(
    catalog: &Mutex<Catalog>,
    runner: &dyn ScheduledRunner,
    id: ScheduleRunId,
    request: &RunRequest,
    now: &Now,
) -> Result<Executed> {
    let snapshot = guarded(|| runner.snapshot(&request.env, &request.schedule));
    let (end, mut executed) = match snapshot {
        Ok(result) => {
            let retention = guarded(|| runner.apply_retention(&request.env, &request.schedule, &request.retention));
            let (tally, retention, retention_error) = match retention {
                Ok(retention) => (retention.tally(), Some(retention), None),
                Err(error) => {
                    let text = crate::error::chain(&error);
                    (RetentionTally { deleted: 0, deferred: 0, error: Some(text.clone()) }, None, Some(text))
                }
            };
            let end = RunEnd::Succeeded { snapshot: result.snapshot.clone(), retention: tally };
            let mut report = report(request, id, RunState::Succeeded, request.started_at);
            report.snapshot = Some(result.snapshot);
            report.retention = retention;
            report.retention_error = retention_error;
            (end, Executed { report, error: None })
        }
        Err(error) => {
            let text = crate::error::chain(&error);
            let (end, state) = if error.is_busy() {
                (RunEnd::SkippedOverlap { reason: text.clone() }, RunState::SkippedOverlap)
            } else {
                (RunEnd::Failed { error: text.clone() }, RunState::Failed)
            };
            let mut report = report(request, id, state, request.started_at);
            report.error = Some(text);
            (end, Executed { report, error: Some(error) })
        }
    };
    let finished_at = now.now();
    lock(catalog).finish_run(id, &end, finished_at)?;
    executed.report.finished_at = finished_at;
    Ok(executed)
}

fn report(request: &RunRequest, run: ScheduleRunId, result: RunState, finished_at: DateTime<Utc>) -> RunReport {
    RunReport {
        schedule: request.schedule.clone(),
        env: request.env.clone(),
        run,
        origin: request.origin,
        result,
        started_at: request.started_at,
        finished_at,
        missed: request.missed,
        snapshot: None,
        error: None,
        retention: None,
        retention_error: None,
    }
}

/// Runs `f`, turning a panic into [`RunError::Panicked`].
fn guarded<T>(f: impl FnOnce() -> Result<T, RunError>) -> Result<T, RunError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(RunError::Panicked { message })
    })
}

/// The catalog behind its mutex. A panic while it was held cannot leave a
/// transaction open (rusqlite rolls back on drop), so poisoning is ignored.
pub(crate) fn lock(catalog: &Mutex<Catalog>) -> std::sync::MutexGuard<'_, Catalog> {
    catalog.lock().unwrap_or_else(PoisonError::into_inner)
}
