//! The home sync on the harness of `tests.rs` (demo failed over to sb, one
//! snapshot of demo taken on sb): what it carries and records, that it
//! verifies, is idempotent, carries a changed source again and drops a
//! copy whose image is gone; its refusals; and failback after it: the
//! copies are taken as carried, and a failback rolled back keeps them.

use super::*;
use crate::catalog::{FailoverState, StepState, UndoAction};
use crate::error::Failure;
use crate::host::FileStamp;
use crate::ops::failover::fence::{switch_resources, SwitchResources};

impl Harness {
    fn home_sync(&self) -> Result<HomeSyncReport, FailoverError> {
        let agents = |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(true)) };
        self.with_context(|ctx| sync_home(ctx, "sb", self.tools(&agents)))
    }

    fn home_record(&self) -> SwitchResources {
        switch_resources(&self.switch().unwrap())
    }

    /// Where the home copy of sb's epoch overlay of `vm` goes.
    fn epoch_home(&self, vm: &str) -> PathBuf {
        self.config.controller.state_dir.join("images/demo").join(vm).join("sb.vda.epoch-1.qcow2")
    }

    fn copies_made(&self) -> Vec<PathBuf> {
        self.files.copied()
    }
}

#[test]
fn home_sync_carries_what_the_standby_no_longer_writes_verified_and_records_it() {
    let h = Harness::new();
    h.failed_over();
    let point = h.standby().disks.iter().find(|d| d.vm == "web").unwrap().source_image.unwrap();
    let point_path = h.catalog.image(point).unwrap().path;
    let live = h.disk("sb-web");

    let report = h.home_sync().unwrap();

    assert_eq!((report.mode.as_str(), report.epoch, report.already_home), ("home", 1, 0));
    let carried: Vec<&PathBuf> = report.copied.iter().map(|c| &c.from).collect();
    assert_eq!(carried, [&h.epoch_overlay("db"), &h.epoch_overlay("web")], "the epoch overlays, not the live tops");
    assert!(!h.copies_made().contains(&live), "{live:?} is still written");
    assert!(report.copied.iter().all(|c| c.verified && c.bytes == 100), "{:?}", report.copied);
    assert_eq!(report.bytes, 200);
    assert_eq!(report.bytes_home, 200);
    let web = report.copied.iter().find(|c| c.vm == "web").unwrap();
    assert_eq!(web.path, h.epoch_home("web"), "where failback puts it");
    assert_eq!(h.files.backing_of(&web.path).unwrap(), point_path, "rebased as failback does");
    let record = h.home_record();
    assert_eq!(record.home.len(), 2);
    assert_eq!(record.fenced.len(), 2, "the fence is kept in the row");
    let while_sb = h.catalog.snapshots("demo").unwrap().into_iter().find(|s| s.label.as_deref() == Some("while-sb"));
    let while_sb = while_sb.unwrap().name;
    assert_eq!(record.home_snapshot.as_deref(), Some(while_sb.as_str()), "its images are all home");
    assert_eq!(report.snapshot, record.home_snapshot);
    assert_eq!(record.home_checked.as_deref(), Some(while_sb.as_str()));
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    let position = |prefix: &str| names.iter().position(|n| n.starts_with(prefix)).unwrap();
    assert!(position("carry home web/vda") < position("verify web/vda"), "{names:?}");
    assert!(is_record_step(names.last().unwrap()), "{names:?}");
    let ops = h.catalog.operations_in(OperationState::Completed).unwrap();
    assert!(ops.iter().any(|op| op.kind == OperationKind::Failover && op.env == "demo"), "{ops:?}");
    assert_eq!(h.state("sb-web"), DomainState::Running, "sb serves on");
}

#[test]
fn a_second_home_sync_with_nothing_new_copies_nothing() {
    let h = Harness::new();
    h.failed_over();
    let first = h.home_sync().unwrap();
    let copies = h.copies_made().len();

    let again = h.home_sync().unwrap();

    assert!(again.copied.is_empty() && again.dropped.is_empty(), "{again:?}");
    assert_eq!((again.bytes, again.already_home, again.bytes_home), (0, 2, 200));
    assert_eq!(again.snapshot, first.snapshot);
    assert_eq!(h.copies_made().len(), copies);
    assert!(again.steps.is_empty(), "nothing journaled: {:?}", again.steps);
}

#[test]
fn home_sync_carries_again_a_copy_whose_source_or_backing_changed() {
    let h = Harness::new();
    h.failed_over();
    h.home_sync().unwrap();
    // A delete merged into web's image on sb: its time changed.
    h.files.set_stamp(&h.epoch_overlay("web"), FileStamp { len: 100, modified_ns: 2 });

    let again = h.home_sync().unwrap();

    let carried: Vec<&PathBuf> = again.copied.iter().map(|c| &c.from).collect();
    assert_eq!(carried, [&h.epoch_overlay("web")]);
    assert_eq!(again.already_home, 1);
    let web = h.home_record().home.into_iter().find(|c| c.to == h.epoch_home("web")).unwrap();
    assert_eq!(web.source_modified, 2, "recorded as it is now");

    // The copy's recorded backing is not the plan's any more.
    let mut record = h.home_record();
    record.home.iter_mut().find(|c| c.to == h.epoch_home("db")).unwrap().backing_path = "/elsewhere".into();
    let id = h.switch().unwrap().id;
    h.catalog.set_failover_resources(id, FailoverState::Active, &serde_json::to_value(&record).unwrap()).unwrap();

    let third = h.home_sync().unwrap();

    let carried: Vec<&PathBuf> = third.copied.iter().map(|c| &c.from).collect();
    assert_eq!(carried, [&h.epoch_overlay("db")]);
}

