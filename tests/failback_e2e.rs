//! End to end: failback (`envclone failback ENV`) on a real lab (two TCG
//! guests, web and db, under a private libvirtd in a network namespace).
//! Needs root and the packages of scripts/install-deps.sh; the static
//! agent is built by scripts/build.sh. All guest traffic stays inside the
//! lab's namespace.
//!
//! What issue #6 asks of a failback, each proven here, after a standby
//! `sb` of `demo` was created and synced and `failover demo --planned`
//! made sb serve demo (on epoch overlays), and a record was written to
//! sb's db at demo's address:
//! - `snapshot demo` (of sb's domains) and `standby sync sb` while sb
//!   serves (the home sync): the images sb no longer writes are copied into
//!   demo's storage, each reading like sb's (`qemu-img compare`), and
//!   `status` shows the snapshot all home; a second sync copies nothing;
//! - a failback killed right after starting demo's web
//!   (`ENVCLONE_CRASHPOINT=failback:start demo-web`) is rolled back by
//!   `envclone recover demo`: demo's domains shut off and stamped again,
//!   sb serves the record again, the switch (epoch 1) still in force;
//! - `failback demo`: demo's web, at demo's address, serves the record
//!   written on sb; sb's domains are shut off with their own MACs; the
//!   epoch is 2 and no switch is in force; demo's disks are in demo's
//!   storage and `qemu-img check` finds their chains clean; the report
//!   has the downtime and the bytes carried home, and the home sync's
//!   copies were taken as they were (`bytes_home_before`);
//! - a second failback does nothing (exit 0, "already-home");
//! - `standby sync sb` works again, incrementally from sb's point.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Instant;

use common::{run, stdout, wait_for_web_page, LabUnderTest};
use envclone::hypervisor::{DomainState, Hypervisor, LibvirtHypervisor};
use serde_json::Value;

const LAB: &str = "failback";
const SB: &str = "sb";
const BEFORE: &str = "failback-e2e: written on demo before the failover";
const ON_SB: &str = "failback-e2e: written on the standby while it served";
const ON_SB_AGAIN: &str = "failback-e2e: written on the standby in the second switch";

