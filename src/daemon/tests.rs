//! The scheduler with a fake runner and a fake clock: ticks are driven
//! directly at chosen times, nothing sleeps to wait for a schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::{mpsc, watch};

use super::retention::{DeferredDelete, RetentionResult};
use super::*;
use crate::catalog::{Catalog, FailoverMode, FailoverState, RunState, ScheduleCounters};
use crate::config::{Retention, Schedule};

fn at(hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, hour, minute, 0).unwrap()
}

fn every(env: &str, interval: &str) -> Schedule {
    Schedule {
        environment: env.into(),
        cron: None,
        every: Some(interval.parse().unwrap()),
        memory: false,
        retention: Retention { last: Some(2), ..Retention::default() },
    }
}

fn cron(env: &str, expr: &str) -> Schedule {
    Schedule { cron: Some(expr.into()), every: None, ..every(env, "1h") }
}

/// A clock the test sets.
#[derive(Debug, Clone)]
struct FakeClock(Arc<SetClock>);

#[derive(Debug)]
struct SetClock(Mutex<DateTime<Utc>>);

impl crate::ops::context::Clock for SetClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

impl FakeClock {
    fn at(time: DateTime<Utc>) -> Self {
        FakeClock(Arc::new(SetClock(Mutex::new(time))))
    }

    fn set(&self, time: DateTime<Utc>) {
        *self.0 .0.lock().unwrap() = time;
    }

    fn now(&self) -> Now {
        self.0.clone()
    }
}

/// Holds the runner's snapshots until opened.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
    }
}

/// A recording runner with named scenarios.
#[derive(Debug, Default)]
struct FakeRunner {
    snapshots: Mutex<Vec<(String, String)>>,
    retentions: Mutex<Vec<(String, Retention)>>,
    failing: BTreeSet<String>,
    busy: BTreeSet<String>,
    panicking: bool,
    gate: Option<Arc<Gate>>,
    retention: RetentionResult,
    retention_failing: bool,
    standby_syncs: Mutex<Vec<String>>,
    guards: Mutex<u64>,
    lease_renewals: Mutex<u64>,
}

impl FakeRunner {
    fn succeeding() -> Self {
        Self::default()
    }

    fn failing_for(env: &str) -> Self {
        Self { failing: BTreeSet::from([env.to_owned()]), ..Self::default() }
    }

    fn busy_for(env: &str) -> Self {
        Self { busy: BTreeSet::from([env.to_owned()]), ..Self::default() }
    }

    fn panicking() -> Self {
        Self { panicking: true, ..Self::default() }
    }

    fn blocked_until(gate: Arc<Gate>) -> Self {
        Self { gate: Some(gate), ..Self::default() }
    }

    fn deleting(retention: RetentionResult) -> Self {
        Self { retention, ..Self::default() }
    }

    fn with_failing_retention() -> Self {
        Self { retention_failing: true, ..Self::default() }
    }

    fn snapshot_calls(&self) -> Vec<(String, String)> {
        self.snapshots.lock().unwrap().clone()
    }
}

impl ScheduledRunner for FakeRunner {
    fn snapshot(&self, env: &str, schedule: &str) -> Result<RunResult, RunError> {
        let count = {
            let mut calls = self.snapshots.lock().unwrap();
            calls.push((env.to_owned(), schedule.to_owned()));
            calls.len()
        };
        if let Some(gate) = &self.gate {
            gate.wait();
        }
        assert!(!self.panicking, "the fake runner panics");
        if self.busy.contains(env) {
            return Err(RunError::Busy { env: env.into(), detail: "busy: restore started at x by pid 7".into() });
        }
        if self.failing.contains(env) {
            return Err(RunError::Command {
                command: "envclone snapshot".into(),
                code: 4,
                message: format!("environment '{env}': no domain named {env}-web"),
                hint: None,
            });
        }
        Ok(RunResult { snapshot: format!("{env}-{schedule}-{count}") })
    }

    fn apply_retention(&self, _env: &str, schedule: &str, policy: &Retention) -> Result<RetentionResult, RunError> {
        self.retentions.lock().unwrap().push((schedule.to_owned(), *policy));
        if self.retention_failing {
            return Err(RunError::Catalog(Box::new(crate::catalog::CatalogError::NotFound {
                what: "the snapshots of delete-snapshot".into(),
            })));
        }
        Ok(self.retention.clone())
    }

