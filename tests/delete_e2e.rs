//! End to end: `envclone delete-snapshot` and scheduled retention on a real
//! lab (two TCG guests, web and db, under a private libvirtd in a network
//! namespace; their agents reached over SSH), through the real `envclone`
//! binary. Needs root and the packages of scripts/install-deps.sh; the
//! static agent is built by scripts/build.sh. All traffic stays inside the
//! lab's namespace.
//!
//! One lab for the whole binary (booting one costs ~30 s): the scenarios
//! run one after the other in a single test, each leaving both guests
//! running on a valid chain. Before each snapshot a distinct marker is
//! written to /root/marker on both guests, so each snapshot's data can be
//! checked in its image (a raw copy of its chain, read with debugfs).

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{run, stdout, LabUnderTest};
use envclone::catalog::{Catalog, Dependent, ImageKind};
use envclone::config::{Config, HumanDuration, Retention, Schedule};
use envclone::guest::AgentClient;
use envclone::hypervisor::{Hypervisor, LibvirtHypervisor};
use envclone::ops::snapshot::snapshot_dependent;
use serde_json::Value;

const LAB: &str = "delete";
const VMS: [&str; 2] = ["web", "db"];
/// The retention scenario's schedule keeps this many snapshots.
const KEEP: usize = 3;
const RUNS: usize = 20;

/// (VM, disk target) -> length of the disk's backing chain on disk.
type Chains = BTreeMap<(String, String), usize>;

#[test]
fn delete_end_to_end() {
    let lab = LabUnderTest::up(LAB);
    let initial = chain_lengths(&lab);
    eprintln!("chains before any snapshot: {initial:?}");

    let snapshots = four_snapshots_with_markers(&lab);
    deleting_a_middle_snapshot_shortens_every_chain_while_the_guests_run(&lab, &snapshots);
    a_clone_pinned_image_defers_the_delete_and_changes_nothing(&lab, &snapshots[2]);
    deleting_the_newest_and_the_oldest_then_the_last(&lab, &snapshots, &initial);
    let kept = scheduled_retention_keeps_every_chain_bounded(&lab, &initial);
    every_kept_snapshot_holds_its_data(&lab, &kept);
    a_memory_snapshot_survives_the_merge_of_its_images(&lab, &kept[KEEP - 1].0);
    restoring_the_oldest_kept_snapshot_brings_its_marker_back(&lab, &kept[0]);
    prune_applies_an_environment_retention_to_manual_snapshots(&lab);
}

/// Four manual snapshots, marker N written on both guests before the Nth.
fn four_snapshots_with_markers(lab: &LabUnderTest) -> Vec<String> {
    let before = chain_lengths(lab);
    let names: Vec<String> = (1..=4).map(|n| snapshot_with_marker(lab, &n.to_string())).collect();
    assert_eq!(chain_lengths(lab), add(&before, 4));
    names
}

fn snapshot_with_marker(lab: &LabUnderTest, marker: &str) -> String {
    write_marker(lab, marker);
    let report = lab.json(&["snapshot", "demo", "--json"]);
    report["name"].as_str().unwrap().to_owned()
}

fn write_marker(lab: &LabUnderTest, marker: &str) {
    for vm in VMS {
        run(&lab.session(vm), &format!("echo {marker} > /root/marker; sync"));
    }
}

