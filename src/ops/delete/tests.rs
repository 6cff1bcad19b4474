//! Deleting snapshots on `FakeHypervisor`, a real catalog in a temporary
//! directory and a `FakeStorage` following the live chains: which image merges into which, live or
//! offline, what defers, the journal, failures and retries. The snapshots
//! are taken by the real snapshot operation (quiesce off).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::catalog::{Catalog, Dependent, ImageFormat, ImageKind, NewImage, OperationKind, OperationState, StepState};
use crate::config::{AgentEndpoint, Config, Controller, HumanSize, QuiescePolicy, Retention, Schedule, Vm};
use crate::host::Storage;
use crate::hypervisor::{Call, FakeHypervisor, FakeStep, Hypervisor};
use crate::ops::context::{Event, FixedClock, OpContext};
use crate::ops::prune::{self, PruneRequest};
use crate::ops::snapshot::{self, snapshot_dependent, SnapshotRequest};
use crate::test_support::{FakeHost, FakeNet, FakeQuiescer, FakeRecoveryAgents, FakeStorage};

const ENV: &str = "demo";

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 2, minute, 0).unwrap()
}

fn settings() -> DeleteSettings {
    DeleteSettings { job_deadline: std::time::Duration::from_secs(5), poll: std::time::Duration::from_millis(1) }
}

