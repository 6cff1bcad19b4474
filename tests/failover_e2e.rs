//! End to end: `envclone failover ENV --test` (a DR drill) and `--test
//! --end` on a real lab (two TCG guests, web and db, under a private
//! libvirtd in a network namespace). Needs root and the packages of
//! scripts/install-deps.sh; the static agent is built by scripts/build.sh.
//! All guest traffic stays inside the lab's namespace and the drill's
//! gateway namespace.
//!
//! What issue #6 asks of `--test`, each proven here:
//! - the primary serves throughout: a client requests its web page every
//!   50 ms across the drill's start and end, and no request fails;
//! - the standby starts from its restored point: its web (reached only
//!   through the drill's gateway namespace, at the primary's address)
//!   answers with the record written before the standby's point and not
//!   with the one written after it, while the primary's has both;
//! - `envclone ssh SB VM` reaches the standby's VMs during the drill;
//! - the report is JSON with steps, their times, the RPO and the RTO;
//! - a second `--test` starts nothing; `--end` leaves the standby shut off
//!   on its disks, byte for byte as before (SHA-256), with no overlay or
//!   namespace left; a second `--end` does nothing;
//! - a drill killed right after starting a domain
//!   (`ENVCLONE_CRASHPOINT=failover:start sb-web`) is rolled back by
//!   `envclone recover sb`: the standby shut off on its own disks again;
//! - `failover --planned`: the primary's domains are fenced, the standby
//!   runs with their MACs on their network, and its web, at the
//!   primary's address, serves a record written to the primary's db just
//!   before the failover; a second `--planned` does nothing (exit 0).

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::traffic::Client;
use common::{run, stdout, wait_for_web_page, web_page, LabUnderTest};
use envclone::hypervisor::{DomainState, Hypervisor};
use serde_json::Value;

const LAB: &str = "failover";
const SB: &str = "sb";
const DRILL_NETNS: &str = "envclone-c-sb";
const WEB: &str = "10.77.1.11:80";
const EVERY: Duration = Duration::from_millis(50);
const BEFORE: &str = "failover-e2e: before the standby point";
const AFTER: &str = "failover-e2e: after the standby point";
const JUST_BEFORE: &str = "failover-e2e: just before the planned failover";

#[test]
fn failover_drill_end_to_end() {
    let started = Instant::now();
    let lab = LabUnderTest::up(LAB);
    println!("lab up in {:.1} s", started.elapsed().as_secs_f64());
    let images = standby_synced_with_a_record_before_and_one_after_its_point(&lab);
    let before = sha256s(&images);

    let _drill = EndDrillOnDrop(&lab);
    let client = Client::start(&lab.netns(), WEB.parse::<SocketAddr>().unwrap(), EVERY);
    let report = the_drill_starts_the_standby_from_its_point(&lab);
    a_second_drill_starts_nothing(&lab, &report);
    the_drill_ends_leaving_the_standby_as_it_was(&lab, &images, &before);
    a_drill_killed_half_way_is_rolled_back_by_recover(&lab, &images, &before);
    let traffic = client.stop();

    println!(
        "primary during the drill: {} requests, {} failed, longest gap {} ms",
        traffic.requests,
        traffic.failures.len(),
        traffic.longest_gap.as_millis()
    );
    assert!(traffic.failures.is_empty(), "requests to the primary failed during the drill: {traffic:#?}");
    assert!(traffic.requests > 20, "{traffic:#?}");
    assert!(web_page(&lab.netns()).contains(AFTER), "the primary still serves its own data");
    a_planned_failover_carries_every_write_over_and_a_second_does_nothing(&lab);
    println!("failover e2e done in {:.1} s", started.elapsed().as_secs_f64());
}

/// A record, a snapshot, the standby (its first sync brings it to that
/// snapshot), then a second record SB does not have. Returns SB's images.
fn standby_synced_with_a_record_before_and_one_after_its_point(lab: &LabUnderTest) -> Vec<PathBuf> {
    let db = lab.session("db");
    run(&db, &format!("echo '{BEFORE}' >> /srv/db/records; sync"));
    lab.json(&["snapshot", "demo", "--json"]);
    let created = lab.json(&["standby", "create", "demo", "--name", SB, "--json"]);
    assert_eq!(created["sync"]["mode"], "full", "{created:#}");
    run(&db, &format!("echo '{AFTER}' >> /srv/db/records; sync"));
    wait_for_web_page(&lab.netns(), AFTER);
    created["sync"]["disks"].as_array().unwrap().iter().map(|d| PathBuf::from(d["path"].as_str().unwrap())).collect()
}