/// Deleting S2 commits S3's image into S2's, live (a commit of a non-active
/// layer): every disk's chain is one image shorter, the guests never stop
/// (agents answer, web serves db's records), S1, S3 and S4 still list and
/// S3 still reads marker 3 from where its data lives now.
fn deleting_a_middle_snapshot_shortens_every_chain_while_the_guests_run(lab: &LabUnderTest, snapshots: &[String]) {
    let before = chain_lengths(lab);
    let s3_images = images_of(lab, &snapshots[2]);

    let started = Instant::now();
    let report = lab.json(&["delete-snapshot", "demo", &snapshots[1], "--json"]);
    let took = started.elapsed();

    assert_eq!(report["deleted"], true, "{report:#}");
    assert_eq!(report["deferred"].as_array().unwrap().len(), 0, "{report:#}");
    let merged = report["merged"].as_array().unwrap();
    assert_eq!(merged.len(), before.len(), "one merge per disk: {report:#}");
    assert!(merged.iter().all(|m| m["method"] == "commit"), "{report:#}");
    eprintln!(
        "delete of a middle snapshot ({} disks, live commits): {} ms by the report, {} ms wall, {} bytes freed",
        merged.len(),
        report["duration_ms"],
        took.as_millis(),
        report["freed_bytes"]
    );
    assert_eq!(chain_lengths(lab), add(&before, -1));
    guests_keep_running(lab);
    assert_eq!(
        states(lab),
        [
            (snapshots[0].clone(), "complete".to_owned()),
            (snapshots[1].clone(), "deleted".to_owned()),
            (snapshots[2].clone(), "complete".to_owned()),
            (snapshots[3].clone(), "complete".to_owned()),
        ]
    );
    // S3's data now lives in what was S2's image; the files S3 pinned are gone.
    let moved = images_of(lab, &snapshots[2]);
    for ((vm, disk), image) in &moved {
        assert_ne!(image, &s3_images[&(vm.clone(), disk.clone())]);
        assert!(!s3_images[&(vm.clone(), disk.clone())].exists());
    }
    for vm in VMS {
        assert_eq!(marker_in(lab, &snapshots[2], vm), "3");
    }
    assert_chains_match_the_catalog(lab);
}

/// A fake clone pins S3's image of web's root disk: deleting S3 is deferred
/// (exit 0), names the clone, and changes nothing: chains, files, listing.
fn a_clone_pinned_image_defers_the_delete_and_changes_nothing(lab: &LabUnderTest, s3: &str) {
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    let image = &images_of(lab, s3)[&("web".to_owned(), "vda".to_owned())];
    let id = catalog.image_by_path(image).unwrap().unwrap().id;
    let clone = Dependent::clone_named("fake-clone");
    catalog.pin(id, &clone).unwrap();
    let before = (chain_lengths(lab), storage_files(lab), states(lab), live_chains(lab));

    let output = lab.envclone(&["delete-snapshot", "demo", s3, "--json"]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["deleted"], false, "{report:#}");
    let deferred = report["deferred"].as_array().unwrap();
    assert!(!deferred.is_empty(), "{report:#}");
    assert!(report["reason"].as_str().unwrap().contains("clone 'fake-clone'"), "{report:#}");
    assert_eq!((chain_lengths(lab), storage_files(lab), states(lab), live_chains(lab)), before);
    eprintln!("deferred: {}", report["reason"]);
    catalog.unpin(id, &clone).unwrap();
}

