//! The DR drill on `FakeHypervisor`, with image files, `ip` and agents in
//! memory: what starts, on which disks, behind which gateway; that the
//! primary is never touched; that `--end` leaves the standby as it was;
//! that a drill that fails is rolled back; that both are idempotent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::catalog::{Catalog, FailoverMode, FailoverState, OperationKind, OperationState};
use crate::config::{AgentEndpoint, Config, Controller, Environment, HumanSize, Vm};
use crate::guest::agents::CloneAgents;
use crate::hypervisor::{Call, DomainState, FakeHypervisor, FakeStep, Hypervisor};
use crate::ops::context::{Event, FixedClock, OpContext};
use crate::ops::snapshot::SnapshotRequest;
use crate::test_support::{FakeHost, FakeNet, FakeQuiescer, FakeStorage, ReadyAgents};

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 2, minute, 0).unwrap()
}

/// `demo` (web, db on `net`, 192.168.50.1/24) with a standby `sb` synced
/// to one snapshot.
struct Harness {
    _dir: tempfile::TempDir,
    config: Config,
    catalog: Catalog,
    hv: FakeHypervisor,
    /// Every image file: the primary's, the standby's, those carried home.
    files: FakeStorage<'static>,
    net: FakeNet,
    /// Freezes the primary's guests for a planned failover's snapshot.
    quiescer: FakeQuiescer,
    events: Mutex<Vec<Event>>,
    /// What SIGTERM/SIGINT would set: a test sets it to interrupt the operation.
    interrupt: crate::ops::interrupt::Interrupt,
}

impl Harness {
    fn new() -> Self {
        Self::with_hv(FakeHypervisor::running_env("net", &["web", "db"]), true)
    }

    fn with_hv(hv: FakeHypervisor, synced: bool) -> Self {
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
        let h = Harness {
            config,
            catalog,
            hv,
            files: FakeStorage::default().with_size(100),
            net: FakeNet::default(),
            quiescer: FakeQuiescer::healthy(),
            events: Mutex::new(Vec::new()),
            interrupt: Default::default(),
            _dir: dir,
        };
        if synced {
            let request =
                SnapshotRequest { env: "demo".into(), label: None, memory: false, quiesce: None, schedule: None };
            h.with_context(|ctx| crate::ops::snapshot::take(ctx, &request, &h.quiescer)).unwrap();
        }
        let storage = h._dir.path().join("standby");
        let request = crate::ops::standby::CreateRequest {
            primary: "demo".into(),
            name: "sb".into(),
            storage: Some(storage),
            autorestore: None,
            host: None,
        };
        let created = h.with_context(|ctx| crate::ops::standby::create(ctx, &request)).unwrap();
        assert_eq!(created.sync.is_some(), synced);
        h.hv.clear_calls();
        h
    }

