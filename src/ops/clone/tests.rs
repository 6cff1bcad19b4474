//! The clone and the destroy on `FakeHypervisor`, fake image files, a fake
//! `ip` and fake agents: what is defined, recorded and pinned, and that a
//! failure or a destroy leaves nothing behind.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::catalog::{Dependent, ImageKind, OperationState, StepState};
use crate::config::{AgentEndpoint, Config, Controller, HumanSize, Vm};
use crate::error::Failure;
use crate::guest::agents::CloneAgents;
use crate::hypervisor::{FakeHypervisor, FakeStep, Hypervisor};
use crate::ops::context::{Event, FixedClock};
use crate::test_support::{FakeHost, FakeNet, FakeQuiescer, FakeStorage, ReadyAgents};

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 2, minute, 0).unwrap()
}

/// An environment `demo` of VMs `web` and `db` on network `net`, with one
/// snapshot `snap` taken through `envclone snapshot`'s own code.
struct Harness {
    _dir: tempfile::TempDir,
    config: Config,
    catalog: Catalog,
    hv: FakeHypervisor,
    files: FakeStorage<'static>,
    net: FakeNet,
    events: Mutex<Vec<Event>>,
    /// What SIGTERM/SIGINT would set: a test sets it to interrupt the operation.
    interrupt: crate::ops::interrupt::Interrupt,
    snapshot: String,
}

impl Harness {
    fn new(hv: FakeHypervisor) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut controller = Controller::new("/k", dir.path().join("known_hosts"));
        controller.state_dir = dir.path().join("state");
        controller.min_free_space = HumanSize::from_bytes(1);
        let vms = [("web", "192.168.50.11"), ("db", "192.168.50.12")]
            .map(|(name, address)| {
                (name.to_owned(), Vm { domain: name.to_owned(), agent: AgentEndpoint::new(address) })
            })
            .into();
        let env = Environment {
            vms,
            networks: vec!["net".into()],
            rewrite: Some(crate::config::Rewrite {
                files: vec!["/etc/app/*.env".into()],
                roots: vec!["/etc".into()],
                map: BTreeMap::new(),
            }),
            readdress: Some(crate::config::Readdress::new("10.90.0.0/16".parse().unwrap())),
            ..Default::default()
        };
        let config = Config {
            controller,
            environments: BTreeMap::from([("demo".to_owned(), env)]),
            schedules: BTreeMap::new(),
            standbys: BTreeMap::new(),
            hosts: BTreeMap::new(),
            lab: None,
        };
        let catalog = Catalog::open(&config.controller.state_dir).unwrap();
        let mut harness = Harness {
            _dir: dir,
            config,
            catalog,
            hv,
            files: FakeStorage::default().with_copy_size(1 << 20),
            net: FakeNet::default(),
            events: Mutex::new(Vec::new()),
            interrupt: Default::default(),
            snapshot: String::new(),
        };
        let request = SnapshotRequest { env: "demo".into(), label: None, memory: false, quiesce: None, schedule: None };
        harness.snapshot = harness
            .with_context(|ctx| crate::ops::snapshot::take(ctx, &request, &FakeQuiescer::healthy()))
            .unwrap()
            .name;
        harness.hv.clear_calls();
        harness
    }

    fn env() -> Self {
        Harness::new(FakeHypervisor::running_env("net", &["web", "db"]))
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

    fn clone(&self, name: &str, start: StartMode) -> Result<CloneReport, CloneError> {
        self.clone_with(name, start, DiskMode::Linked)
    }

    fn clone_with(&self, name: &str, start: StartMode, disks: DiskMode) -> Result<CloneReport, CloneError> {
        self.clone_as(name, start, disks, NetworkMode::Isolated, &ReadyAgents::default())
    }

    fn clone_as(
        &self,
        name: &str,
        start: StartMode,
        disks: DiskMode,
        network: NetworkMode,
        agents: &ReadyAgents,
    ) -> Result<CloneReport, CloneError> {
        self.clone_request(name, start, disks, network, false, agents)
    }

    fn clone_request(
        &self,
        name: &str,
        start: StartMode,
        disks: DiskMode,
        network: NetworkMode,
        new_host_keys: bool,
        agents: &ReadyAgents,
    ) -> Result<CloneReport, CloneError> {
        let request = CloneRequest {
            source: "demo".into(),
            name: name.into(),
            from: Some(self.snapshot.clone()),
            disks,
            start,
            network,
            new_host_keys,
        };
        let agents = |env: &Environment| -> Box<dyn CloneAgents> { Box::new(agents.reaching(env)) };
        let tools = Tools { quiescer: &FakeQuiescer::healthy(), agents: &agents };
        self.with_context(|ctx| super::clone(ctx, &request, tools))
    }

    fn destroy(&self, name: &str) -> Result<crate::ops::destroy::DestroyReport, CloneError> {
        self.with_context(|ctx| crate::ops::destroy::destroy(ctx, name))
    }

    /// Nothing of clone `name` is left: domains, networks, namespaces,
    /// links, overlays, catalog records and pins.
    fn assert_nothing_left_of(&self, name: &str) {
        let prefix = format!("{name}-");
        assert!(!self.hv.domain_names().unwrap().iter().any(|d| d.starts_with(&prefix)));
        assert!(!self.hv.network_names().unwrap().iter().any(|n| n.starts_with(&prefix)));
        assert!(self.net.netns().is_empty());
        assert!(self.net.links().is_empty());
        assert!(self.files.files().is_empty());
        assert_eq!(self.catalog.clone_named(name).unwrap(), None);
        assert!(self.catalog.images_needed_by(&Dependent::clone_named(name)).unwrap().is_empty());
    }
}

