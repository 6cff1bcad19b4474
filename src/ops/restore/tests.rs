//! The restore on `FakeHypervisor`, scripted agents and fake image files:
//! the order of the steps, the journal, the catalog and every failure
//! path, without libvirt, SSH or qemu-img.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::catalog::{Catalog, Dependent, ImageFormat, ImageKind, NewImage, OperationState, SnapshotState, StepState};
use crate::config::{AgentEndpoint, Config, Controller, HumanSize, Vm};
use crate::error::Failure as _;
use crate::hypervisor::{Call, DomainState, FakeHypervisor, FakeStep, Hypervisor};
use crate::ops::context::{Event, FixedClock, OpContext};
use crate::ops::snapshot::save_image::SavePrefix;
use crate::ops::snapshot::{self, snapshot_dependent, SnapshotRequest};
use crate::test_support::{FakeHost, FakeNet, FakeQuiescer, FakeRestoreAgents, FakeStorage};

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 2, minute, 0).unwrap()
}

/// An environment `demo` of VMs `web` and `db` on `FakeHypervisor`.
struct Harness {
    dir: tempfile::TempDir,
    state: PathBuf,
    config: Config,
    catalog: Catalog,
    hv: FakeHypervisor,
    quiescer: FakeQuiescer,
    agents: FakeRestoreAgents,
    files: FakeStorage<'static>,
    net: FakeNet,
    events: Mutex<Vec<Event>>,
    /// What SIGTERM/SIGINT would set: a test sets it to interrupt the operation.
    interrupt: crate::ops::interrupt::Interrupt,
}

