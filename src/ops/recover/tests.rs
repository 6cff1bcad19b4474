//! `recover` on `FakeHypervisor`, scripted agents and a catalog in a
//! temporary directory: journals written the way a crashed operation
//! leaves them, then recovered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{TimeZone, Utc};

use super::*;
use crate::catalog::{
    Catalog, Dependent, ImageFormat, ImageKind, NewImage, NewSnapshot, OperationId, StepId, StepRecord,
};
use crate::config::{AgentEndpoint, Config, Controller, Vm};
use crate::hypervisor::{Call, DirectBootSpec, DomainDef, DomainState, ExternalSnapshot, FakeHypervisor, FakeStep};
use crate::ops::context::{Event, FixedClock};
use crate::test_support::{FakeHost, FakeNet, FakeRecoveryAgents};

/// Environment `demo`: VMs `web` and `db` on domains of the same names,
/// each with disk vda on its own image file in a temporary directory.
struct Harness {
    dir: tempfile::TempDir,
    config: Config,
    catalog: Catalog,
    hv: FakeHypervisor,
    events: Mutex<Vec<Event>>,
    /// What SIGTERM/SIGINT would set: a test sets it to interrupt the operation.
    interrupt: crate::ops::interrupt::Interrupt,
}

fn direct_boot(name: &str, disk: &Path) -> DomainDef {
    DomainDef::direct_boot(&DirectBootSpec {
        name: name.to_owned(),
        domain_type: "qemu".to_owned(),
        memory_mib: 256,
        vcpus: 1,
        kernel: PathBuf::from("/boot/vmlinuz"),
        initrd: None,
        cmdline: "console=ttyS0".to_owned(),
        disks: vec![disk.to_owned()],
        interfaces: vec![],
        serial_log: None,
    })
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut controller = Controller::new("/k", "/h");
        controller.state_dir = state.clone();
        let vms = ["web", "db"]
            .map(|name| (name.to_owned(), Vm { domain: name.to_owned(), agent: AgentEndpoint::new("10.0.0.1") }))
            .into();
        let env = crate::config::Environment { vms, ..Default::default() };
        let config = Config {
            controller,
            environments: BTreeMap::from([("demo".to_owned(), env)]),
            schedules: BTreeMap::new(),
            standbys: BTreeMap::new(),
            hosts: BTreeMap::new(),
            lab: None,
        };
        let mut hv = FakeHypervisor::new();
        for name in ["web", "db"] {
            let disk = dir.path().join(format!("{name}.qcow2"));
            std::fs::write(&disk, b"QFI\xfb own disk").unwrap();
            hv = hv.with_domain(direct_boot(name, &disk), DomainState::Running);
        }
        let catalog = Catalog::open(&state).unwrap();
        Harness { dir, config, catalog, hv, events: Mutex::new(Vec::new()), interrupt: Default::default() }
    }

    fn recover(&self, agents: &FakeRecoveryAgents, request: &RecoverRequest) -> Result<RecoverReport, RecoverError> {
        let events = &self.events;
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());
        let clock = FixedClock(Utc.with_ymd_and_hms(2024, 5, 1, 3, 0, 0).unwrap());
        let (storage, net) = (crate::host::LocalStorage, FakeNet::default());
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
        recover(&ctx, agents, request)
    }

    fn recover_all(&self, agents: &FakeRecoveryAgents) -> RecoverReport {
        self.recover(agents, &RecoverRequest::default()).unwrap()
    }

    fn storage(&self) -> PathBuf {
        self.config.controller.state_dir.join("images/demo")
    }

    fn own_disk(&self, vm: &str) -> PathBuf {
        self.dir.path().join(format!("{vm}.qcow2"))
    }

    fn state(&self, domain: &str) -> DomainState {
        self.hv.peek_domain(domain).unwrap().state
    }

    fn pause(&self, domain: &str) {
        crate::hypervisor::qmp(&self.hv, domain, qapi::qmp::stop {}).unwrap();
        assert_eq!(self.state(domain), DomainState::Paused);
    }

    /// An operation whose owner is gone.
    fn dead_operation(&self, kind: OperationKind) -> OperationId {
        let mut owner = Owner::current();
        owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);
        self.catalog.begin_operation(kind, "demo", &owner, Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap()).unwrap()
    }

    fn step(&self, op: OperationId, name: &str, undo: UndoAction, done: bool) -> StepId {
        let step = self.catalog.record_step(op, &StepRecord::new(name, undo)).unwrap();
        if done {
            self.catalog.finish_step(step).unwrap();
        }
        step
    }

    fn snapshot(&self, name: &str) -> crate::catalog::SnapshotId {
        self.catalog
            .create_snapshot(&NewSnapshot {
                env: "demo".into(),
                name: name.into(),
                label: None,
                schedule: None,
                created_at: Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap(),
                memory: true,
            })
            .unwrap()
    }

    fn steps(&self, op: OperationId) -> Vec<StepState> {
        self.catalog.steps(op).unwrap().iter().map(|s| s.state).collect()
    }

    fn qmp_commands(&self) -> Vec<String> {
        self.hv
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Qmp { command, .. } => Some(command),
                _ => None,
            })
            .collect()
    }
}