#[test]
fn phase_transitions_per_phase() {
    use Phase::*;
    let allowed: &[(Phase, &[Phase])] = &[
        (Lock, &[Resolve, Failed]),
        (Resolve, &[Overlays, Failed]),
        (Overlays, &[Networks, Failed]),
        (Networks, &[Gateway, Failed]),
        (Gateway, &[Domains, Failed]),
        (Domains, &[Start, Failed]),
        (Start, &[Identity, Failed]),
        (Identity, &[Record, Failed]),
        (Record, &[Done, Failed]),
        (Done, &[]),
        (Failed, &[]),
    ];
    assert_eq!(allowed.len(), Phase::ALL.len());
    for (from, targets) in allowed {
        for to in Phase::ALL {
            assert_eq!(from.valid_transition(to), targets.contains(&to), "{} -> {}", from.as_str(), to.as_str());
        }
    }
}

#[test]
fn clone_defines_new_domains_on_isolated_copies_and_pins_the_snapshot() {
    let h = Harness::env();

    let report = h.clone("c1", StartMode::Boot).unwrap();

    let network = h.hv.peek_network("c1-net").expect("the isolated copy");
    assert!(network.active);
    assert_eq!((network.def.ip(), network.def.forward_mode()), (None, None));
    assert_eq!(network.def.bridge(), Some(names::bridge("c1", "net")));
    let links = h.net.links();
    assert_eq!(links, [(names::veth_pair("c1", "net").0, names::bridge("c1", "net"), "192.168.50.1/24".to_owned())]);
    assert_eq!(h.net.netns(), ["envclone-c-c1"]);
    let dependent = Dependent::clone_named("c1");
    let pinned = h.catalog.images_needed_by(&dependent).unwrap();
    assert_eq!(pinned.len(), 2);
    for vm in ["web", "db"] {
        let source = h.hv.peek_domain(vm).unwrap();
        let clone = h.hv.peek_domain(&format!("c1-{vm}")).expect("the clone's domain");
        assert_eq!(clone.state, crate::hypervisor::DomainState::Running);
        assert_ne!(clone.def.uuid(), source.def.uuid());
        let iface = &clone.def.interfaces()[0];
        assert_eq!(iface.network.as_deref(), Some("c1-net"));
        assert_ne!(iface.mac, source.def.interfaces()[0].mac);
        let disk = clone.def.disks().remove(0).source.unwrap();
        assert_eq!(disk, h.config.controller.state_dir.join(format!("images/c1/{vm}/c1.vda.qcow2")));
        let backing = h.files.backing_of(&disk).unwrap();
        assert!(pinned.iter().any(|image| image.path == backing && image.vm == vm));
        // The source is untouched.
        assert_eq!(source.state, crate::hypervisor::DomainState::Running);
    }
    let env = resolve_environment(&h.config, &h.catalog, "c1").unwrap();
    assert_eq!(env.vms["web"].domain, "c1-web");
    assert_eq!(env.vms["web"].agent.netns.as_deref(), Some("envclone-c-c1"));
    assert_eq!(env.vms["web"].agent.address, "192.168.50.11");
    assert_eq!(report.vms.len(), 2);
    let op = h.catalog.operations_in(OperationState::Completed).unwrap();
    assert!(op.iter().any(|o| o.env == "c1"), "{op:?}");
}