/// Environment `demo` of VMs `web` and `db` (domains of the same names,
/// disk `vda` on base `/images/<vm>.qcow2`).
struct Harness {
    dir: tempfile::TempDir,
    config: Config,
    catalog: Catalog,
    hv: FakeHypervisor,
    events: Mutex<Vec<Event>>,
    /// What SIGTERM/SIGINT would set: a test sets it to interrupt the operation.
    interrupt: crate::ops::interrupt::Interrupt,
    minute: Mutex<u32>,
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
        let env = crate::config::Environment { vms, quiesce: QuiescePolicy::Off, ..Default::default() };
        let config = Config {
            controller,
            environments: BTreeMap::from([(ENV.to_owned(), env)]),
            schedules: BTreeMap::new(),
            standbys: BTreeMap::new(),
            hosts: BTreeMap::new(),
            lab: None,
        };
        let catalog = Catalog::open(&state).unwrap();
        Harness {
            dir,
            config,
            catalog,
            hv,
            events: Mutex::new(Vec::new()),
            interrupt: Default::default(),
            minute: Mutex::new(0),
        }
    }

    fn running() -> Self {
        Self::new(FakeHypervisor::running_env("net", &["web", "db"]))
    }

    fn with_schedule(mut self, name: &str, retention: Retention) -> Self {
        let schedule = Schedule {
            environment: ENV.into(),
            cron: None,
            every: Some(crate::config::HumanDuration::from_secs(60)),
            memory: false,
            retention,
        };
        self.config.schedules.insert(name.into(), schedule);
        self
    }

    fn images(&self) -> FakeStorage<'_> {
        let images = FakeStorage::following(&self.hv, &["web", "db"]).with_size(1 << 20);
        for vm in ["web", "db"] {
            images.add(&base(vm), None);
        }
        images
    }

    /// Records in `images` every image of the catalog with its backing file.
    fn sync_files(&self, images: &FakeStorage<'_>) {
        for vm in ["web", "db"] {
            let active = self.active(vm);
            for image in self.catalog.chain(self.catalog.image_by_path(&active).unwrap().unwrap().id).unwrap() {
                let backing = image.backing.map(|id| self.catalog.image(id).unwrap().path);
                images.add(&image.path, backing.as_deref());
            }
        }
    }

    fn with_clock<T>(&self, f: impl FnOnce(&OpContext<'_>) -> T) -> T {
        self.with_files(&FakeStorage::default(), f)
    }

    /// The context of an operation whose image files are `files`.
    fn with_files<T>(&self, files: &FakeStorage<'_>, f: impl FnOnce(&OpContext<'_>) -> T) -> T {
        let events = &self.events;
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());
        let clock = FixedClock(at(*self.minute.lock().unwrap()));
        let net = FakeNet::default();
        let host = FakeHost::new(&self.hv, files, &net);
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

    /// Takes a snapshot a minute after the previous one; returns its name.
    /// Quiesce is off: no agent is ever asked (the quiescer has none).
    fn take(&self, schedule: Option<&str>) -> String {
        *self.minute.lock().unwrap() += 1;
        let request = SnapshotRequest {
            env: ENV.into(),
            label: None,
            memory: false,
            quiesce: Some(QuiescePolicy::Off),
            schedule: schedule.map(str::to_owned),
        };
        self.with_clock(|ctx| snapshot::take(ctx, &request, &FakeQuiescer::without_agents())).unwrap().name
    }

    fn take_n(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.take(None)).collect()
    }

    fn delete(&self, files: &FakeStorage<'_>, name: &str) -> Result<DeleteReport, DeleteError> {
        let request = DeleteSnapshotRequest { env: ENV.into(), snapshot: name.into() };
        self.with_files(files, |ctx| delete_snapshot(ctx, &request, &settings()))
    }

    fn prune(&self, files: &FakeStorage<'_>, dry_run: bool) -> prune::PruneReport {
        let request = PruneRequest { env: ENV.into(), dry_run };
        self.with_files(files, |ctx| prune::prune(ctx, &request, &settings())).unwrap()
    }

    fn active(&self, vm: &str) -> PathBuf {
        self.live_chain(vm)[0].clone()
    }

    /// The domain's disk chain as libvirt reports it, top first.
    fn live_chain(&self, vm: &str) -> Vec<PathBuf> {
        let disk = self.hv.peek_domain(vm).unwrap().def.disks().remove(0);
        disk.source.into_iter().chain(disk.backing).collect()
    }

    /// The catalog's chain from the disk's active image.
    fn catalog_chain(&self, vm: &str) -> Vec<PathBuf> {
        let active = self.catalog.image_by_path(&self.active(vm)).unwrap().unwrap();
        self.catalog.chain(active.id).unwrap().into_iter().map(|i| i.path).collect()
    }

    /// The image snapshot `name` pins for `vm`.
    fn image_of(&self, name: &str, vm: &str) -> PathBuf {
        let images = self.catalog.images_needed_by(&snapshot_dependent(ENV, name)).unwrap();
        images.into_iter().find(|i| i.vm == vm).unwrap().path
    }

    fn state(&self, name: &str) -> SnapshotState {
        self.catalog.snapshot_named(ENV, name).unwrap().unwrap().state
    }

    fn overlay(&self, vm: &str, snapshot: &str) -> PathBuf {
        self.dir.path().join("state/images/demo").join(vm).join(format!("{snapshot}.vda.qcow2"))
    }

    fn commits(&self) -> Vec<(String, BlockCommit)> {
        self.hv
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::BlockCommit { domain, opts, .. } => Some((domain, opts)),
                _ => None,
            })
            .collect()
    }

    /// Adds a memory image of `snapshot` for `vm`, naming `disk`.
    fn add_memory(&self, snapshot: &str, vm: &str, disk: &Path) -> PathBuf {
        let path = self.dir.path().join(format!("state/images/demo/{vm}/{snapshot}.mem"));
        memory::tests::save_image(&path, disk);
        let id = self.catalog.snapshot_named(ENV, snapshot).unwrap().unwrap().id;
        self.catalog
            .add_image(&NewImage {
                path: path.clone(),
                vm: vm.into(),
                disk: None,
                kind: ImageKind::Memory,
                format: ImageFormat::LibvirtSave,
                size_bytes: 1 << 20,
                backing: None,
                snapshot: Some(id),
                created_at: at(0),
            })
            .unwrap();
        path
    }
}

fn base(vm: &str) -> PathBuf {
    PathBuf::from(format!("/images/{vm}.qcow2"))
}

