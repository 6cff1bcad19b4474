//! The scheduler's core, free of signals and sleeping so that unit tests
//! drive it with a fake clock: [`Scheduler::tick`] looks at every schedule
//! at a given time, records and starts the runs that are due, and says when
//! the next one is; [`Scheduler::record`] takes a finished run.
//!
//! Catalog reads and writes and the runs themselves happen on blocking
//! threads (`spawn_blocking`); the async side only decides and waits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinSet;

use super::execute::{self, Began, Executed, RunReport, RunRequest};
use super::{Now, RunError, ScheduledRunner, StandbySynced, LEASE_RENEWAL_EVERY, SYNC_RETRY};
use crate::catalog::{Catalog, FailoverMode, FailoverState, Owner, RunOrigin, RunState, ScheduleRunId};
use crate::config::Schedule;
use crate::schedule::due_runs;

/// What the daemon did since it started: logged when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DaemonStats {
    pub ticks: u64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped_overlap: u64,
    pub missed: u64,
    pub retention_failures: u64,
    /// Catalog errors and the like: the bookkeeping failed, not a run.
    pub errors: u64,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    pub at: DateTime<Utc>,
    /// Schedules whose run started.
    pub started: Vec<String>,
    /// Runs recorded as skipped because the schedule's previous run still runs.
    pub skipped: Vec<RunReport>,
    /// Schedules not due, with their next fire time.
    pub not_due: Vec<NotDue>,
    /// Fire times missed, over all schedules (each schedule catches up once).
    pub missed: u32,
    /// The earliest next fire time of any schedule.
    pub next: Option<DateTime<Utc>>,
    /// Schedules that could not be looked at, with why.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotDue {
    pub schedule: String,
    pub next_run: DateTime<Utc>,
}

/// What planning a tick decided for one schedule (on a blocking thread).
enum Planned {
    NotDue { name: String, next: DateTime<Utc> },
    Start { request: RunRequest, id: ScheduleRunId, next: DateTime<Utc> },
    Skipped { executed: Box<Executed>, next: DateTime<Utc> },
    Error { name: String, error: String },
}

/// A run that ended on its blocking thread.
#[derive(Debug)]
pub struct RunDone {
    pub schedule: String,
    pub run: ScheduleRunId,
    pub result: crate::Result<Executed>,
}

/// One autorestore sync, finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbySyncOutcome {
    pub standby: String,
    pub primary: String,
    /// The primary's snapshot it was started for.
    pub target: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<StandbySynced>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A sync that ended on its blocking thread.
#[derive(Debug)]
struct SyncDone {
    standby: String,
    primary: String,
    target: String,
    result: Result<StandbySynced, RunError>,
}

