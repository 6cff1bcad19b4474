//! Schedule runs: every run of a `[schedules.*]` entry, by `envclone daemon`
//! or by `envclone schedule run` (systemd timers, cron), and the counters
//! `envclone status` shows per schedule.
//!
//! A run is recorded `running` before the snapshot starts and ends
//! `succeeded`, `failed` or `skipped-overlap` (the environment was busy);
//! see [`RunState::valid_transition`]. [`Catalog::begin_run`] decides
//! overlap inside its write transaction: while an earlier run of the same
//! schedule is `running` and its [`Owner`] is alive, the new run is recorded
//! as `skipped-overlap` at once and never queued. A `running` row whose
//! owner is gone (a daemon killed mid-run, a reboot) is ended `failed` as
//! interrupted the next time the schedule runs, or by
//! [`Catalog::reap_interrupted_runs`].
//!
//! ```text
//! running ──> succeeded
//!    ├──────> failed
//!    └──────> skipped-overlap      (begin_run also records this directly)
//! ```
//!
//! Counters live in their own table, updated in the same transaction as
//! the run they count, so they survive the pruning of old runs: only the
//! newest [`RUN_HISTORY`] finished runs of each schedule are kept.

use std::fmt;

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};

use super::model::{row_id, text_enum};
use super::operation::Owner;
use super::snapshots::ensure_environment;
use super::{Catalog, CatalogError, Timestamp};

/// Finished runs kept per schedule; older ones are pruned as new ones end.
pub const RUN_HISTORY: u32 = 1000;

const RUN_COLUMNS: &str = "r.id, r.schedule, e.name, r.origin, r.state, r.started_at, r.finished_at, r.pid, \
     r.pid_start_ticks, r.boot_id, r.missed, r.snapshot, r.error, r.deleted, r.deferred, r.retention_error";

row_id!(
    /// A schedule run's row id.
    ScheduleRunId
);

text_enum!(
    /// Where a schedule run is. See [`RunState::valid_transition`].
    RunState {
        /// The snapshot is being taken (or retention applied).
        Running => "running",
        /// The snapshot was taken; retention may still have failed.
        Succeeded => "succeeded",
        /// The snapshot failed, or the run was interrupted.
        Failed => "failed",
        /// Not run: the schedule's previous run or another operation still
        /// held the environment.
        SkippedOverlap => "skipped-overlap",
    }
);

text_enum!(
    /// What started a run.
    RunOrigin {
        /// `envclone daemon`, at the schedule's time.
        Daemon => "daemon",
        /// `envclone schedule run`: a systemd timer, cron or a person.
        Command => "command",
    }
);

impl RunState {
    /// The one place that says which state changes a run may make.
    pub fn valid_transition(self, to: RunState) -> bool {
        use RunState::*;
        match self {
            Running => matches!(to, Succeeded | Failed | SkippedOverlap),
            Succeeded | Failed | SkippedOverlap => false,
        }
    }
}

/// What a caller supplies to start a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub schedule: String,
    pub env: String,
    pub origin: RunOrigin,
    pub started_at: DateTime<Utc>,
    /// Fire times that passed without a run before this one (counted, never replayed).
    pub missed: u32,
    pub owner: Owner,
}

/// What [`Catalog::begin_run`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// Recorded `running`: take the snapshot, then [`Catalog::finish_run`].
    Started(ScheduleRunId),
    /// Recorded `skipped-overlap` because `running` is still running.
    Overlap { skipped: ScheduleRunId, running: Box<ScheduleRun> },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Succeeded { snapshot: String, retention: RetentionTally },
    Failed { error: String },
    SkippedOverlap { reason: String },
}

impl RunEnd {
    pub fn state(&self) -> RunState {
        match self {
            RunEnd::Succeeded { .. } => RunState::Succeeded,
            RunEnd::Failed { .. } => RunState::Failed,
            RunEnd::SkippedOverlap { .. } => RunState::SkippedOverlap,
        }
    }
}