/// A `--memory` snapshot of web that died inside the barrier: web frozen
/// and paused for its memory point, its memory image half written.
struct CrashedSnapshot {
    op: OperationId,
    snapshot: crate::catalog::SnapshotId,
    memory_image: PathBuf,
}

fn crashed_memory_snapshot(h: &Harness) -> CrashedSnapshot {
    let op = h.dead_operation(OperationKind::Snapshot);
    h.step(op, "preflight", UndoAction::Nothing, true);
    let reserve = UndoAction::Custom {
        kind: UNDO_FAIL_SNAPSHOT_NAMED.into(),
        data: serde_json::json!({ "env": "demo", "snapshot": "S1" }),
    };
    h.step(op, "record snapshot S1", reserve, false);
    let snapshot = h.snapshot("S1");
    h.catalog.finish_step(h.catalog.steps(op).unwrap()[1].id).unwrap();
    let memory_image = h.storage().join("web/S1.mem");
    std::fs::create_dir_all(memory_image.parent().unwrap()).unwrap();
    std::fs::write(&memory_image, b"half a save image").unwrap();
    h.step(op, "memory image of web", UndoAction::DeleteFile { path: memory_image.clone() }, false);
    h.step(op, "freeze web", UndoAction::ThawAgent { vm: "web".into() }, false);
    h.step(op, "pause web for its memory point", UndoAction::ResumeDomain { domain: "web".into() }, false);
    h.step(op, "external disk snapshot of web", UndoAction::FailSnapshot { snapshot }, false);
    h.pause("web");
    CrashedSnapshot { op, snapshot, memory_image }
}

#[test]
fn interrupted_snapshot_is_rolled_back_newest_first() {
    let h = Harness::new();
    let crashed = crashed_memory_snapshot(&h);
    let agents = FakeRecoveryAgents::healthy().with_frozen("web");

    let report = h.recover_all(&agents);

    let env = &report.environments[0];
    let op = &env.operations[0];
    assert_eq!((op.id, op.outcome, op.was), (crashed.op, Outcome::RolledBack, OperationState::Running));
    assert_eq!(op.undo.iter().map(|u| u.seq).collect::<Vec<_>>(), [6, 5, 4, 3, 2, 1]);
    assert!(op.undo.iter().all(|u| u.status == UndoStatus::Done), "{:?}", op.undo);
    // Resumed before the thaw (newest first), thawed once, by the undo.
    assert_eq!(h.state("web"), DomainState::Running);
    assert_eq!(agents.thaws(), ["thaw demo/web"]);
    assert!(!agents.frozen("web"));
    assert!(!crashed.memory_image.exists());
    assert_eq!(h.catalog.snapshot(crashed.snapshot).unwrap().state, SnapshotState::Failed);
    let journal = h.catalog.operation(crashed.op).unwrap();
    assert_eq!(journal.state, OperationState::RolledBack);
    assert_eq!(journal.owner.pid, std::process::id());
    assert!(h.steps(crashed.op).iter().all(|s| *s == StepState::Undone));
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert!(env.checks.iter().all(|c| c.status == CheckStatus::Ok), "{:?}", env.checks);
}

#[test]
fn recover_twice_is_harmless_and_the_second_finds_nothing() {
    let h = Harness::new();
    crashed_memory_snapshot(&h);
    let agents = FakeRecoveryAgents::healthy().with_frozen("web");
    h.recover_all(&agents);
    h.hv.clear_calls();
    let thaws_before = agents.thaws().len();

    let again = h.recover_all(&agents);

    assert!(again.nothing_to_do(), "{again:?}");
    assert!(again.environments[0].operations.is_empty());
    assert!(h.qmp_commands().is_empty());
    assert_eq!(agents.thaws().len(), thaws_before);
    assert!(again.failures().is_empty());
}