#[test]
fn deleting_the_oldest_snapshot_releases_the_base_and_changes_no_image() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    let before = (h.live_chain("web"), h.live_chain("db"));

    let report = h.delete(&files, &names[0]).unwrap();

    assert!(report.deleted && report.deferred.is_empty() && report.reason.is_none());
    assert_eq!(report.released, [base("db"), base("web")]);
    assert!(report.merged.is_empty() && report.removed.is_empty());
    assert!(h.commits().is_empty());
    assert!(files.calls().is_empty(), "{:?}", files.calls());
    assert_eq!((h.live_chain("web"), h.live_chain("db")), before);
    assert_eq!(h.state(&names[0]), SnapshotState::Deleted);
    let base_image = h.catalog.image_by_path(&base("web")).unwrap().unwrap();
    assert_eq!(base_image.kind, ImageKind::Base);
    assert!(h.catalog.dependents_of(base_image.id).unwrap().is_empty());
}

#[test]
fn deleting_a_middle_snapshot_commits_the_next_image_into_it_live() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    h.sync_files(&files);
    let (s2_image, s3_image) = (h.image_of(&names[1], "web"), h.image_of(&names[2], "web"));
    files.set_size(&s3_image, 3 << 20);
    assert_eq!(h.live_chain("web").len(), 4);

    let report = h.delete(&files, &names[1]).unwrap();

    // The child (s3's image) went into s2's image, for each VM; live, no pivot.
    assert_eq!(report.merged.len(), 2);
    let web = report.merged.iter().find(|m| m.vm == "web").unwrap();
    assert_eq!((web.method, &web.merged, &web.into), ("commit", &s3_image, &s2_image));
    assert_eq!(web.moved_pins, [format!("{ENV}/{}", names[2])]);
    let commit = h.commits().into_iter().find(|(d, _)| d == "web").unwrap().1;
    assert_eq!(
        commit,
        BlockCommit { active: false, top: Some(s3_image.clone()), base: Some(s2_image.clone()), ..Default::default() }
    );
    assert!(!h.hv.steps().contains(&FakeStep::BlockJobPivot));
    let expected = [h.overlay("web", &names[2]), s2_image.clone(), base("web")];
    assert_eq!(h.live_chain("web"), expected);
    assert_eq!(h.catalog_chain("web"), expected);
    assert_eq!(h.image_of(&names[2], "web"), s2_image, "s3 now pins the image holding its data");
    assert!(h.catalog.image_by_path(&s3_image).unwrap().is_none());
    assert!(files.calls().contains(&format!("remove {}", s3_image.display())));
    assert_eq!(h.state(&names[1]), SnapshotState::Deleted);
    assert_eq!(h.state(&names[2]), SnapshotState::Complete);
    // web's 3 MiB image and db's 1 MiB one went; the images they went into kept their size.
    assert_eq!(report.freed_bytes, 4 << 20);
}

#[test]
fn deleting_the_newest_snapshot_active_commits_and_pivots() {
    let h = Harness::running();
    let names = h.take_n(2);
    let files = h.images();
    let s2_image = h.image_of(&names[1], "web");
    let active = h.active("web");

    let report = h.delete(&files, &names[1]).unwrap();

    let web = report.merged.iter().find(|m| m.vm == "web").unwrap();
    assert_eq!((web.method, &web.merged, &web.into), ("active-commit", &active, &s2_image));
    assert!(web.moved_pins.is_empty());
    let commit = h.commits().into_iter().find(|(d, _)| d == "web").unwrap().1;
    assert_eq!(commit, BlockCommit { active: true, base: Some(s2_image.clone()), ..Default::default() });
    assert!(h.hv.calls().contains(&Call::BlockJobPivot { domain: "web".into(), disk: "vda".into() }));
    // The guest writes to s2's image now; nothing pins it.
    assert_eq!(h.live_chain("web"), [s2_image.clone(), base("web")]);
    assert_eq!(h.catalog_chain("web"), [s2_image.clone(), base("web")]);
    let kept = h.catalog.image_by_path(&s2_image).unwrap().unwrap();
    assert!(h.catalog.dependents_of(kept.id).unwrap().is_empty());
    assert!(h.catalog.image_by_path(&active).unwrap().is_none());
    assert_eq!(h.hv.peek_domain("web").unwrap().state, crate::hypervisor::DomainState::Running);
}