#[test]
fn failback_end_to_end() {
    let started = Instant::now();
    let lab = LabUnderTest::up(LAB);
    println!("lab up in {:.1} s", started.elapsed().as_secs_f64());
    let sb_macs = standby_serves_demo_with_a_record_written_on_it(&lab);
    println!("failed over, record written on sb, at {:.1} s", started.elapsed().as_secs_f64());
    the_home_sync_carries_what_sb_wrote_home_while_it_serves(&lab);
    println!("home sync done at {:.1} s", started.elapsed().as_secs_f64());

    a_failback_killed_half_way_is_rolled_back_by_recover(&lab);
    println!("crash and recover done at {:.1} s", started.elapsed().as_secs_f64());
    the_failback_brings_demo_home_with_what_sb_wrote(&lab, &sb_macs);
    a_second_failback_does_nothing(&lab);
    the_standby_syncs_again(&lab);
    a_manual_snapshot_on_the_failover_system_fails_back_when_configured(&lab);
    println!("failback e2e done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Returns sb's own MACs (before the failover gave it demo's).
fn standby_serves_demo_with_a_record_written_on_it(lab: &LabUnderTest) -> Vec<Option<String>> {
    run(&lab.session("db"), &format!("echo '{BEFORE}' >> /srv/db/records; sync"));
    lab.json(&["snapshot", "demo", "--json"]);
    let created = lab.json(&["standby", "create", "demo", "--name", SB, "--json"]);
    assert_eq!(created["sync"]["mode"], "full", "{created:#}");
    let hv = lab.hypervisor();
    let sb_macs = macs(&hv, &["sb-web", "sb-db"]);

    let switched = lab.json(&["failover", "demo", "--planned", "--json"]);

    assert_eq!((&switched["action"], &switched["epoch"]), (&"failed-over".into(), &1.into()), "{switched:#}");
    for domain in ["sb-web", "sb-db"] {
        for source in disk_sources(&hv, domain) {
            assert!(source.contains(".epoch-1.qcow2"), "a planned failover runs {domain} on {source}");
        }
    }
    run(&lab.session("db"), &format!("echo '{ON_SB}' >> /srv/db/records; sync"));
    wait_for_web_page(&lab.netns(), ON_SB);
    sb_macs
}

fn the_home_sync_carries_what_sb_wrote_home_while_it_serves(lab: &LabUnderTest) {
    let snapshot = lab.json(&["snapshot", "demo", "--label", "on-sb", "--json"]);
    let name = snapshot["name"].as_str().or(snapshot["snapshot"]["name"].as_str()).unwrap().to_owned();

    let home = lab.json(&["standby", "sync", SB, "--json"]);

    println!("home sync: {home:#}");
    assert_eq!((&home["mode"], &home["epoch"]), (&"home".into(), &1.into()), "{home:#}");
    assert_eq!(home["snapshot"], name.as_str(), "the snapshot taken on sb is all home: {home:#}");
    let copied = home["copied"].as_array().unwrap();
    assert!(!copied.is_empty() && home["bytes"].as_u64().unwrap() > 0, "{home:#}");
    let storage = lab.config().environments["demo"].storage_dir(&lab.config(), "demo");
    let sb_storage = lab.config().controller.state_dir.join("standbys").join(SB);
    for copy in copied {
        let (path, from) = (copy["path"].as_str().unwrap(), copy["from"].as_str().unwrap());
        assert!(std::path::Path::new(path).starts_with(&storage), "{path} is in demo's storage");
        assert!(std::path::Path::new(from).starts_with(&sb_storage), "{from} is sb's");
        assert!(std::path::Path::new(path).exists(), "{path}");
        assert_eq!(copy["verified"], true);
        let compare = Command::new("qemu-img").args(["compare", "-U", path, from]).output().unwrap();
        assert!(compare.status.success(), "qemu-img compare {path} {from}: {}", stdout(&compare));
    }
    let status = lab.json(&["status", "--json"]);
    let switch = &status["failovers"][0];
    assert_eq!(switch["home_snapshot"], name.as_str(), "{status:#}");
    assert_eq!(switch["bytes_home"], home["bytes_home"], "{status:#}");
    assert!(switch["home_lag_seconds"].as_i64().is_some(), "{status:#}");

    let again = lab.json(&["standby", "sync", SB, "--json"]);

    assert!(again["copied"].as_array().unwrap().is_empty(), "nothing new: {again:#}");
    assert_eq!((&again["bytes"], &again["already_home"]), (&0.into(), &copied.len().into()), "{again:#}");
}

fn a_failback_killed_half_way_is_rolled_back_by_recover(lab: &LabUnderTest) {
    let hv = lab.hypervisor();
    let fenced: Vec<Vec<String>> = ["demo-web", "demo-db"].iter().map(|d| disk_sources(&hv, d)).collect();
    let crashed = lab.envclone_crashing_at(&["failback", "demo"], "failback:start demo-web");
    assert_eq!(crashed.status.code(), None, "killed at the crash point: {}", String::from_utf8_lossy(&crashed.stderr));
    assert_eq!(hv.domain("sb-web").unwrap().state, DomainState::ShutOff, "sb stopped before the crash");
    let status = lab.json(&["status", "--json"]);
    assert_eq!(status["failovers"][0]["state"], "failing-back", "{status:#}");

    let recovered = lab.envclone(&["recover", "demo", "--json"]);

    let report: Value = serde_json::from_slice(&recovered.stdout).unwrap_or_default();
    println!("{report:#}");
    let operations = report["environments"][0]["operations"].as_array().cloned().unwrap_or_default();
    assert!(
        operations.iter().any(|o| o["kind"] == "failover" && o["outcome"] == "rolled-back"),
        "{report:#} {}",
        String::from_utf8_lossy(&recovered.stderr)
    );
    for (domain, disks) in ["demo-web", "demo-db"].iter().zip(&fenced) {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{domain} stopped again");
        assert_eq!(found.def.fence_stamp().map(|s| s.epoch), Some(1), "{domain} fenced again");
        assert_eq!(&disk_sources(&hv, domain), disks, "{domain} on its fenced disks");
    }
    for domain in ["sb-web", "sb-db"] {
        assert_eq!(hv.domain(domain).unwrap().state, DomainState::Running, "{domain} serves again");
    }
    wait_for_web_page(&lab.netns(), ON_SB);
    let status = lab.json(&["status", "--json"]);
    let switch = &status["failovers"][0];
    assert_eq!((&switch["active"], &switch["epoch"]), (&SB.into(), &1.into()), "{status:#}");
}

fn the_failback_brings_demo_home_with_what_sb_wrote(lab: &LabUnderTest, sb_macs: &[Option<String>]) {
    let hv = lab.hypervisor();
    let primary_macs = macs(&hv, &["demo-web", "demo-db"]);

    let report = lab.json(&["failback", "demo", "--json"]);

    println!("{report:#}");
    assert_eq!((&report["action"], &report["epoch"]), (&"failed-back".into(), &2.into()), "{report:#}");
    println!(
        "failback: downtime {} ms (sb stopped until demo's agents answered), {} bytes carried home ({} while sb \
         served, {} after it stopped), took {} ms",
        report["downtime_ms"],
        report["bytes_home"],
        report["bytes_while_serving"],
        report["bytes_after_stop"],
        report["duration_ms"]
    );
    assert!(report["bytes_while_serving"].as_u64().unwrap() > 0, "{report:#}");
    println!("failback: {} bytes carried home by the home sync before it", report["bytes_home_before"]);
    assert!(report["bytes_home_before"].as_u64().unwrap() > 0, "the home sync's copies were taken: {report:#}");
    let page = wait_for_web_page(&lab.netns(), ON_SB);
    assert!(page.contains(BEFORE), "{page}");
    let storage = lab.config().environments["demo"].storage_dir(&lab.config(), "demo");
    for domain in ["demo-web", "demo-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::Running, "{domain} serves");
        assert_eq!(found.def.fence_stamp(), None, "{domain} unfenced");
        for source in disk_sources(&hv, domain) {
            assert!(std::path::Path::new(&source).starts_with(&storage), "{domain} runs on {source}");
        }
    }
    // Every image carried home, the top of each chain included, is clean.
    for vm in report["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            for image in disk["carried"].as_array().unwrap() {
                let image = image.as_str().unwrap();
                let check = Command::new("qemu-img").args(["check", "-U", image]).output().unwrap();
                assert!(check.status.success(), "qemu-img check {image}: {}", stdout(&check));
            }
        }
    }
    assert_eq!(macs(&hv, &["demo-web", "demo-db"]), primary_macs);
    for domain in ["sb-web", "sb-db"] {
        assert_eq!(hv.domain(domain).unwrap().state, DomainState::ShutOff, "{domain}");
        for source in disk_sources(&hv, domain) {
            assert!(!source.contains(".epoch-"), "{domain} is back on its own copy, not {source}");
        }
    }
    assert_eq!(macs(&hv, &["sb-web", "sb-db"]), sb_macs, "sb has its own MACs back");
    let status = lab.json(&["status", "--json"]);
    assert!(status["failovers"].as_array().unwrap().is_empty(), "{status:#}");
}

