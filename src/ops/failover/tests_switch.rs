//! Unplanned failover, the fence and its guard, and the roles switched, on
//! the harness of `tests.rs`: what is fenced and how (stamped, autostart
//! off, or unconfirmed), what the standby runs on, what a rollback leaves,
//! and that an old primary that comes back is fenced again.

use std::collections::BTreeMap;

use super::*;
use crate::catalog::{FailoverMode, FailoverState, FenceKind};
use crate::error::Failure;
use crate::hypervisor::{DomainState, FakeHypervisor, FakeStep, Hypervisor};
use crate::ops::snapshot::SnapshotRequest;

const UNREACHABLE: PrimaryHost<'static> =
    PrimaryHost::Unreachable { uri: "qemu+ssh://primary/system", reason: "connection refused" };

impl Harness {
    fn unplanned(
        &self,
        force: bool,
        host: Option<PrimaryHost<'_>>,
        answering: bool,
    ) -> Result<SwitchReport, FailoverError> {
        let agents = move |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(answering)) };
        let request = DrillRequest { env: "demo".into(), standby: None };
        let how = Unplanned { force, host: host.unwrap_or(PrimaryHost::Answers(&self.hv)), primary_uri: None };
        self.with_context(|ctx| unplanned(ctx, &request, how, self.tools(&agents)))
    }

    /// The primary went down: both its domains stopped (not fenced).
    fn primary_down(&self) {
        for domain in ["web", "db"] {
            self.hv.set_autostart(domain, true).unwrap();
            self.hv.destroy_domain(domain).unwrap();
        }
        self.hv.clear_calls();
    }

    fn guard(&self, host: PrimaryHost<'_>) -> Vec<SwitchStatus> {
        let hosts = BTreeMap::from([("qemu:///system".to_owned(), host)]);
        guard(&self.catalog, "qemu:///system", &hosts, None, at(45)).unwrap()
    }

    fn stamp(&self, domain: &str) -> Option<i64> {
        self.hv.peek_domain(domain).unwrap().def.fence_stamp().map(|s| s.epoch)
    }
}

#[test]
fn unplanned_failover_fences_the_primary_and_the_standby_takes_over_from_its_point_on_fresh_overlays() {
    let h = Harness::new();
    h.primary_down();
    let primary_macs = h.macs("web");
    let point = h.standby().snapshot.unwrap();

    let report = h.unplanned(false, None, true).unwrap();

    assert_eq!((report.action, report.mode, report.epoch), (SwitchAction::FailedOver, FailoverMode::Unplanned, 1));
    assert_eq!(report.snapshot, point, "no final snapshot: SB's restored point");
    assert!(report.rto_ms < 60_000 && report.rpo_seconds >= 0, "{report:#?}");
    assert!(report.fence.iter().all(|f| f.fence == FenceKind::Fenced), "{:?}", report.fence);
    for primary in ["web", "db"] {
        assert_eq!(h.state(primary), DomainState::ShutOff, "{primary}");
        assert_eq!(h.hv.autostart(primary), Some(false), "{primary}'s autostart is off");
        assert_eq!(h.stamp(primary), Some(1), "{primary} carries the epoch");
    }
    assert_eq!(h.state("sb-web"), DomainState::Running);
    assert_eq!(h.macs("sb-web"), primary_macs);
    assert_eq!(h.networks("sb-web"), [Some("net".to_owned())]);
    let image = h.standby().disks.iter().find(|d| d.vm == "web").unwrap().path.clone();
    let overlay = h.disk("sb-web");
    assert!(overlay.to_string_lossy().ends_with("sb.vda.epoch-1.qcow2"), "{}", overlay.display());
    assert_eq!(h.files.overlays()[&overlay], image, "the overlay is on SB's synced copy");
    assert_eq!(report.vms.iter().find(|v| v.vm == "web").unwrap().overlays, [overlay]);
    let switch = h.catalog.active_switch("demo").unwrap().unwrap();
    assert_eq!((switch.mode, switch.epoch, switch.standby.as_str()), (FailoverMode::Unplanned, Some(1), "sb"));
    assert_eq!(h.catalog.fence_events(switch.id).unwrap().len(), 2);
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    let position = |prefix: &str| names.iter().position(|n| n.starts_with(prefix)).unwrap();
    assert!(position("fence") < position("overlay") && position("start sb-") < position("wait"), "{names:?}");
    assert!(names.last().unwrap().starts_with("record epoch 1"), "{names:?}");
}

