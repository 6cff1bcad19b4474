//! The snapshot operation on `FakeHypervisor` and a scripted [`Quiescer`]:
//! the barrier, the journal, the catalog and every failure path, without
//! libvirt or SSH.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::catalog::{Catalog, ImageKind, OperationState, StepState};
use crate::config::{AgentEndpoint, Config, Controller, HumanSize, Vm};
use crate::guest::agents::Quiescer;
use crate::guest::GuestError;
use crate::hypervisor::{Call, FakeHypervisor, FakeStep};
use crate::ops::context::{Event, FixedClock, OpContext};
use crate::test_support::{FakeHost, FakeNet, FakeQuiescer, FakeStorage};

const LIMIT: Duration = Duration::from_secs(5);

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 2, minute, 0).unwrap()
}

/// An environment `demo` of VMs `web` and `db` on `FakeHypervisor`.
struct Harness {
    _dir: tempfile::TempDir,
    state: PathBuf,
    config: Config,
    catalog: Catalog,
    hv: FakeHypervisor,
    events: Mutex<Vec<Event>>,
    /// What SIGTERM/SIGINT would set: a test sets it to interrupt the operation.
    interrupt: crate::ops::interrupt::Interrupt,
}

impl Harness {
    fn new(hv: FakeHypervisor) -> Self {
        Self::with_limit(hv, LIMIT)
    }

    fn with_limit(hv: FakeHypervisor, limit: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut controller = Controller::new("/k", "/h");
        controller.state_dir = state.clone();
        controller.min_free_space = HumanSize::from_bytes(1);
        let vms = ["web", "db"]
            .map(|name| (name.to_owned(), Vm { domain: name.to_owned(), agent: AgentEndpoint::new("10.0.0.1") }))
            .into();
        let env = crate::config::Environment { vms, freeze_timeout: limit.into(), ..Default::default() };
        let config = Config {
            controller,
            environments: BTreeMap::from([("demo".to_owned(), env)]),
            schedules: BTreeMap::new(),
            standbys: BTreeMap::new(),
            hosts: BTreeMap::new(),
            lab: None,
        };
        let catalog = Catalog::open(&state).unwrap();
        Harness { _dir: dir, state, config, catalog, hv, events: Mutex::new(Vec::new()), interrupt: Default::default() }
    }

    fn take(
        &self,
        request: &SnapshotRequest,
        quiescer: &dyn Quiescer,
        when: DateTime<Utc>,
    ) -> Result<SnapshotReport, SnapshotError> {
        let events = &self.events;
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());
        let clock = FixedClock(when);
        let (storage, net) = (FakeStorage::default(), FakeNet::default());
        let host = FakeHost::new(&self.hv, &storage, &net);
        let ctx = OpContext {
            config: &self.config,
            host: &host,
            hosts: &crate::host::HostRegistry::new().with(&host),
            catalog: &self.catalog,
            progress: &progress,
            clock: &clock,
            interrupt: &self.interrupt,
        };
        take(&ctx, request, quiescer)
    }

    fn storage(&self) -> PathBuf {
        self.state.join("images/demo")
    }

    fn disk_source(&self, domain: &str) -> PathBuf {
        self.hv.peek_domain(domain).unwrap().def.disks()[0].source.clone().unwrap()
    }

    fn snapshot_calls(&self) -> Vec<(String, ExternalSnapshot)> {
        self.hv
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::CreateSnapshot { domain, snapshot } => Some((domain, snapshot)),
                _ => None,
            })
            .collect()
    }

    fn only_operation(&self, state: OperationState) -> crate::catalog::Operation {
        let ops = self.catalog.operations_in(state).unwrap();
        assert_eq!(ops.len(), 1, "operations in {state}: {ops:?}");
        ops.into_iter().next().unwrap()
    }
}

fn request() -> SnapshotRequest {
    SnapshotRequest { env: "demo".into(), label: Some("nightly".into()), memory: false, quiesce: None, schedule: None }
}

use crate::hypervisor::ExternalSnapshot;