/// What retention did after a successful run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionTally {
    /// Snapshots deleted.
    pub deleted: u32,
    /// Snapshots whose deletion was deferred because something still needs them.
    pub deferred: u32,
    /// Why retention failed (wholly or for some snapshots), if it did.
    pub error: Option<String>,
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleRun {
    pub id: ScheduleRunId,
    pub schedule: String,
    pub env: String,
    pub origin: RunOrigin,
    pub state: RunState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub owner: Owner,
    pub missed: u32,
    /// The snapshot taken, for a run that succeeded.
    pub snapshot: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    pub retention: RetentionTally,
}

/// What has happened to a schedule so far; all zero for one that never ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScheduleCounters {
    /// Runs that ended `succeeded` or `failed`.
    pub runs: u64,
    pub failures: u64,
    /// Fire times that passed without a run (each caught up by one run).
    pub missed: u64,
    /// Runs skipped because the environment was busy.
    pub overlapping: u64,
    /// Successful runs whose retention failed (wholly or in part).
    pub retention_failures: u64,
    pub deleted: u64,
    pub deferred: u64,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl Catalog {
    /// Starts a run, or records it as skipped when an earlier run of the
    /// schedule is still running (see the module docs). Interrupted runs of
    /// the schedule are ended `failed` first.
    pub fn begin_run(&self, new: &NewRun) -> Result<Begun, CatalogError> {
        let what = "record a schedule run";
        let tx = self.write(what)?;
        reap_interrupted(&tx, Some(&new.schedule), new.started_at)?;
        let env = ensure_environment(&tx, &new.env, new.started_at)?;
        let running = tx
            .query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM schedule_runs r JOIN environments e ON e.id = r.env_id \
                     WHERE r.schedule = ?1 AND r.state = 'running' ORDER BY r.id LIMIT 1"
                ),
                [&new.schedule],
                run_row,
            )
            .optional()
            .map_err(CatalogError::query(what))?;
        let (state, error) = match &running {
            Some(run) => (RunState::SkippedOverlap, Some(overlap_reason(run))),
            None => (RunState::Running, None),
        };
        let finished_at = running.is_some().then_some(Timestamp(new.started_at));
        tx.execute(
            "INSERT INTO schedule_runs (schedule, env_id, origin, state, started_at, finished_at, pid, \
             pid_start_ticks, boot_id, missed, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                new.schedule,
                env,
                new.origin,
                state,
                Timestamp(new.started_at),
                finished_at,
                new.owner.pid,
                new.owner.start_ticks.map(|ticks| i64::try_from(ticks).unwrap_or(i64::MAX)),
                new.owner.boot_id,
                new.missed,
                error,
            ],
        )
        .map_err(CatalogError::query(what))?;
        let id = ScheduleRunId(tx.last_insert_rowid());
        ensure_counters(&tx, &new.schedule)?;
        tx.execute(
            "UPDATE schedule_counters SET missed = missed + ?2, overlapping = overlapping + ?3 WHERE schedule = ?1",
            params![new.schedule, new.missed, u32::from(running.is_some())],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(match running {
            Some(running) => Begun::Overlap { skipped: id, running: Box::new(running) },
            None => Begun::Started(id),
        })
    }

    /// Ends a `running` run and counts it; any other change is refused.
    pub fn finish_run(&self, id: ScheduleRunId, end: &RunEnd, at: DateTime<Utc>) -> Result<(), CatalogError> {
        let what = "finish a schedule run";
        let tx = self.write(what)?;
        let run = run(&tx, id)?;
        let to = end.state();
        if !run.state.valid_transition(to) {
            return Err(CatalogError::InvalidTransition {
                what: format!("schedule run {id}"),
                from: run.state.as_str(),
                to: to.as_str(),
            });
        }
        end_run(&tx, &run, end, at)?;
        prune_history(&tx, &run.schedule)?;
        tx.commit().map_err(CatalogError::query(what))
    }

    pub fn schedule_run(&self, id: ScheduleRunId) -> Result<ScheduleRun, CatalogError> {
        run(&self.conn, id)
    }

    /// The schedule's newest run in any state: the last time it fired.
    pub fn last_run(&self, schedule: &str) -> Result<Option<ScheduleRun>, CatalogError> {
        Ok(self.schedule_runs(schedule, 1)?.pop())
    }

    /// The schedule's newest `limit` runs, newest first.
    pub fn schedule_runs(&self, schedule: &str, limit: u32) -> Result<Vec<ScheduleRun>, CatalogError> {
        let what = "list schedule runs";
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM schedule_runs r JOIN environments e ON e.id = r.env_id \
                 WHERE r.schedule = ?1 ORDER BY r.started_at DESC, r.id DESC LIMIT ?2"
            ))
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map(params![schedule, limit], run_row).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// The schedule's counters (all zero if it never ran).
    pub fn counters(&self, schedule: &str) -> Result<ScheduleCounters, CatalogError> {
        self.conn
            .query_row(
                "SELECT runs, failures, missed, overlapping, retention_failures, deleted, deferred, \
                 last_success, last_error, last_error_at FROM schedule_counters WHERE schedule = ?1",
                [schedule],
                counters_row,
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(CatalogError::query("read a schedule's counters"))
    }

    /// Ends every `running` run whose owner is gone as `failed`
    /// (interrupted), counting each as a failure; returns them as they were.
    pub fn reap_interrupted_runs(&self, at: DateTime<Utc>) -> Result<Vec<ScheduleRun>, CatalogError> {
        let what = "end interrupted schedule runs";
        let tx = self.write(what)?;
        let reaped = reap_interrupted(&tx, None, at)?;
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(reaped)
    }
}