fn the_drill_starts_the_standby_from_its_point(lab: &LabUnderTest) -> Value {
    let report = lab.json(&["failover", "demo", "--test", "--json"]);

    println!("{report:#}");
    assert_eq!(report["action"], "started", "{report:#}");
    assert_eq!(report["mode"], "test");
    assert_eq!(report["gateway_netns"], DRILL_NETNS);
    let rto = report["rto_ms"].as_u64().unwrap();
    let rpo = report["rpo_seconds"].as_i64().unwrap();
    println!("drill: RTO {rto} ms (start until every agent answered), RPO {rpo} s (age of the restored point)");
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["ok"] == true && s["at_ms"].is_u64() && s["took_ms"].is_u64()), "{report:#}");
    assert!(steps.iter().any(|s| s["name"] == "start sb-web"), "{report:#}");
    let hv = lab.hypervisor();
    for vm in report["vms"].as_array().unwrap() {
        let domain = hv.domain(vm["domain"].as_str().unwrap()).unwrap();
        assert_eq!(domain.state, DomainState::Running, "{vm:#}");
        for disk in domain.def.disks().iter().filter(|d| d.device == "disk") {
            let source = disk.source.as_ref().unwrap().to_string_lossy().into_owned();
            assert!(source.ends_with(".drill.qcow2"), "{} runs on {source}", vm["domain"]);
        }
    }
    for primary in ["demo-web", "demo-db"] {
        assert_eq!(hv.domain(primary).unwrap().state, DomainState::Running, "{primary}");
    }
    // SB's web, through the drill's gateway, serves SB's db: its point's data.
    let sb_page = wait_for_web_page(DRILL_NETNS, BEFORE);
    assert!(!sb_page.contains(AFTER), "the standby serves what the primary wrote after its point: {sb_page}");
    let ssh = lab.envclone(&["ssh", SB, "db", "--", "cat", "/srv/db/records"]);
    assert!(ssh.status.success(), "envclone ssh {SB} db: {}", String::from_utf8_lossy(&ssh.stderr));
    assert!(stdout(&ssh).contains(BEFORE) && !stdout(&ssh).contains(AFTER), "{}", stdout(&ssh));
    report
}

fn a_second_drill_starts_nothing(lab: &LabUnderTest, first: &Value) {
    let again = lab.json(&["failover", "demo", "--test", "--json"]);

    assert_eq!(again["action"], "already-running", "{again:#}");
    assert_eq!(again["rto_ms"], first["rto_ms"]);
}

fn the_drill_ends_leaving_the_standby_as_it_was(lab: &LabUnderTest, images: &[PathBuf], before: &[String]) {
    let ended = lab.json(&["failover", "demo", "--test", "--end", "--json"]);

    assert_eq!(ended["action"], "ended", "{ended:#}");
    let hv = lab.hypervisor();
    for vm in ended["vms"].as_array().unwrap() {
        let domain = hv.domain(vm["domain"].as_str().unwrap()).unwrap();
        assert_eq!(domain.state, DomainState::ShutOff, "{vm:#}");
        for disk in vm["disks"].as_array().unwrap() {
            let overlay = Path::new(disk["overlay"].as_str().unwrap());
            assert!(!overlay.exists(), "{} is left", overlay.display());
            let on = domain.def.disks().into_iter().find(|d| d.target == disk["target"].as_str().unwrap());
            assert_eq!(on.and_then(|d| d.source), Some(PathBuf::from(disk["image"].as_str().unwrap())));
        }
    }
    assert_eq!(sha256s(images), before, "the drill changed the standby's disks");
    assert!(!Path::new("/run/netns").join(DRILL_NETNS).exists(), "{DRILL_NETNS} is left");
    let again = lab.json(&["failover", "demo", "--test", "--end", "--json"]);
    assert_eq!(again["action"], "not-running", "{again:#}");
    let list = lab.json(&["standby", "list", "--json"]);
    assert!(list[0]["merging"].is_null(), "{list:#}");
}