/// S4 (the newest: an active commit with a pivot), then S1 (its image is
/// the VM's base: only released, never changed), then S3: each time the
/// guests keep running with their data, and at the end every chain is one
/// image longer than before any snapshot (the active overlay on the base).
fn deleting_the_newest_and_the_oldest_then_the_last(lab: &LabUnderTest, snapshots: &[String], initial: &Chains) {
    let before = chain_lengths(lab);
    let report = lab.json(&["delete-snapshot", "demo", &snapshots[3], "--json"]);
    assert!(report["merged"].as_array().unwrap().iter().all(|m| m["method"] == "active-commit"), "{report:#}");
    eprintln!("delete of the newest snapshot (active commits + pivot): {} ms", report["duration_ms"]);
    assert_eq!(chain_lengths(lab), add(&before, -1));
    guests_keep_running(lab);
    for vm in VMS {
        assert_eq!(run(&lab.session(vm), "cat /root/marker").trim(), "4", "{vm} lost its live data");
        assert_eq!(marker_in(lab, &snapshots[2], vm), "3");
    }

    let report = lab.json(&["delete-snapshot", "demo", &snapshots[0], "--json"]);
    assert!(report["merged"].as_array().unwrap().is_empty(), "{report:#}");
    assert_eq!(report["released"].as_array().unwrap().len(), before.len(), "{report:#}");
    assert_eq!(chain_lengths(lab), add(&before, -1));

    let report = lab.json(&["delete-snapshot", "demo", &snapshots[2], "--json"]);
    assert_eq!(report["deleted"], true, "{report:#}");
    assert_eq!(chain_lengths(lab), add(initial, 1));
    guests_keep_running(lab);
    assert_chains_match_the_catalog(lab);
    // Idempotent: deleting it again says so and changes nothing.
    let again = lab.json(&["delete-snapshot", "demo", &snapshots[2], "--json"]);
    assert_eq!((again["deleted"].clone(), again["already_deleted"].clone()), (Value::Bool(true), Value::Bool(true)));
    let unknown = lab.envclone(&["delete-snapshot", "demo", "no-such-snapshot"]);
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
}

/// The test: a schedule `every = "1m"` keeping the last 3, run 20
/// times by `envclone schedule run` (each run snapshots now, then deletes
/// what retention does not keep through `envclone delete-snapshot`), marker
/// rN written before run N. After every run each disk's chain holds at
/// most: the images below envclone's base (the lab's shared root image for
/// vda, nothing for the seed disk) + the base + the 3 kept snapshots'
/// images + the active overlay, i.e. `initial + KEEP + 1`. Returns the kept
/// snapshots with their markers, oldest first.
fn scheduled_retention_keeps_every_chain_bounded(lab: &LabUnderTest, initial: &Chains) -> Vec<(String, String)> {
    let config = retention_config(lab);
    let bound = add(initial, KEEP as i64 + 1);
    let mut taken = Vec::new();
    let mut deleted = 0;
    let mut times = Vec::new();
    for n in 1..=RUNS {
        let marker = format!("r{n}");
        write_marker(lab, &marker);
        let started = Instant::now();
        let output = lab.envclone(&["--config", &path_str(&config), "schedule", "run", "often", "--json"]);
        times.push(started.elapsed());
        assert!(output.status.success(), "run {n}: {}{}", stdout(&output), stderr(&output));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        let retention = &report["retention"];
        assert!(retention["failed"].as_array().unwrap().is_empty(), "run {n}: {report:#}");
        assert!(retention["deferred"].as_array().unwrap().is_empty(), "run {n}: {report:#}");
        assert_eq!(report["retention_error"], Value::Null, "run {n}: {report:#}");
        deleted += retention["deleted"].as_array().unwrap().len();
        taken.push((report["snapshot"].as_str().unwrap().to_owned(), marker));

        let chains = chain_lengths(lab);
        for (disk, length) in &chains {
            assert!(*length <= bound[disk], "run {n}: {disk:?} has {length} images, bound {}", bound[disk]);
        }
        if n >= KEEP {
            assert_eq!(chains, bound, "run {n}: with {KEEP} snapshots kept every chain is at its bound");
        }
    }
    assert_eq!(deleted, RUNS - KEEP);
    let total: Duration = times.iter().sum();
    eprintln!(
        "{RUNS} scheduled runs (snapshot + retention): {:.1} s in all, {:.1} s on average, slowest {:.1} s",
        total.as_secs_f64(),
        total.as_secs_f64() / RUNS as f64,
        times.iter().max().unwrap().as_secs_f64()
    );
    guests_keep_running(lab);
    assert_chains_match_the_catalog(lab);
    let complete: Vec<String> =
        states(lab).into_iter().filter(|(_, state)| state == "complete").map(|(name, _)| name).collect();
    let kept: Vec<(String, String)> = taken[RUNS - KEEP..].to_vec();
    assert_eq!(complete, kept.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>());
    kept
}