#[test]
fn clone_rolls_back_everything_when_a_domain_fails_to_start() {
    let h = Harness::new(FakeHypervisor::running_env("net", &["web", "db"]).fail_at(FakeStep::StartDomain));

    let error = h.clone("c1", StartMode::Boot).unwrap_err();

    assert!(matches!(error, CloneError::Start { .. }), "{error:?}");
    h.assert_nothing_left_of("c1");
    let rolled_back = h.catalog.operations_in(OperationState::RolledBack).unwrap();
    let op = rolled_back.iter().find(|o| o.env == "c1").expect("the clone's operation, rolled back");
    let steps = h.catalog.steps(op.id).unwrap();
    assert!(steps.iter().any(|s| s.state == StepState::Undone), "{steps:?}");
}

#[test]
fn destroy_removes_what_the_clone_made_and_is_idempotent() {
    let h = Harness::env();
    h.clone("c1", StartMode::Off).unwrap();

    let report = h.destroy("c1").unwrap();

    assert!(report.existed);
    h.assert_nothing_left_of("c1");
    for vm in ["web", "db"] {
        assert!(h.hv.peek_domain(vm).is_some(), "the source's {vm} stays");
    }
    assert!(h.hv.peek_network("net").is_some());
    assert!(!h.destroy("c1").unwrap().existed);
}

#[test]
fn destroy_refuses_an_environment_that_is_not_a_clone() {
    let h = Harness::env();

    let error = h.destroy("demo").unwrap_err();

    assert!(matches!(error, CloneError::NotAClone { .. }), "{error:?}");
    assert!(h.hv.peek_domain("web").is_some());
}

#[test]
fn clone_refuses_a_taken_name_and_unsupported_modes() {
    let h = Harness::env();
    h.clone("c1", StartMode::Off).unwrap();

    assert!(matches!(h.clone("c1", StartMode::Off), Err(CloneError::BadName { .. })));
    assert!(matches!(h.clone("demo", StartMode::Off), Err(CloneError::BadName { .. })));
    assert!(matches!(h.clone("c2", StartMode::Resume), Err(CloneError::NoMemoryImage { vm: None, .. })));
    assert!(h.hv.peek_domain("c2-web").is_none());
}

#[test]
fn a_full_clone_needs_nothing_of_the_source() {
    let h = Harness::env();

    let report = h.clone_with("c1", StartMode::Off, DiskMode::Full).unwrap();

    assert!(h.catalog.images_needed_by(&Dependent::clone_named("c1")).unwrap().is_empty());
    // Each copy reports its progress, its size and its rate.
    assert_eq!(report.full_copies.iter().map(|c| c.bytes).collect::<Vec<_>>(), [1 << 20, 1 << 20]);
    let done = Event::Progress { step: "copy web/vda in full".into(), permille: 1000 };
    assert!(h.events.lock().unwrap().contains(&done), "{:?}", h.events.lock().unwrap());
    let disk = h.hv.peek_domain("c1-web").unwrap().def.disks().remove(0).source.unwrap();
    let image = h.catalog.image_by_path(&disk).unwrap().expect("the copy is recorded");
    assert_eq!((image.kind, image.backing), (ImageKind::FullCopy, None));
    assert!(h.files.is_there(&disk));
    assert_eq!(h.files.backing_of(&disk), None);
    h.destroy("c1").unwrap();
    h.assert_nothing_left_of("c1");
}