    fn sync_standby(&self, standby: &str) -> Result<StandbySynced, RunError> {
        self.standby_syncs.lock().unwrap().push(standby.to_owned());
        Ok(StandbySynced { snapshot: "newest".into(), mode: "incremental".into(), bytes: 1 })
    }

    fn guard_fences(&self) -> Result<Vec<String>, RunError> {
        *self.guards.lock().unwrap() += 1;
        Ok(vec!["returned-refenced domain web of demo".into()])
    }

    fn renew_leases(&self) -> Result<Vec<String>, RunError> {
        *self.lease_renewals.lock().unwrap() += 1;
        Ok(Vec::new())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    state_dir: std::path::PathBuf,
    clock: FakeClock,
    runner: Arc<FakeRunner>,
    scheduler: Scheduler,
}

impl Harness {
    fn new(schedules: &[(&str, Schedule)], runner: FakeRunner, start: DateTime<Utc>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_owned();
        let clock = FakeClock::at(start);
        let runner = Arc::new(runner);
        let schedules: BTreeMap<String, Schedule> =
            schedules.iter().map(|(name, schedule)| (name.to_string(), schedule.clone())).collect();
        let scheduler =
            Scheduler::new(schedules, Catalog::open(&state_dir).unwrap(), runner.clone(), clock.now()).keep_reports();
        Harness { _dir: dir, state_dir, clock, runner, scheduler }
    }

    /// Ticks at `time` and waits for the runs it started.
    async fn tick_and_wait(&mut self, time: DateTime<Utc>) -> TickReport {
        self.clock.set(time);
        let tick = self.scheduler.tick(time).await;
        while self.scheduler.join_next().await.is_some() {}
        tick
    }

    fn catalog(&self) -> Catalog {
        Catalog::open(&self.state_dir).unwrap()
    }

    fn counters(&self, schedule: &str) -> ScheduleCounters {
        self.catalog().counters(schedule).unwrap()
    }

    fn states(&self, schedule: &str) -> Vec<RunState> {
        let mut runs = self.catalog().schedule_runs(schedule, 100).unwrap();
        runs.reverse();
        runs.into_iter().map(|run| run.state).collect()
    }
}

#[tokio::test]
async fn due_runs_fire_and_not_due_ones_wait() {
    let schedules = [("hourly", every("prod", "1h")), ("nightly", cron("test", "0 2 * * *"))];
    let mut h = Harness::new(&schedules, FakeRunner::succeeding(), at(0, 30));

    let first = h.tick_and_wait(at(0, 30)).await;
    let early = h.tick_and_wait(at(1, 29)).await;
    let on_time = h.tick_and_wait(at(2, 0)).await;

    // An interval schedule that never ran runs at once; cron waits for 02:00.
    assert_eq!(first.started, ["hourly"]);
    assert_eq!(first.next, Some(at(1, 30)));
    assert!(early.started.is_empty());
    assert_eq!(early.next, Some(at(1, 30)));
    assert_eq!(on_time.started, ["hourly", "nightly"]);
    assert_eq!(h.runner.snapshot_calls().len(), 3);
    assert_eq!(h.states("hourly"), [RunState::Succeeded, RunState::Succeeded]);
    assert_eq!(h.counters("nightly").runs, 1);
    let last = h.catalog().last_run("hourly").unwrap().unwrap();
    assert_eq!((last.snapshot.as_deref(), last.started_at), (Some("prod-hourly-2"), at(2, 0)));
    assert_eq!(last.finished_at, Some(at(2, 0)));
}

#[tokio::test]
async fn missed_runs_are_counted_once_and_caught_up_by_one_run() {
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::succeeding(), at(0, 0));
    h.tick_and_wait(at(0, 0)).await;

    let late = h.tick_and_wait(at(5, 30)).await;
    let after = h.tick_and_wait(at(5, 31)).await;

    // Due at 1:00, 2:00, 3:00, 4:00 and 5:00: one run now, four missed.
    assert_eq!((late.started.len(), late.missed), (1, 4));
    assert_eq!((after.started.len(), after.missed), (0, 0));
    assert_eq!(h.runner.snapshot_calls().len(), 2);
    let counters = h.counters("hourly");
    assert_eq!((counters.missed, counters.runs), (4, 2));
    assert_eq!(h.scheduler.stats().missed, 4);
}