fn a_drill_killed_half_way_is_rolled_back_by_recover(lab: &LabUnderTest, images: &[PathBuf], before: &[String]) {
    let crashed = lab.envclone_crashing_at(&["failover", "demo", "--test"], "failover:start sb-web");
    assert_eq!(crashed.status.code(), None, "killed at the crash point: {}", String::from_utf8_lossy(&crashed.stderr));
    assert_eq!(lab.hypervisor().domain("sb-web").unwrap().state, DomainState::Running, "killed after the start");

    let recovered = lab.json(&["recover", SB, "--json"]);

    let operation = &recovered["environments"][0]["operations"][0];
    assert_eq!(operation["kind"], "failover", "{recovered:#}");
    assert_eq!(operation["outcome"], "rolled-back", "{recovered:#}");
    let hv = lab.hypervisor();
    for domain in ["sb-web", "sb-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{domain}");
        for disk in found.def.disks().iter().filter(|d| d.device == "disk") {
            let source = disk.source.as_ref().unwrap();
            assert!(images.contains(source), "{domain} is left on {}", source.display());
        }
    }
    assert_eq!(sha256s(images), before, "the drill changed the standby's disks");
    assert!(!Path::new("/run/netns").join(DRILL_NETNS).exists(), "{DRILL_NETNS} is left");
    let overlays: Vec<PathBuf> = images
        .iter()
        .filter_map(|i| std::fs::read_dir(i.parent().unwrap()).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".drill.qcow2"))
        .collect();
    assert!(overlays.is_empty(), "{overlays:?}");
    let ended = lab.json(&["failover", "demo", "--test", "--end", "--json"]);
    assert_eq!(ended["action"], "not-running", "no drill was recorded: {ended:#}");
}

fn a_planned_failover_carries_every_write_over_and_a_second_does_nothing(lab: &LabUnderTest) {
    run(&lab.session("db"), &format!("echo '{JUST_BEFORE}' >> /srv/db/records; sync"));
    let hv = lab.hypervisor();
    let primary_macs: Vec<Option<String>> =
        ["demo-web", "demo-db"].iter().flat_map(|d| hv.domain(d).unwrap().def.interfaces()).map(|i| i.mac).collect();

    let report = lab.json(&["failover", "demo", "--planned", "--json"]);

    println!("{report:#}");
    assert_eq!(report["action"], "failed-over", "{report:#}");
    assert_eq!(report["epoch"], 1);
    assert_eq!(report["rpo_seconds"], 0);
    println!(
        "planned failover: RTO {} ms (start until every agent of the standby answered), RPO 0 s, primary ran {} ms \
         after the final snapshot before it was fenced",
        report["rto_ms"], report["unprotected_ms"]
    );
    for primary in ["demo-web", "demo-db"] {
        assert_eq!(hv.domain(primary).unwrap().state, DomainState::ShutOff, "{primary} is fenced");
    }
    let sb_macs: Vec<Option<String>> =
        ["sb-web", "sb-db"].iter().flat_map(|d| hv.domain(d).unwrap().def.interfaces()).map(|i| i.mac).collect();
    assert_eq!(sb_macs, primary_macs, "the standby has the primary's MACs");
    for domain in ["sb-web", "sb-db"] {
        let found = hv.domain(domain).unwrap();
        assert_eq!(found.state, DomainState::Running, "{domain}");
        assert!(found.def.interfaces().iter().all(|i| i.network.as_deref() == Some("demo-net")), "{domain}");
    }
    // The standby serves at the primary's address, with every write made before.
    let page = wait_for_web_page(&lab.netns(), JUST_BEFORE);
    assert!(page.contains(BEFORE) && page.contains(AFTER), "{page}");

    let again = lab.json(&["failover", "demo", "--planned", "--json"]);
    assert_eq!(again["action"], "already-failed-over", "{again:#}");
    assert_eq!(again["epoch"], 1);
    assert_eq!(hv.domain("demo-web").unwrap().state, DomainState::ShutOff);
}

/// Ends a drill a failed assertion left running, before the lab goes
/// down: its gateway namespace lives outside the lab's.
struct EndDrillOnDrop<'l>(&'l LabUnderTest);

impl Drop for EndDrillOnDrop<'_> {
    fn drop(&mut self) {
        let output = self.0.envclone(&["failover", "demo", "--test", "--end"]);
        if !output.status.success() {
            eprintln!("ending the drill during cleanup failed: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
}

fn sha256s(images: &[PathBuf]) -> Vec<String> {
    images
        .iter()
        .map(|image| {
            let output = Command::new("sha256sum").arg(image).output().unwrap();
            assert!(output.status.success(), "sha256sum {}", image.display());
            stdout(&output).split_whitespace().next().unwrap().to_owned()
        })
        .collect()
}
