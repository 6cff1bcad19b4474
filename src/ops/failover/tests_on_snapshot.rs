//! A manual snapshot as the signal to fail back ([`super::on_snapshot`]),
//! on the harness of `tests.rs`: which snapshots trigger a failback, and
//! that the failback runs after the snapshot is recorded, with both
//! reports, and never after a snapshot that failed.

use super::on_snapshot::{self, Sides, Snapshotted};
use super::*;
use crate::catalog::FailoverState;
use crate::ops::snapshot::{SnapshotError, SnapshotRequest};
use crate::ops::{EnvLock, LockError};

impl Harness {
    /// sb's config sets `failback_on_manual_snapshot` as `on`.
    fn failback_on_snapshot(&mut self, on: bool) {
        let storage = self.standby().storage;
        self.config.standbys.insert(
            "sb".into(),
            crate::config::Standby {
                primary: "demo".into(),
                storage,
                autorestore: true,
                network: crate::config::StandbyNetwork::default(),
                failback_on_manual_snapshot: on,
                host: None,
            },
        );
    }

    fn switches(&self) -> Vec<SwitchStatus> {
        let hosts = BTreeMap::from([("qemu:///system".to_owned(), PrimaryHost::Answers(&self.hv))]);
        guard(&self.catalog, "qemu:///system", &hosts, None, at(45)).unwrap()
    }
}

fn manual() -> SnapshotRequest {
    SnapshotRequest { env: "demo".into(), label: None, memory: false, quiesce: None, schedule: None }
}

#[test]
fn a_manual_snapshot_of_an_environment_its_standby_serves_fails_back_when_the_standby_says_so() {
    let mut h = Harness::new();
    h.planned(true).unwrap();
    h.failback_on_snapshot(true);

    let sides = on_snapshot::sides(&h.config, h.switches(), "demo", false);

    assert_eq!(sides.failback_from.as_deref(), Some("sb"));
    assert_eq!(sides.served.len(), 1);
}

#[test]
fn a_scheduled_snapshot_or_a_standby_without_the_setting_fails_nothing_back() {
    let mut h = Harness::new();
    h.planned(true).unwrap();
    h.failback_on_snapshot(true);
    let scheduled = on_snapshot::sides(&h.config, h.switches(), "demo", true);
    h.failback_on_snapshot(false);

    let without = on_snapshot::sides(&h.config, h.switches(), "demo", false);

    assert_eq!((scheduled.failback_from, without.failback_from), (None, None));
    assert_eq!((scheduled.served.len(), without.served.len()), (1, 1), "sb serves all the same");
}

#[test]
fn a_snapshot_of_another_environment_fails_nothing_back() {
    let mut h = Harness::new();
    h.planned(true).unwrap();
    h.failback_on_snapshot(true);

    let sides = on_snapshot::sides(&h.config, h.switches(), "other", false);

    assert_eq!(sides.failback_from, None);
}

#[test]
fn a_switch_failing_back_serves_nothing_and_triggers_nothing() {
    let mut h = Harness::new();
    h.planned(true).unwrap();
    h.failback_on_snapshot(true);
    let id = h.catalog.active_switch("demo").unwrap().unwrap().id;
    h.catalog.set_switch_state(id, FailoverState::Active, FailoverState::FailingBack).unwrap();

    let sides = on_snapshot::sides(&h.config, h.switches(), "demo", false);

    assert_eq!(sides, Sides { served: Vec::new(), failback_from: None });
}

/// What the failback of [`on_snapshot::take`] was asked, and the snapshots
/// recorded by then; it fails, so no report has to be made up.
#[derive(Debug)]
enum Failed {
    Snapshot(SnapshotError),
    Failback { request: DrillRequest, snapshots: usize },
}

impl From<SnapshotError> for Failed {
    fn from(error: SnapshotError) -> Self {
        Failed::Snapshot(error)
    }
}

#[test]
fn without_a_trigger_the_snapshot_is_taken_and_nothing_fails_back() {
    let h = Harness::new();

    let taken = h.with_context(|ctx| {
        on_snapshot::take(ctx, &manual(), &FakeQuiescer::healthy(), None, |_| -> Result<FailbackReport, Failed> {
            unreachable!("no failback without a trigger")
        })
    });

    let Ok(Snapshotted::Taken(report)) = taken else { panic!("{taken:?}") };
    assert_eq!(h.catalog.snapshots("demo").unwrap().last().unwrap().name, report.name);
}

#[test]
fn a_triggered_failback_runs_after_the_snapshot_is_recorded_and_from_the_standby_named() {
    let h = Harness::new();
    let before = h.catalog.snapshots("demo").unwrap().len();

    let result = h.with_context(|ctx| {
        on_snapshot::take(
            ctx,
            &manual(),
            &FakeQuiescer::healthy(),
            Some("sb"),
            |request| -> Result<FailbackReport, Failed> {
                let snapshots = h.catalog.snapshots("demo").unwrap().len();
                Err(Failed::Failback { request: request.clone(), snapshots })
            },
        )
    });

    let Err(Failed::Failback { request, snapshots }) = result else { panic!("{result:?}") };
    assert_eq!((request.env.as_str(), request.standby.as_deref()), ("demo", Some("sb")));
    assert_eq!(snapshots, before + 1, "the snapshot is recorded before the failback");
    let notes: Vec<String> = h.events.lock().unwrap().iter().map(ToString::to_string).collect();
    assert!(notes.iter().any(|n| n.contains("standby sb fails back on a manual snapshot")), "{notes:?}");
}

#[test]
fn a_snapshot_that_fails_triggers_no_failback() {
    let h = Harness::new();
    let _held = EnvLock::acquire(&h.config.controller.state_dir, "demo", "test").unwrap();

    let result = h.with_context(|ctx| {
        on_snapshot::take(ctx, &manual(), &FakeQuiescer::healthy(), Some("sb"), |_| -> Result<FailbackReport, Failed> {
            unreachable!("no failback after a failed snapshot")
        })
    });

    assert!(matches!(result, Err(Failed::Snapshot(SnapshotError::Lock(LockError::Busy(_))))), "{result:?}");
}