#[tokio::test]
async fn a_run_overlapping_the_previous_one_is_skipped_and_counted() {
    let gate = Arc::new(Gate::default());
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::blocked_until(gate.clone()), at(0, 0));
    let first = h.scheduler.tick(at(0, 0)).await;
    assert_eq!(first.started, ["hourly"]);

    let second = h.scheduler.tick(at(1, 0)).await;
    gate.open();
    while h.scheduler.join_next().await.is_some() {}

    assert!(second.started.is_empty());
    assert_eq!(second.skipped.len(), 1);
    assert_eq!(second.skipped[0].result, RunState::SkippedOverlap);
    assert_eq!(h.runner.snapshot_calls().len(), 1, "the skipped run must not be queued");
    assert_eq!(h.states("hourly"), [RunState::Succeeded, RunState::SkippedOverlap]);
    let counters = h.counters("hourly");
    assert_eq!((counters.overlapping, counters.runs, counters.failures), (1, 1, 0));
    // The skip is the schedule's last fire time: no retry storm right after.
    assert!(h.tick_and_wait(at(1, 1)).await.started.is_empty());
}

#[tokio::test]
async fn a_busy_environment_is_an_overlap_not_a_failure() {
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::busy_for("prod"), at(0, 0));

    h.tick_and_wait(at(0, 0)).await;

    assert_eq!(h.states("hourly"), [RunState::SkippedOverlap]);
    let counters = h.counters("hourly");
    assert_eq!((counters.overlapping, counters.failures), (1, 0));
    assert!(h.runner.retentions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_run_is_counted_and_the_loop_goes_on() {
    let schedules = [("broken", every("gone", "1h")), ("fine", every("prod", "1h"))];
    let mut h = Harness::new(&schedules, FakeRunner::failing_for("gone"), at(0, 0));

    h.tick_and_wait(at(0, 0)).await;
    let next = h.tick_and_wait(at(1, 0)).await;

    assert_eq!(next.started, ["broken", "fine"]);
    assert_eq!(h.states("broken"), [RunState::Failed, RunState::Failed]);
    assert_eq!(h.states("fine"), [RunState::Succeeded, RunState::Succeeded]);
    let counters = h.counters("broken");
    assert_eq!((counters.runs, counters.failures), (2, 2));
    assert!(counters.last_error.unwrap().contains("no domain named gone-web"));
    assert_eq!(h.scheduler.stats().failed, 2);
    assert!(h.runner.retentions.lock().unwrap().iter().all(|(schedule, _)| schedule == "fine"));
}

#[tokio::test]
async fn a_panicking_runner_is_a_failed_run_not_a_dead_daemon() {
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::panicking(), at(0, 0));

    h.tick_and_wait(at(0, 0)).await;
    h.tick_and_wait(at(1, 0)).await;

    assert_eq!(h.states("hourly"), [RunState::Failed, RunState::Failed]);
    assert!(h.counters("hourly").last_error.unwrap().contains("panicked"));
}

#[tokio::test]
async fn retention_runs_with_the_schedules_policy_and_deferred_deletes_are_counted() {
    let result = RetentionResult {
        kept: vec!["s3".into(), "s2".into()],
        deleted: vec!["s1".into()],
        deferred: vec![DeferredDelete { snapshot: "s0".into(), reason: "clone 'c' uses it".into() }],
        failed: vec![],
    };
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::deleting(result), at(0, 0));

    h.tick_and_wait(at(0, 0)).await;

    let policy = Retention { last: Some(2), ..Retention::default() };
    assert_eq!(*h.runner.retentions.lock().unwrap(), [("hourly".to_owned(), policy)]);
    let counters = h.counters("hourly");
    assert_eq!((counters.deleted, counters.deferred, counters.retention_failures), (1, 1, 0));
    let run = h.catalog().last_run("hourly").unwrap().unwrap();
    assert_eq!((run.retention.deleted, run.retention.deferred), (1, 1));
}