/// Each kept snapshot's image of each root disk, read through its chain,
/// holds the marker written just before it.
fn every_kept_snapshot_holds_its_data(lab: &LabUnderTest, kept: &[(String, String)]) {
    let started = Instant::now();
    for (name, marker) in kept {
        for vm in VMS {
            assert_eq!(&marker_in(lab, name, vm), marker, "snapshot {name} of {vm}");
        }
    }
    eprintln!("checked the markers of {} kept snapshots in {:.1} s", kept.len(), started.elapsed().as_secs_f64());
}

/// A `--memory` snapshot M right after `previous`; deleting `previous`
/// commits M's images into previous's (live), so M's memory images are
/// rewritten to name the images that hold M's disks now. Restoring M from
/// memory then resumes both guests with M's marker.
fn a_memory_snapshot_survives_the_merge_of_its_images(lab: &LabUnderTest, previous: &str) {
    write_marker(lab, "memory");
    let taken = lab.json(&["snapshot", "demo", "--memory", "--json"]);
    let name = taken["name"].as_str().unwrap().to_owned();

    let report = lab.json(&["delete-snapshot", "demo", previous, "--json"]);

    let merged = report["merged"].as_array().unwrap();
    assert!(
        merged.iter().all(|m| m["method"] == "commit" && m["memory_images"].as_array().unwrap().len() == 1),
        "{report:#}"
    );
    eprintln!("delete under a memory snapshot (commits + memory images rewritten): {} ms", report["duration_ms"]);
    let images = images_of(lab, &name);
    for vm in VMS {
        let memory = PathBuf::from(
            taken["vms"].as_array().unwrap().iter().find(|v| v["vm"] == vm).unwrap()["memory_image"].as_str().unwrap(),
        );
        let prefix = envclone::ops::snapshot::save_image::SavePrefix::read(&memory).unwrap();
        let def = envclone::hypervisor::DomainDef::parse(&prefix.xml).unwrap();
        for disk in def.disks().into_iter().filter(|d| d.device == "disk" && !d.readonly) {
            assert_eq!(
                disk.source.as_ref(),
                Some(&images[&(vm.to_owned(), disk.target.clone())]),
                "{vm}/{}",
                disk.target
            );
        }
    }

    let restored = lab.json(&["restore", "demo", &name, "--memory", "--json"]);

    eprintln!("memory restore of {name} after the merge: {} ms", restored["duration_ms"]);
    for vm in VMS {
        assert_eq!(wait_for(lab, vm, "cat /root/marker").trim(), "memory", "{vm}");
    }
}

/// With the restore command: the oldest kept snapshot restored in place,
/// both guests read its marker.
fn restoring_the_oldest_kept_snapshot_brings_its_marker_back(lab: &LabUnderTest, (name, marker): &(String, String)) {
    let report = lab.json(&["restore", "demo", name, "--json"]);
    eprintln!("restore of {name}: {} ms", report["duration_ms"]);
    for vm in VMS {
        let seen = wait_for(lab, vm, "cat /root/marker");
        assert_eq!(seen.trim(), marker, "{vm} after restoring {name}");
    }
}