#[test]
fn dry_run_reports_the_plan_and_changes_nothing() {
    let h = Harness::new();
    let crashed = crashed_memory_snapshot(&h);
    let agents = FakeRecoveryAgents::healthy().with_frozen("web");
    let before = h.catalog.operation(crashed.op).unwrap();

    let report = h.recover(&agents, &RecoverRequest { env: Some("demo".into()), dry_run: true }).unwrap();

    let op = &report.environments[0].operations[0];
    assert_eq!(op.outcome, Outcome::WouldRollBack);
    assert!(op.undo.iter().all(|u| u.status == UndoStatus::Planned));
    assert_eq!(op.undo[1].action, "resume domain web if it is paused");
    assert_eq!(h.catalog.operation(crashed.op).unwrap(), before);
    assert_eq!(h.state("web"), DomainState::Paused);
    assert!(agents.thaws().is_empty() && agents.frozen("web"));
    assert!(crashed.memory_image.exists());
    assert_eq!(h.catalog.snapshot(crashed.snapshot).unwrap().state, SnapshotState::InProgress);
    let web_domain = report.environments[0].checks.iter().find(|c| c.subject == "domain web").unwrap();
    assert_eq!(web_domain.status, CheckStatus::WouldFix);
    assert!(!report.nothing_to_do());
    assert!(h.catalog.interrupted_operations().unwrap().iter().any(|o| o.id == crashed.op));
}

#[test]
fn failed_undo_is_recorded_the_rest_goes_on_and_the_next_recover_retries() {
    let h = Harness::new();
    let crashed = crashed_memory_snapshot(&h);
    let agents = FakeRecoveryAgents::healthy().with_frozen("web").with_failing_thaw("web");

    let report = h.recover_all(&agents);

    let op = &report.environments[0].operations[0];
    assert_eq!(op.outcome, Outcome::Failed);
    let statuses: Vec<(u32, UndoStatus)> = op.undo.iter().map(|u| (u.seq, u.status)).collect();
    use UndoStatus::{Done, Failed};
    assert_eq!(statuses, [(6, Done), (5, Done), (4, Failed), (3, Done), (2, Done), (1, Done)]);
    assert!(op.undo[2].detail.as_deref().unwrap().contains("THAW FAILED"));
    assert_eq!(h.state("web"), DomainState::Running);
    assert!(!crashed.memory_image.exists());
    assert_eq!(h.catalog.operation(crashed.op).unwrap().state, OperationState::Failed);
    assert_eq!(h.steps(crashed.op)[3], StepState::UndoFailed);
    let failures = report.failures();
    assert_eq!(failures.len(), 2, "{failures:?}"); // the undo, and the agent check after it
    assert!(failures[0].contains("step 4 'freeze web'") && failures[0].contains("THAW FAILED"), "{failures:?}");

    agents.heal("web");
    let retry = h.recover_all(&agents);

    let op = &retry.environments[0].operations[0];
    assert_eq!((op.outcome, op.was), (Outcome::RolledBack, OperationState::Failed));
    assert_eq!(op.undo.iter().map(|u| u.seq).collect::<Vec<_>>(), [4]);
    assert!(!agents.frozen("web"));
    assert_eq!(h.catalog.operation(crashed.op).unwrap().state, OperationState::RolledBack);
    assert!(retry.failures().is_empty(), "{:?}", retry.failures());
}

#[test]
fn operation_with_an_unknown_custom_undo_is_refused_untouched() {
    let h = Harness::new();
    let op = h.dead_operation(OperationKind::Restore);
    h.step(op, "stop web", UndoAction::ResumeDomain { domain: "web".into() }, true);
    let newer = UndoAction::Custom { kind: "reattach-vtpm".into(), data: serde_json::json!({ "vm": "web" }) };
    h.step(op, "move the vTPM", newer, false);
    h.pause("web");
    let owner = h.catalog.operation(op).unwrap().owner;
    let agents = FakeRecoveryAgents::healthy();

    let report = h.recover_all(&agents);

    let found = &report.environments[0].operations[0];
    assert_eq!(found.outcome, Outcome::Refused);
    assert!(found.error.as_deref().unwrap().contains("'reattach-vtpm', unknown to this envclone"), "{found:?}");
    assert!(found.undo.iter().all(|u| u.status == UndoStatus::Planned));
    let journal = h.catalog.operation(op).unwrap();
    assert_eq!((journal.state, journal.owner), (OperationState::Running, owner));
    assert_eq!(h.steps(op), [StepState::Done, StepState::Running]);
    // The journal's resume was not run; nothing says this domain should run.
    assert_eq!(h.state("web"), DomainState::Paused);
    assert_eq!(report.failures().len(), 1, "{:?}", report.failures());
}