fn overlap_reason(running: &ScheduleRun) -> String {
    format!(
        "run {} of schedule '{}' (pid {}, started {}) is still running",
        running.id,
        running.schedule,
        running.owner.pid,
        running.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Ends the `running` runs (of `schedule`, or of all) whose owner is gone.
fn reap_interrupted(
    tx: &Transaction<'_>,
    schedule: Option<&str>,
    at: DateTime<Utc>,
) -> Result<Vec<ScheduleRun>, CatalogError> {
    let what = "find interrupted schedule runs";
    let mut statement = tx
        .prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM schedule_runs r JOIN environments e ON e.id = r.env_id \
             WHERE r.state = 'running' AND (?1 IS NULL OR r.schedule = ?1) ORDER BY r.id"
        ))
        .map_err(CatalogError::query(what))?;
    let running: Vec<ScheduleRun> = statement
        .query_map([schedule], run_row)
        .map_err(CatalogError::query(what))?
        .collect::<Result<_, _>>()
        .map_err(CatalogError::query(what))?;
    let mut reaped = Vec::new();
    for run in running.into_iter().filter(|run| !run.owner.is_alive()) {
        let error = format!("interrupted: its process (pid {}) ended before the run did", run.owner.pid);
        end_run(tx, &run, &RunEnd::Failed { error }, at)?;
        reaped.push(run);
    }
    Ok(reaped)
}

/// Writes the end of `run` and counts it. The caller checked the transition.
fn end_run(tx: &Transaction<'_>, run: &ScheduleRun, end: &RunEnd, at: DateTime<Utc>) -> Result<(), CatalogError> {
    let what = "finish a schedule run";
    let (snapshot, error, tally) = match end {
        RunEnd::Succeeded { snapshot, retention } => (Some(snapshot.as_str()), None, retention.clone()),
        RunEnd::Failed { error } => (None, Some(error.as_str()), RetentionTally::default()),
        RunEnd::SkippedOverlap { reason } => (None, Some(reason.as_str()), RetentionTally::default()),
    };
    tx.execute(
        "UPDATE schedule_runs SET state = ?2, finished_at = ?3, snapshot = ?4, error = ?5, deleted = ?6, \
         deferred = ?7, retention_error = ?8 WHERE id = ?1",
        params![run.id, end.state(), Timestamp(at), snapshot, error, tally.deleted, tally.deferred, tally.error],
    )
    .map_err(CatalogError::query(what))?;
    ensure_counters(tx, &run.schedule)?;
    let counted = match end {
        RunEnd::Succeeded { .. } => tx.execute(
            "UPDATE schedule_counters SET runs = runs + 1, last_success = ?2, deleted = deleted + ?3, \
             deferred = deferred + ?4, retention_failures = retention_failures + ?5 WHERE schedule = ?1",
            params![run.schedule, Timestamp(at), tally.deleted, tally.deferred, u32::from(tally.error.is_some())],
        ),
        RunEnd::Failed { error } => tx.execute(
            "UPDATE schedule_counters SET runs = runs + 1, failures = failures + 1, last_error = ?2, \
             last_error_at = ?3 WHERE schedule = ?1",
            params![run.schedule, error, Timestamp(at)],
        ),
        RunEnd::SkippedOverlap { .. } => tx
            .execute("UPDATE schedule_counters SET overlapping = overlapping + 1 WHERE schedule = ?1", [&run.schedule]),
    };
    counted.map(|_| ()).map_err(CatalogError::query(what))
}

