//! End to end: unplanned failover (`envclone failover ENV`), the fence and
//! its guard, and the roles switched, on a real lab (two TCG guests, web
//! and db, under a private libvirtd in a network namespace). Needs root
//! and the packages of scripts/install-deps.sh; the static agent is built
//! by scripts/build.sh. All guest traffic stays inside the lab's namespace.
//!
//! What issue #6 asks of an unplanned failover, each proven here:
//! - a healthy primary is refused (exit 2, the hint says `--planned`),
//!   and nothing changes;
//! - a failover killed right after starting a standby domain
//!   (`ENVCLONE_CRASHPOINT=failover:start sb-web`) is rolled back by
//!   `envclone recover ENV`: the primary's db (it ran) started again, its
//!   web (it was down) left down, no stamp left, the standby shut off on
//!   its own disks, no epoch overlay left;
//! - with the primary down (its web crashed; its db still up), the
//!   failover fences the primary: both domains shut off, autostart off,
//!   the epoch stamped into their libvirt metadata; the standby, on fresh
//!   overlays over its synced copy, serves at the primary's address the
//!   record written before its point and not the one written after;
//! - the report is JSON with the mode, the epoch, each domain's fence,
//!   the RPO (the age of the standby's point) and the RTO;
//! - a second failover does nothing (exit 0);
//! - an old primary domain started by hand (`virsh start`) is found and
//!   fenced again by `envclone status` (which says so in `--json`), and
//!   another by a daemon tick (`envclone daemon --once`);
//! - the roles are switched: `envclone snapshot ENV` snapshots the
//!   standby's domains, `envclone standby sync` of the active standby
//!   carries what it wrote towards ENV's storage (the home sync), and
//!   `envclone standby destroy` of it is refused.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::{run, stdout, wait_for_web_page, LabUnderTest};
use envclone::hypervisor::{DomainState, Hypervisor};
use serde_json::Value;

const LAB: &str = "unplanned";
const SB: &str = "sb";
const BEFORE: &str = "unplanned-e2e: before the standby point";
const AFTER: &str = "unplanned-e2e: after the standby point";
const ON_SB: &str = "unplanned-e2e: written on the standby after the failover";

#[test]
fn unplanned_failover_end_to_end() {
    let started = Instant::now();
    let lab = LabUnderTest::up(LAB);
    println!("lab up in {:.1} s", started.elapsed().as_secs_f64());
    standby_synced_with_a_record_before_and_one_after_its_point(&lab);

    a_healthy_primary_is_refused(&lab);
    a_failover_killed_half_way_is_rolled_back_by_recover(&lab);
    let report = the_primary_down_is_fenced_and_the_standby_serves_its_point(&lab);
    a_second_failover_does_nothing(&lab, &report);
    an_old_primary_started_by_hand_is_fenced_again_by_status(&lab);
    an_old_primary_started_by_hand_is_fenced_again_by_a_daemon_tick(&lab);
    the_roles_are_switched(&lab);
    println!("unplanned failover e2e done in {:.1} s", started.elapsed().as_secs_f64());
}

fn standby_synced_with_a_record_before_and_one_after_its_point(lab: &LabUnderTest) {
    let db = lab.session("db");
    run(&db, &format!("echo '{BEFORE}' >> /srv/db/records; sync"));
    lab.json(&["snapshot", "demo", "--json"]);
    let created = lab.json(&["standby", "create", "demo", "--name", SB, "--json"]);
    assert_eq!(created["sync"]["mode"], "full", "{created:#}");
    run(&db, &format!("echo '{AFTER}' >> /srv/db/records; sync"));
    wait_for_web_page(&lab.netns(), AFTER);
    for domain in ["demo-web", "demo-db"] {
        lab.virsh(&["autostart", domain]);
    }
}

fn a_healthy_primary_is_refused(lab: &LabUnderTest) {
    let refused = lab.envclone(&["failover", "demo"]);

    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--planned"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let hv = lab.hypervisor();
    assert_eq!(hv.domain("demo-web").unwrap().state, DomainState::Running);
    assert_eq!(hv.domain("sb-web").unwrap().state, DomainState::ShutOff);
}