#[test]
fn snapshot_freezes_both_snapshots_each_vm_atomically_thaws_and_records() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents = FakeQuiescer::healthy();

    let report = h.take(&request(), &agents, at(0)).unwrap();

    assert_eq!(report.name, "20240501T020000Z");
    assert_eq!(report.label.as_deref(), Some("nightly"));
    assert!(report.vms.iter().all(|vm| vm.consistency == Consistency::AppConsistent && vm.reason.is_none()));
    assert!(report.freeze_window_ms.is_some());
    assert_eq!(report.freeze_limit_ms, 5000);
    // Both guests frozen before either disk was touched, thawed after.
    let events = agents.events();
    // Sessions open in parallel, so their order is free; both come before any freeze.
    let prepares: BTreeSet<&str> = events[..2].iter().map(String::as_str).collect();
    assert_eq!(prepares, BTreeSet::from(["prepare db", "prepare web"]), "{events:?}");
    let freezes: BTreeSet<&str> = events[2..4].iter().map(String::as_str).collect();
    assert_eq!(freezes, BTreeSet::from(["freeze db", "freeze web"]));
    assert!(agents.frozen().is_empty());
    // One atomic, disk-only, metadata-free snapshot per VM onto <storage>/<vm>/<name>.<disk>.qcow2.
    let calls = h.snapshot_calls();
    assert_eq!(calls.len(), 2);
    for (domain, snap) in &calls {
        assert!(snap.atomic && snap.no_metadata && !snap.quiesce && !snap.live && snap.memory_file.is_none());
        assert_eq!(snap.disks, [("vda".to_owned(), h.storage().join(domain).join("20240501T020000Z.vda.qcow2"))]);
        assert_eq!(h.disk_source(domain), snap.disks[0].1);
    }
    // The catalog: complete, app-consistent, the window; base pinned, overlay active on it.
    let snapshot = h.catalog.snapshot_named("demo", "20240501T020000Z").unwrap().unwrap();
    assert_eq!(snapshot.state, SnapshotState::Complete);
    assert_eq!(snapshot.vms.len(), 2);
    assert_eq!(snapshot.freeze_window.map(record::millis), report.freeze_window_ms);
    let base = h.catalog.image_by_path(Path::new("/images/web.qcow2")).unwrap().unwrap();
    assert_eq!(base.kind, ImageKind::Base);
    assert_eq!(h.catalog.dependents_of(base.id).unwrap(), [snapshot_dependent("demo", "20240501T020000Z")]);
    let overlay = h.catalog.image_by_path(&h.disk_source("web")).unwrap().unwrap();
    assert_eq!((overlay.kind, overlay.backing, overlay.snapshot), (ImageKind::Overlay, Some(base.id), None));
    // The journal: every step done, the operation completed.
    let op = h.only_operation(OperationState::Completed);
    let steps = h.catalog.steps(op.id).unwrap();
    assert!(steps.iter().all(|s| s.state == StepState::Done), "{steps:#?}");
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    for expected in ["preflight", "open agent sessions", "freeze web", "external disk snapshot of db", "thaw"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert!(
        matches!(&steps[names.iter().position(|n| *n == "freeze web").unwrap()].undo, UndoAction::ThawAgent { vm } if vm == "web")
    );
    // Progress: begin/end events for the barrier's phases.
    let events = h.events.lock().unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::End { step, ok: true, .. } if step == "freeze 2 guests")),
        "{events:?}"
    );
}

#[test]
fn second_snapshot_makes_the_active_overlay_its_image() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let first = h.take(&request(), &FakeQuiescer::healthy(), at(0)).unwrap();
    let overlay1 = h.disk_source("web");

    let second = h.take(&request(), &FakeQuiescer::healthy(), at(1)).unwrap();

    let active = h.catalog.image_by_path(&h.disk_source("web")).unwrap().unwrap();
    let chain: Vec<PathBuf> = h.catalog.chain(active.id).unwrap().into_iter().map(|i| i.path).collect();
    assert_eq!(chain, [h.disk_source("web"), overlay1.clone(), PathBuf::from("/images/web.qcow2")]);
    let held = h.catalog.images_needed_by(&snapshot_dependent("demo", &second.name)).unwrap();
    assert!(held.iter().any(|i| i.path == overlay1), "{held:?}");
    let held = h.catalog.images_needed_by(&snapshot_dependent("demo", &first.name)).unwrap();
    assert!(held.iter().all(|i| i.kind == ImageKind::Base));
    let listed = list(&h.catalog, "demo", at(3)).unwrap();
    assert_eq!(
        listed.iter().map(|s| (s.name.as_str(), s.age_seconds)).collect::<Vec<_>>(),
        [("20240501T020000Z", 180), ("20240501T020100Z", 120)]
    );
    assert!(listed.iter().all(|s| s.state == SnapshotState::Complete && s.vms.len() == 2));
}