impl Harness {
    fn new(hv: FakeHypervisor) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut controller = Controller::new("/k", "/h");
        controller.state_dir = state.clone();
        controller.min_free_space = HumanSize::from_bytes(1);
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
        let catalog = Catalog::open(&state).unwrap();
        Harness {
            dir,
            state,
            config,
            catalog,
            hv,
            quiescer: FakeQuiescer::healthy(),
            agents: FakeRestoreAgents::healthy(),
            files: FakeStorage::default().made_only("restore-").with_size(196_608),
            net: FakeNet::default(),
            events: Mutex::new(Vec::new()),
            interrupt: Default::default(),
        }
    }

    fn env() -> Self {
        Harness::new(FakeHypervisor::running_env("net", &["web", "db"]))
    }

    fn with_context<T>(&self, when: DateTime<Utc>, f: impl FnOnce(&OpContext<'_>) -> T) -> T {
        let events = &self.events;
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());
        let clock = FixedClock(when);
        let host = FakeHost::new(&self.hv, &self.files, &self.net);
        let ctx = OpContext {
            config: &self.config,
            host: &host,
            hosts: &crate::host::HostRegistry::new().with(&host),
            catalog: &self.catalog,
            progress: &progress,
            clock: &clock,
            interrupt: &self.interrupt,
        };
        f(&ctx)
    }

    /// A disk-only snapshot through `envclone snapshot`'s own code; the
    /// VMs then write to its overlays.
    fn snapshot(&self, when: DateTime<Utc>) -> String {
        let request = SnapshotRequest { env: "demo".into(), label: None, memory: false, quiesce: None, schedule: None };
        let name = self.with_context(when, |ctx| snapshot::take(ctx, &request, &self.quiescer)).unwrap().name;
        self.quiescer.clear_events();
        self.hv.clear_calls();
        name
    }

    /// A memory snapshot `name` made by hand: each VM's chain is base <-
    /// snapshot image <- active overlay; its memory image is a real save
    /// image prefix whose domain XML names the snapshot image.
    fn memory_snapshot(&self, name: &str) {
        let storage = self.storage();
        let id = self
            .catalog
            .create_snapshot(&crate::catalog::NewSnapshot {
                env: "demo".into(),
                name: name.into(),
                label: Some("with memory".into()),
                schedule: None,
                created_at: at(0),
                memory: true,
            })
            .unwrap();
        for vm in ["web", "db"] {
            let image = |path: PathBuf, kind, backing, snapshot| NewImage {
                path,
                vm: vm.into(),
                disk: Some("vda".into()),
                kind,
                format: ImageFormat::Qcow2,
                size_bytes: 1,
                backing,
                snapshot,
                created_at: at(0),
            };
            let base = self.catalog.add_image(&image(
                PathBuf::from(format!("/images/{vm}.qcow2")),
                ImageKind::Base,
                None,
                None,
            ));
            let snap_path = storage.join(vm).join(format!("{name}.image.vda.qcow2"));
            let snap = self.catalog.add_image(&image(snap_path.clone(), ImageKind::Overlay, Some(base.unwrap()), None));
            let snap = snap.unwrap();
            self.catalog.pin(snap, &snapshot_dependent("demo", name)).unwrap();
            let active = storage.join(vm).join(format!("{name}.vda.qcow2"));
            self.catalog.add_image(&image(active.clone(), ImageKind::Overlay, Some(snap), None)).unwrap();
            // The domain writes to the active overlay; its memory image names the snapshot image.
            let mut def = self.hv.peek_domain(vm).unwrap().def;
            def.set_disk_source("vda", &active, "qcow2").unwrap();
            self.hv.define_domain(&def).unwrap();
            let mut saved = def.clone();
            saved.set_disk_source("vda", &snap_path, "qcow2").unwrap();
            let mem = self.dir.path().join(format!("{vm}.{name}.mem"));
            let prefix = SavePrefix::new(&saved.to_xml(), None, true).unwrap().encode().unwrap();
            std::fs::write(&mem, prefix).unwrap();
            self.hv.save_memory(vm, &mem).unwrap();
            self.hv.start_domain(vm).unwrap();
            let memory = NewImage {
                disk: None,
                kind: ImageKind::Memory,
                format: ImageFormat::LibvirtSave,
                ..image(mem, ImageKind::Memory, None, Some(id))
            };
            self.catalog.add_image(&memory).unwrap();
        }
        self.catalog.set_snapshot_state(id, SnapshotState::Complete).unwrap();
        self.hv.clear_calls();
    }

    fn restore(
        &self,
        name: &str,
        memory: bool,
        discard: bool,
        when: DateTime<Utc>,
    ) -> Result<RestoreReport, RestoreError> {
        let request = RestoreRequest { env: "demo".into(), snapshot: name.into(), memory, discard };
        let tools = Tools { quiescer: &self.quiescer, agents: &self.agents };
        self.with_context(when, |ctx| restore(ctx, &request, tools))
    }

    fn storage(&self) -> PathBuf {
        self.state.join("images/demo")
    }

    fn source(&self, domain: &str) -> PathBuf {
        self.hv.peek_domain(domain).unwrap().def.disks()[0].source.clone().unwrap()
    }

    fn sources(&self) -> [PathBuf; 2] {
        [self.source("db"), self.source("web")]
    }

    fn state(&self, domain: &str) -> DomainState {
        self.hv.peek_domain(domain).unwrap().state
    }

    fn steps_of(&self, wanted: &[FakeStep]) -> Vec<(FakeStep, String)> {
        self.hv
            .calls()
            .into_iter()
            .filter(|c| wanted.contains(&c.step()))
            .map(|c| {
                let domain = match &c {
                    Call::DestroyDomain { name } | Call::StartDomain { name } => name.clone(),
                    Call::DefineDomain { def } => def.name(),
                    Call::RestoreMemory { def, .. } => def.as_ref().map(|d| d.name()).unwrap_or_default(),
                    _ => String::new(),
                };
                (c.step(), domain)
            })
            .collect()
    }

    fn last_operation(&self) -> crate::catalog::Operation {
        let mut all = Vec::new();
        for state in OperationState::ALL {
            all.extend(self.catalog.operations_in(*state).unwrap());
        }
        all.into_iter().filter(|o| o.kind == crate::catalog::OperationKind::Restore).max_by_key(|o| o.id).unwrap()
    }

    /// The freezes and how each ended; the preflight logins are not what
    /// these tests watch.
    fn log(&self) -> Vec<String> {
        self.quiescer.events().into_iter().filter(|e| !e.starts_with("prepare ")).collect()
    }
}