fn a_failover_killed_half_way_is_rolled_back_by_recover(lab: &LabUnderTest) {
    let hv = lab.hypervisor();
    // The primary's web crashed; its db still runs.
    hv.destroy_domain("demo-web").unwrap();
    let sb_disks: Vec<_> = hv.domain("sb-web").unwrap().def.disks().into_iter().filter_map(|d| d.source).collect();
    let crashed = lab.envclone_crashing_at(&["failover", "demo"], "failover:start sb-web");
    assert_eq!(crashed.status.code(), None, "killed at the crash point: {}", String::from_utf8_lossy(&crashed.stderr));
    assert_eq!(hv.domain("demo-db").unwrap().state, DomainState::ShutOff, "fenced before the crash");

    let recovered = lab.json(&["recover", "demo", "--json"]);

    let operation = &recovered["environments"][0]["operations"][0];
    assert_eq!(
        (&operation["kind"], &operation["outcome"]),
        (&"failover".into(), &"rolled-back".into()),
        "{recovered:#}"
    );
    assert_eq!(hv.domain("demo-db").unwrap().state, DomainState::Running, "it ran before: started again");
    assert_eq!(hv.domain("demo-web").unwrap().state, DomainState::ShutOff, "it was down before: left down");
    for primary in ["demo-web", "demo-db"] {
        assert_eq!(hv.domain(primary).unwrap().def.fence_stamp(), None, "{primary}'s stamp is gone");
    }
    let web = hv.domain("sb-web").unwrap();
    assert_eq!(web.state, DomainState::ShutOff);
    let disks: Vec<_> = web.def.disks().into_iter().filter_map(|d| d.source).collect();
    assert_eq!(disks, sb_disks, "sb-web is on its own disks again");
    let overlays: Vec<_> = std::fs::read_dir(sb_disks[0].parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".epoch-"))
        .collect();
    assert!(overlays.is_empty(), "{overlays:?}");
    let status = lab.json(&["status", "--json"]);
    assert!(status["failovers"].as_array().unwrap().is_empty(), "{status:#}");
}

fn the_primary_down_is_fenced_and_the_standby_serves_its_point(lab: &LabUnderTest) -> Value {
    let hv = lab.hypervisor();
    // The primary's web is still down; its db still runs and must be fenced.
    assert_eq!(hv.domain("demo-web").unwrap().state, DomainState::ShutOff);
    let primary_macs: Vec<Option<String>> =
        ["demo-web", "demo-db"].iter().flat_map(|d| hv.domain(d).unwrap().def.interfaces()).map(|i| i.mac).collect();

    let report = lab.json(&["failover", "demo", "--json"]);

    println!("{report:#}");
    assert_eq!(report["action"], "failed-over", "{report:#}");
    assert_eq!(report["mode"], "unplanned");
    assert_eq!(report["epoch"], 1);
    let fence = report["fence"].as_array().unwrap();
    assert_eq!(fence.len(), 2, "{report:#}");
    assert!(fence.iter().all(|f| f["fence"] == "fenced"), "{report:#}");
    println!(
        "unplanned failover: RTO {} ms (start until every agent of the standby answered at the primary's addresses), \
         RPO {} s (age of the standby's restored point {})",
        report["rto_ms"], report["rpo_seconds"], report["snapshot"]
    );
    for primary in ["demo-web", "demo-db"] {
        let found = hv.domain(primary).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{primary} is fenced");
        assert_eq!(found.def.fence_stamp().map(|s| s.epoch), Some(1), "{primary} carries the epoch");
        assert!(lab.virsh(&["dominfo", primary]).contains("Autostart:      disable"), "{primary}'s autostart");
    }
    assert!(lab.virsh(&["dumpxml", "demo-db"]).contains("https://envclone.dev/xmlns/fence/1"));
    let sb_macs: Vec<Option<String>> =
        ["sb-web", "sb-db"].iter().flat_map(|d| hv.domain(d).unwrap().def.interfaces()).map(|i| i.mac).collect();
    assert_eq!(sb_macs, primary_macs, "the standby has the primary's MACs");
    for domain in ["sb-web", "sb-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::Running, "{domain}");
        for disk in found.def.disks().iter().filter(|d| d.device == "disk") {
            let source = disk.source.as_ref().unwrap().to_string_lossy().into_owned();
            assert!(source.contains(".epoch-1.qcow2"), "{domain} runs on {source}");
        }
    }
    // The standby, at the primary's address, serves its point's data.
    let page = wait_for_web_page(&lab.netns(), BEFORE);
    assert!(!page.contains(AFTER), "the standby serves what the primary wrote after its point: {page}");
    report
}