#[test]
fn operation_whose_undo_cannot_be_read_is_refused_untouched() {
    let h = Harness::new();
    let op = h.dead_operation(OperationKind::DeleteSnapshot);
    let step = h.step(op, "delete S0's image", UndoAction::Nothing, false);
    let conn = rusqlite::Connection::open(h.catalog.path()).unwrap();
    conn.execute(
        "UPDATE operation_steps SET undo = ?1 WHERE id = ?2",
        rusqlite::params![r#"{"action":"restore-from-trash","path":"/x"}"#, step.0],
    )
    .unwrap();
    drop(conn);

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    let found = &report.environments[0].operations[0];
    assert_eq!(found.outcome, Outcome::Refused);
    assert!(found.error.as_deref().unwrap().contains("cannot read"), "{found:?}");
    assert_eq!(h.catalog.operation(op).unwrap().state, OperationState::Running);
    assert_eq!(report.failures().len(), 1);
}

#[test]
fn delete_file_keeps_base_pinned_and_in_use_images() {
    let h = Harness::new();
    let dir = h.dir.path();
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, b"QFI\xfb image").unwrap();
        path
    };
    let image = |path: &Path, kind: ImageKind| {
        h.catalog
            .add_image(&NewImage {
                path: path.to_owned(),
                vm: "web".into(),
                disk: Some("vda".into()),
                kind,
                format: ImageFormat::Qcow2,
                size_bytes: 10,
                backing: None,
                snapshot: None,
                created_at: Utc.with_ymd_and_hms(2024, 5, 1, 1, 0, 0).unwrap(),
            })
            .unwrap()
    };
    let base = file("base.qcow2");
    image(&base, ImageKind::Base);
    let pinned = file("pinned.qcow2");
    let pinned_id = image(&pinned, ImageKind::Overlay);
    h.catalog.pin(pinned_id, &Dependent::clone_named("qa")).unwrap();
    let recorded_garbage = file("recorded-garbage.qcow2");
    image(&recorded_garbage, ImageKind::Overlay);
    let garbage = file("garbage.qcow2");
    let in_use = h.own_disk("db");
    let op = h.dead_operation(OperationKind::Restore);
    for path in [&base, &pinned, &in_use, &recorded_garbage, &garbage] {
        h.step(op, &format!("create {}", path.display()), UndoAction::DeleteFile { path: path.clone() }, true);
    }

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    let op_report = &report.environments[0].operations[0];
    let statuses: Vec<UndoStatus> = op_report.undo.iter().map(|u| u.status).collect();
    use UndoStatus::{Done, Kept};
    assert_eq!(statuses, [Done, Done, Kept, Kept, Kept], "{:?}", op_report.undo);
    assert!(op_report.undo[2].detail.as_deref().unwrap().contains("domain db (disk vda) uses it"));
    assert!(op_report.undo[3].detail.as_deref().unwrap().contains("clone 'qa' uses it"));
    assert!(op_report.undo[4].detail.as_deref().unwrap().contains("base image"));
    assert!(base.exists() && pinned.exists() && in_use.exists());
    assert!(!garbage.exists() && !recorded_garbage.exists());
    assert!(h.catalog.image_by_path(&recorded_garbage).unwrap().is_none());
    assert_eq!(op_report.outcome, Outcome::RolledBack);
    assert!(report.failures().is_empty());
}

#[test]
fn snapshot_whose_record_was_written_is_completed_not_rolled_back() {
    let h = Harness::new();
    let op = h.dead_operation(OperationKind::Snapshot);
    let snapshot = h.snapshot("S2");
    h.step(op, "external disk snapshot of web", UndoAction::FailSnapshot { snapshot }, true);
    h.step(op, "record images and consistency", UndoAction::Nothing, false);
    h.catalog.set_snapshot_state(snapshot, SnapshotState::Complete).unwrap();

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    assert_eq!(report.environments[0].operations[0].outcome, Outcome::Completed);
    assert_eq!(h.catalog.operation(op).unwrap().state, OperationState::Completed);
    assert_eq!(h.catalog.snapshot(snapshot).unwrap().state, SnapshotState::Complete);
}

#[test]
fn live_overlay_the_catalog_lacks_is_recorded_from_libvirt() {
    let h = Harness::new();
    let overlay = h.storage().join("web/S3.vda.qcow2");
    let snap = ExternalSnapshot {
        name: "S3".into(),
        disks: vec![("vda".into(), overlay.clone())],
        memory_file: None,
        atomic: true,
        quiesce: false,
        no_metadata: true,
        live: false,
    };
    crate::hypervisor::Hypervisor::create_external_snapshot(&h.hv, "web", &snap).unwrap();

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    let check = report.environments[0].checks.iter().find(|c| c.vm == "web" && c.subject == "disk vda").unwrap();
    assert_eq!(check.status, CheckStatus::Recorded, "{check:?}");
    let active = h.catalog.image_by_path(&overlay).unwrap().unwrap();
    assert_eq!((active.kind, active.snapshot), (ImageKind::Overlay, None));
    let backing = h.catalog.image(active.backing.unwrap()).unwrap();
    assert_eq!((backing.path, backing.kind, backing.format), (h.own_disk("web"), ImageKind::Base, ImageFormat::Qcow2));
    let db = report.environments[0].checks.iter().find(|c| c.vm == "db" && c.subject == "disk vda").unwrap();
    assert_eq!(db.status, CheckStatus::Ok, "the VM's own disk is left to its first snapshot");
    assert!(h.catalog.image_by_path(&h.own_disk("db")).unwrap().is_none());

    let again = h.recover_all(&FakeRecoveryAgents::healthy());

    assert!(again.nothing_to_do(), "{again:?}");
}