#[test]
fn restore_stops_makes_overlays_redefines_boots_and_records() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    let previous = h.sources();

    let report = h.restore(&snap, false, false, at(1)).unwrap();

    // Every VM stopped before any was redefined, redefined before any started.
    use FakeStep::*;
    let order: Vec<FakeStep> =
        h.steps_of(&[DestroyDomain, DefineDomain, StartDomain]).into_iter().map(|s| s.0).collect();
    assert_eq!(order, [DestroyDomain, DestroyDomain, DefineDomain, DefineDomain, StartDomain, StartDomain]);
    // Each disk writes to a new overlay on the snapshot's image.
    for (vm, previous) in [("db", &previous[0]), ("web", &previous[1])] {
        let overlay = h.storage().join(vm).join(format!("restore-{snap}-20240501T020100Z.vda.qcow2"));
        assert_eq!(h.source(vm), overlay);
        assert_eq!(h.state(vm), DomainState::Running);
        let image = PathBuf::from(format!("/images/{vm}.qcow2"));
        assert_eq!(h.files.backing_of(&overlay), Some(image.clone()));
        let disk = &report.vms.iter().find(|r| r.vm == vm).unwrap().disks[0];
        assert_eq!((&disk.image, &disk.overlay, &disk.previous), (&image, &overlay, previous));
        // The catalog: the overlay is the active image on the snapshot's image.
        let recorded = h.catalog.image_by_path(&overlay).unwrap().unwrap();
        let backing = h.catalog.image(recorded.backing.unwrap()).unwrap();
        assert_eq!((recorded.kind, backing.path), (ImageKind::Overlay, image));
    }
    // The undo snapshot: complete, app-consistent, holding what the VMs wrote to.
    let undo = report.undo_snapshot.clone().unwrap();
    assert_eq!(undo, "20240501T020100Z");
    let recorded = h.catalog.snapshot_named("demo", &undo).unwrap().unwrap();
    assert_eq!(recorded.state, SnapshotState::Complete);
    assert_eq!(recorded.label, Some(format!("undo-before-restore-{snap}")));
    assert!(recorded.vms.iter().all(|vm| vm.consistency == Consistency::AppConsistent), "{recorded:?}");
    let held: Vec<PathBuf> =
        h.catalog.images_needed_by(&snapshot_dependent("demo", &undo)).unwrap().into_iter().map(|i| i.path).collect();
    assert_eq!(held, previous);
    // Both guests frozen before the stop; each freeze ended with its VM.
    let log = h.log();
    assert_eq!(log.iter().filter(|e| e.starts_with("freeze")).count(), 2, "{log:?}");
    assert_eq!(log.iter().filter(|e| e.starts_with("release")).count(), 2, "{log:?}");
    assert_eq!(h.agents.calls().len(), 2);
    // The journal: every step done, in the state machine's order.
    let op = h.last_operation();
    assert_eq!(op.state, OperationState::Completed);
    let steps = h.catalog.steps(op.id).unwrap();
    assert!(steps.iter().all(|s| s.state == StepState::Done), "{steps:#?}");
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "resolve",
            "freeze db (best effort)",
            "freeze web (best effort)",
            "stop db",
            "stop web",
            "record undo snapshot 20240501T020100Z",
            "create overlay db/vda",
            "create overlay web/vda",
            "redefine db on its new overlays",
            "redefine web on its new overlays",
            "start db",
            "start web",
            "wait for the agent of db",
            "wait for the agent of web",
            RECORD_STEP,
        ]
    );
    assert!(matches!(&steps[3].undo, UndoAction::Custom { kind, .. } if kind == UNDO_START_DOMAIN));
    assert!(
        matches!(&steps[6].undo, UndoAction::DeleteFile { path } if path.ends_with("restore-20240501T020000Z-20240501T020100Z.vda.qcow2"))
    );
    assert!(matches!(&steps[8].undo, UndoAction::Custom { kind, .. } if kind == UNDO_REDEFINE_DISKS));
    assert!(matches!(&steps[10].undo, UndoAction::Custom { kind, .. } if kind == UNDO_STOP_DOMAIN));
    let events = h.events.lock().unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::End { step, ok: true, .. } if step == "start 2 VMs")),
        "{events:?}"
    );
}

#[test]
fn restoring_the_same_snapshot_twice_makes_a_fresh_overlay_each_time() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    let first = h.restore(&snap, false, false, at(1)).unwrap();

    let second = h.restore(&snap, false, false, at(1)).unwrap();

    let overlay = |r: &RestoreReport| r.vms[1].disks[0].overlay.clone();
    assert_ne!(overlay(&first), overlay(&second));
    assert!(overlay(&second).to_string_lossy().ends_with("-20240501T020100Z-2.vda.qcow2"), "{:?}", overlay(&second));
    assert_eq!(h.files.backing_of(&overlay(&second)), Some(PathBuf::from("/images/web.qcow2")));
    assert_eq!(second.undo_snapshot.as_deref(), Some("20240501T020100Z-2"));
    // The first restore's overlay is the second undo snapshot's image.
    assert_eq!(second.vms[1].disks[0].previous, overlay(&first));
}

