//! Failback on the harness of `tests.rs`: what is carried home and how it
//! is recorded, who runs on what afterwards, the refusals, a compare that
//! fails and an environment that does not answer (both rolled back, the
//! standby serving again), and a second run that does nothing.

use super::*;
use crate::catalog::{FailoverMode, FailoverRecord, FailoverState, ImageKind};
use crate::error::Failure;
use crate::hypervisor::{DomainState, Hypervisor};
use crate::ops::snapshot::SnapshotRequest;

impl Harness {
    pub(super) fn failback(&self, answering: bool) -> Result<FailbackReport, FailoverError> {
        let agents = move |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(answering)) };
        let request = DrillRequest { env: "demo".into(), standby: None };
        self.with_context(|ctx| failback(ctx, &request, self.tools(&agents)))
    }

    /// demo's primary is down, sb serves it (epoch 1), and one snapshot of
    /// demo was taken on sb meanwhile.
    pub(super) fn failed_over(&self) {
        for domain in ["web", "db"] {
            self.hv.destroy_domain(domain).unwrap();
        }
        let agents = move |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(true)) };
        let request = DrillRequest { env: "demo".into(), standby: None };
        let how = Unplanned { force: false, host: PrimaryHost::Answers(&self.hv), primary_uri: None };
        self.with_context(|ctx| unplanned(ctx, &request, how, self.tools(&agents))).unwrap();
        let (active, _) = active_environment(&self.catalog, "demo").unwrap().unwrap();
        let mut config = self.config.clone();
        config.environments.insert("demo".into(), active);
        let snapshot = SnapshotRequest {
            env: "demo".into(),
            label: Some("while-sb".into()),
            memory: false,
            quiesce: None,
            schedule: None,
        };
        self.with_context(|ctx| {
            let ctx = OpContext { config: &config, ..*ctx };
            crate::ops::snapshot::take(&ctx, &snapshot, &self.quiescer)
        })
        .unwrap();
        self.hv.clear_calls();
    }

    pub(super) fn switch(&self) -> Option<FailoverRecord> {
        self.catalog.switch_in_force("demo").unwrap()
    }

    pub(super) fn epoch_overlay(&self, vm: &str) -> PathBuf {
        self.standby().storage.join(vm).join("sb.vda.epoch-1.qcow2")
    }

    /// sb serves demo as before the failback was tried.
    fn assert_standby_serves(&self, fenced_disks: &[(String, PathBuf)], sb_tops: &[(String, PathBuf)]) {
        for (domain, disk) in fenced_disks {
            assert_eq!(self.state(domain), DomainState::ShutOff, "{domain}");
            assert_eq!(self.hv.peek_domain(domain).unwrap().def.fence_stamp().map(|s| s.epoch), Some(1), "{domain}");
            assert_eq!(&self.disk(domain), disk, "{domain} is on its fenced disk again");
        }
        for (domain, disk) in sb_tops {
            assert_eq!(self.state(domain), DomainState::Running, "{domain} serves again");
            assert_eq!(&self.disk(domain), disk, "{domain}");
        }
        assert_eq!(self.macs("sb-web"), self.macs("web"), "sb-web keeps the primary's MACs");
        let switch = self.switch().unwrap();
        assert_eq!((switch.state, switch.epoch), (FailoverState::Active, Some(1)));
        assert_eq!(self.catalog.last_epoch("demo").unwrap(), 1);
        let overlay = self.catalog.image_by_path(&self.epoch_overlay("web")).unwrap();
        assert!(overlay.is_some(), "the catalog has the epoch overlay on sb's storage again");
    }

    fn disks(&self, domains: &[&str]) -> Vec<(String, PathBuf)> {
        domains.iter().map(|d| ((*d).to_owned(), self.disk(d))).collect()
    }
}