#[test]
fn guest_left_frozen_is_thawed_without_any_journal() {
    let h = Harness::new();
    let agents = FakeRecoveryAgents::healthy().with_frozen("db");

    let report = h.recover(&agents, &RecoverRequest { env: Some("demo".into()), dry_run: false }).unwrap();

    let check = report.environments[0].checks.iter().find(|c| c.vm == "db" && c.subject == "agent").unwrap();
    assert_eq!(check.status, CheckStatus::Fixed);
    assert!(check.detail.contains("frozen: /, /var"), "{check:?}");
    assert!(!agents.frozen("db"));
}

#[test]
fn paused_domain_no_operation_paused_is_left_alone() {
    let h = Harness::new();
    h.pause("db");

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    let check = report.environments[0].checks.iter().find(|c| c.subject == "domain db").unwrap();
    assert_eq!(check.status, CheckStatus::Warning);
    assert_eq!(h.state("db"), DomainState::Paused);
    assert!(report.failures().is_empty());
}

#[test]
fn busy_environment_is_refused_when_named_and_skipped_when_scanning() {
    let h = Harness::new();
    crashed_memory_snapshot(&h);
    let _held = crate::ops::EnvLock::acquire(&h.config.controller.state_dir, "demo", "restore").unwrap();

    let named = h.recover(&FakeRecoveryAgents::healthy(), &RecoverRequest { env: Some("demo".into()), dry_run: false });
    let scan = h.recover_all(&FakeRecoveryAgents::healthy());

    assert!(matches!(named, Err(RecoverError::Lock(LockError::Busy(_)))), "{named:?}");
    assert_eq!(scan.busy().len(), 1);
    assert!(scan.environments[0].busy.as_deref().unwrap().contains("busy: restore started at"));
    assert_eq!(h.state("web"), DomainState::Paused);
}

#[test]
fn unknown_environment_is_a_lookup_error() {
    let h = Harness::new();

    let result =
        h.recover(&FakeRecoveryAgents::healthy(), &RecoverRequest { env: Some("prod".into()), dry_run: false });

    assert!(matches!(result, Err(RecoverError::Lookup(_))), "{result:?}");
}

#[test]
fn pivot_back_switches_a_stopped_domain_and_refuses_a_running_one() {
    let h = Harness::new();
    let before = h.own_disk("web");
    let overlay = h.storage().join("web/R1.vda.qcow2");
    let mut def = h.hv.peek_domain("web").unwrap().def;
    def.set_disk_source("vda", &overlay, "qcow2").unwrap();
    crate::hypervisor::Hypervisor::define_domain(&h.hv, &def).unwrap();
    let op = h.dead_operation(OperationKind::Restore);
    let pivot = UndoAction::PivotBack { domain: "web".into(), disk: "vda".into(), image: before.clone() };
    h.step(op, "switch web/vda to the snapshot", pivot, true);

    let refused = h.recover_all(&FakeRecoveryAgents::healthy());

    assert_eq!(refused.environments[0].operations[0].undo[0].status, UndoStatus::Failed);
    assert!(refused.failures()[0].contains("shut the domain down"), "{:?}", refused.failures());
    crate::hypervisor::Hypervisor::destroy_domain(&h.hv, "web").unwrap();

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    assert_eq!(report.environments[0].operations[0].outcome, Outcome::RolledBack);
    let source = h.hv.peek_domain("web").unwrap().def.disks()[0].source.clone();
    assert_eq!(source, Some(before));
}

#[test]
fn undefine_domain_stops_and_removes_the_domain_the_step_defined() {
    let h = Harness::new();
    let clone_disk = h.dir.path().join("clone.qcow2");
    crate::hypervisor::Hypervisor::define_domain(&h.hv, &direct_boot("web-clone", &clone_disk)).unwrap();
    crate::hypervisor::Hypervisor::start_domain(&h.hv, "web-clone").unwrap();
    let op = h.dead_operation(OperationKind::Clone);
    h.step(op, "define web-clone", UndoAction::UndefineDomain { name: "web-clone".into() }, true);

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    assert_eq!(report.environments[0].operations[0].outcome, Outcome::RolledBack);
    assert!(h.hv.peek_domain("web-clone").is_none());
    let steps = h.hv.steps();
    assert!(steps.contains(&FakeStep::DestroyDomain) && steps.contains(&FakeStep::UndefineDomain));
}

