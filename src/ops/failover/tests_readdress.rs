//! A standby that takes over with its own addresses (`[standbys.sb]
//! network = "readdress"`), on the harness of `tests.rs`: the order of the
//! agents' work (every VM rewritten and scanned clean before any link goes
//! up), where SB's domains end up, how ENV is reached meanwhile, a scan
//! that finds a primary address (everything rolled back, the primary
//! serving again), a config that lacks what readdressing needs (refused
//! before the fence), and the failback that gives ENV its names back.

use super::*;
use crate::config::{Readdress, Rewrite, Standby, StandbyNetwork};
use crate::error::Failure;
use crate::hypervisor::DomainState;

const POOL: &str = "10.90.0.0/16";

impl Harness {
    /// The harness with `sb` configured to take over with its own
    /// addresses, and demo with the pool and the files that need.
    fn readdressing() -> Self {
        let mut h = Harness::new();
        let demo = h.config.environments.get_mut("demo").unwrap();
        demo.readdress = Some(Readdress::new(POOL.parse().unwrap()));
        demo.rewrite =
            Some(Rewrite { files: vec!["/etc/demo/app.env".into()], roots: vec!["/etc".into()], map: BTreeMap::new() });
        let storage = h.standby().storage;
        h.config.standbys.insert(
            "sb".into(),
            Standby {
                primary: "demo".into(),
                storage,
                autorestore: true,
                network: StandbyNetwork::Readdress,
                failback_on_manual_snapshot: false,
                host: None,
            },
        );
        h
    }

    /// A planned failover with agents that log into `agents.log`.
    fn planned_with(&self, agents: &ReadyAgents) -> Result<SwitchReport, FailoverError> {
        let make = |env: &Environment| -> Box<dyn CloneAgents> { Box::new(agents.reaching(env)) };
        let request = DrillRequest { env: "demo".into(), standby: None };
        self.with_context(|ctx| planned(ctx, &request, self.tools(&make)))
    }
}

fn position(calls: &[String], pattern: &str) -> Vec<usize> {
    calls.iter().enumerate().filter(|(_, c)| c.contains(pattern)).map(|(i, _)| i).collect()
}

#[test]
fn the_standby_serves_at_its_own_addresses_with_its_connection_strings_rewritten() {
    let h = Harness::readdressing();
    let agents = ReadyAgents::default();

    let report = h.planned_with(&agents).unwrap();

    let readdressed = report.readdressed.clone().expect("a readdressed switch");
    assert_eq!(readdressed.networks.len(), 1);
    assert_eq!(readdressed.networks[0].name, "sb-s-net");
    assert_eq!(readdressed.networks[0].gateway.as_deref(), Some("10.90.0.1/24"));
    let web = report.vms.iter().find(|vm| vm.vm == "web").unwrap();
    assert_eq!(web.address, "10.90.0.11");
    assert_eq!(readdressed.map.get("192.168.50.12").map(String::as_str), Some("10.90.0.12"));
    assert_eq!(readdressed.map.get("db").map(String::as_str), Some("sb-db"));
    assert_eq!(readdressed.primary_subnets, ["192.168.50.0/24"]);

    // SB runs on its served network with its own MACs, never on the primary's.
    let standby = h.standby();
    for domain in &standby.resources.domains {
        assert_eq!(h.state(&domain.domain), DomainState::Running);
        assert_eq!(h.networks(&domain.domain), [Some("sb-s-net".to_owned())]);
        assert_eq!(h.macs(&domain.domain), domain.macs.iter().map(|m| Some(m.clone())).collect::<Vec<_>>());
    }
    assert!(h.hv.peek_network("sb-s-net").is_some_and(|n| n.active));
    assert_eq!(h.state("web"), DomainState::ShutOff, "the primary is fenced all the same");

    // The agents: reached in the quarantine at the primary's addresses,
    // every VM rewritten and scanned before the first readdress, then
    // reached at SB's own addresses.
    let calls = agents.calls();
    let last_scan = *position(&calls, ": scan 192.168.50.0/24").last().expect("scans");
    let first_readdress = position(&calls, ": readdress ")[0];
    assert_eq!(position(&calls, ": scan ").len(), 2, "{calls:#?}");
    assert!(last_scan < first_readdress, "{calls:#?}");
    assert!(calls.iter().any(|c| c == "web@192.168.50.11/envclone-c-sb: wait"), "{calls:#?}");
    assert!(calls
        .iter()
        .any(|c| c == "web@192.168.50.11/envclone-c-sb: readdress 10.90.0.11/24 via 10.90.0.1 as sb-web"));
    assert!(calls.iter().any(|c| c == "web@10.90.0.11/: wait"), "{calls:#?}");
    assert!(h.net.netns().is_empty(), "the quarantine's gateway is gone");

    // ENV is reached at SB's own addresses while the switch is in force.
    let (active, _) = active_environment(&h.catalog, "demo").unwrap().unwrap();
    assert_eq!(active.vms["db"].agent.address, "10.90.0.12");
    assert_eq!(active.vms["db"].domain, "sb-db");
    assert_eq!(active.networks, ["sb-s-net"]);
}