#[test]
fn readdress_rewrites_and_scans_every_vm_before_any_link_goes_up() {
    let h = Harness::env();
    let agents = ReadyAgents::default();

    let report = h.clone_as("c2", StartMode::Boot, DiskMode::Linked, NetworkMode::Readdress, &agents).unwrap();

    let log = agents.log.lock().unwrap().clone();
    let last_scan = log.iter().rposition(|l| l.contains(": scan")).unwrap();
    let first_readdress = log.iter().position(|l| l.contains(": readdress")).unwrap();
    assert!(last_scan < first_readdress, "{log:#?}");
    assert!(log.iter().any(|l| l.starts_with("web@192.168.50.11/envclone-c-c2: rewrite ")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("192.168.50.12=10.90.0.12") && l.contains("web=c2-web")), "{log:#?}");
    assert!(log.iter().any(|l| l.ends_with("scan 192.168.50.0/24")), "{log:#?}");
    assert!(log.contains(&"db@192.168.50.12/envclone-c-c2: readdress 10.90.0.12/24 via 10.90.0.1 as c2-db".to_owned()));
    // After the link is up the agents answer at their new addresses (in
    // parallel: in either order).
    let last_readdress = log.iter().rposition(|l| l.contains(": readdress")).unwrap();
    for waited in ["web@10.90.0.11/: wait", "db@10.90.0.12/: wait"] {
        assert!(log[last_readdress..].iter().any(|l| l == waited), "{waited}: {log:#?}");
    }
    let moves: Vec<_> =
        h.hv.calls().into_iter().filter(|c| matches!(c, crate::hypervisor::Call::MoveInterface { .. })).collect();
    assert_eq!(moves.len(), 2, "{moves:?}");
    let web = h.hv.peek_domain("c2-web").unwrap();
    assert_eq!(web.def.interfaces()[0].network.as_deref(), Some("c2-net"));
    assert!(web.def.interfaces()[0].link_up);
    // The quarantine and its gateway are gone; the clone's own network stays.
    assert_eq!(
        h.hv.network_names().unwrap().into_iter().filter(|n| n.starts_with("c2-")).collect::<Vec<_>>(),
        ["c2-net"]
    );
    assert_eq!(h.hv.network("c2-net").unwrap().def.ip().unwrap().0.to_string(), "10.90.0.1");
    assert!(h.net.netns().is_empty());
    assert_eq!(report.gateway_netns, None);
    let addresses: BTreeMap<&str, &str> = report.vms.iter().map(|v| (v.vm.as_str(), v.address.as_str())).collect();
    assert_eq!(addresses, BTreeMap::from([("db", "10.90.0.12"), ("web", "10.90.0.11")]));
    assert!(report.vms.iter().all(|v| v.machine_id.is_some()));
    let record = h.catalog.clone_named("c2").unwrap().unwrap();
    assert_eq!(record.network, "readdress");
    assert_eq!(record.resources.gateway_netns, None);
    let env = clone_environment(&record).unwrap();
    assert_eq!(env.vms["db"].agent.address, "10.90.0.12");
    assert_eq!(env.networks, ["c2-net"]);

    h.destroy("c2").unwrap();
    h.assert_nothing_left_of("c2");
}

#[test]
fn a_source_address_left_in_a_file_stops_the_clone_before_any_link_goes_up() {
    let h = Harness::env();
    let finding = envclone_agent::Finding {
        path: "/etc/app/cache.env".into(),
        line: 3,
        column: 7,
        needle: "192.168.50.0/24".into(),
        text: "CACHE=192.168.50.77:11211".into(),
    };
    let agents = ReadyAgents { findings: vec![finding], ..Default::default() };

    let error = h.clone_as("c2", StartMode::Boot, DiskMode::Linked, NetworkMode::Readdress, &agents).unwrap_err();

    assert!(matches!(error, CloneError::SourceAddressesRemain { ref vm, .. } if vm == "web"), "{error:?}");
    assert!(error.to_string().contains("/etc/app/cache.env:3: CACHE=192.168.50.77:11211"), "{error}");
    let log = agents.log.lock().unwrap().clone();
    assert!(!log.iter().any(|l| l.contains("readdress")), "{log:#?}");
    assert!(!h.hv.calls().iter().any(|c| matches!(c, crate::hypervisor::Call::MoveInterface { .. })));
    h.assert_nothing_left_of("c2");
}

#[test]
fn readdress_needs_its_config_and_a_running_clone() {
    let mut h = Harness::env();
    let agents = ReadyAgents::default();
    let off = h.clone_as("c2", StartMode::Off, DiskMode::Linked, NetworkMode::Readdress, &agents);
    assert!(matches!(off, Err(CloneError::Unsupported { .. })), "{off:?}");

    h.config.environments.get_mut("demo").unwrap().readdress = None;
    let error = h.clone_as("c2", StartMode::Boot, DiskMode::Linked, NetworkMode::Readdress, &agents).unwrap_err();
    assert!(matches!(error, CloneError::ReaddressNotConfigured { missing: "readdress", .. }), "{error:?}");
    assert!(error.hint().unwrap().contains("pool"));
    h.assert_nothing_left_of("c2");
}