fn a_second_failover_does_nothing(lab: &LabUnderTest, first: &Value) {
    let again = lab.json(&["failover", "demo", "--json"]);

    assert_eq!(again["action"], "already-failed-over", "{again:#}");
    assert_eq!((&again["epoch"], &again["rto_ms"]), (&first["epoch"], &first["rto_ms"]));
    assert_eq!(lab.hypervisor().domain("sb-web").unwrap().state, DomainState::Running);
}

fn an_old_primary_started_by_hand_is_fenced_again_by_status(lab: &LabUnderTest) {
    let hv = lab.hypervisor();
    lab.virsh(&["start", "demo-web"]);
    assert_eq!(hv.domain("demo-web").unwrap().state, DomainState::Running);

    let status = lab.json(&["status", "--json"]);

    println!("{:#}", status["failovers"]);
    let switch = &status["failovers"][0];
    assert_eq!((&switch["env"], &switch["active"], &switch["epoch"]), (&"demo".into(), &SB.into(), &1.into()));
    assert_eq!(switch["checked"], true, "{switch:#}");
    let actions = switch["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{switch:#}");
    assert_eq!((&actions[0]["domain"], &actions[0]["action"]), (&"demo-web".into(), &"returned-refenced".into()));
    assert_eq!(switch["returns"].as_array().unwrap().len(), 1, "{switch:#}");
    assert_eq!(hv.domain("demo-web").unwrap().state, DomainState::ShutOff, "fenced again");
    assert_eq!(hv.domain("sb-web").unwrap().state, DomainState::Running, "the active side is untouched");
    let human = lab.envclone(&["status"]);
    println!("{}", stdout(&human));
    assert!(stdout(&human).contains("OLD PRIMARY RETURNED"), "{}", stdout(&human));
}

fn an_old_primary_started_by_hand_is_fenced_again_by_a_daemon_tick(lab: &LabUnderTest) {
    let hv = lab.hypervisor();
    lab.virsh(&["start", "demo-db"]);

    let once = lab.envclone(&["daemon", "--once"]);

    assert!(once.status.success(), "{}", String::from_utf8_lossy(&once.stderr));
    assert_eq!(hv.domain("demo-db").unwrap().state, DomainState::ShutOff, "fenced again by the tick");
    let status = lab.json(&["status", "--json"]);
    let returns = status["failovers"][0]["returns"].as_array().unwrap().clone();
    assert_eq!(returns.len(), 2, "{returns:#?}");
    assert_eq!(returns[1]["domain"], "demo-db");
    assert!(status["failovers"][0]["actions"].as_array().unwrap().is_empty(), "nothing left to do");
}

fn the_roles_are_switched(lab: &LabUnderTest) {
    run(&lab.session("db"), &format!("echo '{ON_SB}' >> /srv/db/records; sync"));
    let page = wait_for_web_page(&lab.netns(), ON_SB);
    assert!(!page.contains(AFTER), "{page}");

    let snapshot = lab.json(&["snapshot", "demo", "--json"]);

    let mut domains: Vec<&str> =
        snapshot["vms"].as_array().unwrap().iter().map(|v| v["domain"].as_str().unwrap()).collect();
    domains.sort();
    assert_eq!(domains, ["sb-db", "sb-web"], "{snapshot:#}");
    let home = lab.json(&["standby", "sync", SB, "--json"]);
    assert_eq!(home["mode"], "home", "{home:#}");
    assert!(!home["copied"].as_array().unwrap().is_empty(), "the epoch overlays went home: {home:#}");
    let destroy = lab.envclone(&["standby", "destroy", SB]);
    assert_eq!(destroy.status.code(), Some(2), "{}", String::from_utf8_lossy(&destroy.stderr));
    let stderr = String::from_utf8_lossy(&destroy.stderr);
    assert!(stderr.contains("active side"), "{stderr}");
}
