//! End to end: a standby that takes over with its own addresses
//! (`[standbys.sb] network = "readdress"`) and its failback, on a real lab
//! (two TCG guests, web and db, under a private libvirtd in a network
//! namespace). Needs root and the packages of scripts/install-deps.sh; the
//! static agent is built by scripts/build.sh. All guest traffic stays
//! inside the lab's namespace.
//!
//! What issue #6 asks of a takeover "with its own addresses, connection
//! strings rewritten", each proven here:
//! - a failover killed right after sb's web went onto its served network
//!   (`ENVCLONE_CRASHPOINT=failover:link up: sb-web onto sb-s-demo-net`)
//!   is rolled back by `envclone recover demo`: sb shut off on its
//!   isolated network, demo serving again with its autostart, no served
//!   network, gateway or trusted sb address left;
//! - `failover demo --planned`: sb serves on a network of its own
//!   (10.90.0.0/24 from demo's `[readdress] pool`), never on demo's; its
//!   web, at sb's address, serves demo's records from sb's db, because its
//!   app config names sb's db (rewritten; no 10.77.1.x left), and its host
//!   names are sb's; demo's domains are fenced; `envclone ssh demo VM`
//!   reaches sb's VMs; the JSON report lists the new addresses;
//! - a snapshot of demo (of sb, at its own addresses) is carried home to
//!   demo's storage by `daemon --once` (autorestore the other way), once;
//! - a record written to sb's db while it serves comes home with
//!   `failback demo`: demo's web, at demo's address, serves it, with its
//!   own host name and app config (sb's addresses gone from it); sb is
//!   shut off on its isolated network and its served network is removed.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{stdout, wait_for_web_page, LabUnderTest};
use envclone::hypervisor::{DomainState, Hypervisor};
use serde_json::Value;

const LAB: &str = "fo-readdress";
const SB: &str = "sb";
/// demo's `[readdress] pool` is 10.90.0.0/16; demo-net gets its first /24.
const SB_WEB: &str = "10.90.0.11";
const SB_DB: &str = "10.90.0.12";
const BEFORE: &str = "readdress-failover-e2e: written on demo before the failover";
const ON_SB: &str = "readdress-failover-e2e: written on sb at its own address";

#[test]
fn failover_with_own_addresses_end_to_end() {
    let started = std::time::Instant::now();
    let lab = LabUnderTest::up(LAB);
    println!("lab up in {:.1} s", started.elapsed().as_secs_f64());
    a_readdressing_standby_of_demo(&lab);
    // demo-web autostarts with its host: the fence turns that off, failback on again.
    lab.virsh(&["autostart", "demo-web"]);
    a_failover_killed_after_a_link_went_up_is_rolled_back_by_recover(&lab);

    let report = lab.json(&["failover", "demo", "--planned", "--json"]);

    println!("failover: rto {} ms, {:#}", report["rto_ms"], report["readdressed"]);
    sb_serves_at_its_own_addresses_and_talks_only_to_itself(&lab, &report);
    println!("failed over at {:.1} s", started.elapsed().as_secs_f64());
    the_daemon_carries_a_snapshot_of_sb_home(&lab);
    failback_gives_demo_its_own_names_back_with_what_sb_wrote(&lab);
    println!("failover readdress e2e done in {:.1} s", started.elapsed().as_secs_f64());
}

/// demo's db has a record, a snapshot, and sb, configured to readdress,
/// created and synced to that snapshot.
fn a_readdressing_standby_of_demo(lab: &LabUnderTest) {
    lab.sh("db", &format!("echo '{BEFORE}' >> /srv/db/records; sync"));
    let storage = lab.config().controller.state_dir.join("standbys").join(SB);
    let mut config = std::fs::read_to_string(lab.config_path()).unwrap();
    config.push_str(&format!(
        "\n[standbys.{SB}]\nprimary = \"demo\"\nstorage = \"{}\"\nnetwork = \"readdress\"\n",
        storage.display()
    ));
    std::fs::write(lab.config_path(), config).unwrap();
    lab.json(&["snapshot", "demo", "--json"]);
    let created = lab.json(&["standby", "create", "demo", "--name", SB, "--json"]);
    assert_eq!(created["sync"]["mode"], "full", "{created:#}");
}