#[test]
fn a_clone_pinned_image_defers_the_delete_and_changes_nothing() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    let s2_image = h.catalog.image_by_path(&h.image_of(&names[1], "web")).unwrap().unwrap();
    h.catalog.pin(s2_image.id, &Dependent::clone_named("x")).unwrap();
    let before = (h.live_chain("web"), h.catalog_chain("web"), h.live_chain("db"), h.catalog_chain("db"));
    h.hv.clear_calls();

    let report = h.delete(&files, &names[1]).unwrap();

    assert!(!report.deleted);
    assert_eq!(report.deferred.len(), 1, "{:?}", report.deferred);
    assert!(report.deferred[0].starts_with("web/vda: "), "{:?}", report.deferred);
    assert!(report.deferred[0].contains("clone 'x'"), "{:?}", report.deferred);
    assert!(report.reason.as_deref().unwrap().contains(&s2_image.path.display().to_string()));
    assert!(report.merged.is_empty() && report.removed.is_empty() && report.released.is_empty());
    assert!(h.commits().is_empty() && files.calls().is_empty());
    assert_eq!(before, (h.live_chain("web"), h.catalog_chain("web"), h.live_chain("db"), h.catalog_chain("db")));
    // Still complete (restorable), with the request remembered for prune.
    assert_eq!(h.state(&names[1]), SnapshotState::Complete);
    let id = h.catalog.snapshot_named(ENV, &names[1]).unwrap().unwrap().id;
    assert!(h.catalog.delete_request(id).unwrap().unwrap().deferred.unwrap().contains("clone 'x'"));
    assert!(h
        .catalog
        .operations_in(OperationState::Completed)
        .unwrap()
        .iter()
        .all(|o| o.kind == OperationKind::Snapshot));
}

#[test]
fn a_clone_pinned_child_is_not_merged_away() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    // s3's image is what deleting s2 would commit (and remove).
    let s3_image = h.catalog.image_by_path(&h.image_of(&names[2], "db")).unwrap().unwrap();
    h.catalog.pin(s3_image.id, &Dependent::standby_named("dr")).unwrap();

    let report = h.delete(&files, &names[1]).unwrap();

    assert_eq!(report.deferred.len(), 1, "{:?}", report.deferred);
    assert!(report.deferred[0].starts_with("db/vda: ") && report.deferred[0].contains("standby 'dr'"));
    assert!(h.commits().is_empty());
    assert_eq!(h.image_of(&names[2], "db"), s3_image.path);
}

#[test]
fn a_deferred_delete_goes_through_once_the_clone_is_gone_via_prune() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    let s2_image = h.catalog.image_by_path(&h.image_of(&names[1], "web")).unwrap().unwrap();
    h.catalog.pin(s2_image.id, &Dependent::clone_named("x")).unwrap();
    assert!(!h.delete(&files, &names[1]).unwrap().deferred.is_empty());
    h.catalog.unpin(s2_image.id, &Dependent::clone_named("x")).unwrap();

    let report = h.prune(&files, false);

    assert_eq!(report.deleted, [names[1].clone()]);
    assert_eq!(report.candidates[0].why, "a delete asked for earlier and deferred");
    assert_eq!(h.state(&names[1]), SnapshotState::Deleted);
    assert_eq!(h.live_chain("web").len(), 3);
}

#[test]
fn memory_images_go_with_their_snapshot_and_later_ones_follow_the_merge() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    let (s2_image, s3_image) = (h.image_of(&names[1], "web"), h.image_of(&names[2], "web"));
    let own = h.add_memory(&names[1], "web", &s2_image);
    let later = h.add_memory(&names[2], "web", &s3_image);

    let report = h.delete(&files, &names[1]).unwrap();

    assert!(files.calls().contains(&format!("remove {}", own.display())));
    assert!(report.removed.contains(&own));
    assert!(h.catalog.image_by_path(&own).unwrap().is_none());
    // s3's memory image names s3's disk data where it lives now.
    assert_eq!(memory::tests::disk_of(&later), s2_image);
    let web = report.merged.iter().find(|m| m.vm == "web").unwrap();
    assert_eq!(web.memory_images, [later]);
}