#[tokio::test]
async fn a_failing_retention_is_a_retention_failure_not_a_failed_run() {
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::with_failing_retention(), at(0, 0));

    h.tick_and_wait(at(0, 0)).await;

    assert_eq!(h.states("hourly"), [RunState::Succeeded]);
    let counters = h.counters("hourly");
    assert_eq!((counters.runs, counters.failures, counters.retention_failures), (1, 0, 1));
    let run = h.catalog().last_run("hourly").unwrap().unwrap();
    assert!(run.retention.error.unwrap().contains("delete-snapshot"));
    assert_eq!(h.scheduler.stats().retention_failures, 1);
}

#[tokio::test]
async fn shutdown_through_the_watch_channel_ends_the_loop_promptly() {
    // After its first run the schedule is an hour away, so the loop sleeps
    // (MAX_SLEEP): only shutdown can end it within the timeout.
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::succeeding(), at(3, 0));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (_reload_tx, reload_rx) = mpsc::channel(1);
    let state_dir = h.state_dir.clone();
    let sender = std::thread::spawn(move || {
        crate::wait::until::<_, crate::catalog::CatalogError, _>(
            "the first run to be recorded as finished",
            Duration::from_secs(10),
            Duration::from_millis(5),
            || {
                let run = Catalog::open(&state_dir)?.last_run("hourly")?;
                Ok(run.filter(|run| run.state != RunState::Running).map(drop))
            },
        )
        .unwrap();
        shutdown_tx.send(true).unwrap();
        shutdown_tx
    });

    let ended = tokio::time::timeout(
        Duration::from_secs(5),
        run_loop(&mut h.scheduler, shutdown_rx, reload_rx, None, Duration::from_secs(30)),
    )
    .await;

    assert!(ended.is_ok(), "the loop did not stop on shutdown");
    drop(sender.join().unwrap());
    assert_eq!(h.runner.snapshot_calls().len(), 1);
    assert_eq!(h.scheduler.in_flight(), 0);
}

#[tokio::test]
async fn a_cron_schedule_that_never_ran_fires_at_its_first_time_after_start() {
    let mut h = Harness::new(&[("nightly", cron("prod", "0 2 * * *"))], FakeRunner::succeeding(), at(1, 30));

    let before = h.tick_and_wait(at(1, 30)).await;
    let at_two = h.tick_and_wait(at(2, 0)).await;

    assert!(before.started.is_empty());
    assert_eq!(before.next, Some(at(2, 0)));
    assert_eq!((at_two.started.len(), at_two.missed), (1, 0));
}

#[tokio::test]
async fn shutdown_waits_for_the_runs_in_progress() {
    let gate = Arc::new(Gate::default());
    let mut h = Harness::new(&[("hourly", every("prod", "1h"))], FakeRunner::blocked_until(gate.clone()), at(0, 0));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (_reload_tx, reload_rx) = mpsc::channel(1);
    let opener = std::thread::spawn({
        let runner = h.runner.clone();
        move || {
            // Once the run is under way, ask to stop, then let the run finish.
            crate::wait::until::<_, std::io::Error, _>(
                "the run to start",
                Duration::from_secs(10),
                Duration::from_millis(5),
                || Ok((!runner.snapshot_calls().is_empty()).then_some(())),
            )
            .unwrap();
            shutdown_tx.send(true).unwrap();
            gate.open();
        }
    });

    run_loop(&mut h.scheduler, shutdown_rx, reload_rx, None, Duration::from_secs(30)).await;

    opener.join().unwrap();
    assert_eq!(h.scheduler.in_flight(), 0);
    assert_eq!(h.states("hourly"), [RunState::Succeeded]);
}

#[tokio::test]
async fn a_reload_replaces_the_schedules() {
    let mut h = Harness::new(&[("nightly", cron("prod", "0 2 * * *"))], FakeRunner::succeeding(), at(3, 0));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let mut reloaded = crate::config::Config {
        controller: crate::config::Controller::new("/k", "/h"),
        environments: Default::default(),
        schedules: Default::default(),
        standbys: Default::default(),
        hosts: Default::default(),
        lab: None,
    };
    reloaded.schedules.insert("often".into(), every("prod", "1h"));
    let reload: Reload = Arc::new(move || Ok(reloaded.clone()));
    let runner = h.runner.clone();
    let driver = tokio::spawn(async move {
        reload_tx.send(()).await.unwrap();
        // The reloaded interval schedule never ran, so it runs at once.
        while runner.snapshot_calls().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown_tx.send(true).unwrap();
    });

    tokio::time::timeout(
        Duration::from_secs(10),
        run_loop(&mut h.scheduler, shutdown_rx, reload_rx, Some(reload), Duration::from_secs(30)),
    )
    .await
    .expect("the loop ends");

    driver.await.unwrap();
    assert_eq!(h.runner.snapshot_calls(), [("prod".to_owned(), "often".to_owned())]);
}

