//! Standbys on `FakeHypervisor` and a `FakeStorage`: what is
//! defined, copied, merged, recorded and pinned; that a sync twice is a
//! no-op, a copy that does not verify leaves the standby as it was, and a
//! destroy leaves nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::catalog::{Catalog, Dependent, OperationState};
use crate::config::{AgentEndpoint, Config, Controller, Environment, HumanSize, Vm};
use crate::host::Storage;
use crate::hypervisor::{DomainState, FakeHypervisor, HvError, Hypervisor};
use crate::ops::context::{Event, FixedClock, OpContext};
use crate::ops::snapshot::SnapshotRequest;
use crate::test_support::{FakeHost, FakeNet, FakeQuiescer, FakeStorage, Presume, ReadyAgents};

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 2, minute, 0).unwrap()
}

/// An environment `demo` of VMs `web` and `db` on network `net`, running.
struct Harness {
    _dir: tempfile::TempDir,
    storage: PathBuf,
    config: Config,
    catalog: Catalog,
    hv: FakeHypervisor,
    events: Mutex<Vec<Event>>,
    /// What SIGTERM/SIGINT would set: a test sets it to interrupt the operation.
    interrupt: crate::ops::interrupt::Interrupt,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut controller = Controller::new("/k", dir.path().join("known_hosts"));
        controller.state_dir = dir.path().join("state");
        controller.min_free_space = HumanSize::from_bytes(1);
        let vms = [("web", "192.168.50.11"), ("db", "192.168.50.12")]
            .map(|(name, address)| {
                (name.to_owned(), Vm { domain: name.to_owned(), agent: AgentEndpoint::new(address) })
            })
            .into();
        let env = Environment { vms, networks: vec!["net".into()], ..Default::default() };
        let config = Config {
            controller,
            environments: BTreeMap::from([("demo".to_owned(), env)]),
            schedules: BTreeMap::new(),
            standbys: BTreeMap::new(),
            hosts: BTreeMap::new(),
            lab: None,
        };
        let catalog = Catalog::open(&config.controller.state_dir).unwrap();
        Harness {
            storage: dir.path().join("standby"),
            _dir: dir,
            config,
            catalog,
            hv: FakeHypervisor::running_env("net", &["web", "db"]),
            events: Mutex::new(Vec::new()),
            interrupt: Default::default(),
        }
    }

    /// The context of an operation on the primary's images (snapshot, restore).
    fn with_context<T>(&self, f: impl FnOnce(&OpContext<'_>) -> T) -> T {
        self.with_transfer(&FakeStorage::default().made_only("restore-"), f)
    }

    /// The context of an operation whose storage is `transfer`.
    fn with_transfer<T>(&self, transfer: &FakeStorage<'_>, f: impl FnOnce(&OpContext<'_>) -> T) -> T {
        let events = &self.events;
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());
        let clock = FixedClock(at(30));
        let net = FakeNet::default();
        let host = FakeHost::new(&self.hv, transfer, &net);
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

    /// Fresh image files: the primary's all there, the standby's storage
    /// (under its root) holding only what the standby wrote.
    fn transfer(&self) -> FakeStorage<'static> {
        FakeStorage::presuming(Presume::Outside(self.storage.clone())).with_size(10)
    }

    fn image(&self, vm: &str) -> PathBuf {
        image_path(&self.storage, "sb", vm, "vda")
    }

    fn snapshot(&self) -> String {
        let request = SnapshotRequest { env: "demo".into(), label: None, memory: false, quiesce: None, schedule: None };
        self.with_context(|ctx| crate::ops::snapshot::take(ctx, &request, &FakeQuiescer::healthy())).unwrap().name
    }

    /// `envclone restore demo NAME`, keeping the undo snapshot.
    fn restore(&self, name: &str) {
        let request = crate::ops::restore::RestoreRequest {
            env: "demo".into(),
            snapshot: name.into(),
            memory: false,
            discard: false,
        };
        let agents = ReadyAgents::answering(true);
        let tools = crate::ops::restore::Tools { quiescer: &FakeQuiescer::healthy(), agents: &agents };
        self.with_context(|ctx| crate::ops::restore::restore(ctx, &request, tools)).unwrap();
    }

    fn create(&self, transfer: &FakeStorage<'_>) -> Result<CreateReport, StandbyError> {
        let request = CreateRequest {
            primary: "demo".into(),
            name: "sb".into(),
            storage: Some(self.storage.clone()),
            autorestore: None,
            host: None,
        };
        self.with_transfer(transfer, |ctx| create(ctx, &request))
    }

    fn sync(&self, transfer: &FakeStorage<'_>) -> Result<SyncReport, StandbyError> {
        self.with_transfer(transfer, |ctx| sync(ctx, "sb"))
    }

    /// The images the standby pins, by path.
    fn pinned(&self) -> Vec<PathBuf> {
        self.catalog.images_needed_by(&Dependent::standby_named("sb")).unwrap().into_iter().map(|i| i.path).collect()
    }

    /// The images snapshot `name` pins, by path.
    fn images_of(&self, name: &str) -> Vec<PathBuf> {
        let pin = crate::ops::snapshot::snapshot_dependent("demo", name);
        self.catalog.images_needed_by(&pin).unwrap().into_iter().map(|i| i.path).collect()
    }
}