#[test]
fn the_undo_snapshot_brings_back_the_replaced_state() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    let before = h.sources();
    let undo = h.restore(&snap, false, false, at(1)).unwrap().undo_snapshot.unwrap();

    let back = h.restore(&undo, false, false, at(2)).unwrap();

    for (index, vm) in ["db", "web"].into_iter().enumerate() {
        let active = h.catalog.image_by_path(&h.source(vm)).unwrap().unwrap();
        let chain: Vec<PathBuf> = h.catalog.chain(active.id).unwrap().into_iter().map(|i| i.path).collect();
        assert_eq!(chain, [h.source(vm), before[index].clone(), PathBuf::from(format!("/images/{vm}.qcow2"))]);
    }
    assert_eq!(back.label, Some(format!("undo-before-restore-{snap}")));
}

#[test]
fn discard_keeps_no_undo_snapshot_and_deletes_only_what_nothing_needs() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    let [db_before, web_before] = h.sources();
    // A clone still needs web's overlay.
    let web_image = h.catalog.image_by_path(&web_before).unwrap().unwrap();
    h.catalog.pin(web_image.id, &Dependent::clone_named("copy")).unwrap();

    let report = h.restore(&snap, false, true, at(1)).unwrap();

    assert_eq!(report.undo_snapshot, None);
    assert_eq!(report.discarded, std::slice::from_ref(&db_before));
    assert_eq!(report.kept.len(), 1);
    assert_eq!(report.kept[0].path, web_before);
    assert!(report.kept[0].reason.contains("clone 'copy' uses it"), "{:?}", report.kept);
    assert_eq!(h.files.removed(), std::slice::from_ref(&db_before));
    assert!(h.catalog.image_by_path(&db_before).unwrap().is_none());
    assert!(h.catalog.image_by_path(&web_before).unwrap().is_some());
    // Nothing was frozen: no undo snapshot to make consistent.
    assert!(h.log().is_empty(), "{:?}", h.log());
    assert_eq!(h.catalog.snapshots("demo").unwrap().len(), 1);
    // The base images and the snapshot's own images are never deleted.
    let again = h.restore(&snap, false, true, at(2)).unwrap();
    let first: Vec<PathBuf> = report.vms.iter().map(|vm| vm.disks[0].overlay.clone()).collect();
    assert_eq!(again.discarded, first);
    assert!(h.catalog.image_by_path(Path::new("/images/db.qcow2")).unwrap().is_some());
}

#[test]
fn restore_refuses_an_unknown_snapshot_listing_the_complete_ones() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));

    let error = h.restore("20990101T000000Z", false, false, at(1)).unwrap_err();

    assert!(matches!(&error, RestoreError::UnknownSnapshot { state: None, known, .. } if *known == [snap.clone()]));
    assert!(error.hint().unwrap().contains(&snap), "{:?}", error.hint());
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::NotFound);
    assert!(h.steps_of(&[FakeStep::DestroyDomain]).is_empty());
    assert_eq!(h.last_operation().state, OperationState::RolledBack);
}

#[test]
fn restore_refuses_a_failed_snapshot_like_an_unknown_one() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]).fail_at(FakeStep::CreateSnapshot));
    let request = SnapshotRequest { env: "demo".into(), label: None, memory: false, quiesce: None, schedule: None };
    h.with_context(at(0), |ctx| snapshot::take(ctx, &request, &h.quiescer)).unwrap_err();

    let error = h.restore("20240501T020000Z", false, false, at(1)).unwrap_err();

    assert!(
        matches!(&error, RestoreError::UnknownSnapshot { state: Some(SnapshotState::Failed), known, .. } if known.is_empty()),
        "{error:?}"
    );
    assert!(error.to_string().contains("is failed, not complete"), "{error}");
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::NotFound);
}