#[test]
fn schedule_run_records_one_run_without_a_due_check() {
    let dir = tempfile::tempdir().unwrap();
    let schedules: BTreeMap<String, Schedule> = [("nightly".to_owned(), cron("prod", "0 2 * * *"))].into();
    let runner = FakeRunner::failing_for("prod");

    let executed =
        run_one(&schedules, "nightly", Catalog::open(dir.path()).unwrap(), &runner, FakeClock::at(at(9, 0)).now())
            .unwrap();

    assert_eq!(executed.report.result, RunState::Failed);
    assert!(matches!(executed.error, Some(RunError::Command { code: 4, .. })));
    let catalog = Catalog::open(dir.path()).unwrap();
    let run = catalog.last_run("nightly").unwrap().unwrap();
    assert_eq!((run.origin, run.started_at), (crate::catalog::RunOrigin::Command, at(9, 0)));
    assert_eq!(catalog.counters("nightly").unwrap().failures, 1);
}

#[test]
fn schedule_run_is_skipped_while_the_previous_run_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let schedules: BTreeMap<String, Schedule> = [("nightly".to_owned(), cron("prod", "0 2 * * *"))].into();
    let catalog = Catalog::open(dir.path()).unwrap();
    let previous = crate::catalog::NewRun {
        schedule: "nightly".into(),
        env: "prod".into(),
        origin: crate::catalog::RunOrigin::Daemon,
        started_at: at(8, 0),
        missed: 0,
        owner: crate::catalog::Owner::current(),
    };
    catalog.begin_run(&previous).unwrap();
    let runner = FakeRunner::succeeding();

    let executed = run_one(&schedules, "nightly", catalog, &runner, FakeClock::at(at(9, 0)).now()).unwrap();

    assert_eq!(executed.report.result, RunState::SkippedOverlap);
    assert!(runner.snapshot_calls().is_empty());
    let error =
        crate::Error::from(DaemonError::Run { schedule: "nightly".into(), run: 2, source: executed.error.unwrap() });
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::Busy);
    assert_eq!(Catalog::open(dir.path()).unwrap().counters("nightly").unwrap().overlapping, 1);
}

#[test]
fn schedule_run_refuses_an_unknown_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let schedules: BTreeMap<String, Schedule> = [("nightly".to_owned(), cron("prod", "0 2 * * *"))].into();

    let error = run_one(
        &schedules,
        "weekly",
        Catalog::open(dir.path()).unwrap(),
        &FakeRunner::succeeding(),
        FakeClock::at(at(9, 0)).now(),
    )
    .unwrap_err();

    assert!(
        matches!(&error, crate::Error::Daemon(e) if matches!(**e, DaemonError::UnknownSchedule { .. })),
        "{error:?}"
    );
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::NotFound);
}

/// A standby of `prod` (autorestore as given) and a complete snapshot `s1` of it.
fn standby_behind(catalog: &Catalog, autorestore: bool) {
    let snapshot = catalog
        .create_snapshot(&crate::catalog::NewSnapshot {
            env: "prod".into(),
            name: "s1".into(),
            label: None,
            schedule: None,
            created_at: at(1, 0),
            memory: false,
        })
        .unwrap();
    catalog.set_snapshot_state(snapshot, crate::catalog::SnapshotState::Complete).unwrap();
    catalog
        .add_standby(&crate::catalog::StandbyRecord {
            name: "sb".into(),
            primary: "prod".into(),
            host: "local".into(),
            storage: "/srv/sb".into(),
            autorestore,
            created_at: at(1, 0),
            snapshot: None,
            snapshot_created_at: None,
            synced_at: None,
            merging: None,
            resources: crate::catalog::StandbyResources::default(),
            disks: Vec::new(),
        })
        .unwrap();
}