/// With `environments.demo.retention = { last = 1 }`, `prune` deletes
/// every manual snapshot but the newest: here the memory snapshot and the
/// undo snapshots the two restores left. The two restores made branches,
/// so a delete may be deferred the first time (an image backing two
/// images) and go through on the next prune, merged offline into a branch
/// no VM runs on. `--dry-run` changes nothing; no delete fails; the
/// newest manual snapshot still reads the data it was taken with.
fn prune_applies_an_environment_retention_to_manual_snapshots(lab: &LabUnderTest) {
    let config = retention_config(lab);
    let mut with_env: Config = envclone::config::load(&config).unwrap();
    with_env.environments.get_mut("demo").unwrap().retention =
        Some(Retention { last: Some(1), ..Retention::default() });
    let config = lab.dir().join("env-retention.toml");
    std::fs::write(&config, envclone::config::to_toml(&with_env)).unwrap();
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    let manual: Vec<String> = catalog
        .snapshots("demo")
        .unwrap()
        .into_iter()
        .filter(|s| s.schedule.is_none() && s.state == envclone::catalog::SnapshotState::Complete)
        .map(|s| s.name)
        .collect();
    let (newest, older) = manual.split_last().unwrap();
    let newest_marker = marker_in(lab, newest, "web");
    let before = (storage_files(lab), states(lab));

    let dry = lab.json(&["--config", &path_str(&config), "prune", "demo", "--dry-run", "--json"]);

    let candidates: Vec<&str> =
        dry["candidates"].as_array().unwrap().iter().map(|c| c["snapshot"].as_str().unwrap()).collect();
    assert_eq!(candidates, older.iter().map(String::as_str).collect::<Vec<_>>(), "{dry:#}");
    assert_eq!((storage_files(lab), states(lab)), before, "--dry-run changed something");

    let mut passes = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let report = lab.json(&["--config", &path_str(&config), "prune", "demo", "--json"]);
        assert!(report["failed"].as_array().unwrap().is_empty(), "{report:#}");
        let methods: Vec<&str> = report["deletes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["merged"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()))
            .collect();
        eprintln!(
            "prune: deleted {}, deferred {}, merges {methods:?}, {} ms",
            report["deleted"],
            report["deferred"],
            started.elapsed().as_millis()
        );
        passes.push(report);
        if passes.last().unwrap()["deferred"].as_array().unwrap().is_empty() {
            break;
        }
    }
    assert!(passes.last().unwrap()["deferred"].as_array().unwrap().is_empty(), "{passes:#?}");
    let states = states(lab);
    for name in older {
        assert!(states.contains(&(name.clone(), "deleted".to_owned())), "{name}: {states:?}");
    }
    assert!(states.contains(&(newest.clone(), "complete".to_owned())));
    guests_keep_running(lab);
    assert_chains_match_the_catalog(lab);
    assert_eq!(marker_in(lab, newest, "web"), newest_marker);
}

/// A copy of the lab's config with schedule `often`: every minute, last 3.
fn retention_config(lab: &LabUnderTest) -> PathBuf {
    let mut config: Config = lab.config();
    config.schedules.insert(
        "often".into(),
        Schedule {
            environment: "demo".into(),
            cron: None,
            every: Some(HumanDuration::from_secs(60)),
            memory: false,
            retention: Retention { last: Some(KEEP as u32), ..Retention::default() },
        },
    );
    let path = lab.dir().join("retention.toml");
    std::fs::write(&path, envclone::config::to_toml(&config)).unwrap();
    path
}

fn guests_keep_running(lab: &LabUnderTest) {
    for vm in VMS {
        let status = AgentClient::new(&lab.session(vm)).status().unwrap();
        assert!(status.frozen.is_empty(), "{vm}: {status:?}");
    }
    let page = lab.curl("http://10.77.1.11/");
    assert_eq!(page.trim_end(), envclone::lab::topology::DB_RECORDS.trim_end());
}

/// The marker in `snapshot`'s image of `vm`'s root disk: a raw copy of its
/// chain, read with debugfs.
fn marker_in(lab: &LabUnderTest, snapshot: &str, vm: &str) -> String {
    let image = &images_of(lab, snapshot)[&(vm.to_owned(), "vda".to_owned())];
    let raw = lab.dir().join(format!("{vm}-check.raw"));
    host(&["qemu-img", "convert", "-U", "-O", "raw", &path_str(image), &path_str(&raw)]);
    let marker = host(&["debugfs", "-R", "cat /root/marker", &path_str(&raw)]);
    std::fs::remove_file(&raw).unwrap();
    marker.trim().to_owned()
}