#[test]
fn failback_carries_what_the_standby_wrote_home_and_hands_the_environment_back() {
    let h = Harness::new();
    h.failed_over();
    let sb_macs: Vec<_> = h.standby().resources.domains.iter().find(|d| d.vm == "web").unwrap().macs.clone();
    let point = h.standby().disks.iter().find(|d| d.vm == "web").unwrap().source_image.unwrap();
    let point_path = h.catalog.image(point).unwrap().path;
    let fenced_top = h.disk("web");

    let report = h.failback(true).unwrap();

    assert_eq!((report.action, report.epoch, report.previous_epoch), (FailbackAction::FailedBack, 2, 1));
    assert_eq!(report.mode, FailoverMode::Failback);
    for (primary, standby) in [("web", "sb-web"), ("db", "sb-db")] {
        assert_eq!(h.state(primary), DomainState::Running, "{primary} serves again");
        assert_eq!(h.hv.peek_domain(primary).unwrap().def.fence_stamp(), None, "{primary} is unfenced");
        let home = h.disk(primary);
        assert!(home.starts_with(h.config.controller.state_dir.join("images/demo")), "{}", home.display());
        assert_eq!(h.state(standby), DomainState::ShutOff, "{standby}");
        let own = h.standby().disks.iter().find(|d| format!("sb-{}", d.vm) == standby).unwrap().path.clone();
        assert_eq!(h.disk(standby), own, "{standby} is on its own synced copy");
        assert_eq!(h.networks(standby), [Some("sb-net".to_owned())], "{standby} is back on its isolated network");
    }
    assert_eq!(h.macs("sb-web"), sb_macs.into_iter().map(Some).collect::<Vec<_>>(), "sb-web has its own MACs");
    // The catalog: ENV home at epoch 2; the epoch overlay is an overlay at
    // home on ENV's image of SB's point, its copy rebased there.
    assert!(h.switch().is_none() && h.catalog.active_switch("demo").unwrap().is_none());
    let last = h.catalog.last_failover("demo").unwrap().unwrap();
    assert_eq!((last.mode, last.epoch, last.state), (FailoverMode::Failback, Some(2), FailoverState::Ended));
    let web = &report.vms.iter().find(|v| v.vm == "web").unwrap().disks[0];
    let epoch_home = &web.carried[0];
    assert!(epoch_home.ends_with("web/sb.vda.epoch-1.qcow2"), "{}", epoch_home.display());
    let recorded = h.catalog.image_by_path(epoch_home).unwrap().unwrap();
    assert_eq!((recorded.kind, recorded.backing), (ImageKind::Overlay, Some(point)));
    assert_eq!(h.files.backing_of(epoch_home).unwrap(), point_path, "rebased onto ENV's image of the point");
    assert_eq!(web.point, point_path);
    assert_eq!(web.superseded.as_ref(), Some(&fenced_top), "ENV's old top is kept and said");
    assert!(h.catalog.image_by_path(&h.epoch_overlay("web")).unwrap().is_none());
    let chain = h.catalog.chain(h.catalog.image_by_path(&web.home_top).unwrap().unwrap().id).unwrap();
    assert!(chain.iter().any(|i| i.id == point), "the chain at home runs down to the point");
    assert!(chain.iter().all(|i| !i.path.starts_with(&h.standby().storage)), "{chain:#?}");
    // What was carried, when.
    assert_eq!(report.snapshots.len(), 2);
    for snapshot in report.snapshots.iter().map(String::as_str).chain(["while-sb"]) {
        let name = h
            .catalog
            .snapshots("demo")
            .unwrap()
            .into_iter()
            .find(|s| s.name == snapshot || s.label.as_deref() == Some(snapshot));
        let name = name.unwrap().name;
        assert!(report.carried_snapshots.contains(&name), "{name} in {:?}", report.carried_snapshots);
    }
    assert!(report.bytes_while_serving > 0 && report.bytes_after_stop > 0, "{report:#?}");
    assert_eq!(report.bytes_home, report.bytes_while_serving + report.bytes_after_stop);
    assert!(report.removed.contains(&h.epoch_overlay("web")), "{:?}", report.removed);
    assert!(report.autostart.starts_with("as before the failover: "), "{}", report.autostart);
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    let position = |prefix: &str| {
        names.iter().position(|n| n.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {names:?}"))
    };
    let order = [
        "snapshot failback-sync",
        "carry home web/vda",
        "snapshot failback-final",
        "stop sb-",
        "compare web/vda",
        "mark epoch 1 failing back",
        "record the",
        "give web its disks at home",
        "start web",
        "wait for demo's agents",
        "give sb-web its own identity",
        "record epoch 2: demo home",
        "remove ",
    ];
    for pair in order.windows(2) {
        assert!(position(pair[0]) < position(pair[1]), "{} before {}: {names:?}", pair[0], pair[1]);
    }
}

#[test]
fn failback_refuses_an_environment_no_standby_serves() {
    let h = Harness::new();

    let error = h.failback(true).unwrap_err();

    assert!(matches!(error, FailoverError::NoSwitch { .. }), "{error:?}");
    assert!(error.hint().unwrap().contains("failover demo"), "{:?}", error.hint());
    assert!(h.primary_changes().is_empty());
    assert_eq!(h.catalog.last_epoch("demo").unwrap(), 0);
}

#[test]
fn failback_refuses_a_primary_domain_that_runs() {
    let h = Harness::new();
    h.failed_over();
    h.hv.start_domain("web").unwrap();
    h.hv.clear_calls();

    let error = h.failback(true).unwrap_err();

    assert!(matches!(error, FailoverError::PrimaryRunning { ref domain, .. } if domain == "web"), "{error:?}");
    assert_eq!(h.state("sb-web"), DomainState::Running);
    assert!(h.catalog.snapshots("demo").unwrap().iter().all(|s| s.label.as_deref() != Some("failback-sync")));
}

#[test]
fn failback_refuses_while_a_drill_of_another_standby_runs() {
    let h = Harness::new();
    h.failed_over();
    let request = crate::ops::standby::CreateRequest {
        primary: "demo".into(),
        name: "sb2".into(),
        storage: Some(h._dir.path().join("standby2")),
        autorestore: None,
        host: None,
    };
    h.with_context(|ctx| crate::ops::standby::create(ctx, &request)).unwrap();
    let agents = move |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(true)) };
    let drill = DrillRequest { env: "demo".into(), standby: Some("sb2".into()) };
    h.with_context(|ctx| start_drill(ctx, &drill, h.tools(&agents))).unwrap();

    let error = h.failback(true).unwrap_err();

    assert!(matches!(error, FailoverError::FailbackDrillRunning { ref standby, .. } if standby == "sb2"), "{error:?}");
    assert_eq!(h.state("sb-web"), DomainState::Running);
    assert_eq!(h.switch().unwrap().state, FailoverState::Active);
}