#[test]
fn a_memory_image_a_clone_needs_defers_the_delete() {
    let h = Harness::running();
    let names = h.take_n(2);
    let files = h.images();
    let own = h.add_memory(&names[0], "web", &base("web"));
    let id = h.catalog.image_by_path(&own).unwrap().unwrap().id;
    h.catalog.pin(id, &Dependent::clone_named("from-memory")).unwrap();

    let report = h.delete(&files, &names[0]).unwrap();

    assert!(report.deferred[0].contains("clone 'from-memory'"), "{:?}", report.deferred);
    assert!(own.exists());
    assert_eq!(h.state(&names[0]), SnapshotState::Complete);
}

#[test]
fn every_step_is_journaled_before_it_runs() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]).fail_at(FakeStep::BlockCommit));
    let names = h.take_n(2);
    let files = h.images();

    let error = h.delete(&files, &names[1]).unwrap_err();

    assert!(matches!(error, DeleteError::Commit { .. }), "{error:?}");
    let op = h.catalog.operations_in(OperationState::RolledBack).unwrap();
    assert_eq!(op.len(), 1);
    assert_eq!(op[0].kind, OperationKind::DeleteSnapshot);
    let steps = h.catalog.steps(op[0].id).unwrap();
    let names_and_states: Vec<(&str, StepState)> = steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert!(names_and_states[0].0.starts_with("mark snapshot"), "{names_and_states:?}");
    // The commit that failed at libvirt was on record, with its undo, before the call.
    let commit = steps.iter().find(|s| s.name.contains("commit")).unwrap();
    assert_eq!(commit.undo, abort_block_job("db", "vda"));
    assert_eq!(commit.state, StepState::Undone);
    assert!(commit.error.as_deref().unwrap().contains("injected"), "{commit:?}");
    // Progress events: each step began before it ended.
    let events = h.events.lock().unwrap();
    let begun = events.iter().position(|e| matches!(e, Event::Begin { step } if step.contains("commit db/vda")));
    let ended =
        events.iter().position(|e| matches!(e, Event::End { step, ok: false, .. } if step.contains("commit db/vda")));
    assert!(begun.unwrap() < ended.unwrap());
}

#[test]
fn a_failure_mid_merge_leaves_a_valid_chain_and_a_second_run_finishes() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]).fail_at_call(FakeStep::BlockJobPivot, 1));
    let names = h.take_n(2);
    let files = h.images();
    let before = (h.live_chain("db"), h.catalog_chain("db"));
    let s2_image = h.image_of(&names[1], "db");

    let error = h.delete(&files, &names[1]).unwrap_err();

    // db's active commit was ready and its pivot failed: the job was aborted,
    // db still runs on its old chain, which the catalog still records.
    assert!(matches!(&error, DeleteError::Commit { vm, .. } if vm == "db"), "{error:?}");
    assert!(h.hv.calls().contains(&Call::BlockJobAbort { domain: "db".into(), disk: "vda".into() }));
    assert_eq!((h.live_chain("db"), h.catalog_chain("db")), before);
    assert_eq!(h.hv.block_job("db", "vda").unwrap(), None);
    assert!(files.backing_chain(&before.0[0]).unwrap().starts_with(&before.1));
    // The snapshot is deleted (its image may have changed) and still pins it.
    assert_eq!(h.state(&names[1]), SnapshotState::Deleted);
    assert_eq!(h.catalog.unfinished_deletes(ENV).unwrap().len(), 1);

    let report = h.delete(&files, &names[1]).unwrap();

    assert!(report.deleted && !report.already_deleted);
    assert_eq!(h.live_chain("db"), [s2_image.clone(), base("db")]);
    assert_eq!(h.catalog_chain("db"), [s2_image, base("db")]);
    assert!(h.catalog.unfinished_deletes(ENV).unwrap().is_empty());
    assert!(h.delete(&files, &names[1]).unwrap().already_deleted);
}