#[test]
fn memory_on_a_disk_only_snapshot_is_refused_and_changes_nothing() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    let before = h.sources();

    let error = h.restore(&snap, true, false, at(1)).unwrap_err();

    assert!(matches!(&error, RestoreError::NoMemoryImage { vm: None, .. }), "{error:?}");
    assert!(error.to_string().contains("taken without memory; nothing was changed"), "{error}");
    assert!(error.hint().unwrap().starts_with("restore without --memory"), "{:?}", error.hint());
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::Usage);
    assert!(h.hv.calls().iter().all(|c| c.step() == FakeStep::Domain), "{:?}", h.hv.calls());
    assert_eq!(h.sources(), before);
    assert_eq!(h.catalog.snapshots("demo").unwrap().len(), 1);
}

#[test]
fn memory_restore_resumes_each_vm_on_new_overlays_then_thaws_it_and_sets_its_clock() {
    let h = Harness::env();
    h.memory_snapshot("m1");

    let report = h.restore("m1", true, false, at(1)).unwrap();

    for vm in ["db", "web"] {
        let overlay = h.storage().join(vm).join("restore-m1-20240501T020100Z.vda.qcow2");
        assert_eq!(h.files.backing_of(&overlay), Some(h.storage().join(vm).join("m1.image.vda.qcow2")));
        // Restored from its memory image with the new overlay as its disk...
        let restored = h.hv.calls().into_iter().find_map(|c| match c {
            Call::RestoreMemory { path, def: Some(def) } if def.name() == vm => Some((path, def)),
            _ => None,
        });
        let (path, def) = restored.unwrap();
        assert_eq!(path, h.dir.path().join(format!("{vm}.m1.mem")));
        assert_eq!(def.disks()[0].source.as_ref(), Some(&overlay));
        // ...and its persistent definition points there too.
        assert_eq!(h.source(vm), overlay);
        assert_eq!(h.state(vm), DomainState::Running);
        let vm_report = report.vms.iter().find(|r| r.vm == vm).unwrap();
        assert_eq!((vm_report.start, vm_report.clock_step_ms), (StartKind::Memory, Some(3_600_000)));
    }
    assert!(h.steps_of(&[FakeStep::StartDomain]).is_empty());
    let agents = h.agents.calls();
    for vm in ["db", "web"] {
        let thaw = agents.iter().position(|e| *e == format!("thaw {vm}")).unwrap();
        let clock = agents.iter().position(|e| *e == format!("set-clock {vm}")).unwrap();
        assert!(thaw < clock, "{agents:?}");
    }
    let steps = h.catalog.steps(h.last_operation().id).unwrap();
    assert!(steps.iter().any(|s| s.name == "restore web from memory" && s.state == StepState::Done));
    assert!(steps.iter().any(|s| s.name == "thaw web and set its clock" && s.state == StepState::Done));
}

#[test]
fn undo_snapshot_is_crash_consistent_where_the_agent_did_not_answer() {
    let mut h = Harness::env();
    let snap = h.snapshot(at(0));
    h.quiescer = FakeQuiescer::healthy().with_agent_down("db");

    let report = h.restore(&snap, false, false, at(1)).unwrap();

    let db = report.vms.iter().find(|vm| vm.vm == "db").unwrap();
    assert_eq!(db.undo_consistency, Some(Consistency::CrashConsistent));
    assert!(db.undo_reason.as_deref().unwrap().starts_with("not frozen: cannot connect"), "{db:?}");
    let web = report.vms.iter().find(|vm| vm.vm == "web").unwrap();
    assert_eq!((web.undo_consistency, web.undo_reason.as_deref()), (Some(Consistency::AppConsistent), None));
    let recorded = h.catalog.snapshot_named("demo", report.undo_snapshot.as_deref().unwrap()).unwrap().unwrap();
    assert_eq!(recorded.vms.iter().find(|v| v.vm == "db").unwrap().reason, db.undo_reason);
}

#[test]
fn a_vm_that_was_shut_off_is_booted_on_the_snapshot() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    h.hv.destroy_domain("db").unwrap();
    h.hv.clear_calls();

    let report = h.restore(&snap, false, false, at(1)).unwrap();

    let db = report.vms.iter().find(|vm| vm.vm == "db").unwrap();
    assert!(!db.was_running);
    assert_eq!(db.undo_reason.as_deref(), Some("it was not running"));
    assert_eq!(h.state("db"), DomainState::Running);
    let destroyed = h.steps_of(&[FakeStep::DestroyDomain]);
    assert_eq!(destroyed, [(FakeStep::DestroyDomain, "web".to_owned())]);
}

