//! End to end on a real two-host lab: shipping a standby's increments to
//! host b when things go wrong, and under a bandwidth limit. One lab for
//! both (a two-host lab and a full first copy cost a minute):
//!
//! 1. **Link cut mid-ship**: host b's link shaped low so the ship of 64 MiB
//!    takes long; once a `.part` is on b, `lab host-down b`. The sync fails
//!    naming host b; after `lab host-up b` nothing half-shipped is in use
//!    (no copy installed, b's image bit for bit as before, the standby's
//!    recorded point unchanged); the next sync completes and b's image
//!    passes `qemu-img check` run on b.
//! 2. **Bandwidth limit**: `[hosts.b] bandwidth = "4MiB/s"`; the ship of
//!    db/vda (its journaled step) takes at least its bytes at that rate,
//!    less 10%. A lower bound only: the throttle guarantees it, while an
//!    upper bound would time this machine.
//!
//! 3. **Crash points on b**: a sync killed after its first ship is rolled
//!    back by `recover` (the copy removed on b); one killed in its merge on
//!    b is finished there.
//!
//! Needs root and the packages of scripts/install-deps.sh.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run, LabUnderTest};
use envclone::catalog::OperationKind;
use envclone::guest::GuestSession;
use serde_json::Value;

const LAB: &str = "e2e-hship";
/// Written in db before the sync that is cut: 64 MiB at 20 Mbit/s is a
/// window of ~27 s to cut the link in.
const CUT_WRITTEN_MIB: u64 = 64;
const SLOW_LINK: &str = "20mbit";
const LIMITED_WRITTEN_MIB: u64 = 16;
const LIMIT: &str = "4MiB/s";
const LIMIT_BYTES_PER_S: f64 = (4u64 << 20) as f64;
/// db's images in the standby's folder on b.
const STANDBY_IMAGES: [&str; 2] = ["sb.vda.qcow2", "sb.vdb.qcow2"];

/// The standby's point as `standby list --json` records it.
fn recorded_point(lab: &LabUnderTest) -> (Value, Value) {
    let listed = lab.json(&["standby", "list", "--json"]);
    let sb = listed.as_array().unwrap().iter().find(|s| s["name"] == "sb").unwrap_or_else(|| panic!("{listed:#}"));
    (sb["snapshot"].clone(), sb["merging"].clone())
}