#[test]
fn an_interrupted_clone_is_rolled_back_through_the_clone_handlers() {
    use crate::hypervisor::{NetworkDef, NetworkSpec};
    use crate::ops::clone::undo::UNDO_REMOVE_NETWORK;
    let h = Harness::new();
    let hv: &dyn crate::hypervisor::Hypervisor = &h.hv;
    let spec = NetworkSpec { name: "c1-net".into(), bridge: "ecc1".into(), ip: None };
    hv.define_network(&NetworkDef::isolated(&spec)).unwrap();
    hv.start_network("c1-net").unwrap();
    let op = h.dead_operation(OperationKind::Clone);
    let undo =
        UndoAction::Custom { kind: UNDO_REMOVE_NETWORK.into(), data: serde_json::json!({ "network": "c1-net" }) };
    h.step(op, "copy network net as c1-net", undo, true);

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    assert_eq!(report.environments[0].operations[0].outcome, Outcome::RolledBack);
    assert!(h.hv.peek_network("c1-net").is_none());
}

#[test]
fn recover_of_the_source_rolls_back_an_interrupted_clone_journaled_under_the_clones_name() {
    use crate::hypervisor::{NetworkDef, NetworkSpec};
    use crate::ops::clone::undo::UNDO_REMOVE_NETWORK;
    let h = Harness::new();
    let hv: &dyn crate::hypervisor::Hypervisor = &h.hv;
    let spec = NetworkSpec { name: "c1-net".into(), bridge: "ecc1".into(), ip: None };
    hv.define_network(&NetworkDef::isolated(&spec)).unwrap();
    hv.start_network("c1-net").unwrap();
    let mut owner = Owner::current();
    owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);
    let started = Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap();
    let op = h.catalog.begin_operation(OperationKind::Clone, "c1", &owner, started).unwrap();
    h.catalog.also_touches(op, "demo").unwrap();
    let undo =
        UndoAction::Custom { kind: UNDO_REMOVE_NETWORK.into(), data: serde_json::json!({ "network": "c1-net" }) };
    h.step(op, "copy network net as c1-net", undo, true);

    let report = h
        .recover(&FakeRecoveryAgents::healthy(), &RecoverRequest { env: Some("demo".into()), dry_run: false })
        .unwrap();

    let clone = report.environments.iter().find(|env| env.env == "c1").expect("the clone's operation is recovered");
    assert_eq!(clone.operations[0].outcome, Outcome::RolledBack, "{clone:?}");
    assert!(h.hv.peek_network("c1-net").is_none());
    assert!(report.environments.iter().any(|env| env.env == "demo"), "the environment named is recovered too");
    assert!(!report.nothing_to_do());
}

#[test]
fn a_rolled_back_clone_leaves_no_storage_folder_behind() {
    let h = Harness::new();
    let storage = h.config.controller.state_dir.join("images/c1");
    let overlay = storage.join("web/c1.vda.qcow2");
    std::fs::create_dir_all(overlay.parent().unwrap()).unwrap();
    std::fs::write(&overlay, b"overlay").unwrap();
    let source_folder = h.storage().join("db");
    std::fs::create_dir_all(&source_folder).unwrap();
    let mut owner = Owner::current();
    owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);
    let started = Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap();
    let op = h.catalog.begin_operation(OperationKind::Clone, "c1", &owner, started).unwrap();
    h.step(op, "create overlay web/vda", UndoAction::DeleteFile { path: overlay.clone() }, true);

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    let clone = report.environments.iter().find(|env| env.env == "c1").unwrap();
    assert_eq!(clone.operations[0].outcome, Outcome::RolledBack, "{clone:?}");
    assert!(!storage.exists(), "{} is left", storage.display());
    assert!(source_folder.is_dir(), "the source's folders stay, even empty");
}

#[test]
fn undo_plan_descriptions_name_what_they_touch() {
    assert_eq!(describe(&UndoAction::ThawAgent { vm: "db".into() }), "thaw VM 'db' (envclone-agent thaw)");
    assert_eq!(
        describe(&UndoAction::Custom {
            kind: UNDO_FAIL_SNAPSHOT_NAMED.into(),
            data: serde_json::json!({ "env": "demo", "snapshot": "S" })
        }),
        "mark snapshot demo/S failed if still in progress"
    );
    assert!(describe(&UndoAction::Custom { kind: "x".into(), data: serde_json::Value::Null }).contains("unknown"));
}