#[test]
fn a_commit_that_happened_before_a_crash_is_recorded_not_redone() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    let (s2_image, s3_image) = (h.image_of(&names[1], "web"), h.image_of(&names[2], "web"));
    // What an interrupted delete left: snapshot deleted, web's commit done
    // by libvirt, nothing recorded yet.
    let id = h.catalog.snapshot_named(ENV, &names[1]).unwrap().unwrap().id;
    h.catalog.mark_snapshot_deleted(id, at(30)).unwrap();
    let opts = BlockCommit { top: Some(s3_image.clone()), base: Some(s2_image.clone()), ..Default::default() };
    h.hv.block_commit("web", "vda", &opts).unwrap();
    assert_eq!(h.hv.block_job("web", "vda").unwrap(), None);
    h.hv.clear_calls();

    let report = h.delete(&files, &names[1]).unwrap();

    let web_commits: Vec<_> = h.commits().into_iter().filter(|(d, _)| d == "web").collect();
    assert!(web_commits.is_empty(), "{web_commits:?}");
    assert_eq!(report.merged.len(), 2);
    assert_eq!(h.catalog_chain("web"), h.live_chain("web"));
    assert_eq!(h.image_of(&names[2], "web"), s2_image);
}

#[test]
fn a_shut_off_vm_is_merged_offline_by_pulling_into_the_child() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images();
    h.sync_files(&files);
    let (s2_image, s3_image, active) = (h.image_of(&names[1], "web"), h.image_of(&names[2], "web"), h.active("web"));
    h.hv.destroy_domain("web").unwrap();

    let report = h.delete(&files, &names[1]).unwrap();

    let web = report.merged.iter().find(|m| m.vm == "web").unwrap();
    assert_eq!((web.method, &web.merged, &web.into), ("pull", &s2_image, &s3_image));
    assert!(files.calls().contains(&format!("pull {} onto {:?}", s3_image.display(), Some(base("web")))));
    assert!(!files.is_there(&s2_image));
    assert_eq!(files.backing_chain(&active).unwrap(), [active.clone(), s3_image.clone(), base("web")]);
    // s3 keeps its image (same path, same data); no libvirt job for web.
    assert_eq!(h.image_of(&names[2], "web"), s3_image);
    let catalog_chain: Vec<PathBuf> = h
        .catalog
        .chain(h.catalog.image_by_path(&active).unwrap().unwrap().id)
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    assert_eq!(catalog_chain, [active, s3_image, base("web")]);
    assert!(h.commits().iter().all(|(d, _)| d != "web"));
    // db still runs: it was committed live.
    assert_eq!(report.merged.iter().find(|m| m.vm == "db").unwrap().method, "commit");
}

#[test]
fn an_offline_pull_that_fails_leaves_the_chain_and_the_catalog() {
    let h = Harness::running();
    let names = h.take_n(3);
    let files = h.images().failing("pull", 0);
    h.sync_files(&files);
    h.hv.destroy_domain("web").unwrap();
    h.hv.destroy_domain("db").unwrap();
    let before = h.catalog.chain(h.catalog.image_by_path(&h.overlay("web", &names[2])).unwrap().unwrap().id).unwrap();

    let error = h.delete(&files, &names[1]).unwrap_err();

    assert!(matches!(error, DeleteError::Pull { .. }), "{error:?}");
    let after = h.catalog.chain(h.catalog.image_by_path(&h.overlay("web", &names[2])).unwrap().unwrap().id).unwrap();
    assert_eq!(after, before);
    assert!(files.backing_chain(&h.overlay("web", &names[2])).unwrap().len() == 4);
}

#[test]
fn unknown_and_in_progress_snapshots_are_refused() {
    let h = Harness::running();
    let files = h.images();
    let error = h.delete(&files, "nope").unwrap_err();
    assert!(matches!(error, DeleteError::UnknownSnapshot { .. }) && error.is_not_found(), "{error:?}");
    let id = h
        .catalog
        .create_snapshot(&crate::catalog::NewSnapshot {
            env: ENV.into(),
            name: "taking".into(),
            label: None,
            schedule: None,
            created_at: at(0),
            memory: false,
        })
        .unwrap();
    assert!(matches!(h.delete(&files, "taking"), Err(DeleteError::InProgress { .. })));
    assert_eq!(h.catalog.snapshot(id).unwrap().state, SnapshotState::InProgress);
}