#[test]
fn unplanned_failover_refuses_a_healthy_primary_without_force() {
    let h = Harness::new();

    let error = h.unplanned(false, None, true).unwrap_err();

    assert!(matches!(error, FailoverError::PrimaryHealthy { .. }), "{error:?}");
    assert!(error.hint().unwrap().contains("--planned"), "{:?}", error.hint());
    assert!(h.hv.steps().iter().all(|s| matches!(s, FakeStep::Domain | FakeStep::Network)), "{:?}", h.hv.steps());
    assert!(h.catalog.active_switch("demo").unwrap().is_none());
}

#[test]
fn unplanned_failover_with_force_fences_a_running_primary() {
    let h = Harness::new();

    let report = h.unplanned(true, None, true).unwrap();

    assert_eq!(report.action, SwitchAction::FailedOver);
    assert_eq!(h.state("web"), DomainState::ShutOff);
    assert_eq!(h.state("sb-web"), DomainState::Running);
}

#[test]
fn unplanned_failover_records_a_primary_whose_libvirt_does_not_answer_as_fenced_unconfirmed_and_goes_on() {
    let h = Harness::new();
    h.primary_down();

    let report = h.unplanned(false, Some(UNREACHABLE), true).unwrap();

    assert!(report.fence.iter().all(|f| f.fence == FenceKind::FencedUnconfirmed), "{:?}", report.fence);
    assert!(report.fenced.is_empty());
    assert!(report.fence[0].detail.as_deref().unwrap().contains("connection refused"), "{:?}", report.fence);
    assert_eq!(h.state("sb-web"), DomainState::Running);
    for primary in ["web", "db"] {
        assert_eq!(h.hv.autostart(primary), Some(true), "nothing was done on {primary}'s host");
        assert_eq!(h.stamp(primary), None);
    }
    let status = h.guard(UNREACHABLE);
    assert!(!status[0].checked && status[0].unchecked_reason.as_deref().unwrap().contains("does not answer"));
    assert!(status[0].primary.iter().all(|f| f.fence == FenceKind::FencedUnconfirmed));
}

#[test]
fn an_old_primary_that_comes_back_after_an_unconfirmed_fence_is_fenced_again_and_the_rest_confirmed() {
    let h = Harness::new();
    h.primary_down();
    h.unplanned(false, Some(UNREACHABLE), true).unwrap();
    // Its host is back, and autostart brought web up.
    h.hv.start_domain("web").unwrap();

    let status = h.guard(PrimaryHost::Answers(&h.hv));

    let switch = &status[0];
    assert!(switch.checked);
    assert_eq!(switch.state, FailoverState::Active);
    assert_eq!((switch.env.as_str(), switch.active.as_str(), switch.epoch), ("demo", "sb", 1));
    let actions: Vec<(&str, FenceKind)> = switch.actions.iter().map(|a| (a.domain.as_str(), a.action)).collect();
    assert_eq!(actions, [("db", FenceKind::Fenced), ("web", FenceKind::ReturnedRefenced)]);
    assert_eq!(switch.returns.len(), 1);
    assert_eq!(switch.returns[0].domain, "web");
    for primary in ["web", "db"] {
        assert_eq!(h.state(primary), DomainState::ShutOff, "{primary}");
        assert_eq!(h.hv.autostart(primary), Some(false), "{primary}");
        assert_eq!(h.stamp(primary), Some(1), "{primary}");
    }
    assert!(switch.primary.iter().all(|f| f.fence == FenceKind::Fenced), "{:?}", switch.primary);
    assert_eq!(h.state("sb-web"), DomainState::Running, "the active side is untouched");
    let again = h.guard(PrimaryHost::Answers(&h.hv));
    assert!(again[0].actions.is_empty(), "{:?}", again[0].actions);
    assert_eq!(again[0].returns.len(), 1, "the return stays on record");
}

#[test]
fn a_primary_domain_started_by_hand_after_a_planned_failover_is_fenced_again() {
    let h = Harness::new();
    h.planned(true).unwrap();
    assert_eq!(h.stamp("web"), Some(1), "planned failovers stamp too");
    h.hv.start_domain("web").unwrap();

    let status = h.guard(PrimaryHost::Answers(&h.hv));

    assert_eq!(status[0].actions.len(), 1);
    assert_eq!(status[0].actions[0].action, FenceKind::ReturnedRefenced);
    assert_eq!(h.state("web"), DomainState::ShutOff);
}

#[test]
fn a_second_unplanned_failover_does_nothing() {
    let h = Harness::new();
    h.primary_down();
    h.unplanned(false, None, true).unwrap();
    h.hv.clear_calls();

    let again = h.unplanned(false, None, true).unwrap();

    assert_eq!((again.action, again.epoch), (SwitchAction::AlreadyFailedOver, 1));
    assert!(h.hv.steps().iter().all(|s| matches!(s, FakeStep::Domain | FakeStep::Network)), "{:?}", h.hv.steps());
    let planned = h.planned(true).unwrap();
    assert_eq!(planned.action, SwitchAction::AlreadyFailedOver, "one switch per environment");
}