#[test]
fn restore_custom_undos_run_through_the_restore_handlers_newest_first() {
    use crate::ops::restore::{UNDO_REDEFINE_DISKS, UNDO_START_DOMAIN, UNDO_STOP_DOMAIN};
    let h = Harness::new();
    let own = h.own_disk("web");
    let restored = h.storage().join("web/restore-S1.vda.qcow2");
    let hv: &dyn crate::hypervisor::Hypervisor = &h.hv;
    hv.destroy_domain("web").unwrap();
    let mut def = h.hv.peek_domain("web").unwrap().def;
    def.set_disk_source("vda", &restored, "qcow2").unwrap();
    hv.define_domain(&def).unwrap();
    hv.start_domain("web").unwrap();
    let op = h.dead_operation(OperationKind::Restore);
    let custom = |kind: &str, data: serde_json::Value| UndoAction::Custom { kind: kind.into(), data };
    h.step(op, "stop web", custom(UNDO_START_DOMAIN, serde_json::json!({ "domain": "web" })), true);
    let disks = serde_json::json!({ "domain": "web", "disks": [{ "target": "vda", "path": own, "format": "qcow2" }] });
    h.step(op, "point web at the restored overlays", custom(UNDO_REDEFINE_DISKS, disks), true);
    h.step(op, "start web", custom(UNDO_STOP_DOMAIN, serde_json::json!({ "domain": "web" })), false);
    h.hv.clear_calls();

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    let op_report = &report.environments[0].operations[0];
    assert_eq!(op_report.outcome, Outcome::RolledBack, "{op_report:?}");
    assert_eq!(op_report.undo[0].detail.as_deref(), Some("stop domain web if it runs"));
    let order: Vec<FakeStep> =
        h.hv.steps()
            .into_iter()
            .filter(|s| matches!(s, FakeStep::DestroyDomain | FakeStep::DefineDomain | FakeStep::StartDomain))
            .collect();
    assert_eq!(order, [FakeStep::DestroyDomain, FakeStep::DefineDomain, FakeStep::StartDomain]);
    let web = h.hv.peek_domain("web").unwrap();
    assert_eq!((web.state, web.def.disks()[0].source.clone()), (DomainState::Running, Some(own)));
}

#[test]
fn restore_rolled_back_after_its_stop_boots_the_vm_and_waits_for_its_agent_instead_of_thawing_it() {
    use crate::ops::restore::UNDO_START_DOMAIN;
    let h = Harness::new();
    let hv: &dyn crate::hypervisor::Hypervisor = &h.hv;
    hv.destroy_domain("web").unwrap();
    let op = h.dead_operation(OperationKind::Restore);
    h.step(op, "freeze web (best effort)", UndoAction::ThawAgent { vm: "web".into() }, true);
    let start = UndoAction::Custom { kind: UNDO_START_DOMAIN.into(), data: serde_json::json!({ "domain": "web" }) };
    h.step(op, "stop web", start, true);
    let agents = FakeRecoveryAgents::healthy().booting("web", 2);

    let report = h.recover_all(&agents);

    let env = &report.environments[0];
    let op_report = &env.operations[0];
    assert_eq!(op_report.outcome, Outcome::RolledBack, "{op_report:?}");
    assert_eq!(op_report.undo[0].detail.as_deref(), Some("domain web started (booting)"));
    assert!(op_report.undo[1].detail.as_deref().unwrap().contains("a fresh boot holds no freeze"), "{op_report:?}");
    assert_eq!(h.state("web"), DomainState::Running);
    assert!(agents.thaws().is_empty(), "{:?}", agents.log());
    let agent = env.checks.iter().find(|c| c.vm == "web" && c.subject == "agent").unwrap();
    assert_eq!(agent.status, CheckStatus::Ok, "{agent:?}");
    // Two tries while it boots, the one that answers, then the check itself.
    assert_eq!(agents.log().iter().filter(|line| *line == "status demo/web").count(), 4, "{:?}", agents.log());
    assert!(report.failures().is_empty(), "{:?}", report.failures());
}

#[test]
fn restore_past_its_record_step_is_completed_not_rolled_back() {
    let h = Harness::new();
    let op = h.dead_operation(OperationKind::Restore);
    h.step(op, "point web at the restored overlays", UndoAction::Nothing, true);
    h.step(op, crate::ops::restore::RECORD_STEP, UndoAction::Nothing, true);
    h.step(op, "discard the previous overlays", UndoAction::Nothing, false);

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    assert_eq!(report.environments[0].operations[0].outcome, Outcome::Completed);
    assert_eq!(h.catalog.operation(op).unwrap().state, OperationState::Completed);
    assert!(h.steps(op).iter().all(|s| *s == StepState::Done));
}

