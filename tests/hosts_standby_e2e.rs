//! End to end on a real two-host lab: a standby of `demo` (on host a) kept
//! on host b. The first sync ships a full copy, the next only the overlay
//! written since (its bytes held against what the guest wrote), and b's
//! image reads exactly like the snapshot: compared with `qemu-img compare`
//! on b, against a flattened copy of the snapshot shipped there. The
//! controller never sees either host's storage through a local path.
//! Needs root and the packages of scripts/install-deps.sh.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{run, virsh_at, LabUnderTest};
use envclone::host::remote::{SshShell, SshStorage};
use envclone::host::ship::{self, End};
use envclone::host::Storage;
use serde_json::Value;

const LAB: &str = "e2e-hsb";
const WRITTEN: u64 = 8 << 20;

/// Host `name`'s storage over SSH, as its `[hosts]` entry reaches it.
fn storage_of(lab: &LabUnderTest, name: &str) -> SshStorage {
    let config = lab.config();
    let settings = &config.hosts[name];
    let shell = SshShell::new(
        name,
        envclone::host::remote::ssh_target(settings),
        envclone::host::remote::ssh_options(settings, &config.controller),
    );
    SshStorage::new(Arc::new(shell), std::time::Duration::from_secs(60))
}

fn disk_bytes(report: &Value, vm: &str, disk: &str) -> u64 {
    let disks = report["disks"].as_array().unwrap();
    let found = disks.iter().find(|d| d["vm"] == vm && d["disk"] == disk).unwrap_or_else(|| panic!("{report:#}"));
    found["bytes"].as_u64().unwrap()
}