/// Killed once sb's web was re-addressed and on its served network:
/// `recover demo` puts everything back as before the failover.
fn a_failover_killed_after_a_link_went_up_is_rolled_back_by_recover(lab: &LabUnderTest) {
    let point = "failover:link up: sb-web onto sb-s-demo-net";
    let crashed = lab.envclone_crashing_at(&["failover", "demo", "--planned"], point);
    assert_eq!(crashed.status.code(), None, "killed at {point}: {}", String::from_utf8_lossy(&crashed.stderr));
    let known_hosts = lab.config().controller.known_hosts;
    assert!(std::fs::read_to_string(&known_hosts).unwrap().contains(SB_WEB), "trusted before the crash");

    let recovered = lab.json(&["recover", "demo", "--json"]);

    let operations = recovered["environments"][0]["operations"].as_array().cloned().unwrap_or_default();
    assert!(operations.iter().any(|o| o["kind"] == "failover" && o["outcome"] == "rolled-back"), "{recovered:#}");
    let hv = lab.hypervisor();
    for domain in ["sb-web", "sb-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{domain}");
        let on: Vec<Option<String>> = found.def.interfaces().into_iter().map(|i| i.network).collect();
        assert_eq!(on, [Some("sb-demo-net".to_owned())], "{domain} waits on its isolated copy again");
    }
    let demo_web = hv.domain("demo-web").unwrap();
    assert_eq!(demo_web.state, DomainState::Running, "demo serves again");
    assert!(demo_web.autostart && demo_web.def.fence_stamp().is_none(), "unfenced, autostart as before");
    assert!(hv.network_names().unwrap().iter().all(|n| !n.starts_with("sb-s-")), "no served network is left");
    assert!(!std::path::Path::new("/run/netns/envclone-c-sb").exists(), "no gateway is left");
    assert!(!std::fs::read_to_string(&known_hosts).unwrap().contains(SB_WEB), "sb's address is not trusted any more");
    assert!(lab.json(&["status", "--json"])["failovers"].as_array().unwrap().is_empty());
    // demo's agents answer again before the next failover freezes them.
    wait_for_web_page(&lab.netns(), BEFORE);
    let answers =
        || Ok::<_, std::io::Error>(lab.envclone(&["ssh", "demo", "db", "--", "true"]).status.success().then_some(()));
    envclone::wait::until(
        "demo-db's agent",
        std::time::Duration::from_secs(120),
        std::time::Duration::from_secs(1),
        answers,
    )
    .expect("demo-db answers again");
}

/// `envclone ssh demo VM -- COMMAND`: reaches whichever side serves demo.
fn ssh(lab: &LabUnderTest, vm: &str, command: &str) -> String {
    let output = lab.envclone(&["ssh", "demo", vm, "--", command]);
    assert!(output.status.success(), "ssh demo {vm} {command}: {}", String::from_utf8_lossy(&output.stderr));
    stdout(&output)
}

fn sb_serves_at_its_own_addresses_and_talks_only_to_itself(lab: &LabUnderTest, report: &Value) {
    assert_eq!((&report["action"], &report["epoch"]), (&"failed-over".into(), &1.into()), "{report:#}");
    let served = &report["readdressed"];
    assert_eq!(served["networks"][0]["gateway"], "10.90.0.1/24", "{report:#}");
    let addresses: Vec<(&str, &str)> = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| (vm["vm"].as_str().unwrap(), vm["address"].as_str().unwrap()))
        .collect();
    assert!(addresses.contains(&("web", SB_WEB)) && addresses.contains(&("db", SB_DB)), "{addresses:?}");

    let hv = lab.hypervisor();
    let served_network = served["networks"][0]["name"].as_str().unwrap().to_owned();
    for domain in ["sb-web", "sb-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::Running, "{domain}");
        let on: Vec<Option<String>> = found.def.interfaces().into_iter().map(|i| i.network).collect();
        assert_eq!(on, [Some(served_network.clone())], "{domain} is on its own network only");
    }
    for domain in ["demo-web", "demo-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{domain} fenced");
        assert_eq!(found.def.fence_stamp().map(|s| s.epoch), Some(1), "{domain}");
        assert!(!found.autostart, "{domain} fenced: a host reboot must not start it");
    }

    // sb's web names sb's db, and serves demo's record from it.
    let app_env = ssh(lab, "web", "cat /etc/demo/app.env");
    assert!(app_env.contains(&format!("@{SB_DB}:")), "{app_env}");
    assert!(!app_env.contains("10.77.1."), "no address of demo's network is left: {app_env}");
    assert_eq!(ssh(lab, "web", "hostname").trim(), "sb-web");
    assert!(lab.curl(&format!("http://{SB_WEB}/")).contains(BEFORE));
    // What sb's db gets, sb's web serves: it talks to itself, not to demo.
    ssh(lab, "db", &format!("echo '{ON_SB}' >> /srv/db/records; sync"));
    assert!(lab.curl(&format!("http://{SB_WEB}/")).contains(ON_SB));
    let status = lab.json(&["status", "--json"]);
    assert_eq!(status["failovers"][0]["active"], SB, "{status:#}");
}