#[test]
fn a_second_operation_is_refused_as_busy() {
    let h = Harness::running();
    let names = h.take_n(1);
    let files = h.images();
    let _held = crate::ops::EnvLock::acquire(&h.config.controller.state_dir, ENV, "snapshot").unwrap();

    let error = h.delete(&files, &names[0]).unwrap_err();

    assert!(matches!(error, DeleteError::Lock(crate::ops::LockError::Busy(_))), "{error:?}");
    assert_eq!(h.state(&names[0]), SnapshotState::Complete);
}

#[test]
fn deleting_a_failed_snapshot_only_marks_it_deleted() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]).fail_at(FakeStep::CreateSnapshot));
    let request = SnapshotRequest {
        env: ENV.into(),
        label: None,
        memory: false,
        quiesce: Some(QuiescePolicy::Off),
        schedule: None,
    };
    assert!(h.with_clock(|ctx| snapshot::take(ctx, &request, &FakeQuiescer::without_agents())).is_err());
    let failed = h.catalog.snapshots(ENV).unwrap().remove(0);
    assert_eq!(failed.state, SnapshotState::Failed);
    let files = h.images();

    let report = h.delete(&files, &failed.name).unwrap();

    assert!(report.deleted && report.merged.is_empty());
    assert_eq!(h.state(&failed.name), SnapshotState::Deleted);
}

#[test]
fn twenty_scheduled_snapshots_with_retention_keep_the_chain_bounded() {
    let h = Harness::running().with_schedule("often", Retention { last: Some(3), ..Default::default() });
    let files = h.images();
    // Base + the 3 kept snapshots' images + the active overlay.
    let bound = 1 + 3 + 1;
    let mut taken = Vec::new();
    for run in 0..20 {
        taken.push(h.take(Some("often")));

        let report = h.prune(&files, false);

        assert!(report.failed.is_empty() && report.deferred.is_empty(), "run {run}: {report:?}");
        for vm in ["web", "db"] {
            assert!(h.live_chain(vm).len() <= bound, "run {run}: {vm}: {:?}", h.live_chain(vm));
            assert_eq!(h.live_chain(vm), h.catalog_chain(vm));
        }
    }
    let complete: Vec<String> = h
        .catalog
        .snapshots(ENV)
        .unwrap()
        .into_iter()
        .filter(|s| s.state == SnapshotState::Complete)
        .map(|s| s.name)
        .collect();
    assert_eq!(complete, taken[17..]);
    // Every kept snapshot pins an image of the live chain, in order.
    for vm in ["web", "db"] {
        let chain = h.live_chain(vm);
        let positions: Vec<usize> =
            complete.iter().map(|s| chain.iter().position(|p| *p == h.image_of(s, vm)).unwrap()).collect();
        assert_eq!(positions, [3, 2, 1], "{vm}: {chain:?}");
    }
}

#[test]
fn prune_dry_run_lists_and_changes_nothing() {
    let h = Harness::running().with_schedule("often", Retention { last: Some(1), ..Default::default() });
    let files = h.images();
    let names: Vec<String> = (0..3).map(|_| h.take(Some("often"))).collect();
    let manual = h.take(None);
    let before = (h.live_chain("web"), h.catalog_chain("web"));

    let report = h.prune(&files, true);

    let candidates: Vec<&str> = report.candidates.iter().map(|c| c.snapshot.as_str()).collect();
    assert_eq!(candidates, [names[0].as_str(), names[1].as_str()]);
    assert!(report.candidates.iter().all(|c| c.why == "not kept by the retention of schedule often"));
    assert_eq!(report.candidates[1].would_remove.len(), 2, "{:?}", report.candidates[1]);
    assert!(report.deleted.is_empty() && report.deletes.is_empty());
    assert_eq!(before, (h.live_chain("web"), h.catalog_chain("web")));
    assert!(h.commits().is_empty());
    assert_eq!(report.kept.iter().map(|k| k.snapshot.as_str()).collect::<Vec<_>>(), [names[2].as_str()]);
    // Manual snapshots are never touched without an environment retention.
    assert_eq!(h.state(&manual), SnapshotState::Complete);
}