#[test]
fn a_standby_on_host_b_gets_a_full_copy_then_only_the_delta_and_reads_like_the_snapshot() {
    let (lab, _) = LabUnderTest::up_hosts(LAB, 2);
    let config = lab.config();
    let b_uri = config.hosts["b"].libvirt_uri.clone();
    assert!(!Path::new("/srv/envclone").exists(), "the hosts' storage is not visible here");

    lab.json(&["snapshot", "demo", "--json"]);
    let created = lab.json(&["standby", "create", "demo", "--name", "sb", "--host", "b", "--json"]);
    assert_eq!(created["host"], "b", "{created:#}");
    assert_eq!(created["sync"]["mode"], "full", "{created:#}");
    let storage = PathBuf::from(created["storage"].as_str().unwrap());
    assert!(storage.starts_with("/srv/envclone"), "b's default storage: {}", storage.display());
    let defined = common::stdout(&virsh_at(&b_uri, &["list", "--all", "--name"]));
    assert!(defined.contains("sb-db") && defined.contains("sb-web"), "{defined}");
    let on_a = common::stdout(&virsh_at(&config.hosts["a"].libvirt_uri, &["list", "--all", "--name"]));
    assert!(!on_a.contains("sb-"), "nothing of the standby on a: {on_a}");

    // The guest writes WRITTEN bytes of fresh data; the next snapshot's
    // overlay holds them, and only they (and the file system's own
    // metadata) cross to b.
    let db = lab.session("db");
    run(&db, &format!("dd if=/dev/urandom of=/srv/db/blob bs=1M count={} 2>/dev/null && sync", WRITTEN >> 20));
    let blob = run(&db, "sha256sum /srv/db/blob");
    let second = lab.json(&["snapshot", "demo", "--json"]);
    let synced = lab.json(&["standby", "sync", "sb", "--json"]);
    assert_eq!(synced["mode"], "incremental", "{synced:#}");
    let shipped = disk_bytes(&synced, "db", "vda");
    eprintln!(
        "incremental sync to b: db/vda {shipped} bytes shipped for {WRITTEN} written ({:.3}x), {} ms, all disks {} bytes",
        shipped as f64 / WRITTEN as f64,
        synced["duration_ms"],
        synced["bytes"]
    );
    for step in lab.last_steps(envclone::catalog::OperationKind::StandbySync, "sb") {
        let took = step.finished_at.map(|end| (end - step.started_at).num_milliseconds()).unwrap_or(-1);
        eprintln!("  {took:>6} ms  {}", step.name);
    }
    assert!(shipped >= WRITTEN, "the data written crossed: {shipped}");
    // qcow2 clusters, its tables and ext4's journal and metadata: at most 10% and 2 MiB more.
    assert!(shipped <= WRITTEN + WRITTEN / 10 + (2 << 20), "only the delta crossed: {shipped}");
    assert!(disk_bytes(&synced, "web", "vda") < 2 << 20, "web wrote next to nothing");

    // b's image reads like the snapshot: its chain flattened on a, shipped
    // to b, compared there (and checked there) by b's own qemu-img.
    let (a, b) = (storage_of(&lab, "a"), storage_of(&lab, "b"));
    let name = second["name"].as_str().unwrap();
    let db_disk = synced["disks"].as_array().unwrap().iter().find(|d| d["vm"] == "db" && d["disk"] == "vda").unwrap();
    // The overlays shipped, oldest first: the last is the snapshot's image of db/vda.
    let top = PathBuf::from(db_disk["sources"].as_array().unwrap().last().unwrap().as_str().unwrap());
    let flat_a = PathBuf::from("/srv/envclone/compare-db.qcow2");
    a.copy_full(&top, &flat_a, &|_| {}).unwrap();
    let flat_b = storage.join("compare-db.qcow2");
    ship::ship(
        End { host: "a", storage: &a, path: &flat_a },
        End { host: "b", storage: &b, path: &flat_b },
        None,
        &|_, _| {},
    )
    .unwrap();
    let image = PathBuf::from(
        synced["disks"].as_array().unwrap().iter().find(|d| d["vm"] == "db").unwrap()["path"].as_str().unwrap(),
    );
    assert!(b.same_content(&image, &flat_b).unwrap(), "b's {} reads like snapshot {name}", image.display());
    assert_eq!(b.check(&image).unwrap(), Vec::<String>::new());
    assert_eq!(b.backing_chain(&image).unwrap(), std::slice::from_ref(&image), "b's chain stays one image");
    a.remove(&flat_a).unwrap();
    b.remove(&flat_b).unwrap();
    assert!(!blob.is_empty());

    // A sync with nothing new moves nothing.
    let again = lab.json(&["standby", "sync", "sb", "--json"]);
    assert_eq!(again["mode"], "up-to-date", "{again:#}");

    let destroyed = lab.json(&["standby", "destroy", "sb", "--json"]);
    assert_eq!(destroyed["existed"], true);
    let left = common::stdout(&virsh_at(&b_uri, &["list", "--all", "--name"]));
    assert!(!left.contains("sb-"), "{left}");
    assert!(b.list_dir(&storage.join("db")).unwrap().is_empty(), "b's files are gone");

    // A planned failover to a standby on b ships the final delta first:
    // a write made after the standby's last sync is served on b (RPO 0).
    lab.json(&["standby", "create", "demo", "--name", "sb", "--host", "b", "--json"]);
    run(&lab.session("db"), "echo after-the-last-sync > /srv/db/late && sync");
    let switched = lab.json(&["failover", "demo", "--planned", "--json"]);
    assert_eq!(
        (switched["mode"].as_str(), switched["rpo_seconds"].as_i64()),
        (Some("planned"), Some(0)),
        "{switched:#}"
    );
    assert_eq!(switched["primary_uri"], config.hosts["a"].libvirt_uri.as_str(), "{switched:#}");
    let a_domains = common::stdout(&virsh_at(&config.hosts["a"].libvirt_uri, &["list", "--name"]));
    assert!(!a_domains.contains("demo-"), "demo's domains on a are fenced: {a_domains}");
    let mut agent = config.vm("demo", "db").unwrap().1.agent.clone();
    agent.netns = Some(lab.host_netns("b"));
    let on_b = envclone::guest::GuestSession::connect(
        &envclone::guest::endpoint::ssh_target(&agent),
        &envclone::guest::endpoint::ssh_options(&config.controller),
    )
    .unwrap();
    assert_eq!(run(&on_b, "cat /srv/db/late").trim(), "after-the-last-sync");
}