fn a_second_failback_does_nothing(lab: &LabUnderTest) {
    let again = lab.json(&["failback", "demo", "--json"]);

    assert_eq!((&again["action"], &again["epoch"]), (&"already-home".into(), &2.into()), "{again:#}");
    assert_eq!(lab.hypervisor().domain("demo-web").unwrap().state, DomainState::Running);
}

fn the_standby_syncs_again(lab: &LabUnderTest) {
    let sync = lab.json(&["standby", "sync", SB, "--json"]);

    println!("sync after failback: {} {} bytes", sync["mode"], sync["bytes"]);
    assert_eq!(sync["mode"], "incremental", "{sync:#}");
}

/// `[standbys.sb] failback_on_manual_snapshot = true`: a second failover,
/// a write on sb, then a manual snapshot of demo is taken (of sb's
/// domains) and fails demo back, with that write.
fn a_manual_snapshot_on_the_failover_system_fails_back_when_configured(lab: &LabUnderTest) {
    let storage = lab.config().controller.state_dir.join("standbys").join(SB);
    let mut config = std::fs::read_to_string(lab.config_path()).unwrap();
    config.push_str(&format!(
        "\n[standbys.{SB}]\nprimary = \"demo\"\nstorage = \"{}\"\nfailback_on_manual_snapshot = true\n",
        storage.display()
    ));
    std::fs::write(lab.config_path(), config).unwrap();
    let switched = lab.json(&["failover", "demo", "--planned", "--json"]);
    assert_eq!((&switched["action"], &switched["epoch"]), (&"failed-over".into(), &3.into()), "{switched:#}");
    run(&lab.session("db"), &format!("echo '{ON_SB_AGAIN}' >> /srv/db/records; sync"));

    let both = lab.json(&["snapshot", "demo", "--label", "done-on-sb", "--json"]);

    let domains: Vec<&str> =
        both["snapshot"]["vms"].as_array().unwrap().iter().map(|vm| vm["domain"].as_str().unwrap()).collect();
    assert!(domains.iter().all(|d| d.starts_with("sb-")), "the snapshot is of the failover system: {both:#}");
    assert_eq!(
        (&both["failback"]["action"], &both["failback"]["epoch"]),
        (&"failed-back".into(), &4.into()),
        "{both:#}"
    );
    assert_eq!(lab.hypervisor().domain("demo-web").unwrap().state, DomainState::Running);
    wait_for_web_page(&lab.netns(), ON_SB_AGAIN);
    let status = lab.json(&["status", "--json"]);
    assert!(status["failovers"].as_array().unwrap().is_empty(), "{status:#}");
}

fn macs(hv: &LibvirtHypervisor, domains: &[&str]) -> Vec<Option<String>> {
    domains.iter().flat_map(|d| hv.domain(d).unwrap().def.interfaces()).map(|i| i.mac).collect()
}

fn disk_sources(hv: &LibvirtHypervisor, domain: &str) -> Vec<String> {
    hv.domain(domain)
        .unwrap()
        .def
        .disks()
        .into_iter()
        .filter(|d| d.device == "disk")
        .filter_map(|d| d.source)
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}