    fn with_context<T>(&self, f: impl FnOnce(&OpContext<'_>) -> T) -> T {
        let events = &self.events;
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());
        let clock = FixedClock(at(30));
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

    fn run(&self, end: bool, answering: bool) -> Result<DrillReport, FailoverError> {
        let agents = move |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(answering)) };
        let tools = self.tools(&agents);
        let request = DrillRequest { env: "demo".into(), standby: None };
        self.with_context(|ctx| if end { end_drill(ctx, &request, tools) } else { start_drill(ctx, &request, tools) })
    }

    fn tools<'t>(&'t self, agents: &'t dyn Fn(&Environment) -> Box<dyn CloneAgents>) -> Tools<'t> {
        Tools { agents, quiescer: &self.quiescer }
    }

    fn planned(&self, answering: bool) -> Result<SwitchReport, FailoverError> {
        let agents = move |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(answering)) };
        let request = DrillRequest { env: "demo".into(), standby: None };
        self.with_context(|ctx| planned(ctx, &request, self.tools(&agents)))
    }

    fn macs(&self, domain: &str) -> Vec<Option<String>> {
        self.hv.peek_domain(domain).unwrap().def.interfaces().into_iter().map(|i| i.mac).collect()
    }

    fn networks(&self, domain: &str) -> Vec<Option<String>> {
        self.hv.peek_domain(domain).unwrap().def.interfaces().into_iter().map(|i| i.network).collect()
    }

    fn standby(&self) -> crate::catalog::StandbyRecord {
        self.catalog.standby_named("sb").unwrap().unwrap()
    }

    fn state(&self, domain: &str) -> DomainState {
        self.hv.peek_domain(domain).unwrap().state
    }

    fn disk(&self, domain: &str) -> PathBuf {
        self.hv.peek_domain(domain).unwrap().def.disks()[0].source.clone().unwrap()
    }

    /// Calls that change a primary domain.
    fn primary_changes(&self) -> Vec<Call> {
        self.hv
            .calls()
            .into_iter()
            .filter(|call| match call {
                Call::DefineDomain { def } => ["web", "db"].contains(&def.name().as_str()),
                Call::StartDomain { name }
                | Call::DestroyDomain { name }
                | Call::UndefineDomain { name }
                | Call::SetAutostart { name, .. } => ["web", "db"].contains(&name.as_str()),
                Call::MoveInterface { domain, .. } => ["web", "db"].contains(&domain.as_str()),
                _ => false,
            })
            .collect()
    }

    /// The standby is as a sync left it: shut off, on its own images, no drill.
    fn assert_standby_as_it_was(&self) {
        let standby = self.standby();
        for disk in &standby.disks {
            let domain = format!("sb-{}", disk.vm);
            assert_eq!(self.state(&domain), DomainState::ShutOff, "{domain}");
            assert_eq!(self.disk(&domain), disk.path, "{domain}");
        }
        assert!(self.files.overlays().is_empty(), "{:?}", self.files.overlays());
        assert!(self.net.netns().is_empty());
        assert!(self.net.links().is_empty());
        assert!(self.catalog.open_failover("sb").unwrap().is_none());
    }
}

#[test]
fn drill_starts_the_standby_on_throwaway_overlays_behind_a_gateway_and_never_touches_the_primary() {
    let h = Harness::new();

    let report = h.run(false, true).unwrap();

    assert_eq!(report.action, DrillAction::Started);
    assert_eq!(report.snapshot, h.standby().snapshot);
    assert!(report.rto_ms.is_some() && report.rpo_seconds.is_some(), "{report:#?}");
    for disk in &h.standby().disks {
        let domain = format!("sb-{}", disk.vm);
        assert_eq!(h.state(&domain), DomainState::Running);
        let overlay = h.disk(&domain);
        assert!(overlay.to_string_lossy().ends_with(".drill.qcow2"), "{}", overlay.display());
        assert_eq!(h.files.overlays()[&overlay], disk.path, "the overlay is on SB's image");
    }
    assert_eq!(h.net.netns(), ["envclone-c-sb"]);
    let links = h.net.links();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].2, "192.168.50.1/24", "the guests' gateway address");
    assert_eq!(Some(links[0].1.clone()), h.hv.peek_network("sb-net").unwrap().def.bridge());
    assert!(h.primary_changes().is_empty(), "{:?}", h.primary_changes());
    assert_eq!(h.state("web"), DomainState::Running);
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"start sb-web") && names.last() == Some(&"record the drill"), "{names:?}");
    let env = crate::ops::clone::resolve_environment(&h.config, &h.catalog, "sb").unwrap();
    assert_eq!(env.vms["web"].domain, "sb-web");
    assert_eq!(env.vms["web"].agent.netns.as_deref(), Some("envclone-c-sb"));
    assert_eq!(env.vms["web"].agent.address, "192.168.50.11");
    let ops = h.catalog.operations_in(OperationState::Completed).unwrap();
    assert!(ops.iter().any(|op| op.kind == OperationKind::Failover && op.env == "sb"), "{ops:?}");
}

#[test]
fn a_second_drill_reports_the_running_one_and_starts_nothing() {
    let h = Harness::new();
    let first = h.run(false, true).unwrap();
    h.hv.clear_calls();

    let second = h.run(false, true).unwrap();

    assert_eq!(second.action, DrillAction::AlreadyRunning);
    assert_eq!(second.rto_ms, first.rto_ms);
    assert!(!h.hv.steps().iter().any(|s| matches!(s, FakeStep::StartDomain | FakeStep::DefineDomain)));
}