#[test]
fn a_primary_address_left_after_the_rewrite_rolls_everything_back() {
    let h = Harness::readdressing();
    let finding = envclone_agent::Finding {
        path: "/etc/demo/cron.env".into(),
        line: 3,
        column: 8,
        text: "BACKUP=192.168.50.99".into(),
        needle: "192.168.50.0/24".into(),
    };
    let agents = ReadyAgents { findings: vec![finding], ..Default::default() };

    let error = h.planned_with(&agents).unwrap_err();

    assert!(matches!(error, FailoverError::AddressesRemain { ref vm, .. } if vm == "web"), "{error:?}");
    assert!(error.to_string().contains("/etc/demo/cron.env:3"), "{error}");
    assert!(position(&agents.calls(), ": readdress ").is_empty(), "no link went up");
    assert!(h.hv.peek_network("sb-s-net").is_none());
    assert_eq!(h.state("web"), DomainState::Running, "the primary serves again");
    assert!(h.catalog.active_switch("demo").unwrap().is_none());
    h.assert_standby_as_it_was();
}

#[test]
fn a_readdressing_standby_without_a_pool_is_refused_before_the_fence() {
    let mut h = Harness::readdressing();
    h.config.environments.get_mut("demo").unwrap().readdress = None;

    let error = h.planned_with(&ReadyAgents::default()).unwrap_err();

    assert!(matches!(error, FailoverError::ReaddressNotConfigured { missing: "readdress", .. }), "{error:?}");
    assert!(error.hint().unwrap().contains("pool"), "{:?}", error.hint());
    assert!(h.primary_changes().is_empty(), "{:?}", h.primary_changes());
    assert!(h.catalog.snapshots("demo").unwrap().len() == 1, "no final snapshot either");
}

#[test]
fn failback_gives_the_primary_its_names_and_connection_strings_back() {
    let h = Harness::readdressing();
    h.planned_with(&ReadyAgents::default()).unwrap();
    let agents = ReadyAgents::default();
    let make = |env: &Environment| -> Box<dyn CloneAgents> { Box::new(agents.reaching(env)) };
    let request = DrillRequest { env: "demo".into(), standby: None };

    let report = h.with_context(|ctx| failback(ctx, &request, h.tools(&make))).unwrap();

    assert_eq!(report.action, FailbackAction::FailedBack);
    let calls = agents.calls();
    assert!(
        calls.iter().any(|c| c == "web@192.168.50.11/: readdress 192.168.50.11/24 via 192.168.50.1 as web"),
        "{calls:#?}"
    );
    let back = calls.iter().find(|c| c.starts_with("db@192.168.50.12/: rewrite")).expect("a rewrite home");
    assert!(back.contains("10.90.0.12=192.168.50.12") && back.contains("sb-db=db"), "{back}");
    assert!(calls.iter().any(|c| c == "db@192.168.50.12/: scan 10.90.0.0/24"), "{calls:#?}");
    for domain in h.standby().resources.domains {
        assert_eq!(h.networks(&domain.domain), [Some("sb-net".to_owned())], "back on its isolated copy");
        assert_eq!(h.state(&domain.domain), DomainState::ShutOff);
    }
    assert!(h.hv.peek_network("sb-s-net").is_none(), "the served network is removed once demo is home");
    assert_eq!(h.state("web"), DomainState::Running);
}