#[test]
fn new_host_keys_are_trusted_under_the_clone_side_name_and_forgotten_on_destroy() {
    let h = Harness::env();
    let known_hosts = h.config.controller.known_hosts.clone();
    std::fs::write(&known_hosts, "192.168.50.11 ssh-ed25519 SOURCE\n").unwrap();
    let agents = ReadyAgents::default();

    h.clone_request("c1", StartMode::Boot, DiskMode::Linked, NetworkMode::Isolated, true, &agents).unwrap();
    h.clone_request("c2", StartMode::Boot, DiskMode::Linked, NetworkMode::Readdress, true, &agents).unwrap();

    let text = std::fs::read_to_string(&known_hosts).unwrap();
    // Isolated: an alias, since the address is the source's.
    assert!(text.contains("c1-web ssh-ed25519 NEWweb\n"), "{text}");
    // Readdressed: the new address, and no line with the key it had before.
    assert!(text.contains("10.90.0.11 ssh-ed25519 NEWweb\n"), "{text}");
    assert_eq!(text.matches("10.90.0.11 ").count(), 1, "{text}");
    let env = resolve_environment(&h.config, &h.catalog, "c1").unwrap();
    assert_eq!(env.vms["web"].agent.host_key_alias.as_deref(), Some("c1-web"));
    // Reached again with the new keys before the clone is recorded.
    let log = agents.log.lock().unwrap().clone();
    let keys = log.iter().rposition(|l| l.starts_with("web@10.90.0.11/: reset-identity --ssh-host-keys")).unwrap();
    assert!(log[keys..].iter().any(|l| l.starts_with("web@10.90.0.11/: wait")), "{log:#?}");

    h.destroy("c1").unwrap();
    h.destroy("c2").unwrap();
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), "192.168.50.11 ssh-ed25519 SOURCE\n");
}

#[test]
fn a_clone_of_a_clone_keeps_its_source_clone_alive_until_it_goes() {
    let mut h = Harness::env();
    h.clone("c1", StartMode::Boot).unwrap();
    // What `load_config_with_clones` does for the commands.
    let c1 = resolve_environment(&h.config, &h.catalog, "c1").unwrap();
    h.config.environments.insert("c1".into(), c1);
    let request = SnapshotRequest { env: "c1".into(), label: None, memory: false, quiesce: None, schedule: None };
    let snap = h.with_context(|ctx| crate::ops::snapshot::take(ctx, &request, &FakeQuiescer::healthy())).unwrap().name;
    let agents = ReadyAgents::default();
    let request = CloneRequest {
        source: "c1".into(),
        name: "c2".into(),
        from: Some(snap.clone()),
        disks: DiskMode::Linked,
        start: StartMode::Boot,
        network: NetworkMode::Isolated,
        new_host_keys: false,
    };
    let make = |env: &Environment| -> Box<dyn CloneAgents> {
        let _ = env;
        Box::new(agents.clone())
    };
    let tools = Tools { quiescer: &FakeQuiescer::healthy(), agents: &make };
    let report = h.with_context(|ctx| super::clone(ctx, &request, tools)).unwrap();
    // c2 reaches its guests through a gateway with the address c1 recorded.
    assert_eq!(report.networks[0].gateway.as_deref(), Some("192.168.50.1/24"));
    h.config.environments.remove("c1");

    let error = h.destroy("c1").unwrap_err();
    assert!(matches!(error, CloneError::InUse { ref by, .. } if by == "clone c2"), "{error:?}");
    assert!(h.hv.peek_domain("c1-web").is_some(), "a refused destroy removes nothing");

    h.destroy("c2").unwrap();
    h.destroy("c1").unwrap();
    h.assert_nothing_left_of("c2");
    h.assert_nothing_left_of("c1");
    // c1's snapshot made overlays of its own: gone with it.
    let removed = h.files.removed();
    assert!(removed.iter().any(|p| p.to_string_lossy().contains(&snap)), "{removed:?}");
    assert!(h.catalog.snapshots("c1").unwrap().iter().all(|s| s.state == crate::catalog::SnapshotState::Deleted));
}