#[test]
fn delete_block_job_left_running_is_aborted() {
    let h = Harness::new();
    let hv: &dyn crate::hypervisor::Hypervisor = &h.hv;
    let snap = ExternalSnapshot {
        name: "S4".into(),
        disks: vec![("vda".into(), h.storage().join("web/S4.vda.qcow2"))],
        memory_file: None,
        atomic: true,
        quiesce: false,
        no_metadata: true,
        live: false,
    };
    hv.create_external_snapshot("web", &snap).unwrap();
    let commit = crate::hypervisor::BlockCommit { active: true, shallow: true, ..Default::default() };
    hv.block_commit("web", "vda", &commit).unwrap();
    let op = h.dead_operation(OperationKind::DeleteSnapshot);
    h.step(op, "commit S4 of web/vda", crate::ops::delete::abort_block_job("web", "vda"), false);

    let report = h.recover_all(&FakeRecoveryAgents::healthy());

    assert_eq!(report.environments[0].operations[0].outcome, Outcome::RolledBack);
    assert!(h.hv.steps().contains(&FakeStep::BlockJobAbort));
    assert_eq!(hv.block_job("web", "vda").unwrap(), None);
}

#[test]
fn every_undo_kind_an_operation_journals_is_one_recover_runs() {
    // A kind missing here makes `recover` refuse the whole operation it
    // belongs to, exactly when it is needed: after a crash.
    let owned = [
        crate::ops::clone::undo::KINDS,
        crate::ops::standby::undo::KINDS,
        crate::ops::failover::undo::KINDS,
        &[
            crate::ops::restore::UNDO_START_DOMAIN,
            crate::ops::restore::UNDO_STOP_DOMAIN,
            crate::ops::restore::UNDO_REDEFINE_DISKS,
            crate::ops::delete::UNDO_ABORT_BLOCK_JOB,
            crate::ops::snapshot::UNDO_FAIL_SNAPSHOT_NAMED,
        ],
    ];
    for kind in owned.iter().flat_map(|kinds| kinds.iter()) {
        assert!(KNOWN_CUSTOM_KINDS.contains(kind), "recover does not know '{kind}'");
        let action = UndoAction::Custom { kind: (*kind).to_owned(), data: serde_json::json!({}) };
        assert!(!describe(&action).contains("unknown"), "{kind}: {}", describe(&action));
    }
}

/// A `standby create --host b` killed before it recorded the standby: its
/// steps are undone on b, the host its journal names, not on the
/// controller's.
#[test]
fn an_interrupted_operation_on_another_host_is_undone_there() {
    use crate::hypervisor::{NetworkDef, NetworkSpec};
    use crate::ops::clone::undo::UNDO_REMOVE_NETWORK;
    let h = Harness::new();
    let b_hv = FakeHypervisor::new();
    let hv: &dyn crate::hypervisor::Hypervisor = &b_hv;
    hv.define_network(&NetworkDef::isolated(&NetworkSpec { name: "sb-net".into(), bridge: "esb".into(), ip: None }))
        .unwrap();
    let local: &dyn crate::hypervisor::Hypervisor = &h.hv;
    local
        .define_network(&NetworkDef::isolated(&NetworkSpec { name: "sb-net".into(), bridge: "esb".into(), ip: None }))
        .unwrap();
    let mut owner = Owner::current();
    owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);
    let started = Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap();
    let op = h.catalog.begin_operation(OperationKind::StandbyCreate, "sb", &owner, started).unwrap();
    h.catalog.set_operation_host(op, "b").unwrap();
    let undo =
        UndoAction::Custom { kind: UNDO_REMOVE_NETWORK.into(), data: serde_json::json!({ "network": "sb-net" }) };
    h.step(op, "create network sb-net (isolated copy of net)", undo, true);

    let progress = |_: &Event| {};
    let clock = FixedClock(Utc.with_ymd_and_hms(2024, 5, 1, 3, 0, 0).unwrap());
    let (storage, net) = (crate::host::LocalStorage, FakeNet::default());
    let here = FakeHost::new(&h.hv, &storage, &net);
    let b = FakeHost::new(&b_hv, &storage, &net).named("b");
    let hosts = crate::host::HostRegistry::new().with(&here).with(&b);
    let ctx = OpContext {
        config: &h.config,
        host: &here,
        hosts: &hosts,
        catalog: &h.catalog,
        progress: &progress,
        clock: &clock,
        interrupt: &h.interrupt,
    };
    let report = recover(&ctx, &FakeRecoveryAgents::healthy(), &RecoverRequest::default()).unwrap();

    let sb = report.environments.iter().find(|env| env.env == "sb").unwrap();
    assert_eq!(sb.operations[0].outcome, Outcome::RolledBack, "{sb:?}");
    assert!(b_hv.peek_network("sb-net").is_none(), "removed on b");
    assert!(h.hv.peek_network("sb-net").is_some(), "the controller's own is not touched");
}