#[test]
fn end_leaves_the_standby_as_it_was_and_a_second_end_does_nothing() {
    let h = Harness::new();
    h.run(false, true).unwrap();

    let ended = h.run(true, true).unwrap();

    assert_eq!(ended.action, DrillAction::Ended);
    h.assert_standby_as_it_was();
    assert!(h.primary_changes().is_empty(), "{:?}", h.primary_changes());
    assert_eq!(h.catalog.failovers(Some("demo")).unwrap()[0].state, FailoverState::Ended);
    let again = h.run(true, true).unwrap();
    assert_eq!(again.action, DrillAction::NotRunning);
    assert!(again.steps.is_empty());
}

#[test]
fn a_drill_whose_agents_do_not_answer_is_rolled_back() {
    let h = Harness::new();

    let error = h.run(false, false).unwrap_err();

    assert!(matches!(error, FailoverError::AgentNotReady { .. }), "{error:?}");
    h.assert_standby_as_it_was();
    assert!(h.primary_changes().is_empty());
}

#[test]
fn a_drill_whose_domain_does_not_start_is_rolled_back() {
    let hv = FakeHypervisor::running_env("net", &["web", "db"]).fail_at(FakeStep::StartDomain);
    let h = Harness::with_hv(hv, true);

    let error = h.run(false, true).unwrap_err();

    assert!(matches!(error, FailoverError::Start { .. }), "{error:?}");
    h.assert_standby_as_it_was();
}

#[test]
fn drill_refuses_a_standby_never_synced() {
    let h = Harness::with_hv(FakeHypervisor::running_env("net", &["web", "db"]), false);

    let error = h.run(false, true).unwrap_err();

    assert!(matches!(error, FailoverError::NotSynced { .. }), "{error:?}");
    assert!(h.hv.steps().iter().all(|s| matches!(s, FakeStep::Domain | FakeStep::Network)), "{:?}", h.hv.steps());
}

#[test]
fn drill_refuses_an_environment_without_standby() {
    let h = Harness::new();
    let agents = |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(true)) };
    let tools = h.tools(&agents);
    let request = DrillRequest { env: "demo".into(), standby: Some("other".into()) };

    let error = h.with_context(|ctx| start_drill(ctx, &request, tools)).unwrap_err();

    assert!(matches!(error, FailoverError::UnknownStandby { ref known, .. } if known == &["sb"]), "{error:?}");
}

#[test]
fn recover_rolls_back_the_steps_of_a_drill_whose_process_died() {
    let h = Harness::new();
    h.run(false, true).unwrap();
    // What a crash right after the record leaves, minus the completion:
    // replay the drill's undos the way `recover` does, newest first.
    let ops = h.catalog.operations_in(OperationState::Completed).unwrap();
    let drill = ops.iter().find(|op| op.kind == OperationKind::Failover).unwrap();
    let steps = h.catalog.steps(drill.id).unwrap();
    let mut undos: Vec<_> = steps.into_iter().map(|s| s.undo).collect();
    undos.reverse();

    h.with_context(|ctx| {
        for action in &undos {
            assert!(!crate::ops::recover::describe(action).contains("unknown"), "{action:?}");
            super::undo::undo_action(ctx, action).unwrap();
        }
    });

    h.assert_standby_as_it_was();
}