#[test]
fn an_unplanned_failover_whose_standby_does_not_answer_is_rolled_back_leaving_the_primary_as_found() {
    let h = Harness::new();
    h.hv.destroy_domain("db").unwrap();
    let sb_macs = h.macs("sb-web");
    let sb_disk = h.disk("sb-web");

    let error = h.unplanned(false, None, false).unwrap_err();

    assert!(matches!(error, FailoverError::AgentNotReady { .. }), "{error:?}");
    assert_eq!(h.state("web"), DomainState::Running, "web ran before: started again");
    assert_eq!(h.state("db"), DomainState::ShutOff, "db was down before: left down");
    assert_eq!((h.stamp("web"), h.stamp("db")), (None, None), "the stamps are gone");
    assert_eq!(h.state("sb-web"), DomainState::ShutOff);
    assert_eq!((h.macs("sb-web"), h.disk("sb-web")), (sb_macs, sb_disk), "SB has its own identity and disks back");
    assert!(h.files.overlays().is_empty(), "{:?}", h.files.overlays());
    assert!(h.catalog.active_switch("demo").unwrap().is_none());
}

#[test]
fn while_the_standby_serves_the_environment_snapshots_take_its_domains_and_syncs_refuse() {
    let h = Harness::new();
    h.primary_down();
    h.unplanned(false, None, true).unwrap();
    let (active, _) = active_environment(&h.catalog, "demo").unwrap().unwrap();
    assert_eq!(active.vms["web"].domain, "sb-web");
    assert_eq!(active.vms["web"].agent.address, "192.168.50.11", "at the primary's address");
    assert_eq!(active.storage, Some(h.standby().storage.join("active")));
    let mut config = h.config.clone();
    config.environments.insert("demo".into(), active);
    h.hv.clear_calls();

    let request = SnapshotRequest { env: "demo".into(), label: None, memory: false, quiesce: None, schedule: None };
    let snapshot = h.with_context(|ctx| {
        let ctx = OpContext { config: &config, ..*ctx };
        crate::ops::snapshot::take(&ctx, &request, &h.quiescer)
    });

    assert!(snapshot.is_ok(), "{snapshot:?}");
    let mut snapshotted: Vec<String> =
        h.hv.calls()
            .into_iter()
            .filter_map(|c| match c {
                crate::hypervisor::Call::CreateSnapshot { domain, .. } => Some(domain),
                _ => None,
            })
            .collect();
    snapshotted.sort(); // the guests are snapshotted in parallel
    assert_eq!(snapshotted, ["sb-db", "sb-web"], "the active side's domains");
    let sync = h.with_context(|ctx| crate::ops::standby::sync(ctx, "sb")).unwrap_err();
    assert!(matches!(sync, crate::ops::standby::StandbyError::ActiveSide { epoch: 1, .. }), "{sync:?}");
}

#[test]
fn a_standby_never_synced_cannot_take_over_unplanned() {
    let h = Harness::with_hv(FakeHypervisor::running_env("net", &["web", "db"]), false);
    h.primary_down();

    let error = h.unplanned(false, None, true).unwrap_err();

    assert!(matches!(error, FailoverError::NotSynced { .. }), "{error:?}");
    assert_eq!(h.hv.autostart("web"), Some(true), "nothing fenced");
}

#[test]
fn recover_rolls_back_the_steps_of_an_unplanned_failover_whose_process_died() {
    let h = Harness::new();
    h.hv.destroy_domain("db").unwrap();
    let sb_macs = h.macs("sb-web");
    h.unplanned(false, None, true).unwrap();
    // What a crash just before the record leaves: every step but the
    // record, undone newest first the way `recover` does.
    let ops = h.catalog.operations_in(crate::catalog::OperationState::Completed).unwrap();
    let failover = ops.iter().find(|op| op.kind == crate::catalog::OperationKind::Failover).unwrap();
    assert_eq!(failover.env, "demo", "a switch is journaled on the primary");
    let steps = h.catalog.steps(failover.id).unwrap();
    assert!(steps.iter().any(|s| is_record_step(&s.name)));
    let mut undos: Vec<_> = steps.into_iter().filter(|s| !is_record_step(&s.name)).map(|s| s.undo).collect();
    undos.reverse();
    h.catalog.forget_open_failover("sb").unwrap();

    h.with_context(|ctx| {
        for action in &undos {
            super::super::undo::undo_action(ctx, action).unwrap();
        }
    });

    assert_eq!((h.state("web"), h.state("db")), (DomainState::Running, DomainState::ShutOff));
    assert_eq!((h.stamp("web"), h.stamp("db")), (None, None));
    assert_eq!(h.state("sb-web"), DomainState::ShutOff);
    assert_eq!(h.macs("sb-web"), sb_macs);
    assert!(h.files.overlays().is_empty(), "{:?}", h.files.overlays());
}

