//! End to end: `envclone standby create|sync|list|destroy`, autorestore
//! through `envclone daemon --once`, `status`'s lag, and `recover` after a
//! sync killed half way, on a real lab (two TCG guests, web and db, under
//! a private libvirtd in a network namespace). Needs root and the packages
//! of scripts/install-deps.sh; the static agent is built by
//! scripts/build.sh. All guest traffic stays inside the lab's namespace.
//!
//! One lab for the whole binary, the scenarios one after the other in a
//! single test through the real `envclone` binary. What issue #6 asks of
//! a standby kept current by autorestore, each proven here:
//! - `create` defines the standby's domains shut off on isolated copies of
//!   the networks, and a second `create` changes nothing;
//! - while writes go on in the primary's db, each sync leaves the
//!   standby's disks reading exactly like the newest snapshot (`qemu-img
//!   compare` against the snapshot's chain), and the second transfer
//!   moves much less than the first (printed);
//! - a sync with nothing new is a no-op; `status` shows the lag;
//! - pins: the snapshot the standby is at cannot be deleted under it;
//! - a sync killed in its merge is finished by `recover`, one killed after
//!   its first copy is rolled back (no copy left, the standby as it was);
//! - `daemon --once` brings the standby to a manual snapshot (autorestore);
//! - `destroy` leaves no domain, network, file or record.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::{run, LabUnderTest};
use envclone::hypervisor::{DomainState, HvError, Hypervisor, LibvirtHypervisor};
use serde_json::Value;

const LAB: &str = "standby";
const SB: &str = "sb";

#[test]
fn standby_end_to_end() {
    let started = Instant::now();
    let lab = LabUnderTest::up(LAB);
    println!("lab up in {:.1} s", started.elapsed().as_secs_f64());

    let created = create_defines_shut_off_domains_on_isolated_networks(&lab);
    let (first, second) = syncs_follow_the_snapshots_while_writes_go_on(&lab);
    println!(
        "transfers: first (full) {} bytes, second (incremental) {} bytes ({:.1}%)",
        first,
        second,
        second as f64 * 100.0 / first as f64
    );
    a_second_sync_is_a_no_op_and_status_shows_the_lag(&lab);
    the_standbys_snapshot_cannot_be_deleted_under_it(&lab);
    a_sync_killed_in_its_merge_is_finished_by_recover(&lab);
    a_sync_killed_after_its_first_copy_is_rolled_back_by_recover(&lab);
    the_daemon_brings_the_standby_to_a_manual_snapshot(&lab);
    destroy_leaves_nothing(&lab, &created);
    println!("standby e2e done in {:.1} s", started.elapsed().as_secs_f64());
}