fn ensure_counters(tx: &Transaction<'_>, schedule: &str) -> Result<(), CatalogError> {
    tx.execute("INSERT INTO schedule_counters (schedule) VALUES (?1) ON CONFLICT (schedule) DO NOTHING", [schedule])
        .map(|_| ())
        .map_err(CatalogError::query("record a schedule's counters"))
}

/// Keeps the newest [`RUN_HISTORY`] finished runs of `schedule`.
fn prune_history(tx: &Transaction<'_>, schedule: &str) -> Result<(), CatalogError> {
    tx.execute(
        "DELETE FROM schedule_runs WHERE schedule = ?1 AND state <> 'running' AND id NOT IN \
         (SELECT id FROM schedule_runs WHERE schedule = ?1 AND state <> 'running' ORDER BY id DESC LIMIT ?2)",
        params![schedule, RUN_HISTORY],
    )
    .map(|_| ())
    .map_err(CatalogError::query("prune old schedule runs"))
}

fn run(conn: &rusqlite::Connection, id: ScheduleRunId) -> Result<ScheduleRun, CatalogError> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM schedule_runs r JOIN environments e ON e.id = r.env_id WHERE r.id = ?1"),
        [id],
        run_row,
    )
    .optional()
    .map_err(CatalogError::query("look up a schedule run"))?
    .ok_or_else(|| CatalogError::NotFound { what: format!("schedule run {id}") })
}

fn run_row(row: &Row<'_>) -> rusqlite::Result<ScheduleRun> {
    let ticks: Option<i64> = row.get(8)?;
    Ok(ScheduleRun {
        id: row.get(0)?,
        schedule: row.get(1)?,
        env: row.get(2)?,
        origin: row.get(3)?,
        state: row.get(4)?,
        started_at: row.get::<_, Timestamp>(5)?.0,
        finished_at: row.get::<_, Option<Timestamp>>(6)?.map(|t| t.0),
        owner: Owner { pid: row.get(7)?, start_ticks: ticks.and_then(|t| u64::try_from(t).ok()), boot_id: row.get(9)? },
        missed: row.get(10)?,
        snapshot: row.get(11)?,
        error: row.get(12)?,
        retention: RetentionTally { deleted: row.get(13)?, deferred: row.get(14)?, error: row.get(15)? },
    })
}