#[test]
fn names_collide_within_a_second_and_get_a_suffix() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    h.take(&request(), &FakeQuiescer::healthy(), at(0)).unwrap();

    let again = h.take(&request(), &FakeQuiescer::healthy(), at(0)).unwrap();

    assert_eq!(again.name, "20240501T020000Z-2");
}

#[test]
fn disk_snapshot_failing_for_the_second_vm_keeps_the_first_on_a_valid_chain() {
    let hv = FakeHypervisor::running_env("net", &["web", "db"]).fail_at_call(FakeStep::CreateSnapshot, 2);
    let h = Harness::new(hv);
    let agents = FakeQuiescer::healthy();

    let error = h.take(&request(), &agents, at(0)).unwrap_err();

    let SnapshotError::DiskSnapshot { vm: failed, .. } = &error else { panic!("{error:?}") };
    let switched = if failed == "web" { "db" } else { "web" };
    // Everything thawed.
    assert!(agents.frozen().is_empty(), "{:?}", agents.events());
    // The VM already snapshotted stays on its overlay; the catalog knows that chain.
    let overlay = h.disk_source(switched);
    assert!(overlay.starts_with(h.storage()));
    let image = h.catalog.image_by_path(&overlay).unwrap().unwrap();
    let base = h.catalog.image(image.backing.unwrap()).unwrap();
    assert_eq!(base.path, PathBuf::from(format!("/images/{switched}.qcow2")));
    assert!(h.catalog.dependents_of(base.id).unwrap().is_empty(), "a failed snapshot pins nothing");
    // The other one never moved.
    assert_eq!(h.disk_source(failed), PathBuf::from(format!("/images/{failed}.qcow2")));
    // The snapshot is failed; the journal shows the steps, the failed one, and the rollback.
    let snapshot = h.catalog.snapshot_named("demo", "20240501T020000Z").unwrap().unwrap();
    assert_eq!(snapshot.state, SnapshotState::Failed);
    let op = h.only_operation(OperationState::RolledBack);
    let steps = h.catalog.steps(op.id).unwrap();
    assert!(steps.iter().all(|s| s.state == StepState::Undone), "{steps:#?}");
    let failed_step = steps.iter().find(|s| s.name == format!("external disk snapshot of {failed}")).unwrap();
    assert!(failed_step.error.as_deref().unwrap_or_default().contains("injected failure"), "{failed_step:?}");
    assert!(steps.iter().any(|s| s.name == "thaw"));
    assert!(op.error.unwrap().contains(&format!("VM '{failed}'")));
}

#[test]
fn required_with_an_agent_down_fails_before_touching_anything() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents = FakeQuiescer::healthy().with_agent_down("db");

    let error = h.take(&request(), &agents, at(0)).unwrap_err();

    assert!(
        matches!(&error, SnapshotError::AgentNotReady { vm, source } if vm == "db" && matches!(**source, GuestError::Connect { .. })),
        "{error:?}"
    );
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::Unreachable);
    assert!(h.snapshot_calls().is_empty());
    assert!(agents.events().iter().all(|e| e.starts_with("prepare")), "{:?}", agents.events());
    assert!(h.catalog.snapshots("demo").unwrap().is_empty());
    assert!(!h.storage().join("web").exists());
    h.only_operation(OperationState::RolledBack);
}

#[test]
fn best_effort_with_an_agent_down_takes_that_vm_crash_consistent() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents = FakeQuiescer::healthy().with_agent_down("db");
    let request = SnapshotRequest { quiesce: Some(QuiescePolicy::BestEffort), ..request() };

    let report = h.take(&request, &agents, at(0)).unwrap();

    let db = report.vms.iter().find(|vm| vm.vm == "db").unwrap();
    assert_eq!(db.consistency, Consistency::CrashConsistent);
    assert!(db.reason.as_deref().unwrap().starts_with("agent not ready: cannot connect"), "{db:?}");
    let web = report.vms.iter().find(|vm| vm.vm == "web").unwrap();
    assert_eq!(web.consistency, Consistency::AppConsistent);
    assert_eq!(h.snapshot_calls().len(), 2);
    assert!(!agents.events().contains(&"freeze db".to_owned()));
    let recorded = h.catalog.snapshot_named("demo", &report.name).unwrap().unwrap();
    assert_eq!(recorded.vms.iter().find(|v| v.vm == "db").unwrap().reason, db.reason);
    h.only_operation(OperationState::Completed);
}