fn create_defines_shut_off_domains_on_isolated_networks(lab: &LabUnderTest) -> Value {
    let report = lab.json(&["standby", "create", "demo", "--name", SB, "--json"]);

    assert_eq!(report["created"], true, "{report:#}");
    assert!(report["sync"].is_null(), "no snapshot yet, so no sync: {report:#}");
    assert!(report["sync_skipped"].as_str().unwrap().contains("envclone snapshot demo"), "{report:#}");
    let hv = hypervisor(lab);
    let primary_uuids: Vec<String> = ["demo-web", "demo-db"].iter().map(|d| hv.domain(d).unwrap().uuid).collect();
    for domain in report["domains"].as_array().unwrap() {
        let found = hv.domain(domain["domain"].as_str().unwrap()).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{domain:#}");
        assert!(!primary_uuids.contains(&found.uuid));
        let primary = hv.domain(domain["primary_domain"].as_str().unwrap()).unwrap();
        let primary_macs: Vec<Option<String>> = primary.def.interfaces().into_iter().map(|i| i.mac).collect();
        let recorded: Vec<Option<String>> =
            domain["primary_macs"].as_array().unwrap().iter().map(|m| m.as_str().map(str::to_owned)).collect();
        assert_eq!(recorded, primary_macs, "the primary's MACs are kept for failover");
        for iface in found.def.interfaces() {
            assert!(iface.network.as_deref().unwrap().starts_with("sb-"), "{iface:?}");
            assert!(!primary_macs.contains(&iface.mac), "its own MAC while it waits");
        }
    }
    for network in report["networks"].as_array().unwrap() {
        let def = hv.network(network["name"].as_str().unwrap()).unwrap().def;
        assert_eq!(def.ip(), None, "an isolated copy has no host address");
        assert_eq!(def.forward_mode(), None);
    }
    let again = lab.json(&["standby", "create", "demo", "--name", SB, "--json"]);
    assert_eq!(again["created"], false, "{again:#}");
    report
}

/// Writes to the db, snapshots, syncs; twice. Returns the bytes moved by
/// the first (full) and the second (incremental) sync.
fn syncs_follow_the_snapshots_while_writes_go_on(lab: &LabUnderTest) -> (u64, u64) {
    let db = lab.session("db");
    run(&db, "echo 'standby-e2e: first' >> /srv/db/records; sync");
    let s1 = snapshot(lab);
    let first = lab.json(&["standby", "sync", SB, "--json"]);
    assert_eq!(first["mode"], "full", "{first:#}");
    assert_eq!(first["snapshot"], s1.as_str());
    assert_standby_reads_like_the_snapshot(&first);

    // Writes go on between the snapshots, and while the standby syncs.
    run(&db, "echo 'standby-e2e: second' >> /srv/db/records; sync");
    let s2 = snapshot(lab);
    run(&db, "echo 'standby-e2e: after the second snapshot' >> /srv/db/records; sync");
    let second = lab.json(&["standby", "sync", SB, "--json"]);
    assert_eq!(second["mode"], "incremental", "{second:#}");
    assert_eq!(second["snapshot"], s2.as_str());
    assert_eq!(second["previous"], s1.as_str());
    assert_standby_reads_like_the_snapshot(&second);
    for disk in second["disks"].as_array().unwrap() {
        assert_eq!(disk["mode"], "incremental", "{disk:#}");
        assert!(disk["sha256"].as_str().unwrap().len() == 64, "{disk:#}");
        // One image per disk: the standby's images have no backing file.
        assert_eq!(backing_chain(Path::new(disk["path"].as_str().unwrap())).len(), 1, "{disk:#}");
    }
    let (first, second) = (first["bytes"].as_u64().unwrap(), second["bytes"].as_u64().unwrap());
    assert!(second * 4 < first, "the second transfer ({second} B) must be much smaller than the first ({first} B)");
    (first, second)
}

fn a_second_sync_is_a_no_op_and_status_shows_the_lag(lab: &LabUnderTest) {
    let before = lab.json(&["standby", "list", "--json"]);
    let again = lab.json(&["standby", "sync", SB, "--json"]);
    assert_eq!(again["mode"], "up-to-date", "{again:#}");
    assert_eq!(again["bytes"], 0);
    let after = lab.json(&["standby", "list", "--json"]);
    assert_eq!(before[0]["last_sync"], after[0]["last_sync"], "nothing was transferred");

    let status = lab.json(&["status", "--json"]);
    let standby = &status["standbys"][0];
    assert_eq!(standby["name"], SB, "{status:#}");
    assert_eq!(standby["primary"], "demo");
    assert_eq!(standby["snapshot"], again["snapshot"]);
    assert!(standby["lag_seconds"].as_i64().unwrap() >= 0, "{standby:#}");
    assert!(standby["behind"].is_null(), "{standby:#}");
    let text = lab.envclone(&["status"]);
    assert!(stdout(&text).contains("STANDBY") && stdout(&text).contains("LAG"), "{}", stdout(&text));
    println!("{}", stdout(&text));
}

fn the_standbys_snapshot_cannot_be_deleted_under_it(lab: &LabUnderTest) {
    let at = lab.json(&["standby", "list", "--json"])[0]["snapshot"].as_str().unwrap().to_owned();
    let report = lab.json(&["delete-snapshot", "demo", &at, "--json"]);
    assert!(!report["deferred"].as_array().unwrap().is_empty(), "{report:#}");
    assert!(report["reason"].as_str().unwrap_or_default().contains("standby 'sb'"), "{report:#}");
}

fn a_sync_killed_in_its_merge_is_finished_by_recover(lab: &LabUnderTest) {
    run(&lab.session("db"), "echo 'standby-e2e: third' >> /srv/db/records; sync");
    let s3 = snapshot(lab);
    let crashed = lab.envclone_crashing_at(&["standby", "sync", SB], "standby-sync:merge");
    assert_eq!(crashed.status.code(), None, "killed at the crash point: {}", stderr(&crashed));
    let list = lab.json(&["standby", "list", "--json"]);
    assert_eq!(list[0]["merging"], s3.as_str(), "{list:#}");
    let refused = lab.envclone(&["standby", "sync", SB]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("envclone recover"), "{}", stderr(&refused));

    let recovered = lab.json(&["recover", SB, "--json"]);

    assert_eq!(recovered["environments"][0]["operations"][0]["kind"], "standby-sync", "{recovered:#}");
    let list = lab.json(&["standby", "list", "--json"]);
    assert!(list[0]["merging"].is_null(), "{list:#}");
    assert_eq!(list[0]["snapshot"], s3.as_str(), "{list:#}");
    assert_standby_disks_read_like(lab, &s3);
    assert!(copies_left(lab).is_empty(), "{:?}", copies_left(lab));
}

fn a_sync_killed_after_its_first_copy_is_rolled_back_by_recover(lab: &LabUnderTest) {
    let before = lab.json(&["standby", "list", "--json"])[0]["snapshot"].as_str().unwrap().to_owned();
    run(&lab.session("db"), "echo 'standby-e2e: fourth' >> /srv/db/records; sync");
    let s4 = snapshot(lab);
    let crashed = lab.envclone_crashing_at(&["standby", "sync", SB], "standby-sync:copy");
    assert_eq!(crashed.status.code(), None, "killed at the crash point: {}", stderr(&crashed));
    assert!(!copies_left(lab).is_empty(), "the copy is there before recover");

    let recovered = lab.json(&["recover", SB, "--json"]);

    assert_eq!(recovered["environments"][0]["operations"][0]["outcome"], "rolled-back", "{recovered:#}");
    assert!(copies_left(lab).is_empty(), "{:?}", copies_left(lab));
    let list = lab.json(&["standby", "list", "--json"]);
    assert_eq!(list[0]["snapshot"], before.as_str(), "the standby stays where it was: {list:#}");
    assert_eq!(list[0]["behind"], s4.as_str(), "{list:#}");
    assert_standby_disks_read_like(lab, &before);
}

fn the_daemon_brings_the_standby_to_a_manual_snapshot(lab: &LabUnderTest) {
    run(&lab.session("db"), "echo 'standby-e2e: fifth' >> /srv/db/records; sync");
    let s5 = snapshot(lab);

    let once = lab.json(&["daemon", "--once", "--json"]);

    let syncs = once["standby_syncs"].as_array().unwrap();
    assert_eq!(syncs.len(), 1, "{once:#}");
    assert_eq!(syncs[0]["ok"], true, "{once:#}");
    assert_eq!(syncs[0]["synced"]["snapshot"], s5.as_str(), "{once:#}");
    assert_standby_disks_read_like(lab, &s5);
    let again = lab.json(&["daemon", "--once", "--json"]);
    assert!(again["standby_syncs"].as_array().unwrap().is_empty(), "nothing new to sync: {again:#}");
}

fn destroy_leaves_nothing(lab: &LabUnderTest, created: &Value) {
    let storage = PathBuf::from(created["storage"].as_str().unwrap());
    let report = lab.json(&["standby", "destroy", SB, "--json"]);

    assert_eq!(report["existed"], true, "{report:#}");
    let hv = hypervisor(lab);
    for domain in created["domains"].as_array().unwrap() {
        let name = domain["domain"].as_str().unwrap();
        assert!(matches!(hv.domain(name), Err(HvError::NoSuchDomain { .. })), "{name} is left");
    }
    for network in created["networks"].as_array().unwrap() {
        let name = network["name"].as_str().unwrap();
        assert!(matches!(hv.network(name), Err(HvError::NoSuchNetwork { .. })), "{name} is left");
    }
    assert!(!storage.exists(), "{} is left", storage.display());
    assert!(lab.json(&["standby", "list", "--json"]).as_array().unwrap().is_empty());
    let again = lab.json(&["standby", "destroy", SB, "--json"]);
    assert_eq!(again["existed"], false, "{again:#}");
    // Its pins went with it: the snapshot it held can be deleted now.
    let snapshots = lab.json(&["snapshots", "demo", "--json"]);
    let oldest = snapshots.as_array().unwrap().iter().find(|s| s["state"] == "complete").unwrap();
    let deleted = lab.json(&["delete-snapshot", "demo", oldest["name"].as_str().unwrap(), "--json"]);
    assert!(deleted["deferred"].as_array().unwrap().is_empty(), "{deleted:#}");
}

/// Takes a snapshot of demo; its name.
fn snapshot(lab: &LabUnderTest) -> String {
    let report = lab.json(&["snapshot", "demo", "--json"]);
    report["name"].as_str().or_else(|| report["snapshot"]["name"].as_str()).unwrap().to_owned()
}

/// Each disk of a sync's report reads like the snapshot's image it was
/// brought to (the last source: the snapshot's own image).
fn assert_standby_reads_like_the_snapshot(report: &Value) {
    for disk in report["disks"].as_array().unwrap() {
        let source = disk["sources"].as_array().unwrap().last().unwrap().as_str().unwrap();
        compare(Path::new(disk["path"].as_str().unwrap()), Path::new(source));
    }
}

/// Each disk of the standby reads like `snapshot`'s image of it (from the catalog).
fn assert_standby_disks_read_like(lab: &LabUnderTest, snapshot: &str) {
    let config = lab.config();
    let catalog = envclone::catalog::Catalog::open(&config.controller.state_dir).unwrap();
    let standby = catalog.standby_named(SB).unwrap().unwrap();
    let pinned = catalog.images_needed_by(&envclone::ops::snapshot::snapshot_dependent("demo", snapshot)).unwrap();
    for disk in &standby.disks {
        let image = pinned
            .iter()
            .find(|i| i.vm == disk.vm && i.disk.as_deref() == Some(disk.disk.as_str()))
            .unwrap_or_else(|| panic!("snapshot {snapshot} has no image of {}/{}", disk.vm, disk.disk));
        compare(&disk.path, &image.path);
    }
}

fn compare(standby: &Path, snapshot: &Path) {
    let output = Command::new("qemu-img").args(["compare", "-U"]).arg(snapshot).arg(standby).output().unwrap();
    assert!(
        output.status.success(),
        "{} does not read like {}: {}{}",
        standby.display(),
        snapshot.display(),
        stdout(&output),
        stderr(&output)
    );
}

/// Overlay copies or staged full copies left in the standby's storage.
fn copies_left(lab: &LabUnderTest) -> Vec<PathBuf> {
    let config = lab.config();
    let catalog = envclone::catalog::Catalog::open(&config.controller.state_dir).unwrap();
    let standby = catalog.standby_named(SB).unwrap().unwrap();
    let mut left = Vec::new();
    for disk in &standby.disks {
        for entry in std::fs::read_dir(disk.path.parent().unwrap()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".from-") || name.ends_with(".sync") {
                left.push(entry.path());
            }
        }
    }
    left.sort();
    left.dedup();
    left
}

fn backing_chain(image: &Path) -> Vec<String> {
    let output =
        Command::new("qemu-img").args(["info", "-U", "--backing-chain", "--output=json"]).arg(image).output().unwrap();
    assert!(output.status.success(), "qemu-img info {}: {}", image.display(), stderr(&output));
    let chain: Value = serde_json::from_slice(&output.stdout).unwrap();
    chain.as_array().unwrap().iter().map(|i| i["filename"].as_str().unwrap().to_owned()).collect()
}

fn hypervisor(lab: &LabUnderTest) -> LibvirtHypervisor {
    LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