#[test]
fn a_failback_whose_compare_fails_aborts_before_any_switch_and_the_standby_serves_on() {
    let h = Harness::new();
    h.failed_over();
    let fenced = h.disks(&["web", "db"]);
    h.files.set_differs(true);

    let error = h.failback(true).unwrap_err();

    assert!(matches!(error, FailoverError::CompareFailed { .. }), "{error:?}");
    assert!(error.hint().unwrap().contains("nothing switched"), "{:?}", error.hint());
    let sb_tops = h.disks(&["sb-web", "sb-db"]);
    h.assert_standby_serves(&fenced, &sb_tops);
    let started: Vec<_> = h
        .primary_changes()
        .into_iter()
        .filter(|c| matches!(c, Call::StartDomain { .. } | Call::DefineDomain { .. }))
        .collect();
    assert!(started.is_empty(), "no primary domain was touched: {started:?}");
    let ops = h.catalog.operations_in(OperationState::RolledBack).unwrap();
    let op = ops.iter().find(|op| op.kind == OperationKind::Failover).unwrap();
    let carried: Vec<_> =
        h.catalog.steps(op.id).unwrap().into_iter().filter(|s| s.name.starts_with("carry home")).collect();
    assert!(!carried.is_empty(), "the copies were made");
    assert!(carried.iter().all(|s| s.state == crate::catalog::StepState::Undone), "and deleted again: {carried:?}");
}

#[test]
fn a_failback_whose_environment_does_not_answer_is_rolled_back_and_the_standby_serves_again() {
    let h = Harness::new();
    h.failed_over();
    let fenced = h.disks(&["web", "db"]);

    let error = h.failback(false).unwrap_err();

    assert!(matches!(error, FailoverError::AgentNotReady { .. }), "{error:?}");
    let sb_tops = h.disks(&["sb-web", "sb-db"]);
    assert!(sb_tops.iter().all(|(_, top)| top.starts_with(h.standby().storage.join("active"))), "{sb_tops:?}");
    h.assert_standby_serves(&fenced, &sb_tops);
    let ops = h.catalog.operations_in(OperationState::RolledBack).unwrap();
    assert!(ops.iter().any(|op| op.kind == OperationKind::Failover && op.env == "demo"), "{ops:?}");
}

#[test]
fn a_second_failback_reports_the_environment_home_and_does_nothing() {
    let h = Harness::new();
    h.failed_over();
    let first = h.failback(true).unwrap();
    h.hv.clear_calls();

    let again = h.failback(true).unwrap();

    assert_eq!((again.action, again.epoch), (FailbackAction::AlreadyHome, first.epoch));
    assert!(again.removed.is_empty(), "{:?}", again.removed);
    assert!(h.hv.calls().is_empty(), "{:?}", h.hv.calls());
    assert_eq!(h.catalog.last_epoch("demo").unwrap(), 2);
    assert_eq!(h.state("web"), DomainState::Running);
}

#[test]
fn after_a_failback_the_environment_fails_over_again_with_the_next_epoch() {
    let h = Harness::new();
    h.failed_over();
    h.failback(true).unwrap();

    let planned = h.planned(true).unwrap();

    assert_eq!((planned.action, planned.epoch), (SwitchAction::FailedOver, 3));
    assert!(h.disk("sb-web").to_string_lossy().ends_with("sb.vda.epoch-3.qcow2"), "{}", h.disk("sb-web").display());
}