#[test]
fn best_effort_freeze_failure_falls_back_for_that_vm_only() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents = FakeQuiescer::healthy().with_failing_hook("db", "10-db");
    let request = SnapshotRequest { quiesce: Some(QuiescePolicy::BestEffort), ..request() };

    let report = h.take(&request, &agents, at(0)).unwrap();

    let db = report.vms.iter().find(|vm| vm.vm == "db").unwrap();
    assert_eq!(db.consistency, Consistency::CrashConsistent);
    assert!(db.reason.as_deref().unwrap().contains("10-db"), "{db:?}");
    h.only_operation(OperationState::Completed);
}

#[test]
fn failing_pre_freeze_hook_under_required_thaws_the_others_and_names_the_hook() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents =
        FakeQuiescer::healthy().with_failing_hook("db", "10-db").with_slow_freeze("db", Duration::from_millis(50));

    let error = h.take(&request(), &agents, at(0)).unwrap_err();

    assert!(matches!(&error, SnapshotError::Freeze { vm, .. } if vm == "db"), "{error:?}");
    assert!(crate::error::chain(&error).contains("pre-freeze hook 10-db exited with status 3"), "{error}");
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::Failed);
    assert!(h.snapshot_calls().is_empty());
    assert!(agents.frozen().is_empty());
    assert!(agents.events().contains(&"thaw web".to_owned()), "{:?}", agents.events());
    let snapshot = h.catalog.snapshot_named("demo", "20240501T020000Z").unwrap().unwrap();
    assert_eq!(snapshot.state, SnapshotState::Failed);
}

#[test]
fn two_phase_guests_all_arm_before_any_freezes() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    // db's hooks take long: web must not sit frozen meanwhile.
    let agents = FakeQuiescer::healthy().two_phase().with_slow_freeze("db", Duration::from_millis(300));

    let report = h.take(&request(), &agents, at(0)).unwrap();

    let events = agents.events();
    let last_arm = events.iter().rposition(|e| e.starts_with("arm ")).unwrap();
    let first_freeze = events.iter().position(|e| e.starts_with("freeze ")).unwrap();
    assert!(last_arm < first_freeze, "{events:?}");
    assert!(report.freeze_window_ms.unwrap() < 300, "{report:?}");
    assert!(agents.frozen().is_empty());
}

#[test]
fn two_phase_hook_failure_stands_the_armed_guests_down_unfrozen() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents = FakeQuiescer::healthy()
        .two_phase()
        .with_failing_hook("db", "10-db")
        .with_slow_freeze("db", Duration::from_millis(50));

    let error = h.take(&request(), &agents, at(0)).unwrap_err();

    assert!(matches!(&error, SnapshotError::Freeze { vm, .. } if vm == "db"), "{error:?}");
    let events = agents.events();
    assert!(events.contains(&"stand down web".to_owned()), "{events:?}");
    assert!(!events.iter().any(|e| e.starts_with("freeze ")), "nothing frozen: {events:?}");
    assert!(h.snapshot_calls().is_empty());
}

#[test]
fn a_guest_slower_to_freeze_than_the_limit_aborts_with_everything_thawed() {
    let h = Harness::with_limit(FakeHypervisor::running_env("net", &["web", "db"]), Duration::from_millis(200));
    let agents = FakeQuiescer::healthy().with_slow_freeze("db", Duration::from_millis(600));

    let error = h.take(&request(), &agents, at(0)).unwrap_err();

    let SnapshotError::FreezeLimit { limit, window, .. } = &error else { panic!("{error:?}") };
    assert_eq!(*limit, Duration::from_millis(200));
    assert!(*window >= Duration::from_millis(200), "{window:?}");
    assert!(crate::error::chain(&error).contains("hard limit of 200 ms"));
    assert!(h.snapshot_calls().is_empty(), "no disk touched");
    assert!(agents.frozen().is_empty(), "the late freeze was thawed too: {:?}", agents.events());
    assert_eq!(h.catalog.snapshot_named("demo", "20240501T020000Z").unwrap().unwrap().state, SnapshotState::Failed);
}