#[test]
fn an_old_primary_that_cannot_be_stopped_is_reported_on_every_check_and_recorded_once() {
    let h = Harness::new();
    h.planned(true).unwrap();
    h.hv.start_domain("web").unwrap();
    let hv = FakeHypervisor::running_env("net", &["web", "db"]).fail_at(FakeStep::DestroyDomain);

    let first = h.guard(PrimaryHost::Answers(&hv));
    let second = h.guard(PrimaryHost::Answers(&hv));

    for status in [&first[0], &second[0]] {
        let failed: Vec<&str> =
            status.actions.iter().filter(|a| a.action == FenceKind::RefenceFailed).map(|a| a.domain.as_str()).collect();
        assert_eq!(failed, ["db", "web"], "{:?}", status.actions);
    }
    assert_eq!(second[0].returns.len(), 2, "one row per domain, not per check: {:?}", second[0].returns);
}

#[test]
fn a_readdressing_standby_of_a_primary_without_a_pool_is_refused_before_anything_is_fenced() {
    let mut h = Harness::new();
    let storage = h.standby().storage;
    h.config.standbys.insert(
        "sb".into(),
        crate::config::Standby {
            primary: "demo".into(),
            storage,
            autorestore: true,
            network: crate::config::StandbyNetwork::Readdress,
            failback_on_manual_snapshot: false,
            host: None,
        },
    );
    h.primary_down();

    let error = h.unplanned(false, None, true).unwrap_err();

    assert!(matches!(&error, FailoverError::ReaddressNotConfigured { missing: "readdress", .. }), "{error:?}");
    assert_eq!(crate::exit::ExitCode::from_error(&error), crate::exit::ExitCode::Usage);
    assert_eq!(h.hv.autostart("web"), Some(true), "nothing fenced");
    assert!(h.catalog.active_switch("demo").unwrap().is_none());
}

#[test]
fn the_fence_records_the_autostart_and_the_way_back_gives_it_again() {
    let h = Harness::new();
    h.hv.set_autostart("web", true).unwrap();
    h.hv.set_autostart("db", false).unwrap();

    // A failover that fails after the fence: the undone fence gives it back.
    let failed = h.planned(false).unwrap_err();
    assert!(matches!(failed, FailoverError::AgentNotReady { .. }), "{failed:?}");
    assert_eq!((h.hv.autostart("web"), h.hv.autostart("db")), (Some(true), Some(false)));

    h.planned(true).unwrap();
    assert_eq!(h.hv.autostart("web"), Some(false), "fenced: a host reboot must not bring it back");
    let stamp = h.hv.peek_domain("web").unwrap().def.fence_stamp().unwrap();
    assert_eq!((stamp.epoch, stamp.autostart), (1, Some(true)));
    assert_eq!(h.hv.peek_domain("db").unwrap().def.fence_stamp().unwrap().autostart, Some(false));

    let agents = |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(true)) };
    let request = DrillRequest { env: "demo".into(), standby: None };
    let report = h.with_context(|ctx| failback(ctx, &request, h.tools(&agents))).unwrap();

    assert_eq!((h.hv.autostart("web"), h.hv.autostart("db")), (Some(true), Some(false)));
    assert_eq!(report.autostart, "as before the failover: db off, web on");
}

#[test]
fn a_switch_failing_back_is_shown_but_its_primary_is_not_guarded() {
    let h = Harness::new();
    h.primary_down();
    h.unplanned(false, None, true).unwrap();
    let id = h.catalog.active_switch("demo").unwrap().unwrap().id;
    h.catalog.set_switch_state(id, FailoverState::Active, FailoverState::FailingBack).unwrap();
    // The failback has started demo's web: not an old primary.
    h.hv.start_domain("web").unwrap();
    h.hv.clear_calls();

    let status = h.guard(PrimaryHost::Answers(&h.hv));

    assert_eq!(status.len(), 1, "{status:#?}");
    assert_eq!(status[0].state, FailoverState::FailingBack);
    assert!(!status[0].checked && status[0].actions.is_empty(), "{status:#?}");
    assert!(status[0].unchecked_reason.as_deref().unwrap().contains("failback"), "{status:#?}");
    assert_eq!(h.state("web"), DomainState::Running);
    assert!(h.primary_changes().is_empty(), "{:?}", h.primary_changes());
}