#[tokio::test]
async fn a_tick_syncs_each_standby_behind_its_primary_once() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));
    standby_behind(&h.catalog(), true);

    h.tick_and_wait(at(2, 0)).await;

    assert_eq!(*h.runner.standby_syncs.lock().unwrap(), ["sb"]);
    let synced = h.scheduler.take_finished_syncs();
    assert!(synced.len() == 1 && synced[0].ok && synced[0].target == "s1", "{synced:?}");
}

#[tokio::test]
async fn a_standby_without_autorestore_is_left_alone() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));
    standby_behind(&h.catalog(), false);

    h.tick_and_wait(at(2, 0)).await;

    assert!(h.runner.standby_syncs.lock().unwrap().is_empty());
}

/// A role switch of `prod` to `sb` in force (epoch 1), whose home sync
/// recorded `resources`.
fn switched_over(catalog: &Catalog, resources: serde_json::Value) -> i64 {
    catalog
        .add_failover(&crate::catalog::NewFailover {
            env: "prod".into(),
            standby: "sb".into(),
            mode: FailoverMode::Unplanned,
            epoch: Some(1),
            state: FailoverState::Active,
            started_at: at(1, 30),
            environment: serde_json::json!({}),
            resources,
            report: serde_json::json!({}),
        })
        .unwrap()
}

#[tokio::test]
async fn while_roles_are_switched_each_tick_runs_the_fence_guard_and_autorestore_carries_home_once_per_snapshot() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));
    standby_behind(&h.catalog(), true);
    let switch = switched_over(&h.catalog(), serde_json::json!({ "fenced": [] }));

    h.tick_and_wait(at(2, 0)).await;
    h.scheduler.finish_guard().await;
    // What that home sync recorded: s1 is home.
    let home = serde_json::json!({ "fenced": [], "home_snapshot": "s1", "home_checked": "s1" });
    assert!(h.catalog().set_failover_resources(switch, FailoverState::Active, &home).unwrap());
    h.tick_and_wait(at(2, 1)).await;
    h.scheduler.finish_guard().await;

    assert_eq!(*h.runner.guards.lock().unwrap(), 2, "one guard per tick");
    assert_eq!(h.scheduler.guards_started, 2);
    assert_eq!(*h.runner.standby_syncs.lock().unwrap(), ["sb"], "one home sync, for s1");
}

#[tokio::test]
async fn a_serving_standby_whose_last_home_sync_saw_the_newest_snapshot_is_left_alone() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));
    standby_behind(&h.catalog(), true);
    // s1 cannot all be home (taken before a restore on sb), but was looked at.
    switched_over(&h.catalog(), serde_json::json!({ "fenced": [], "home_snapshot": "s0", "home_checked": "s1" }));

    h.tick_and_wait(at(2, 0)).await;
    h.scheduler.finish_guard().await;

    assert!(h.runner.standby_syncs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_switch_failing_back_is_not_carried_home_by_autorestore() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));
    standby_behind(&h.catalog(), true);
    let switch = switched_over(&h.catalog(), serde_json::json!({ "fenced": [] }));
    assert!(h.catalog().set_switch_state(switch, FailoverState::Active, FailoverState::FailingBack).unwrap());

    h.tick_and_wait(at(2, 0)).await;

    assert!(h.runner.standby_syncs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn without_a_switch_no_fence_guard_runs() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));

    h.tick_and_wait(at(2, 0)).await;
    h.scheduler.finish_guard().await;

    assert_eq!(*h.runner.guards.lock().unwrap(), 0);
}

#[tokio::test]
async fn with_hosts_each_tick_renews_the_gate_leases_once_per_interval() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));
    h.scheduler.set_lease_renewal(true);

    h.tick_and_wait(at(2, 0)).await;
    h.scheduler.finish_lease_renewal().await;
    h.tick_and_wait(at(2, 0)).await;
    h.scheduler.finish_lease_renewal().await;

    assert_eq!(*h.runner.lease_renewals.lock().unwrap(), 1, "a burst of ticks renews once");
    assert_eq!(h.scheduler.lease_renewals_started, 1);
}

#[tokio::test]
async fn without_hosts_no_lease_is_renewed() {
    let mut h = Harness::new(&[], FakeRunner::succeeding(), at(2, 0));

    h.tick_and_wait(at(2, 0)).await;
    h.scheduler.finish_lease_renewal().await;

    assert_eq!(*h.runner.lease_renewals.lock().unwrap(), 0);
}