#[test]
fn create_defines_shut_off_domains_on_isolated_networks_and_keeps_the_primarys_macs() {
    let h = Harness::new();
    let transfer = h.transfer();

    let report = h.create(&transfer).unwrap();

    assert!(report.created && report.sync.is_none() && report.sync_skipped.is_some(), "{report:#?}");
    for domain in &report.domains {
        let found = h.hv.peek_domain(&domain.domain).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{domain:?}");
        let primary = h.hv.peek_domain(&domain.primary_domain).unwrap();
        assert_ne!(found.uuid, primary.uuid);
        let iface = &found.def.interfaces()[0];
        assert_eq!(iface.network.as_deref(), Some("sb-net"));
        assert_eq!(domain.primary_macs, [primary.def.interfaces()[0].mac.clone().unwrap()]);
        assert_ne!(iface.mac, primary.def.interfaces()[0].mac);
        let disk = &found.def.disks()[0];
        assert_eq!(disk.source.as_deref(), Some(h.image(&domain.vm).as_path()));
    }
    let network = h.hv.peek_network("sb-net").unwrap();
    assert_eq!(network.def.ip(), None);
    assert!(network.active);
    let again = h.create(&transfer).unwrap();
    assert!(!again.created);
}

#[test]
fn create_refuses_a_name_taken_by_an_environment() {
    let h = Harness::new();
    let request =
        CreateRequest { primary: "demo".into(), name: "demo".into(), storage: None, autorestore: None, host: None };

    let error = h.with_transfer(&h.transfer(), |ctx| create(ctx, &request)).unwrap_err();

    assert!(matches!(error, StandbyError::BadName { .. }), "{error:?}");
    assert!(h.catalog.standbys(None).unwrap().is_empty());
}

#[test]
fn the_first_sync_copies_in_full_and_the_next_only_the_new_overlay() {
    let h = Harness::new();
    let transfer = h.transfer();
    let s1 = h.snapshot();

    let created = h.create(&transfer).unwrap();
    let first = created.sync.unwrap();

    assert_eq!(first.mode, SyncMode::Full);
    assert_eq!(first.bytes, 2000);
    assert_eq!(first.snapshot, s1);
    let db = h.image("db");
    assert_eq!(transfer.content(&db).unwrap(), "full(/images/db.qcow2)");
    assert_eq!(h.pinned(), h.images_of(&s1));

    let s2 = h.snapshot();
    let second = h.sync(&transfer).unwrap();

    assert_eq!(second.mode, SyncMode::Incremental);
    assert_eq!((second.previous.as_deref(), second.snapshot.as_str()), (Some(s1.as_str()), s2.as_str()));
    assert_eq!(second.bytes, 20, "one overlay of each of the two disks");
    let overlay = &h.images_of(&s2).into_iter().find(|p| p.to_string_lossy().contains("db")).unwrap();
    assert_eq!(transfer.content(&db).unwrap(), format!("full(/images/db.qcow2)+copy({})", overlay.display()));
    assert_eq!(h.pinned(), h.images_of(&s2), "the pins moved to the new point");
    assert_eq!(transfer.files().len(), 2, "only the two images are left: {:?}", transfer.files());
    let record = h.catalog.standby_named("sb").unwrap().unwrap();
    assert_eq!(record.snapshot.as_deref(), Some(s2.as_str()));
    assert!(record.disks.iter().all(|d| d.sha256.as_deref().is_some_and(|s| s.len() == 64)));
    assert_eq!(h.catalog.standby_syncs("sb", 5).unwrap().iter().map(|s| s.bytes).collect::<Vec<_>>(), [20, 2000]);
}