/// See the [module documentation](self).
pub struct Scheduler {
    schedules: BTreeMap<String, Schedule>,
    catalog: Arc<Mutex<Catalog>>,
    runner: Arc<dyn ScheduledRunner>,
    now: Now,
    owner: Owner,
    origin: RunOrigin,
    runs: JoinSet<RunDone>,
    /// When this scheduler first looked at each schedule: what a cron
    /// schedule that never ran waits from (its first fire time after this).
    first_seen: BTreeMap<String, DateTime<Utc>>,
    stats: DaemonStats,
    /// Finished runs, kept only when asked (`--once`), so a long-running
    /// daemon does not grow.
    finished: Option<Vec<RunReport>>,
    /// Autorestore syncs in progress, one per standby at most.
    syncs: JoinSet<SyncDone>,
    syncing: BTreeSet<String>,
    /// The last failed sync of each standby: its target and when.
    sync_failed: BTreeMap<String, (String, DateTime<Utc>)>,
    finished_syncs: Option<Vec<StandbySyncOutcome>>,
    /// The fence guard in progress (at most one), see [`Scheduler::guard_fences`].
    guard: Option<tokio::task::JoinHandle<Result<Vec<String>, RunError>>>,
    /// Fence guard runs started, and old primaries it fenced again.
    pub guards_started: u64,
    /// Whether the config has hosts of `[hosts]`, whose start gate leases
    /// the daemon renews (see [`Scheduler::renew_leases`]).
    renews_leases: bool,
    /// The lease renewal in progress (at most one), and when the last began.
    lease_renewal: Option<tokio::task::JoinHandle<Result<Vec<String>, RunError>>>,
    lease_renewal_began: Option<tokio::time::Instant>,
    pub lease_renewals_started: u64,
    /// What renewals said about hosts without the gate, each logged once.
    gate_notes: BTreeSet<String>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("schedules", &self.schedules.keys().collect::<Vec<_>>())
            .field("runner", &self.runner)
            .field("in_flight", &self.runs.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(
        schedules: BTreeMap<String, Schedule>,
        catalog: Catalog,
        runner: Arc<dyn ScheduledRunner>,
        now: Now,
    ) -> Scheduler {
        Scheduler {
            schedules,
            catalog: Arc::new(Mutex::new(catalog)),
            runner,
            now,
            owner: Owner::current(),
            origin: RunOrigin::Daemon,
            runs: JoinSet::new(),
            first_seen: BTreeMap::new(),
            stats: DaemonStats::default(),
            finished: None,
            syncs: JoinSet::new(),
            syncing: BTreeSet::new(),
            sync_failed: BTreeMap::new(),
            finished_syncs: None,
            guard: None,
            guards_started: 0,
            renews_leases: false,
            lease_renewal: None,
            lease_renewal_began: None,
            lease_renewals_started: 0,
            gate_notes: BTreeSet::new(),
        }
    }

    /// Renew the start gate's leases on every tick (for a config with
    /// hosts of `[hosts]`); a reload sets it again.
    pub fn with_lease_renewal(mut self, on: bool) -> Scheduler {
        self.renews_leases = on;
        self
    }

    pub fn set_lease_renewal(&mut self, on: bool) {
        self.renews_leases = on;
    }

    /// Keep every finished run's report for [`Scheduler::take_finished`].
    pub fn keep_reports(mut self) -> Scheduler {
        self.finished = Some(Vec::new());
        self.finished_syncs = Some(Vec::new());
        self
    }

    /// The time by the scheduler's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.now.now()
    }

    pub fn stats(&self) -> &DaemonStats {
        &self.stats
    }

    /// Runs and autorestore syncs in progress.
    pub fn in_flight(&self) -> usize {
        self.runs.len() + self.syncs.len()
    }

    /// Replaces the schedules (a config reload); runs in progress go on.
    pub fn set_schedules(&mut self, schedules: BTreeMap<String, Schedule>) {
        self.schedules = schedules;
    }