#[test]
fn environment_retention_prunes_manual_snapshots_only() {
    let mut h = Harness::running().with_schedule("often", Retention { last: Some(5), ..Default::default() });
    h.config.environments.get_mut(ENV).unwrap().retention = Some(Retention { last: Some(1), ..Default::default() });
    let files = h.images();
    let scheduled = h.take(Some("often"));
    let manual = h.take_n(3);

    let report = h.prune(&files, false);

    assert_eq!(report.deleted, manual[..2]);
    assert_eq!(h.state(&scheduled), SnapshotState::Complete);
    assert_eq!(h.state(&manual[2]), SnapshotState::Complete);
    assert!(report.candidates.iter().all(|c| c.why == "not kept by the retention of environment"));
}

#[test]
fn a_vm_no_longer_in_the_config_defers_merging_its_images() {
    let mut h = Harness::running();
    let names = h.take_n(3);
    h.config.environments.get_mut(ENV).unwrap().vms.remove("db");
    let files = h.images();

    let report = h.delete(&files, &names[1]).unwrap();

    assert_eq!(report.deferred.len(), 1, "{:?}", report.deferred);
    assert!(report.deferred[0].starts_with("db/vda: VM 'db' is no longer in the environment's config"));
    assert!(h.commits().is_empty());
    assert_eq!(h.state(&names[1]), SnapshotState::Complete);
}

#[test]
fn recover_finishes_a_delete_that_died_after_its_pivot() {
    use crate::ops::recover::{recover, Outcome, RecoverRequest, RerunOutcome};
    let h = Harness::running();
    let names = h.take_n(2);
    let files = h.images();
    let s2_image = h.image_of(&names[1], "web");
    // What a delete of S2 left when it died right after web's active commit
    // pivoted: its journal running, S2 deleted, web writing to S2's image,
    // the catalog still recording the merged overlay above it.
    let mut owner = crate::catalog::Owner::current();
    owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);
    let op = h.catalog.begin_operation(OperationKind::DeleteSnapshot, ENV, &owner, at(30)).unwrap();
    let step = crate::catalog::StepRecord::new("active commit web/vda", abort_block_job("web", "vda"));
    h.catalog.record_step(op, &step).unwrap();
    let id = h.catalog.snapshot_named(ENV, &names[1]).unwrap().unwrap().id;
    h.catalog.mark_snapshot_deleted(id, at(30)).unwrap();
    let opts = BlockCommit { active: true, base: Some(s2_image.clone()), ..Default::default() };
    h.hv.block_commit("web", "vda", &opts).unwrap();
    while !h.hv.block_job("web", "vda").unwrap().unwrap().is_ready() {}
    h.hv.block_job_pivot("web", "vda").unwrap();
    assert_eq!(h.active("web"), s2_image);
    let s2_id = h.catalog.image_by_path(&s2_image).unwrap().unwrap().id;
    assert_eq!(h.catalog.children_of(s2_id).unwrap().len(), 1, "the merged overlay is still recorded");
    h.hv.clear_calls();

    let request = RecoverRequest { env: Some(ENV.into()), dry_run: false };
    let report = h.with_files(&files, |ctx| recover(ctx, &FakeRecoveryAgents::healthy(), &request)).unwrap();

    let env = &report.environments[0];
    assert_eq!(env.operations[0].outcome, Outcome::RolledBack);
    assert_eq!(env.deletes.len(), 1, "{env:?}");
    assert_eq!((env.deletes[0].snapshot.as_str(), env.deletes[0].outcome), (names[1].as_str(), RerunOutcome::Finished));
    let merged = &env.deletes[0].report.as_ref().unwrap().merged;
    assert_eq!(merged.iter().map(|m| m.vm.as_str()).collect::<Vec<_>>(), ["db", "web"], "{merged:?}");
    // web's merge was recorded, not redone; db's was made now.
    assert_eq!(h.commits().into_iter().map(|(domain, _)| domain).collect::<Vec<_>>(), ["db"]);
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    for vm in ["web", "db"] {
        assert_eq!(h.catalog_chain(vm), h.live_chain(vm), "{vm}");
    }
    assert_eq!(h.active("web"), s2_image);
    assert!(h.catalog.children_of(s2_id).unwrap().is_empty());
    assert!(h.catalog.unfinished_deletes(ENV).unwrap().is_empty());
    assert_eq!(h.catalog.operation(op).unwrap().state, OperationState::RolledBack);
}