#[test]
fn a_second_caller_is_refused_as_busy() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    let _held = crate::ops::EnvLock::acquire(&h.state, "demo", "snapshot").unwrap();

    let error = h.restore(&snap, false, false, at(1)).unwrap_err();

    assert!(matches!(&error, RestoreError::Lock(crate::ops::LockError::Busy(_))), "{error:?}");
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::Busy);
    assert!(h.hv.calls().is_empty());
}

/// A failure injected at one step of a restore.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Stop,
    Overlay,
    Redefine,
    Start,
    AgentWait,
    MemoryRestore,
    Thaw,
}

/// After any failure every VM runs again on the disks it had, no new
/// overlay is left, the undo snapshot (if recorded) is failed, and the
/// journal shows the whole rollback; the error names the step and the VM.
#[test]
fn a_failure_at_any_step_leaves_every_vm_running_on_its_previous_chain() {
    for failure in [
        Failure::Stop,
        Failure::Overlay,
        Failure::Redefine,
        Failure::Start,
        Failure::AgentWait,
        Failure::MemoryRestore,
        Failure::Thaw,
    ] {
        let memory = matches!(failure, Failure::MemoryRestore | Failure::Thaw);
        let hv = FakeHypervisor::running_env("net", &["web", "db"]);
        let hv = match failure {
            Failure::Stop => hv.fail_at_call(FakeStep::DestroyDomain, 2),
            Failure::Redefine => hv.fail_at_call(FakeStep::DefineDomain, 2),
            Failure::Start => hv.fail_at_call(FakeStep::StartDomain, 2),
            Failure::MemoryRestore => hv.fail_at_call(FakeStep::RestoreMemory, 2),
            _ => hv,
        };
        let mut h = Harness::new(hv);
        let snap = if memory {
            h.memory_snapshot("m1");
            "m1".to_owned()
        } else {
            h.snapshot(at(0))
        };
        match failure {
            Failure::Overlay => h.files = FakeStorage::default().made_only("restore-").failing("create_overlay", 2),
            Failure::AgentWait => h.agents = FakeRestoreAgents::healthy().with_agent_not_ready("web"),
            Failure::Thaw => h.agents = FakeRestoreAgents::healthy().with_failing_thaw("db"),
            _ => {}
        }
        let before = h.sources();

        let error = h.restore(&snap, memory, false, at(1)).unwrap_err();

        let (expected_vm, matched) = match (&error, failure) {
            (RestoreError::Stop { vm, .. }, Failure::Stop) => (vm.as_str(), true),
            (RestoreError::CreateOverlay { vm, .. }, Failure::Overlay) => (vm.as_str(), true),
            (RestoreError::Redefine { vm, .. }, Failure::Redefine) => (vm.as_str(), true),
            (RestoreError::Start { vm, .. }, Failure::Start) => (vm.as_str(), true),
            (RestoreError::AgentNotReady { vm, .. }, Failure::AgentWait) => (vm.as_str(), true),
            (RestoreError::RestoreMemory { vm, .. }, Failure::MemoryRestore) => (vm.as_str(), true),
            (RestoreError::Thaw { vm, .. }, Failure::Thaw) => (vm.as_str(), true),
            _ => ("", false),
        };
        assert!(matched, "{failure:?}: {error:?}");
        // Steps run in parallel (starts, memory restores) may fail in either VM first.
        assert!(["web", "db"].contains(&expected_vm), "{failure:?}: {expected_vm}");
        assert!(error.to_string().contains(&format!("VM '{expected_vm}'")), "{failure:?}: {error}");
        // Every VM runs on the chain it had.
        assert_eq!(h.sources(), before, "{failure:?}");
        for vm in ["web", "db"] {
            assert_eq!(h.state(vm), DomainState::Running, "{failure:?}: {vm}");
        }
        // No new overlay is left.
        assert!(h.state_of_files_is_clean(), "{failure:?}: {:?}", h.files.files());
        // The undo snapshot, if it got that far, is failed; the restored snapshot untouched.
        for snapshot in h.catalog.snapshots("demo").unwrap() {
            let expected = if snapshot.name == snap { SnapshotState::Complete } else { SnapshotState::Failed };
            assert_eq!(snapshot.state, expected, "{failure:?}: {}", snapshot.name);
        }
        // The journal: rolled back, every step undone, the failed one with its error.
        let op = h.last_operation();
        assert_eq!(op.state, OperationState::RolledBack, "{failure:?}");
        let steps = h.catalog.steps(op.id).unwrap();
        assert!(steps.iter().all(|s| s.state == StepState::Undone), "{failure:?}: {steps:#?}");
        assert!(steps.iter().any(|s| s.error.is_some()), "{failure:?}");
        assert!(op.error.unwrap().contains(&format!("VM '{expected_vm}'")), "{failure:?}");
        // No guest stays frozen.
        let log = h.log();
        for vm in ["web", "db"] {
            let froze = log.iter().filter(|e| **e == format!("freeze {vm}")).count();
            let ended = log.iter().filter(|e| **e == format!("release {vm}") || **e == format!("thaw {vm}")).count();
            assert_eq!(froze, ended, "{failure:?}: {log:?}");
        }
    }
}