/// The disk images `snapshot` pins, by VM and disk.
fn images_of(lab: &LabUnderTest, snapshot: &str) -> BTreeMap<(String, String), PathBuf> {
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    catalog
        .images_needed_by(&snapshot_dependent("demo", snapshot))
        .unwrap()
        .into_iter()
        .filter(|i| i.kind != ImageKind::Memory)
        .map(|i| ((i.vm, i.disk.unwrap()), i.path))
        .collect()
}

/// Each disk's live source, by VM and disk.
fn live_chains(lab: &LabUnderTest) -> BTreeMap<(String, String), Vec<PathBuf>> {
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    let mut chains = BTreeMap::new();
    for vm in VMS {
        for disk in hv.domain(&format!("demo-{vm}")).unwrap().def.disks() {
            if disk.device != "disk" || disk.readonly {
                continue;
            }
            let chain = disk.source.into_iter().chain(disk.backing).collect();
            chains.insert((vm.to_owned(), disk.target), chain);
        }
    }
    chains
}

/// The length of each disk's chain as `qemu-img info --backing-chain` reads it.
fn chain_lengths(lab: &LabUnderTest) -> Chains {
    live_chains(lab).into_iter().map(|(key, chain)| (key, on_disk_chain(&chain[0]).len())).collect()
}

fn on_disk_chain(path: &Path) -> Vec<PathBuf> {
    let json = host(&["qemu-img", "info", "-U", "--backing-chain", "--output=json", &path_str(path)]);
    envclone::host::parse_chain(json.as_bytes()).unwrap()
}

/// libvirt, qemu-img and the catalog agree on every disk's chain (the
/// catalog's ends at envclone's base; what lies below is the lab's).
fn assert_chains_match_the_catalog(lab: &LabUnderTest) {
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    for ((vm, disk), live) in live_chains(lab) {
        let on_disk = on_disk_chain(&live[0]);
        assert_eq!(live, on_disk, "{vm}/{disk}: libvirt and qemu-img disagree");
        let active = catalog.image_by_path(&live[0]).unwrap().unwrap();
        let recorded: Vec<PathBuf> = catalog.chain(active.id).unwrap().into_iter().map(|i| i.path).collect();
        assert!(on_disk.starts_with(&recorded), "{vm}/{disk}: catalog {recorded:?}, on disk {on_disk:?}");
    }
}

fn add(chains: &Chains, delta: i64) -> Chains {
    chains.iter().map(|(key, length)| (key.clone(), (*length as i64 + delta) as usize)).collect()
}

/// (name, state) of every snapshot, oldest first.
fn states(lab: &LabUnderTest) -> Vec<(String, String)> {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["state"].as_str().unwrap().to_owned()))
        .collect()
}

/// Every file under the environment's snapshot storage.
fn storage_files(lab: &LabUnderTest) -> Vec<PathBuf> {
    let config = lab.config();
    let mut files = Vec::new();
    let mut dirs = vec![config.environments["demo"].storage_dir(&config, "demo")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// Runs `command` in `vm` (a new session each try) until it succeeds with
/// some output; returns that output.
fn wait_for(lab: &LabUnderTest, vm: &str, command: &str) -> String {
    let config = lab.config();
    let (_, vm_config) = config.vm("demo", vm).unwrap();
    let target = envclone::guest::endpoint::ssh_target(&vm_config.agent);
    let options = envclone::guest::endpoint::ssh_options(&config.controller);
    envclone::wait::until(command, Duration::from_secs(120), Duration::from_millis(200), || {
        let session = envclone::guest::GuestSession::connect(&target, &options)?;
        let output = session.exec(command, None)?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        Ok::<_, envclone::guest::GuestError>((output.status == 0 && !text.trim().is_empty()).then_some(text))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a host command, asserts success, returns stdout.
fn host(args: &[&str]) -> String {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    stdout(&output)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