    pub fn take_finished(&mut self) -> Vec<RunReport> {
        self.finished.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn take_finished_syncs(&mut self) -> Vec<StandbySyncOutcome> {
        self.finished_syncs.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// While any role switch is in force, runs the fence guard (a child
    /// `envclone status --json`, which fences again any old primary domain
    /// found running) on a blocking thread: at most one at a time, so a
    /// primary host that does not answer never holds the scheduler. The
    /// result of the previous one is logged first.
    pub async fn guard_fences(&mut self) {
        if let Some(handle) = self.guard.take() {
            if !handle.is_finished() {
                self.guard = Some(handle);
                return;
            }
            self.log_guard(handle.await);
        }
        let catalog = Arc::clone(&self.catalog);
        let switched = tokio::task::spawn_blocking(move || -> crate::Result<bool> {
            let catalog = execute::lock(&catalog);
            Ok(catalog
                .failovers(None)?
                .iter()
                .any(|f| f.mode != FailoverMode::Test && f.state == FailoverState::Active))
        })
        .await;
        match switched {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                let runner = Arc::clone(&self.runner);
                self.guards_started += 1;
                self.guard = Some(tokio::task::spawn_blocking(move || runner.guard_fences()));
            }
            Ok(Err(error)) => self.bookkeeping_error("find the role switches to guard", &error),
            Err(error) => self.bookkeeping_error("find the role switches to guard", &error),
        }
    }

    /// Renews the start gate's leases (a child `envclone gate renew
    /// --json`) on a blocking thread: at most one at a time and one per
    /// [`LEASE_RENEWAL_EVERY`], so a burst of ticks renews once and a host
    /// that does not answer never holds the scheduler. The result of the
    /// previous one is logged first.
    pub async fn renew_leases(&mut self) {
        if let Some(handle) = self.lease_renewal.take() {
            if !handle.is_finished() {
                self.lease_renewal = Some(handle);
                return;
            }
            self.log_lease_renewal(handle.await);
        }
        let due = self.lease_renewal_began.map_or(true, |began| began.elapsed() >= LEASE_RENEWAL_EVERY);
        if !self.renews_leases || !due {
            return;
        }
        let runner = Arc::clone(&self.runner);
        self.lease_renewals_started += 1;
        self.lease_renewal_began = Some(tokio::time::Instant::now());
        self.lease_renewal = Some(tokio::task::spawn_blocking(move || runner.renew_leases()));
    }

    /// Waits for the lease renewal in progress, if any, and logs it.
    pub async fn finish_lease_renewal(&mut self) {
        if let Some(handle) = self.lease_renewal.take() {
            self.log_lease_renewal(handle.await);
        }
    }

    fn log_lease_renewal(&mut self, done: Result<Result<Vec<String>, RunError>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(lines)) => {
                for line in lines {
                    if self.gate_notes.insert(line.clone()) {
                        tracing::warn!("start gate: {line}");
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!("start gate: lease renewal failed: {}", crate::error::chain(&error)),
            Err(error) => self.bookkeeping_error("renew the start gate's leases", &error),
        }
    }

    /// Waits for the fence guard in progress, if any, and logs what it did.
    pub async fn finish_guard(&mut self) {
        if let Some(handle) = self.guard.take() {
            self.log_guard(handle.await);
        }
    }

    fn log_guard(&mut self, done: Result<Result<Vec<String>, RunError>, tokio::task::JoinError>) {
        match done {
            Ok(Ok(actions)) => {
                for action in actions {
                    tracing::error!("fence guard: {action}");
                }
            }
            Ok(Err(error)) => tracing::error!("fence guard failed: {}", crate::error::chain(&error)),
            Err(error) => self.bookkeeping_error("run the fence guard", &error),
        }
    }

    /// Starts a sync of every standby with autorestore that is behind its
    /// primary's newest complete snapshot (for one that serves its primary:
    /// whose home sync has not seen that snapshot), unless one of it runs
    /// or it failed for that same snapshot less than [`SYNC_RETRY`] ago.
    pub async fn autorestore(&mut self, now: DateTime<Utc>) {
        let catalog = Arc::clone(&self.catalog);
        let behind = tokio::task::spawn_blocking(move || -> crate::Result<Vec<(String, String, String)>> {
            let catalog = execute::lock(&catalog);
            let mut behind = Vec::new();
            for standby in catalog.standbys(None)? {
                if !standby.autorestore || standby.merging.is_some() {
                    continue;
                }
                if let Some(open) = catalog.open_failover(&standby.name)? {
                    // It serves its primary (roles switched): the sync runs
                    // towards the primary's storage (the home sync), once
                    // per newest snapshot: one whose images cannot all be
                    // home (taken before a restore on the standby) is not
                    // looked at again on every tick. A drill, or a switch
                    // failing back, is left alone.
                    if open.mode == FailoverMode::Test || open.state != FailoverState::Active {
                        continue;
                    }
                    let home = crate::ops::failover::fence::switch_resources(&open);
                    if let Some(newest) = catalog.live_snapshot(&standby.primary)? {
                        let seen = [home.home_snapshot.as_deref(), home.home_checked.as_deref()];
                        if !seen.contains(&Some(newest.name.as_str())) {
                            behind.push((standby.name, standby.primary, newest.name));
                        }
                    }
                    continue;
                }
                if let Some(newest) = catalog.live_snapshot(&standby.primary)? {
                    if standby.snapshot.as_deref() != Some(newest.name.as_str()) {
                        behind.push((standby.name, standby.primary, newest.name));
                    }
                }
            }
            Ok(behind)
        })
        .await;
        let behind = match behind {
            Ok(Ok(behind)) => behind,
            Ok(Err(error)) => return self.bookkeeping_error("find the standbys to sync", &error),
            Err(error) => return self.bookkeeping_error("find the standbys to sync", &error),
        };
        for (standby, primary, target) in behind {
            if self.syncing.contains(&standby) {
                continue;
            }
            let retry_later = self
                .sync_failed
                .get(&standby)
                .is_some_and(|(failed, at)| *failed == target && (now - *at).to_std().unwrap_or_default() < SYNC_RETRY);
            if retry_later {
                continue;
            }
            tracing::info!("standby '{standby}': autorestore to snapshot '{target}' of '{primary}' started");
            self.syncing.insert(standby.clone());
            let runner = Arc::clone(&self.runner);
            self.syncs.spawn_blocking(move || {
                let result = runner.sync_standby(&standby);
                SyncDone { standby, primary, target, result }
            });
        }
    }

    fn record_sync(&mut self, done: SyncDone) {
        self.syncing.remove(&done.standby);
        let outcome = match done.result {
            Ok(synced) => {
                tracing::info!(
                    "standby '{}': at snapshot '{}' ({}, {} bytes moved)",
                    done.standby,
                    synced.snapshot,
                    synced.mode,
                    synced.bytes
                );
                self.sync_failed.remove(&done.standby);
                StandbySyncOutcome {
                    standby: done.standby,
                    primary: done.primary,
                    target: done.target,
                    ok: true,
                    synced: Some(synced),
                    error: None,
                }
            }
            Err(error) => {
                let text = crate::error::chain(&error);
                if error.is_busy() {
                    tracing::warn!("standby '{}': autorestore skipped: {text}", done.standby);
                } else {
                    tracing::error!("standby '{}': autorestore failed: {text}", done.standby);
                    self.sync_failed.insert(done.standby.clone(), (done.target.clone(), self.now()));
                }
                StandbySyncOutcome {
                    standby: done.standby,
                    primary: done.primary,
                    target: done.target,
                    ok: false,
                    synced: None,
                    error: Some(text),
                }
            }
        };
        if let Some(finished) = &mut self.finished_syncs {
            finished.push(outcome);
        }
    }

    /// Ends the runs a dead daemon left `running` (counted as failures).
    pub async fn reap_interrupted(&mut self) {
        let catalog = Arc::clone(&self.catalog);
        let now = self.now();
        let reaped = tokio::task::spawn_blocking(move || execute::lock(&catalog).reap_interrupted_runs(now)).await;
        match reaped {
            Ok(Ok(runs)) => {
                for run in runs {
                    tracing::warn!(
                        "schedule '{}': run {} (pid {}, started {}) was interrupted; counted as failed",
                        run.schedule,
                        run.id,
                        run.owner.pid,
                        run.started_at
                    );
                }
            }
            Ok(Err(error)) => self.bookkeeping_error("end interrupted runs", &error),
            Err(error) => self.bookkeeping_error("end interrupted runs", &error),
        }
    }

    /// Looks at every schedule at `now`: records and starts each due run
    /// (recording a skip instead while the schedule's previous run still
    /// runs) and reports when the next schedule fires.
    #[tracing::instrument(name = "tick", skip(self), fields(at = %now))]
    pub async fn tick(&mut self, now: DateTime<Utc>) -> TickReport {
        self.stats.ticks += 1;
        self.first_seen.retain(|name, _| self.schedules.contains_key(name));
        for name in self.schedules.keys() {
            self.first_seen.entry(name.clone()).or_insert(now);
        }
        let schedules = self.schedules.clone();
        let first_seen = self.first_seen.clone();
        let catalog = Arc::clone(&self.catalog);
        let owner = self.owner.clone();
        let origin = self.origin;
        let planned =
            tokio::task::spawn_blocking(move || plan(&catalog, &schedules, &first_seen, &owner, origin, now)).await;
        let mut report = TickReport { at: now, ..TickReport::default() };
        let planned = match planned {
            Ok(planned) => planned,
            Err(error) => {
                self.bookkeeping_error("plan the due runs", &error);
                report.errors.push(crate::error::chain(&error));
                return report;
            }
        };
        for planned in planned {
            match planned {
                Planned::NotDue { name, next } => {
                    report.next = earliest(report.next, next);
                    report.not_due.push(NotDue { schedule: name, next_run: next });
                }
                Planned::Start { request, id, next } => {
                    report.next = earliest(report.next, next);
                    self.note_missed(&request.schedule, request.missed, &mut report);
                    tracing::info!(
                        "schedule '{}': run {id} of environment '{}' started",
                        request.schedule,
                        request.env
                    );
                    report.started.push(request.schedule.clone());
                    self.stats.started += 1;
                    self.spawn(request, id);
                }
                Planned::Skipped { executed, next } => {
                    report.next = earliest(report.next, next);
                    let run = &executed.report;
                    self.note_missed(&run.schedule, run.missed, &mut report);
                    tracing::warn!(
                        "schedule '{}': run {} skipped: {}",
                        run.schedule,
                        run.run,
                        run.error.as_deref().unwrap_or("the previous run still runs")
                    );
                    self.stats.skipped_overlap += 1;
                    report.skipped.push(executed.report.clone());
                    if let Some(finished) = &mut self.finished {
                        finished.push(executed.report);
                    }
                }
                Planned::Error { name, error } => {
                    tracing::error!("schedule '{name}': {error}");
                    self.stats.errors += 1;
                    report.errors.push(format!("schedule '{name}': {error}"));
                }
            }
        }
        self.autorestore(now).await;
        self.guard_fences().await;
        self.renew_leases().await;
        report
    }

    /// Waits for the next run (or autorestore sync) to end and records it;
    /// `None` when nothing is in progress.
    pub async fn join_next(&mut self) -> Option<()> {
        tokio::select! {
            Some(done) = self.runs.join_next(), if !self.runs.is_empty() => match done {
                Ok(done) => self.record(done),
                // carry_out catches panics, so only a cancelled task ends here.
                Err(error) => self.bookkeeping_error("finish a run", &error),
            },
            Some(done) = self.syncs.join_next(), if !self.syncs.is_empty() => match done {
                Ok(done) => self.record_sync(done),
                Err(error) => {
                    // A panic in the runner: the standby it ran for is unknown here.
                    self.syncing.clear();
                    self.bookkeeping_error("finish a standby sync", &error);
                }
            },
            else => return None,
        }
        Some(())
    }

    /// Counts and logs a finished run.
    pub fn record(&mut self, done: RunDone) {
        let executed = match done.result {
            Ok(executed) => executed,
            Err(error) => {
                tracing::error!(
                    "schedule '{}': cannot record how run {} ended: {}",
                    done.schedule,
                    done.run,
                    crate::error::chain(&error)
                );
                self.stats.errors += 1;
                return;
            }
        };
        let run = &executed.report;
        match run.result {
            RunState::Succeeded => {
                self.stats.succeeded += 1;
                tracing::info!(
                    "schedule '{}': run {} took snapshot '{}'",
                    run.schedule,
                    run.run,
                    run.snapshot.as_deref().unwrap_or("?")
                );
                if let Some(retention) = &run.retention {
                    tracing::info!(
                        "schedule '{}': retention kept {}, deleted {}, deferred {}, failed {}",
                        run.schedule,
                        retention.kept.len(),
                        retention.deleted.len(),
                        retention.deferred.len(),
                        retention.failed.len()
                    );
                }
                let retention_failed = run.retention_error.is_some()
                    || run.retention.as_ref().is_some_and(|retention| !retention.failed.is_empty());
                if retention_failed {
                    self.stats.retention_failures += 1;
                    let why =
                        run.retention_error.clone().or_else(|| run.retention.as_ref().and_then(|r| r.tally().error));
                    tracing::error!("schedule '{}': retention failed: {}", run.schedule, why.unwrap_or_default());
                }
            }
            RunState::SkippedOverlap => {
                self.stats.skipped_overlap += 1;
                tracing::warn!(
                    "schedule '{}': run {} skipped: {}",
                    run.schedule,
                    run.run,
                    run.error.as_deref().unwrap_or("")
                );
            }
            RunState::Failed | RunState::Running => {
                self.stats.failed += 1;
                tracing::error!(
                    "schedule '{}': run {} failed: {}",
                    run.schedule,
                    run.run,
                    run.error.as_deref().unwrap_or("")
                );
            }
        }
        if let Some(finished) = &mut self.finished {
            finished.push(executed.report);
        }
    }

    fn spawn(&mut self, request: RunRequest, id: ScheduleRunId) {
        let catalog = Arc::clone(&self.catalog);
        let runner = Arc::clone(&self.runner);
        let now = Arc::clone(&self.now);
        self.runs.spawn_blocking(move || {
            let result = execute::carry_out(&catalog, runner.as_ref(), id, &request, &now);
            RunDone { schedule: request.schedule, run: id, result }
        });
    }

    fn note_missed(&mut self, schedule: &str, missed: u32, report: &mut TickReport) {
        if missed > 0 {
            tracing::warn!("schedule '{schedule}': {missed} runs were missed; one run catches up, none are replayed");
            self.stats.missed += u64::from(missed);
            report.missed += missed;
        }
    }

    fn bookkeeping_error(&mut self, what: &str, error: &dyn std::error::Error) {
        tracing::error!("cannot {what}: {}", crate::error::chain(error));
        self.stats.errors += 1;
    }
}

fn earliest(current: Option<DateTime<Utc>>, candidate: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(current.map_or(candidate, |current| current.min(candidate)))
}

/// Decides and records the due runs at `now`, on a blocking thread.
///
/// A schedule that never ran: an interval runs at once; a cron expression
/// waits for its first fire time after the scheduler first saw it (so the
/// daemon that starts at 01:30 runs "0 2 * * *" at 02:00 that day).
fn plan(
    catalog: &Mutex<Catalog>,
    schedules: &BTreeMap<String, Schedule>,
    first_seen: &BTreeMap<String, DateTime<Utc>>,
    owner: &Owner,
    origin: RunOrigin,
    now: DateTime<Utc>,
) -> Vec<Planned> {
    let mut planned = Vec::with_capacity(schedules.len());
    for (name, schedule) in schedules {
        let error =
            |error: &dyn std::error::Error| Planned::Error { name: name.clone(), error: crate::error::chain(error) };
        let waits_from = if schedule.cron.is_some() { first_seen.get(name).copied() } else { None };
        let last = match execute::lock(catalog).last_run(name) {
            Ok(last) => last.map(|run| run.started_at).or(waits_from),
            Err(e) => {
                planned.push(error(&e));
                continue;
            }
        };
        let due = match due_runs(schedule, last, now) {
            Ok(due) => due,
            Err(e) => {
                planned.push(error(&e));
                continue;
            }
        };
        if !due.run_now {
            planned.push(Planned::NotDue { name: name.clone(), next: due.next });
            continue;
        }
        let request = RunRequest {
            schedule: name.clone(),
            env: schedule.environment.clone(),
            retention: schedule.retention,
            origin,
            started_at: now,
            missed: due.missed,
        };
        planned.push(match execute::begin(catalog, &request, owner) {
            Ok(Began::Started(id)) => Planned::Start { request, id, next: due.next },
            Ok(Began::Skipped(executed)) => Planned::Skipped { executed, next: due.next },
            Err(e) => error(&e),
        });
    }
    planned
}