#[test]
fn a_standby_created_after_a_restore_is_brought_to_the_restored_snapshot_not_the_undo_snapshot() {
    let h = Harness::new();
    let s1 = h.snapshot();
    let s2 = h.snapshot();
    h.restore(&s1);
    let undo = h.catalog.last_snapshot("demo", None).unwrap().unwrap();
    assert!(undo.name != s1 && undo.name != s2, "the restore keeps an undo snapshot: {undo:?}");

    let created = h.create(&h.transfer()).unwrap();

    assert_eq!(created.sync.unwrap().snapshot, s1);
    assert_eq!(h.pinned(), h.images_of(&s1));
    let record = h.catalog.standby_named("sb").unwrap().unwrap();
    let lag = h.with_context(|ctx| super::lag(ctx.catalog, &record, at(40))).unwrap();
    assert_eq!((lag.snapshot.as_deref(), lag.behind), (Some(s1.as_str()), None));
}

#[test]
fn a_second_sync_is_a_no_op() {
    let h = Harness::new();
    let transfer = h.transfer();
    h.snapshot();
    h.create(&transfer).unwrap();
    let before = h.catalog.standby_syncs("sb", 5).unwrap();

    let again = h.sync(&transfer).unwrap();

    assert_eq!((again.mode, again.bytes), (SyncMode::UpToDate, 0));
    assert_eq!(h.catalog.standby_syncs("sb", 5).unwrap(), before);
}

#[test]
fn a_copy_that_does_not_verify_leaves_the_standby_as_it_was() {
    let h = Harness::new();
    let s1 = h.snapshot();
    h.create(&h.transfer()).unwrap();
    h.snapshot();
    let corrupting = h.transfer().corrupting();

    let error = h.sync(&corrupting).unwrap_err();

    assert!(matches!(error, StandbyError::Verify { .. }), "{error:?}");
    assert!(corrupting.files().is_empty(), "the copies are gone: {:?}", corrupting.files());
    let record = h.catalog.standby_named("sb").unwrap().unwrap();
    assert_eq!(record.snapshot.as_deref(), Some(s1.as_str()));
    assert_eq!(record.merging, None);
    assert_eq!(h.pinned(), h.images_of(&s1), "the sync's extra pins were released");
    let operations = h.catalog.operations_in(OperationState::RolledBack).unwrap();
    assert!(operations.iter().any(|op| op.kind == crate::catalog::OperationKind::StandbySync));
}

#[test]
fn sync_refuses_a_standby_whose_domain_runs() {
    let h = Harness::new();
    h.snapshot();
    h.create(&h.transfer()).unwrap();
    h.hv.start_domain("sb-web").unwrap();

    let error = h.sync(&h.transfer()).unwrap_err();

    assert!(matches!(error, StandbyError::StandbyRunning { ref domain, .. } if domain == "sb-web"), "{error:?}");
}

#[test]
fn sync_of_an_unknown_standby_names_the_known_ones() {
    let h = Harness::new();

    let error = h.with_transfer(&h.transfer(), |ctx| sync(ctx, "nope")).unwrap_err();

    assert!(matches!(error, StandbyError::UnknownStandby { .. }), "{error:?}");
}