impl Harness {
    /// Every overlay the restore made was removed again.
    fn state_of_files_is_clean(&self) -> bool {
        self.files.files().is_empty()
    }
}

#[test]
fn a_stop_that_fails_thaws_the_guest_still_running() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]).fail_at_call(FakeStep::DestroyDomain, 2));
    let snap = h.snapshot(at(0));

    let error = h.restore(&snap, false, false, at(1)).unwrap_err();

    // The stops run in parallel: either may be the second.
    let RestoreError::Stop { vm: failed, .. } = &error else { panic!("{error:?}") };
    let stopped = if failed == "web" { "db" } else { "web" };
    let mut log = h.log();
    log.sort();
    let mut expected = vec!["freeze db".to_owned(), "freeze web".to_owned()];
    expected.extend([format!("release {stopped}"), format!("thaw {failed}")]);
    expected.sort();
    assert_eq!(log, expected);
    assert_eq!(h.steps_of(&[FakeStep::StartDomain]), [(FakeStep::StartDomain, stopped.to_owned())]);
}

#[test]
fn a_rollback_that_cannot_restart_a_vm_says_so_and_leaves_the_operation_to_recover() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]).fail_at(FakeStep::StartDomain));
    let snap = h.snapshot(at(0));

    let error = h.restore(&snap, false, false, at(1)).unwrap_err();

    let RestoreError::CleanupFailed { cause, failures } = &error else { panic!("{error:?}") };
    assert!(matches!(**cause, RestoreError::Start { .. } | RestoreError::Several { .. }), "{cause:?}");
    assert!(failures.iter().any(|f| f.contains("stays SHUT OFF")), "{failures:?}");
    assert!(error.hint().unwrap().contains("envclone recover"));
    assert_eq!(h.last_operation().state, OperationState::Failed);
    // Still on valid chains: the previous disks, redefined.
    let [db, web] = h.sources();
    assert!(db.ends_with("20240501T020000Z.vda.qcow2") && web.ends_with("20240501T020000Z.vda.qcow2"));
}

#[test]
fn a_sigterm_during_a_restore_rolls_it_back_before_its_next_step() {
    let h = Harness::env();
    let snap = h.snapshot(at(0));
    let before = h.sources();
    let request = RestoreRequest { env: "demo".into(), snapshot: snap.clone(), memory: false, discard: false };
    let tools = Tools { quiescer: &h.quiescer, agents: &h.agents };

    // SIGTERM while its first step runs.
    let error = h
        .with_context(at(1), |ctx| {
            let progress = |event: &Event| {
                if matches!(event, Event::Begin { step } if step == "resolve") {
                    h.interrupt.request(nix::sys::signal::Signal::SIGTERM);
                }
            };
            restore(&OpContext { progress: &progress, ..*ctx }, &request, tools)
        })
        .unwrap_err();

    assert!(
        matches!(&error, RestoreError::Interrupted(crate::ops::interrupt::Interrupted { signal: "SIGTERM", .. })),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), crate::exit::ExitCode::Failed);
    // Rolled back: the VMs run on the chains they had, the journal is closed.
    assert_eq!(h.sources(), before);
    for vm in ["web", "db"] {
        assert_eq!(h.state(vm), DomainState::Running, "{vm}");
    }
    let op = h.last_operation();
    assert_eq!(op.state, OperationState::RolledBack);
    assert!(op.error.unwrap().contains("interrupted by SIGTERM"));
    let steps = h.catalog.steps(op.id).unwrap();
    assert_eq!(steps[0].name, "resolve");
    assert!(steps.iter().all(|s| s.state == StepState::Undone), "{steps:#?}");
    assert!(h.state_of_files_is_clean(), "{:?}", h.files.files());
}