fn disk<'r>(report: &'r Value, vm: &str, name: &str) -> &'r Value {
    let disks = report["disks"].as_array().unwrap_or_else(|| panic!("{report:#}"));
    disks.iter().find(|d| d["vm"] == vm && d["disk"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

/// The names in a directory on host b.
fn names_on(b: &GuestSession, dir: &Path) -> Vec<String> {
    run(b, &format!("ls -1 {}", dir.display())).lines().map(str::to_owned).collect()
}

fn write_in_db(lab: &LabUnderTest, file: &str, mib: u64) {
    run(&lab.session("db"), &format!("dd if=/dev/urandom of=/srv/db/{file} bs=1M count={mib} 2>/dev/null && sync"));
}

#[test]
fn a_cut_link_mid_ship_leaves_nothing_half_used_and_a_bandwidth_limit_holds() {
    let (lab, _) = LabUnderTest::up_hosts(LAB, 2);
    lab.json(&["snapshot", "demo", "--json"]);
    let created = lab.json(&["standby", "create", "demo", "--name", "sb", "--host", "b", "--json"]);
    let image = PathBuf::from(disk(&created["sync"], "db", "vda")["path"].as_str().unwrap());

    link_cut_mid_ship(&lab, &image);
    bandwidth_limit(&lab);
    crashes_on_host_b_are_recovered_there(&lab, &image);
}

/// A sync killed after its first ship is rolled back by `recover` on b
/// (the copy removed there); one killed in its merge on b is finished.
fn crashes_on_host_b_are_recovered_there(lab: &LabUnderTest, image: &Path) {
    let dir = image.parent().unwrap();
    let copies = |lab: &LabUnderTest| -> Vec<String> {
        names_on(&lab.host_session("b"), dir).into_iter().filter(|n| n.contains(".from-")).collect()
    };
    let (before, _) = recorded_point(lab);
    write_in_db(lab, "crash-copy", 2);
    lab.json(&["snapshot", "demo", "--json"]);
    let crashed = lab.envclone_crashing_at(&["standby", "sync", "sb"], "standby-sync:copy");
    assert_eq!(crashed.status.code(), None, "killed at the crash point: {}", String::from_utf8_lossy(&crashed.stderr));
    assert!(!copies(lab).is_empty(), "the shipped copy is on b before recover");

    let recovered = lab.json(&["recover", "sb", "--json"]);

    assert_eq!(recovered["environments"][0]["operations"][0]["outcome"], "rolled-back", "{recovered:#}");
    assert!(copies(lab).is_empty(), "removed on b: {:?}", copies(lab));
    assert_eq!(recorded_point(lab).0, before, "the standby stays where it was");

    let crashed = lab.envclone_crashing_at(&["standby", "sync", "sb"], "standby-sync:merge");
    assert_eq!(crashed.status.code(), None, "killed at the crash point: {}", String::from_utf8_lossy(&crashed.stderr));
    let (_, merging) = recorded_point(lab);
    assert!(!merging.is_null(), "killed in its merge on b");

    lab.json(&["recover", "sb", "--json"]);

    let (after, merging) = recorded_point(lab);
    assert!(merging.is_null() && after != before, "the merge on b was finished: {after} {merging}");
    assert!(copies(lab).is_empty(), "{:?}", copies(lab));
    let b = lab.host_session("b");
    let check = run(&b, &format!("qemu-img check -U {}", image.display()));
    assert!(check.contains("No errors"), "{check}");
}

fn link_cut_mid_ship(lab: &LabUnderTest, image: &Path) {
    let dir = image.parent().unwrap();
    write_in_db(lab, "cut", CUT_WRITTEN_MIB);
    lab.json(&["snapshot", "demo", "--json"]);
    let before = recorded_point(lab);
    let b = lab.host_session("b");
    let image_sha = run(&b, &format!("sha256sum {}", image.display()));
    lab.json(&["lab", "link", "b", "--rate", SLOW_LINK, "--json"]);

    let sync = lab.spawn(&["standby", "sync", "sb", "--json"]);
    let part = envclone::wait::until("a .part on host b", Duration::from_secs(60), Duration::from_millis(200), || {
        Ok::<_, std::io::Error>(names_on(&b, dir).into_iter().find(|name| name.ends_with(".part")))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    drop(b);
    lab.json(&["lab", "host-down", "b", "--json"]);
    let cut = common::wait_for_child(sync, Duration::from_secs(180));

    let stderr = String::from_utf8_lossy(&cut.stderr);
    eprintln!("the sync cut mid-ship (at {part}): {stderr}");
    assert!(!cut.status.success(), "the sync failed: {}", common::stdout(&cut));
    assert!(stderr.contains("host b"), "the error names host b: {stderr}");

    lab.json(&["lab", "host-up", "b", "--json"]);
    lab.json(&["lab", "link", "b", "--rate", "none", "--json"]);
    assert_eq!(recorded_point(lab), before, "the standby's recorded point is unchanged");
    let b = lab.host_session("b");
    // The standby's own images, and at most the .part a later sync removes.
    let installed: Vec<String> = names_on(&b, dir)
        .into_iter()
        .filter(|n| !n.ends_with(".part") && !STANDBY_IMAGES.contains(&n.as_str()))
        .collect();
    assert_eq!(installed, Vec::<String>::new(), "no copy was installed beside {part}");
    assert_eq!(run(&b, &format!("sha256sum {}", image.display())), image_sha, "b's image is as it was");

    let synced = lab.json(&["standby", "sync", "sb", "--json"]);
    assert!(matches!(synced["mode"].as_str(), Some("incremental" | "full")), "{synced:#}");
    assert!(disk(&synced, "db", "vda")["bytes"].as_u64().unwrap() >= CUT_WRITTEN_MIB << 20, "{synced:#}");
    assert_eq!(recorded_point(lab).0, synced["snapshot"], "the standby is at the new point");
    run(&b, &format!("qemu-img check {}", image.display()));
    let left: Vec<String> = names_on(&b, dir).into_iter().filter(|n| n.ends_with(".part")).collect();
    assert_eq!(left, Vec::<String>::new(), "nothing half shipped is left on b");
}

fn bandwidth_limit(lab: &LabUnderTest) {
    let mut config = lab.config();
    config.hosts.get_mut("b").unwrap().bandwidth = Some(LIMIT.parse().unwrap());
    std::fs::write(lab.config_path(), envclone::config::to_toml(&config)).unwrap();
    write_in_db(lab, "limited", LIMITED_WRITTEN_MIB);
    lab.json(&["snapshot", "demo", "--json"]);

    let synced = lab.json(&["standby", "sync", "sb", "--json"]);

    let bytes = disk(&synced, "db", "vda")["bytes"].as_u64().unwrap();
    assert!(bytes >= LIMITED_WRITTEN_MIB << 20, "the data crossed: {synced:#}");
    let steps = lab.last_steps(OperationKind::StandbySync, "sb");
    let ship =
        steps.iter().find(|s| s.name.starts_with("copy db/vda overlay ")).unwrap_or_else(|| panic!("{steps:#?}"));
    let took = (ship.finished_at.unwrap() - ship.started_at).to_std().unwrap();
    let floor = Duration::from_secs_f64(bytes as f64 / LIMIT_BYTES_PER_S * 0.9);
    eprintln!("db/vda: {bytes} bytes shipped in {took:?} under {LIMIT} (floor {floor:?})");
    assert!(took >= floor, "{bytes} bytes at most at {LIMIT}: took {took:?}, at least {floor:?}");
}
