//! What `envclone status` reports: for each configured environment its
//! newest complete snapshot (name, age, consistency), how many it has, and
//! each of its schedules with the next and last run and the counters; and
//! each standby with its primary, restored point and lag; and every
//! operation interrupted (or failed with undos left) that touches them.
//!
//! The report types are `#[non_exhaustive]` and serialized field by field,
//! so later issues add sections (clones, standbys) without breaking
//! readers of the JSON.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{
    Catalog, CatalogError, Consistency, Operation, RunOrigin, RunState, ScheduleCounters, ScheduleRun, Snapshot,
    SnapshotState, VmConsistency,
};
use crate::config::{Config, Retention, Schedule};
use crate::schedule::due_runs;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatusReport {
    pub generated_at: DateTime<Utc>,
    pub environments: Vec<EnvironmentStatus>,
    /// Each standby of the environments shown: its primary, its newest
    /// restored point and that point's age (`lag_seconds`, the RPO now).
    pub standbys: Vec<crate::ops::standby::StandbySummary>,
    /// Each environment a standby serves now (a role switch in force): the
    /// active side, the epoch, each primary domain's fence, every return
    /// of an old primary and what the fence guard did in this check.
    /// Filled by `envclone status`, which runs the guard first.
    pub failovers: Vec<crate::ops::failover::SwitchStatus>,
    /// Operations interrupted (their process gone) or failed with undos
    /// left, that touch the environments shown: `envclone recover ENV`
    /// finishes or rolls them back.
    pub interrupted: Vec<Operation>,
    /// The start gate's leases renewed (or withheld, for an environment
    /// failed over) on each host of `[hosts]`. Filled by `envclone status`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::host::gate::HostRenewal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EnvironmentStatus {
    pub name: String,
    /// The newest complete snapshot, scheduled or not.
    pub last_snapshot: Option<SnapshotStatus>,
    /// Complete snapshots.
    pub snapshots: usize,
    pub schedules: Vec<ScheduleStatus>,
    /// Failed runs over all of the environment's schedules.
    pub failures: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SnapshotStatus {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub age_seconds: i64,
    pub schedule: Option<String>,
    pub memory: bool,
    /// "app-consistent", or the weakest consistency and the VMs that have it
    /// ("crash-consistent: db").
    pub consistency: String,
    pub vms: Vec<VmConsistency>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScheduleStatus {
    pub name: String,
    /// "cron 0 2 * * *" or "every 6h".
    pub trigger: String,
    pub retention: Retention,
    /// When it fires next; now if it is due.
    pub next_run: Option<DateTime<Utc>>,
    pub due: bool,
    pub last_run: Option<LastRun>,
    pub counters: ScheduleCounters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LastRun {
    pub run: i64,
    pub origin: RunOrigin,
    pub result: RunState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    pub retention_error: Option<String>,
}

/// The report at `now` for every environment in `config` (or only `only`).
pub fn build(
    config: &Config,
    catalog: &Catalog,
    now: DateTime<Utc>,
    only: Option<&str>,
) -> Result<StatusReport, CatalogError> {
    let mut environments = Vec::new();
    for name in config.environments.keys().filter(|name| only.map_or(true, |only| only == name.as_str())) {
        let snapshots: Vec<Snapshot> =
            catalog.snapshots(name)?.into_iter().filter(|s| s.state == SnapshotState::Complete).collect();
        let last_snapshot = snapshots.iter().max_by_key(|s| (s.created_at, s.id)).map(|s| snapshot_status(s, now));
        let mut schedules = Vec::new();
        for (schedule_name, schedule) in config.schedules.iter().filter(|(_, s)| s.environment == *name) {
            schedules.push(schedule_status(catalog, schedule_name, schedule, now)?);
        }
        environments.push(EnvironmentStatus {
            name: name.clone(),
            last_snapshot,
            snapshots: snapshots.len(),
            failures: schedules.iter().map(|s| s.counters.failures).sum(),
            schedules,
        });
    }
    let standbys = crate::ops::standby::summaries(catalog, only, now)?;
    let mut interrupted = crate::ops::recover::pending(catalog)?;
    interrupted.retain(|op| only.map_or(true, |env| op.touches_env(env)));
    Ok(StatusReport {
        generated_at: now,
        environments,
        standbys,
        failovers: Vec::new(),
        interrupted,
        leases: Vec::new(),
    })
}

fn snapshot_status(snapshot: &Snapshot, now: DateTime<Utc>) -> SnapshotStatus {
    SnapshotStatus {
        name: snapshot.name.clone(),
        created_at: snapshot.created_at,
        age_seconds: (now - snapshot.created_at).num_seconds(),
        schedule: snapshot.schedule.clone(),
        memory: snapshot.memory,
        consistency: consistency_summary(&snapshot.vms),
        vms: snapshot.vms.clone(),
    }
}

/// "app-consistent" when every VM is; else the weakest level and its VMs.
pub fn consistency_summary(vms: &[VmConsistency]) -> String {
    let rank = |c: Consistency| match c {
        Consistency::AppConsistent => 0,
        Consistency::CrashConsistent => 1,
        Consistency::None => 2,
    };
    let Some(weakest) = vms.iter().map(|vm| vm.consistency).max_by_key(|c| rank(*c)) else {
        return "unknown".to_owned();
    };
    if weakest == Consistency::AppConsistent {
        return weakest.as_str().to_owned();
    }
    let names: Vec<&str> = vms.iter().filter(|vm| vm.consistency == weakest).map(|vm| vm.vm.as_str()).collect();
    format!("{}: {}", weakest.as_str(), names.join(", "))
}

fn schedule_status(
    catalog: &Catalog,
    name: &str,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<ScheduleStatus, CatalogError> {
    let last = catalog.last_run(name)?;
    let due = due_runs(schedule, last.as_ref().map(|run| run.started_at), now).ok();
    let trigger = match (&schedule.cron, schedule.every) {
        (Some(cron), _) => format!("cron {cron}"),
        (None, Some(every)) => format!("every {every}"),
        (None, None) => "none".to_owned(),
    };
    Ok(ScheduleStatus {
        name: name.to_owned(),
        trigger,
        retention: schedule.retention,
        next_run: due.map(|due| if due.run_now { now } else { due.next }),
        due: due.is_some_and(|due| due.run_now),
        last_run: last.map(last_run),
        counters: catalog.counters(name)?,
    })
}

fn last_run(run: ScheduleRun) -> LastRun {
    LastRun {
        run: run.id.0,
        origin: run.origin,
        result: run.state,
        started_at: run.started_at,
        finished_at: run.finished_at,
        snapshot: run.snapshot,
        error: run.error,
        retention_error: run.retention.error,
    }
}

/// "3d 4h", "2h 5m", "42s": an age for people.
pub fn human_age(seconds: i64) -> String {
    if seconds < 0 {
        return "in the future".to_owned();
    }
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{NewRun, NewSnapshot, OperationKind, Owner, RetentionTally, RunEnd};
    use crate::config::{Controller, Environment};
    use chrono::TimeZone;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, hour, minute, 0).unwrap()
    }

    fn config() -> Config {
        let nightly = Schedule {
            environment: "prod".into(),
            cron: Some("0 2 * * *".into()),
            every: None,
            memory: false,
            retention: Retention { last: Some(3), ..Retention::default() },
        };
        Config {
            controller: Controller::new("/k", "/h"),
            environments: [("prod".to_owned(), Environment::default()), ("test".to_owned(), Environment::default())]
                .into(),
            schedules: [("nightly".to_owned(), nightly)].into(),
            standbys: Default::default(),
            hosts: Default::default(),
            lab: None,
        }
    }

    fn vm(name: &str, consistency: Consistency) -> VmConsistency {
        VmConsistency { vm: name.into(), consistency, reason: None }
    }

    #[test]
    fn consistency_summary_names_the_weakest_vms() {
        let all_app = [vm("db", Consistency::AppConsistent), vm("web", Consistency::AppConsistent)];
        let mixed = [vm("db", Consistency::CrashConsistent), vm("web", Consistency::AppConsistent)];

        assert_eq!(consistency_summary(&all_app), "app-consistent");
        assert_eq!(consistency_summary(&mixed), "crash-consistent: db");
        assert_eq!(consistency_summary(&[]), "unknown");
    }

    #[test]
    fn human_ages() {
        assert_eq!(human_age(42), "42s");
        assert_eq!(human_age(125), "2m");
        assert_eq!(human_age(3 * 3600 + 120), "3h 2m");
        assert_eq!(human_age(2 * 86_400 + 5 * 3600), "2d 5h");
        assert_eq!(human_age(-5), "in the future");
    }

    #[test]
    fn status_shows_the_last_snapshot_its_age_and_the_schedules_runs() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let new = |name: &str, hour| NewSnapshot {
            env: "prod".into(),
            name: name.into(),
            label: None,
            schedule: Some("nightly".into()),
            created_at: at(hour, 0),
            memory: false,
        };
        for (name, hour) in [("s1", 1), ("s2", 2)] {
            let id = catalog.create_snapshot(&new(name, hour)).unwrap();
            catalog.record_vm_consistency(id, &vm("web", Consistency::AppConsistent)).unwrap();
            catalog.set_snapshot_state(id, SnapshotState::Complete).unwrap();
        }
        catalog.create_snapshot(&new("in-progress", 3)).unwrap();
        let run = NewRun {
            schedule: "nightly".into(),
            env: "prod".into(),
            origin: RunOrigin::Daemon,
            started_at: at(2, 0),
            missed: 1,
            owner: Owner::current(),
        };
        let crate::catalog::Begun::Started(id) = catalog.begin_run(&run).unwrap() else { panic!("overlap") };
        catalog
            .finish_run(
                id,
                &RunEnd::Succeeded { snapshot: "s2".into(), retention: RetentionTally::default() },
                at(2, 1),
            )
            .unwrap();

        let report = build(&config(), &catalog, at(5, 0), None).unwrap();

        assert_eq!(report.environments.len(), 2);
        let prod = &report.environments[0];
        assert_eq!(prod.snapshots, 2);
        let last = prod.last_snapshot.as_ref().unwrap();
        assert_eq!(
            (last.name.as_str(), last.age_seconds, last.consistency.as_str()),
            ("s2", 3 * 3600, "app-consistent")
        );
        let nightly = &prod.schedules[0];
        assert_eq!(nightly.trigger, "cron 0 2 * * *");
        assert_eq!(nightly.next_run, Some(Utc.with_ymd_and_hms(2024, 5, 2, 2, 0, 0).unwrap()));
        assert!(!nightly.due);
        assert_eq!(nightly.last_run.as_ref().map(|r| r.result), Some(RunState::Succeeded));
        assert_eq!((nightly.counters.runs, nightly.counters.missed, nightly.counters.failures), (1, 1, 0));
        let test = &report.environments[1];
        assert_eq!((test.last_snapshot.as_ref(), test.snapshots, test.schedules.len()), (None, 0, 0));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["environments"][0]["schedules"][0]["last_run"]["result"], "succeeded");
        assert_eq!(json["environments"][0]["last_snapshot"]["age_seconds"], 3 * 3600);
    }

    #[test]
    fn status_shows_an_interrupted_operation_under_every_environment_it_touches() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let mut gone = Owner::current();
        gone.start_ticks = gone.start_ticks.map(|ticks| ticks + 1);
        let clone = catalog.begin_operation(OperationKind::Clone, "x", &gone, at(2, 0)).unwrap();
        catalog.also_touches(clone, "prod").unwrap();
        let live = catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(2, 0)).unwrap();

        let prod = build(&config(), &catalog, at(5, 0), Some("prod")).unwrap();
        let test = build(&config(), &catalog, at(5, 0), Some("test")).unwrap();
        let all = build(&config(), &catalog, at(5, 0), None).unwrap();

        let ids = |report: &StatusReport| report.interrupted.iter().map(|o| o.id).collect::<Vec<_>>();
        assert_eq!(ids(&prod), [clone], "a live operation is not interrupted: {live}");
        assert_eq!(
            (prod.interrupted[0].env.as_str(), prod.interrupted[0].touches.as_slice()),
            ("x", &["prod".to_owned()][..])
        );
        assert_eq!(ids(&test), []);
        assert_eq!(ids(&all), [clone]);
        let json = serde_json::to_value(&prod).unwrap();
        assert_eq!(json["interrupted"][0]["kind"], "clone");
    }

    #[test]
    fn status_can_be_limited_to_one_environment() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();

        let report = build(&config(), &catalog, at(5, 0), Some("test")).unwrap();

        assert_eq!(report.environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["test"]);
    }
}