#[test]
fn planned_failover_fences_the_primary_and_the_standby_takes_over_its_macs_and_networks() {
    let h = Harness::new();
    let primary_macs = h.macs("web");
    let before = h.standby().snapshot;

    let report = h.planned(true).unwrap();

    assert_eq!((report.action, report.epoch, report.rpo_seconds), (SwitchAction::FailedOver, 1, 0));
    assert_ne!(Some(report.snapshot.clone()), before, "a final snapshot was taken");
    assert_eq!(h.standby().snapshot, Some(report.snapshot.clone()), "SB was brought to it");
    for primary in ["web", "db"] {
        assert_eq!(h.state(primary), DomainState::ShutOff, "{primary} is fenced");
        assert_eq!(h.hv.autostart(primary), Some(false), "{primary}'s autostart is off");
    }
    assert_eq!(h.state("sb-web"), DomainState::Running);
    assert_eq!(h.macs("sb-web"), primary_macs);
    assert_eq!(h.networks("sb-web"), [Some("net".to_owned())]);
    let own = h.standby().disks.iter().find(|d| d.vm == "web").unwrap().path.clone();
    let overlay = h.disk("sb-web");
    assert!(overlay.to_string_lossy().ends_with("sb.vda.epoch-1.qcow2"), "{}", overlay.display());
    assert_eq!(h.files.overlays()[&overlay], own, "on an epoch overlay over SB's synced copy");
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    let position = |prefix: &str| names.iter().position(|n| n.starts_with(prefix)).unwrap();
    assert!(
        position("final snapshot") < position("fence web") && position("fence") < position("bring sb"),
        "{names:?}"
    );
    assert!(position("bring sb") < position("take over") && position("start sb-") < position("wait for"), "{names:?}");
    let open = h.catalog.open_failover("sb").unwrap().unwrap();
    assert_eq!((open.mode, open.state, open.epoch), (FailoverMode::Planned, FailoverState::Active, Some(1)));
}

#[test]
fn a_second_planned_failover_does_nothing() {
    let h = Harness::new();
    h.planned(true).unwrap();
    h.hv.clear_calls();

    let again = h.planned(true).unwrap();

    assert_eq!((again.action, again.epoch), (SwitchAction::AlreadyFailedOver, 1));
    assert!(h.hv.steps().iter().all(|s| matches!(s, FakeStep::Domain | FakeStep::Network)), "{:?}", h.hv.steps());
}

#[test]
fn a_planned_failover_whose_standby_does_not_answer_is_rolled_back_and_the_primary_serves_again() {
    let h = Harness::new();
    let sb_macs = h.macs("sb-web");

    let error = h.planned(false).unwrap_err();

    assert!(matches!(error, FailoverError::AgentNotReady { .. }), "{error:?}");
    for primary in ["web", "db"] {
        assert_eq!(h.state(primary), DomainState::Running, "{primary} is unfenced");
    }
    assert_eq!(h.state("sb-web"), DomainState::ShutOff);
    assert_eq!(h.macs("sb-web"), sb_macs, "SB has its own MACs back");
    assert_eq!(h.networks("sb-web"), [Some("sb-net".to_owned())]);
    assert!(h.files.overlays().is_empty(), "the epoch overlays are gone: {:?}", h.files.overlays());
    assert!(h.catalog.open_failover("sb").unwrap().is_none());
}

#[test]
fn planned_failover_refuses_a_primary_that_is_down() {
    let h = Harness::new();
    h.hv.destroy_domain("db").unwrap();
    h.hv.clear_calls();

    let error = h.planned(true).unwrap_err();

    assert!(matches!(error, FailoverError::PrimaryDown { ref domain, .. } if domain == "db"), "{error:?}");
    assert!(h.hv.steps().iter().all(|s| matches!(s, FakeStep::Domain | FakeStep::Network)), "{:?}", h.hv.steps());
}

#[test]
fn planned_failover_refuses_while_a_drill_runs() {
    let h = Harness::new();
    h.run(false, true).unwrap();

    let error = h.planned(true).unwrap_err();

    assert!(matches!(error, FailoverError::DrillRunning { .. }), "{error:?}");
    assert_eq!(h.state("web"), DomainState::Running);
}

#[test]
fn the_record_steps_are_what_recover_completes_from() {
    assert!(is_record_step("record the drill"));
    assert!(is_record_step("record epoch 3: sb serves demo"));
    assert!(!is_record_step("start sb-web"));
    assert!(!is_record_step("record"));
}

// Unplanned failover, the fence and its guard: a file of its own (this one
// would pass 900 lines), sharing this harness as a child module.
#[path = "tests_switch.rs"]
mod switch;

// Failback, on the same harness.
#[path = "tests_failback.rs"]
mod failback;

#[path = "tests_readdress.rs"]
mod readdress;

// The home sync (`standby sync SB` while SB serves), and failback after it.
#[path = "tests_home_sync.rs"]
mod home_sync;

// The guard as commands run it, and the snapshot-triggered failback.
#[path = "tests_guard.rs"]
mod guard_run;

#[path = "tests_on_snapshot.rs"]
mod on_snapshot_failback;