#[test]
fn destroy_removes_everything_and_is_idempotent() {
    let h = Harness::new();
    let transfer = h.transfer();
    let s1 = h.snapshot();
    h.create(&transfer).unwrap();

    let report = h.with_transfer(&transfer, |ctx| destroy(ctx, "sb")).unwrap();

    assert!(report.existed);
    assert_eq!(report.domains.len(), 2);
    for domain in ["sb-web", "sb-db"] {
        assert!(matches!(h.hv.domain(domain), Err(HvError::NoSuchDomain { .. })));
    }
    assert!(matches!(h.hv.network("sb-net"), Err(HvError::NoSuchNetwork { .. })));
    assert!(transfer.files().is_empty(), "{:?}", transfer.files());
    assert!(h.catalog.standby_named("sb").unwrap().is_none());
    assert!(h.pinned().is_empty());
    assert!(!h.images_of(&s1).is_empty(), "the primary's snapshot is untouched");
    let again = h.with_transfer(&transfer, |ctx| destroy(ctx, "sb")).unwrap();
    assert!(!again.existed);
}

#[test]
fn the_undo_of_an_interrupted_merge_finishes_it() {
    let h = Harness::new();
    let transfer = h.transfer();
    h.snapshot();
    h.create(&transfer).unwrap();
    let s2 = h.snapshot();
    // What a sync killed in its merge leaves: its copies and plan, `merging` set.
    let overlay = h.images_of(&s2).into_iter().find(|p| p.to_string_lossy().contains("db")).unwrap();
    let record = h.catalog.standby_named("sb").unwrap().unwrap();
    let mut disks = Vec::new();
    for disk in &record.disks {
        let image = h
            .catalog
            .images_needed_by(&crate::ops::snapshot::snapshot_dependent("demo", &s2))
            .unwrap()
            .into_iter()
            .find(|i| i.vm == disk.vm)
            .unwrap();
        let copy = overlay_copy_path(&record.storage, "sb", &disk.vm, &disk.disk, image.id.0);
        let copied = transfer.copy_file(&image.path, &copy).unwrap();
        disks.push(sync::DiskPlan {
            vm: disk.vm.clone(),
            disk: disk.disk.clone(),
            target: disk.path.clone(),
            source_image: image.id,
            source_path: image.path.clone(),
            mode: SyncMode::Incremental,
            staged: None,
            overlays: vec![sync::OverlayCopy { source: image.path, copy, sha256: copied.sha256.clone(), bytes: 10 }],
            bytes: 10,
            sha256: Some(copied.sha256),
        });
    }
    let plan = sync::FinishPlan {
        standby: "sb".into(),
        snapshot: s2.clone(),
        snapshot_created_at: at(30),
        started_at: at(30),
        mode: SyncMode::Incremental,
        bytes: 20,
        disks,
    };
    h.catalog.begin_standby_merge("sb", &s2).unwrap();
    let finish = crate::catalog::UndoAction::Custom {
        kind: undo::UNDO_FINISH_SYNC.into(),
        data: serde_json::to_value(&plan).unwrap(),
    };
    let drop = undo::drop_copy("sb", &plan.disks[0].overlays[0].copy);

    let kept = h.with_transfer(&transfer, |ctx| undo::undo_action(ctx, &drop)).unwrap();
    assert!(kept.contains("kept"), "{kept}");
    h.with_transfer(&transfer, |ctx| undo::undo_action(ctx, &finish)).unwrap();
    h.with_transfer(&transfer, |ctx| undo::undo_action(ctx, &finish)).unwrap();

    let record = h.catalog.standby_named("sb").unwrap().unwrap();
    assert_eq!((record.snapshot.as_deref(), record.merging.as_deref()), (Some(s2.as_str()), None));
    let db = h.image("db");
    assert_eq!(transfer.content(&db).unwrap(), format!("full(/images/db.qcow2)+copy({})", overlay.display()));
    assert_eq!(transfer.files().len(), 2, "{:?}", transfer.files());
    assert_eq!(h.pinned(), h.images_of(&s2));
}