/// Autorestore runs the other way while sb serves: `daemon --once` after a
/// snapshot of demo (taken on sb, at sb's own addresses) carries its
/// images home to demo's storage.
fn the_daemon_carries_a_snapshot_of_sb_home(lab: &LabUnderTest) {
    let taken = lab.json(&["snapshot", "demo", "--json"]);
    let name = taken["name"].as_str().unwrap().to_owned();

    let once = lab.json(&["daemon", "--once", "--json"]);

    let syncs = once["standby_syncs"].as_array().unwrap();
    assert_eq!(syncs.len(), 1, "{once:#}");
    assert_eq!((&syncs[0]["ok"], &syncs[0]["synced"]["mode"]), (&true.into(), &"home".into()), "{once:#}");
    assert_eq!(syncs[0]["synced"]["snapshot"], name.as_str(), "{once:#}");
    assert!(syncs[0]["synced"]["bytes"].as_u64().unwrap() > 0, "{once:#}");
    let status = lab.json(&["status", "--json"]);
    assert_eq!(status["failovers"][0]["home_snapshot"], name.as_str(), "{status:#}");
    let again = lab.json(&["daemon", "--once", "--json"]);
    assert!(again["standby_syncs"].as_array().unwrap().is_empty(), "nothing new to carry: {again:#}");
}

fn failback_gives_demo_its_own_names_back_with_what_sb_wrote(lab: &LabUnderTest) {
    let report = lab.json(&["failback", "demo", "--json"]);

    println!("failback: downtime {} ms, took {} ms", report["downtime_ms"], report["duration_ms"]);
    assert!(report["bytes_home_before"].as_u64().unwrap() > 0, "the daemon's copies were taken: {report:#}");
    assert_eq!((&report["action"], &report["epoch"]), (&"failed-back".into(), &2.into()), "{report:#}");
    let page = wait_for_web_page(&lab.netns(), ON_SB);
    assert!(page.contains(BEFORE), "{page}");
    let app_env = lab.sh("web", "cat /etc/demo/app.env");
    assert!(app_env.contains("@10.77.1.12:"), "demo's web names demo's db again: {app_env}");
    assert!(!app_env.contains("10.90."), "{app_env}");
    assert_eq!(lab.sh("web", "hostname").trim(), "web");
    assert!(!lab.sh("db", "cat /etc/hosts").contains("sb-"), "demo's hosts file names demo's VMs");

    let hv = lab.hypervisor();
    assert!(hv.domain("demo-web").unwrap().autostart, "autostart as before the failover: {report:#}");
    assert!(!hv.domain("demo-db").unwrap().autostart, "{report:#}");
    for domain in ["sb-web", "sb-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{domain}");
        let on: Vec<Option<String>> = found.def.interfaces().into_iter().map(|i| i.network).collect();
        assert_eq!(on, [Some("sb-demo-net".to_owned())], "{domain} waits on its isolated copy again");
    }
    let networks = hv.network_names().unwrap();
    assert!(networks.iter().all(|n| !n.starts_with("sb-s-")), "the served network is gone: {networks:?}");
    let status = lab.json(&["status", "--json"]);
    assert!(status["failovers"].as_array().unwrap().is_empty(), "{status:#}");
}