fn counters_row(row: &Row<'_>) -> rusqlite::Result<ScheduleCounters> {
    let count = |index| row.get::<_, i64>(index).map(|n| u64::try_from(n).unwrap_or(0));
    Ok(ScheduleCounters {
        runs: count(0)?,
        failures: count(1)?,
        missed: count(2)?,
        overlapping: count(3)?,
        retention_failures: count(4)?,
        deleted: count(5)?,
        deferred: count(6)?,
        last_success: row.get::<_, Option<Timestamp>>(7)?.map(|t| t.0),
        last_error: row.get(8)?,
        last_error_at: row.get::<_, Option<Timestamp>>(9)?.map(|t| t.0),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn dead_owner() -> Owner {
        let mut owner = Owner::current();
        owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);
        owner
    }

    fn new_run(schedule: &str, hour: u32, missed: u32) -> NewRun {
        NewRun {
            schedule: schedule.into(),
            env: "prod".into(),
            origin: RunOrigin::Daemon,
            started_at: at(hour, 0),
            missed,
            owner: Owner::current(),
        }
    }

    fn started(begun: Begun) -> ScheduleRunId {
        match begun {
            Begun::Started(id) => id,
            other => panic!("expected a started run, got {other:?}"),
        }
    }

    #[test]
    fn run_transitions_per_state() {
        use RunState::*;
        let allowed: &[(RunState, &[RunState])] =
            &[(Running, &[Succeeded, Failed, SkippedOverlap]), (Succeeded, &[]), (Failed, &[]), (SkippedOverlap, &[])];
        assert_eq!(allowed.len(), RunState::ALL.len());
        for (from, targets) in allowed {
            for to in RunState::ALL {
                assert_eq!(from.valid_transition(*to), targets.contains(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_run_is_recorded_running_then_succeeded_and_counted() {
        let (_dir, catalog) = catalog();
        let id = started(catalog.begin_run(&new_run("nightly", 2, 0)).unwrap());
        assert_eq!(catalog.schedule_run(id).unwrap().state, RunState::Running);
        let retention = RetentionTally { deleted: 2, deferred: 1, error: None };

        catalog
            .finish_run(id, &RunEnd::Succeeded { snapshot: "s1".into(), retention: retention.clone() }, at(2, 5))
            .unwrap();

        let run = catalog.schedule_run(id).unwrap();
        assert_eq!(run.state, RunState::Succeeded);
        assert_eq!((run.env.as_str(), run.snapshot.as_deref()), ("prod", Some("s1")));
        assert_eq!((run.started_at, run.finished_at), (at(2, 0), Some(at(2, 5))));
        assert_eq!(run.retention, retention);
        assert_eq!(run.owner, Owner::current());
        let counters = catalog.counters("nightly").unwrap();
        assert_eq!((counters.runs, counters.failures, counters.deleted, counters.deferred), (1, 0, 2, 1));
        assert_eq!(counters.last_success, Some(at(2, 5)));
        assert_eq!(catalog.last_run("nightly").unwrap().map(|r| r.id), Some(id));
    }

    #[test]
    fn a_failed_run_counts_a_failure_with_its_error() {
        let (_dir, catalog) = catalog();
        let id = started(catalog.begin_run(&new_run("nightly", 2, 0)).unwrap());

        catalog.finish_run(id, &RunEnd::Failed { error: "no domain named prod-web".into() }, at(2, 1)).unwrap();

        let counters = catalog.counters("nightly").unwrap();
        assert_eq!((counters.runs, counters.failures), (1, 1));
        assert_eq!(counters.last_error.as_deref(), Some("no domain named prod-web"));
        assert_eq!(counters.last_error_at, Some(at(2, 1)));
        assert_eq!(counters.last_success, None);
        assert_eq!(catalog.schedule_run(id).unwrap().error.as_deref(), Some("no domain named prod-web"));
    }

    #[test]
    fn a_retention_error_is_counted_on_a_successful_run() {
        let (_dir, catalog) = catalog();
        let id = started(catalog.begin_run(&new_run("nightly", 2, 0)).unwrap());
        let retention = RetentionTally { deleted: 0, deferred: 0, error: Some("delete-snapshot unavailable".into()) };

        catalog.finish_run(id, &RunEnd::Succeeded { snapshot: "s1".into(), retention }, at(2, 1)).unwrap();

        let counters = catalog.counters("nightly").unwrap();
        assert_eq!((counters.runs, counters.failures, counters.retention_failures), (1, 0, 1));
    }

    #[test]
    fn begin_run_skips_while_the_previous_run_is_still_running() {
        let (_dir, catalog) = catalog();
        let first = started(catalog.begin_run(&new_run("nightly", 2, 0)).unwrap());

        let begun = catalog.begin_run(&new_run("nightly", 3, 2)).unwrap();

        let Begun::Overlap { skipped, running } = begun else { panic!("expected an overlap, got {begun:?}") };
        assert_eq!(running.id, first);
        let skipped = catalog.schedule_run(skipped).unwrap();
        assert_eq!(skipped.state, RunState::SkippedOverlap);
        assert_eq!(skipped.finished_at, Some(at(3, 0)));
        assert!(skipped.error.unwrap().contains("still running"));
        let counters = catalog.counters("nightly").unwrap();
        assert_eq!((counters.overlapping, counters.missed, counters.runs), (1, 2, 0));
        assert_eq!(catalog.last_run("nightly").unwrap().map(|r| r.state), Some(RunState::SkippedOverlap));
    }

    #[test]
    fn other_schedules_do_not_overlap() {
        let (_dir, catalog) = catalog();
        started(catalog.begin_run(&new_run("nightly", 2, 0)).unwrap());

        let begun = catalog.begin_run(&new_run("hourly", 2, 0)).unwrap();

        assert!(matches!(begun, Begun::Started(_)), "{begun:?}");
    }

    #[test]
    fn a_run_whose_owner_died_is_ended_as_interrupted_and_does_not_block() {
        let (_dir, catalog) = catalog();
        let stale = started(catalog.begin_run(&NewRun { owner: dead_owner(), ..new_run("nightly", 2, 0) }).unwrap());

        let begun = catalog.begin_run(&new_run("nightly", 3, 0)).unwrap();

        assert!(matches!(begun, Begun::Started(_)), "{begun:?}");
        let stale = catalog.schedule_run(stale).unwrap();
        assert_eq!(stale.state, RunState::Failed);
        assert!(stale.error.unwrap().starts_with("interrupted"));
        assert_eq!(catalog.counters("nightly").unwrap().failures, 1);
    }

    #[test]
    fn reap_interrupted_runs_ends_only_runs_of_dead_owners() {
        let (_dir, catalog) = catalog();
        let stale = started(catalog.begin_run(&NewRun { owner: dead_owner(), ..new_run("nightly", 2, 0) }).unwrap());
        let live = started(catalog.begin_run(&new_run("hourly", 2, 0)).unwrap());

        let reaped = catalog.reap_interrupted_runs(at(4, 0)).unwrap();

        assert_eq!(reaped.iter().map(|r| r.id).collect::<Vec<_>>(), [stale]);
        assert_eq!(catalog.schedule_run(stale).unwrap().finished_at, Some(at(4, 0)));
        assert_eq!(catalog.schedule_run(live).unwrap().state, RunState::Running);
    }

    #[test]
    fn finish_run_refuses_a_run_that_already_ended() {
        let (_dir, catalog) = catalog();
        let id = started(catalog.begin_run(&new_run("nightly", 2, 0)).unwrap());
        catalog.finish_run(id, &RunEnd::Failed { error: "x".into() }, at(2, 1)).unwrap();

        let error = catalog
            .finish_run(id, &RunEnd::Succeeded { snapshot: "s".into(), retention: RetentionTally::default() }, at(2, 2))
            .unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "failed", to: "succeeded", .. }), "{error:?}");
        assert_eq!(catalog.counters("nightly").unwrap().runs, 1);
    }

    #[test]
    fn unknown_run_is_not_found_and_unknown_schedule_counts_zero() {
        let (_dir, catalog) = catalog();

        let error = catalog.finish_run(ScheduleRunId(9), &RunEnd::Failed { error: "x".into() }, at(1, 0)).unwrap_err();

        assert!(matches!(error, CatalogError::NotFound { .. }), "{error:?}");
        assert_eq!(catalog.counters("never").unwrap(), ScheduleCounters::default());
        assert_eq!(catalog.last_run("never").unwrap(), None);
    }

    #[test]
    fn history_keeps_the_newest_runs_and_counters_keep_counting() {
        let (_dir, catalog) = catalog();
        let first = started(catalog.begin_run(&new_run("minutely", 0, 0)).unwrap());
        catalog.finish_run(first, &RunEnd::Failed { error: "x".into() }, at(0, 0)).unwrap();
        // Older finished runs written in one transaction, as many as the history keeps.
        catalog
            .conn
            .execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
                 INSERT INTO schedule_runs (schedule, env_id, origin, state, started_at, finished_at, pid) \
                 SELECT schedule, env_id, origin, state, started_at, finished_at, pid FROM schedule_runs, n \
                 WHERE id = ?2",
                params![RUN_HISTORY, first],
            )
            .unwrap();
        let last = started(catalog.begin_run(&new_run("minutely", 1, 0)).unwrap());

        catalog.finish_run(last, &RunEnd::Failed { error: "y".into() }, at(1, 0)).unwrap();

        let runs = catalog.schedule_runs("minutely", RUN_HISTORY + 10).unwrap();
        assert_eq!(runs.len(), RUN_HISTORY as usize);
        assert_eq!(runs[0].id, last);
        assert!(runs.iter().all(|run| run.id != first), "the oldest run is pruned");
        assert_eq!(catalog.counters("minutely").unwrap().failures, 2);
    }
}