#[test]
fn home_sync_deletes_and_forgets_a_copy_whose_image_was_merged_away() {
    let h = Harness::new();
    h.failed_over();
    h.home_sync().unwrap();
    let mut record = h.home_record();
    let merged = h.config.controller.state_dir.join("images/demo/web/merged.vda.qcow2");
    let mut gone = record.home[0].clone();
    (gone.image, gone.to) = (crate::catalog::ImageId(9999), merged.clone());
    record.home.push(gone);
    let id = h.switch().unwrap().id;
    h.catalog.set_failover_resources(id, FailoverState::Active, &serde_json::to_value(&record).unwrap()).unwrap();

    let report = h.home_sync().unwrap();

    assert_eq!(report.dropped, std::slice::from_ref(&merged));
    assert!(report.copied.is_empty(), "{:?}", report.copied);
    assert!(h.files.removed().contains(&merged));
    let record = h.home_record();
    assert_eq!(record.home.len(), 2);
    assert!(record.home.iter().all(|c| c.to != merged));
}

#[test]
fn a_home_copy_that_does_not_read_like_its_source_is_deleted_and_nothing_recorded() {
    let h = Harness::new();
    h.failed_over();
    h.files.set_differs(true);

    let error = h.home_sync().unwrap_err();

    assert!(matches!(error, FailoverError::HomeCopyDiffers { .. }), "{error:?}");
    assert!(error.hint().unwrap().contains("deleted"), "{:?}", error.hint());
    assert!(h.home_record().home.is_empty());
    assert_eq!(h.home_record().home_snapshot, None);
    let ops = h.catalog.operations_in(OperationState::RolledBack).unwrap();
    let op = ops.iter().find(|op| op.kind == OperationKind::Failover && op.env == "demo").unwrap();
    let carried: Vec<_> =
        h.catalog.steps(op.id).unwrap().into_iter().filter(|s| s.name.starts_with("carry home")).collect();
    assert!(!carried.is_empty());
    assert!(carried.iter().all(|s| s.state == StepState::Undone), "the copies were deleted: {carried:?}");
    assert_eq!(h.state("sb-web"), DomainState::Running);
}

#[test]
fn home_sync_refuses_a_standby_that_does_not_serve() {
    let h = Harness::new();

    let error = h.home_sync().unwrap_err();

    assert!(matches!(error, FailoverError::NotServing { ref standby, .. } if standby == "sb"), "{error:?}");
    assert!(h.copies_made().is_empty());
}

#[test]
fn home_sync_refuses_a_switch_failing_back() {
    let h = Harness::new();
    h.failed_over();
    let id = h.switch().unwrap().id;
    h.catalog.set_switch_state(id, FailoverState::Active, FailoverState::FailingBack).unwrap();

    let error = h.home_sync().unwrap_err();

    assert!(matches!(error, FailoverError::FailbackInterrupted { epoch: 1, .. }), "{error:?}");
    assert!(h.copies_made().is_empty());
}

#[test]
fn failback_after_a_home_sync_takes_its_copies_as_carried() {
    let h = Harness::new();
    h.failed_over();
    h.home_sync().unwrap();
    h.files.forget_copied();

    let report = h.failback(true).unwrap();

    assert_eq!(report.bytes_home_before, 200, "{report:#?}");
    assert!(!h.copies_made().contains(&h.epoch_overlay("web")), "{:?}", h.copies_made());
    let carries: Vec<&str> =
        report.steps.iter().map(|s| s.name.as_str()).filter(|n| n.starts_with("carry home")).collect();
    assert!(!carries.is_empty() && carries.iter().all(|n| !n.contains("epoch-1")), "{carries:?}");
    let web = &report.vms.iter().find(|v| v.vm == "web").unwrap().disks[0];
    assert_eq!(web.carried[0], h.epoch_home("web"), "still the lowest image at home");
    let recorded = h.catalog.image_by_path(&h.epoch_home("web")).unwrap().unwrap();
    assert_eq!(recorded.backing, h.standby().disks.iter().find(|d| d.vm == "web").unwrap().source_image);
    assert!(report.removed.contains(&h.epoch_overlay("web")), "sb's file goes once home: {:?}", report.removed);
}

#[test]
fn a_failback_rolled_back_after_a_home_sync_keeps_its_copies() {
    let h = Harness::new();
    h.failed_over();
    h.home_sync().unwrap();

    let error = h.failback(false).unwrap_err();

    assert!(matches!(error, FailoverError::AgentNotReady { .. }), "{error:?}");
    let ops = h.catalog.operations_in(OperationState::RolledBack).unwrap();
    let op = ops.iter().find(|op| op.kind == OperationKind::Failover && op.env == "demo").unwrap();
    let deleted: Vec<PathBuf> = h
        .catalog
        .steps(op.id)
        .unwrap()
        .into_iter()
        .filter_map(|s| match s.undo {
            UndoAction::DeleteFile { path } => Some(path),
            _ => None,
        })
        .collect();
    assert!(!deleted.is_empty(), "the failback's own copies are undone");
    assert!(!deleted.contains(&h.epoch_home("web")) && !deleted.contains(&h.epoch_home("db")), "{deleted:?}");
    let again = h.home_sync().unwrap();
    assert_eq!(again.already_home, 2, "the home sync's copies are home still");
    assert!(again.copied.iter().all(|c| c.from != h.epoch_overlay("web")), "{:?}", again.copied);
}