#[test]
fn quiesce_off_freezes_nothing_and_says_so() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents = FakeQuiescer::healthy();
    let request = SnapshotRequest { quiesce: Some(QuiescePolicy::Off), ..request() };

    let report = h.take(&request, &agents, at(0)).unwrap();

    assert!(agents.events().is_empty());
    assert_eq!(report.freeze_window_ms, None);
    assert!(report
        .vms
        .iter()
        .all(|vm| vm.consistency == Consistency::CrashConsistent && vm.reason.as_deref() == Some("quiesce is off")));
    assert_eq!(h.snapshot_calls().len(), 2);
}

#[test]
fn a_thaw_that_fails_is_a_hard_error_and_is_recovered() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let agents = FakeQuiescer::healthy().with_failing_thaw("web");

    let error = h.take(&request(), &agents, at(0)).unwrap_err();

    assert!(matches!(&error, SnapshotError::Thaw { vm, .. } if vm == "web"), "{error:?}");
    assert!(error.to_string().contains("THAW FAILED"));
    assert!(agents.events().contains(&"recover web".to_owned()), "{:?}", agents.events());
    assert!(agents.frozen().is_empty());
    let snapshot = h.catalog.snapshot_named("demo", "20240501T020000Z").unwrap().unwrap();
    assert_eq!(snapshot.state, SnapshotState::Failed);
    // Disks switched before the failure stay recorded.
    assert!(h.catalog.image_by_path(&h.disk_source("web")).unwrap().is_some());
}

#[test]
fn a_second_caller_is_refused_as_busy() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    let _held = crate::ops::EnvLock::acquire(&h.state, "demo", "restore").unwrap();

    let error = h.take(&request(), &FakeQuiescer::healthy(), at(0)).unwrap_err();

    assert!(matches!(&error, SnapshotError::Lock(crate::ops::LockError::Busy(_))), "{error:?}");
    assert!(error.to_string().starts_with("busy: restore started at"));
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::Busy);
    assert!(h.hv.calls().is_empty());
}

#[test]
fn not_enough_space_names_the_directory_and_the_sizes() {
    let mut h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]));
    h.config.controller.min_free_space = HumanSize::from_bytes(u64::MAX / 2);

    let error = h.take(&request(), &FakeQuiescer::healthy(), at(0)).unwrap_err();

    assert!(
        matches!(&error, SnapshotError::NoSpace { path, needed, .. } if *path == h.storage() && *needed == u64::MAX / 2),
        "{error:?}"
    );
    assert!(h.snapshot_calls().is_empty());
}

#[test]
fn memory_capture_that_fails_resumes_the_guest_and_fails_the_snapshot() {
    let hv = FakeHypervisor::running_env("net", &["web", "db"])
        .with_qmp_reply("migrate-set-capabilities", r#"{"return": {}}"#)
        .with_qmp_reply("migrate", r#"{"error": {"class": "GenericError", "desc": "Failed to connect"}}"#);
    let h = Harness::new(hv);
    let agents = FakeQuiescer::healthy();
    let request = SnapshotRequest { memory: true, ..request() };

    let error = h.take(&request, &agents, at(0)).unwrap_err();

    assert!(matches!(&error, SnapshotError::Memory { .. } | SnapshotError::CleanupFailed { .. }), "{error:?}");
    assert!(crate::error::chain(&error).contains("Failed to connect"), "{error}");
    for domain in ["web", "db"] {
        assert_eq!(h.hv.peek_domain(domain).unwrap().state, crate::hypervisor::DomainState::Running);
        assert!(!h.storage().join(domain).join("20240501T020000Z.mem").exists());
    }
    assert!(agents.frozen().is_empty());
    // The pause came before the disk snapshot, inside the freeze.
    let qmp: Vec<String> = h
        .hv
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Qmp { domain, command } if domain == "web" => Some(
                serde_json::from_str::<serde_json::Value>(&command).unwrap()["execute"].as_str().unwrap().to_owned(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(&qmp[..3], ["migrate-set-capabilities", "stop", "migrate"], "{qmp:?}");
    assert_eq!(h.catalog.snapshot_named("demo", "20240501T020000Z").unwrap().unwrap().state, SnapshotState::Failed);
}