/// A standby on host `b`: its domains and networks on b's libvirt, its
/// images shipped from the primary's host and merged on b.
#[test]
fn a_standby_on_another_host_is_defined_there_and_fed_by_shipments() {
    let h = Harness::new();
    let a_storage = FakeStorage::default().made_only("restore-").made_only(".ship-");
    let b_hv = FakeHypervisor::new();
    let b_storage = FakeStorage::presuming(Presume::Nothing);
    let net = FakeNet::default();
    let b = FakeHost::new(&b_hv, &b_storage, &net).named("b");
    let on_b = |f: &dyn Fn(&OpContext<'_>) -> Result<(), StandbyError>| {
        let events = &h.events;
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());
        let clock = FixedClock(at(30));
        let a = FakeHost::new(&h.hv, &a_storage, &net);
        let hosts = crate::host::HostRegistry::new().with(&a).with(&b);
        let ctx = OpContext {
            config: &h.config,
            host: &a,
            hosts: &hosts,
            catalog: &h.catalog,
            progress: &progress,
            clock: &clock,
            interrupt: &h.interrupt,
        };
        f(&ctx)
    };
    let s1 = h.snapshot();
    let request = CreateRequest {
        primary: "demo".into(),
        name: "sb".into(),
        storage: Some("/b/sb".into()),
        autorestore: None,
        host: Some("b".into()),
    };

    on_b(&|ctx| {
        let report = create(ctx, &request)?;
        assert_eq!(report.host, "b");
        assert_eq!(report.sync.unwrap().mode, SyncMode::Full);
        Ok(())
    })
    .unwrap();

    assert_eq!(h.catalog.standby_named("sb").unwrap().unwrap().host, "b");
    assert!(b_hv.peek_domain("sb-web").is_some() && b_hv.peek_network("sb-net").is_some());
    assert!(h.hv.peek_domain("sb-web").is_none() && h.hv.peek_network("sb-net").is_none(), "nothing on a");
    let db = image_path(Path::new("/b/sb"), "sb", "db", "vda");
    assert_eq!(b_storage.content(&db).unwrap(), "full(/images/db.qcow2)", "flattened on a, shipped to b");
    let scratch = scratch_path(&h.config, "demo", "sb", "db", "vda");
    assert!(a_storage.removed().contains(&scratch), "{:?}", a_storage.removed());
    assert!(b_storage.calls().iter().any(|c| c.starts_with("check ")), "checked on b: {:?}", b_storage.calls());

    let s2 = h.snapshot();
    let events_before = h.events.lock().unwrap().len();
    on_b(&|ctx| {
        let report = sync(ctx, "sb")?;
        assert_eq!((report.mode, report.previous.as_deref()), (SyncMode::Incremental, Some(s1.as_str())));
        Ok(())
    })
    .unwrap();

    assert!(b_storage.calls().iter().any(|c| c.starts_with("merge ") && c.ends_with(&db.display().to_string())));
    assert!(a_storage.calls().iter().any(|c| c.starts_with("map ")), "the overlay shipped from a");
    assert_eq!(h.catalog.standby_named("sb").unwrap().unwrap().snapshot.as_deref(), Some(s2.as_str()));
    let progress = h.events.lock().unwrap()[events_before..]
        .iter()
        .any(|e| matches!(e, Event::Progress { step, permille: 1000 } if step.contains("overlay")));
    assert!(progress, "a shipment reports its progress");
    let _ = s2;

    on_b(&|ctx| destroy(ctx, "sb").map(drop)).unwrap();
    assert!(b_hv.peek_domain("sb-web").is_none() && b_hv.peek_network("sb-net").is_none());
}

#[test]
fn a_standby_behind_reports_the_bytes_its_next_sync_ships_and_none_once_synced() {
    let h = Harness::new();
    let transfer = h.transfer();
    h.snapshot();
    h.create(&transfer).unwrap();
    let summary = |h: &Harness| summaries(&h.catalog, None, at(40)).unwrap().remove(0);
    assert_eq!((summary(&h).lag.behind, summary(&h).lag.pending_bytes), (None, 0));

    let s2 = h.snapshot();
    let behind = summary(&h);

    assert_eq!(behind.lag.behind.as_deref(), Some(s2.as_str()));
    assert_eq!(behind.host, "local");
    // Each VM's overlay of the first snapshot, frozen by the second: the fake's files are 1 byte.
    assert_eq!(behind.lag.pending_bytes, 2);
    h.sync(&transfer).unwrap();
    assert_eq!(summary(&h).lag.pending_bytes, 0);
}
