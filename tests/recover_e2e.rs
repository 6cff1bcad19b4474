//! End to end: `envclone recover` after `envclone snapshot` was killed at
//! its crash points (`ENVCLONE_CRASHPOINT`, a test hook: the process
//! aborts on the spot, like a SIGKILL) on a real lab (two TCG guests, web
//! and db, under a private libvirtd in a network namespace; their agents
//! reached over SSH). Needs root and the packages of
//! scripts/install-deps.sh; the static agent is built by scripts/build.sh.
//! All traffic stays inside the lab's namespace.
//!
//! Then `envclone restore` killed before and after its record step, and
//! `envclone delete-snapshot` killed in the middle of a live merge (its
//! block commit job running, or done and pivoted but not recorded).
//!
//! One lab for the whole binary (booting one costs ~30 s): the scenarios
//! run one after the other in a single test, each leaving both guests
//! running, thawed and on valid chains, with nothing left to recover.
//! Before the snapshots the scenarios take, a marker is written to
//! /root/marker on both guests, to check which data each VM runs on.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{run, stdout, LabUnderTest};
use envclone::catalog::{Catalog, ImageKind};
use envclone::guest::{AgentClient, GuestSession};
use envclone::hypervisor::{DomainState, Hypervisor, LibvirtHypervisor};
use envclone::lab::topology::DB_RECORDS;
use envclone::ops::snapshot::snapshot_dependent;
use serde_json::Value;

const LAB: &str = "recover";
const DOMAINS: [&str; 2] = ["demo-db", "demo-web"];
/// The agents' lease timeout is the environment's freeze_timeout (5 s):
/// a guest whose controller died is thawed well within this.
const THAWED_WITHIN: Duration = Duration::from_secs(15);
/// Generous: TCG guests boot slowly when other labs run too.
const BOOTED_WITHIN: Duration = Duration::from_secs(240);
const WEB_URL: &str = "http://10.77.1.11/";

#[test]
fn recover_end_to_end() {
    let lab = LabUnderTest::up(LAB);

    crash_while_frozen_is_rolled_back_and_nothing_stays_frozen(&lab);
    crash_after_the_disk_snapshots_keeps_the_new_overlays_and_records_them(&lab);
    crash_at_the_memory_point_resumes_the_guest_and_removes_the_memory_image(&lab);
    // Marker "snapshot" in the snapshot S; "live" written after it.
    let snapshot = a_snapshot_after_all_this_succeeds(&lab);
    // Restores of S: rolled back while on the new overlays (the guests run on "live" again),
    // then rolled forward once recorded (the guests run on S's "snapshot").
    restore_crashed_on_its_new_overlays_is_rolled_back(&lab, &snapshot);
    restore_crashed_after_its_record_is_rolled_forward(&lab, &snapshot);
    // Two snapshots T1, T2 with marker "delete"; deleting T2 (active commits) crashes with its first
    // job running, then deleting T1 crashes after its first pivot: recover finishes each delete.
    let (t1, t2) = two_snapshots_to_delete(&lab);
    delete_crashed_with_its_commit_job_running_is_aborted_then_finished(&lab, &t2);
    delete_crashed_after_its_pivot_keeps_the_guests_on_valid_chains_then_finishes(&lab, &t1);
}

/// The controller dies with every guest frozen, before any disk moved:
/// the guests thaw by themselves (their SSH channels hit EOF; at worst the
/// lease times out), `recover` rolls the snapshot back (marked failed),
/// the VMs run on their chains as before, and a second `recover` finds
/// nothing to do.
fn crash_while_frozen_is_rolled_back_and_nothing_stays_frozen(lab: &LabUnderTest) {
    let before = sources(lab);

    crash_snapshot(lab, "freeze", &[]);

    let thawed_after = wait_thawed(lab);
    eprintln!("crash while frozen: both guests thawed {} ms after the crash", thawed_after.as_millis());
    let report = recover(lab, &[]);
    let op = only_operation(&report);
    assert_eq!((op["kind"].as_str(), op["outcome"].as_str()), (Some("snapshot"), Some("rolled-back")), "{op:#}");
    let undone: Vec<&str> = op["undo"].as_array().unwrap().iter().map(|u| u["status"].as_str().unwrap()).collect();
    assert!(undone.iter().all(|status| *status == "done"), "{op:#}");
    let thaws = op["undo"].as_array().unwrap().iter().filter(|u| u["step"].as_str().unwrap().starts_with("freeze"));
    assert_eq!(thaws.count(), 2, "{op:#}");
    assert_eq!(last_snapshot_state(lab), "failed");
    assert_eq!(sources(lab), before, "no disk moved");
    assert_healthy(lab);
    assert_nothing_left(lab);
}

/// The controller dies right after every VM's disks switched to their new
/// overlays (guests still frozen): `recover` leaves the VMs writing to
/// the overlays (a valid chain), marks the snapshot failed, and records
/// what libvirt says each disk writes to in the catalog.
fn crash_after_the_disk_snapshots_keeps_the_new_overlays_and_records_them(lab: &LabUnderTest) {
    let before = sources(lab);

    crash_snapshot(lab, "disk-snapshot", &[]);

    wait_thawed(lab);
    let switched = sources(lab);
    let storage = storage_dir(lab);
    for (disk, source) in &switched {
        assert!(source.starts_with(&storage), "{disk:?} did not switch: {}", source.display());
        assert_ne!(Some(source), before.get(disk));
    }
    let report = recover(lab, &[]);
    assert_eq!(only_operation(&report)["outcome"], "rolled-back");
    let recorded: Vec<&Value> = checks(&report).into_iter().filter(|c| c["status"] == "recorded").collect();
    assert_eq!(recorded.len(), switched.len(), "one per disk: {report:#}");
    assert_eq!(sources(lab), switched, "recover moved a disk");
    assert_eq!(last_snapshot_state(lab), "failed");
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    for (disk, source) in &switched {
        let active = catalog.image_by_path(source).unwrap().unwrap_or_else(|| panic!("{disk:?}: not recorded"));
        assert_eq!((active.kind, active.snapshot), (ImageKind::Overlay, None), "{disk:?}");
        let backing = catalog.image(active.backing.unwrap()).unwrap();
        assert_eq!(&backing.path, &before[disk], "{disk:?}: the overlay's backing file");
        assert_eq!(backing.kind, ImageKind::Base, "{disk:?}: the VM's own image");
        assert!(catalog.children_of(active.id).unwrap().is_empty(), "{disk:?}: the live image is a leaf");
    }
    assert_healthy(lab);
    assert_nothing_left(lab);
}

/// `--memory`: the controller dies right after a VM was paused for its
/// memory point (frozen too), its memory image half written. `--dry-run`
/// shows the plan and changes nothing; `recover` resumes every paused
/// guest, removes the half-written memory images and marks the snapshot
/// failed.
fn crash_at_the_memory_point_resumes_the_guest_and_removes_the_memory_image(lab: &LabUnderTest) {
    crash_snapshot(lab, "memory-point", &["--memory"]);

    let paused: Vec<&str> = DOMAINS.into_iter().filter(|d| state(lab, d) == DomainState::Paused).collect();
    assert!(!paused.is_empty(), "the crash point comes right after a pause");
    let memory_images: Vec<PathBuf> = files_under(&storage_dir(lab)).into_iter().filter(|p| is_mem(p)).collect();
    assert!(!memory_images.is_empty(), "the memory images' prefixes were written before the barrier");

    let plan = recover(lab, &["--dry-run"]);
    assert_eq!(only_operation(&plan)["outcome"], "would-roll-back");
    assert!(plan["dry_run"].as_bool().unwrap());
    for domain in &paused {
        assert_eq!(state(lab, domain), DomainState::Paused, "--dry-run resumed {domain}");
    }
    assert!(memory_images.iter().all(|p| p.exists()), "--dry-run deleted a memory image");

    let report = recover(lab, &[]);

    let op = only_operation(&report);
    assert_eq!(op["outcome"], "rolled-back", "{op:#}");
    let resumed: Vec<&str> = op["undo"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["detail"].as_str())
        .filter(|d| d.ends_with(" resumed"))
        .collect();
    // Every domain found paused is resumed by the journal's undo (the other
    // VM's pause may land in libvirt after the crash: it is resumed too).
    for domain in &paused {
        assert!(resumed.contains(&format!("domain {domain} resumed").as_str()), "{domain}: {op:#}");
    }
    for domain in DOMAINS {
        assert_eq!(state(lab, domain), DomainState::Running, "{domain}");
    }
    for image in &memory_images {
        assert!(!image.exists(), "{} is left", image.display());
    }
    assert_eq!(last_snapshot_state(lab), "failed");
    wait_thawed(lab);
    assert_healthy(lab);
    assert_nothing_left(lab);
}

/// What recover left is a good starting point: the next snapshot works.
/// It holds marker "snapshot"; the guests go on with "live". Returns its name.
fn a_snapshot_after_all_this_succeeds(lab: &LabUnderTest) -> String {
    write_marker(lab, "snapshot");

    let report = lab.json(&["snapshot", "demo", "--json"]);

    assert_eq!(report["state"], "complete");
    assert_healthy(lab);
    write_marker(lab, "live");
    report["name"].as_str().unwrap().to_owned()
}

/// The controller dies in a restore of S once both VMs run on their new
/// overlays (booted from S, agents answered), before the record: nothing
/// of the restore is in the catalog but its journal and the undo snapshot
/// (in progress). `recover` rolls it back: the VMs stop, their domains
/// point at the disks they had, the new overlays go, the undo snapshot is
/// marked failed, and both VMs boot again on their previous chains with
/// their data ("live").
fn restore_crashed_on_its_new_overlays_is_rolled_back(lab: &LabUnderTest, snapshot: &str) {
    let before = sources(lab);
    let files_before = files_under(&storage_dir(lab));

    crash(lab, &["restore", "demo", snapshot], "restore:start");

    let crashed = sources(lab);
    let half_made: Vec<&PathBuf> = crashed.values().filter(|p| !before.values().any(|b| b == *p)).collect();
    assert_eq!(half_made.len(), before.len(), "every disk on a new overlay at the crash: {crashed:?}");
    for overlay in &half_made {
        let name = overlay.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("restore-{snapshot}-")) && overlay.is_file(), "{}", overlay.display());
    }
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    assert!(half_made.iter().all(|p| catalog.image_by_path(p).unwrap().is_none()), "recorded before the crash");
    assert_eq!(undo_snapshot_state(lab, snapshot), "in-progress");

    let started = Instant::now();
    let report = recover(lab, &[]);
    let recovered = started.elapsed();
    let booted = wait_for_agents(lab);

    eprintln!(
        "restore crashed on its new overlays: recover took {} ms, the agents answered {} ms later",
        recovered.as_millis(),
        booted.as_millis()
    );
    let op = only_operation(&report);
    assert_eq!((op["kind"].as_str(), op["outcome"].as_str()), (Some("restore"), Some("rolled-back")), "{op:#}");
    assert!(op["undo"].as_array().unwrap().iter().all(|u| u["status"] == "done"), "{op:#}");
    assert_eq!(sources(lab), before, "the domains point at the disks they had");
    for overlay in &half_made {
        assert!(!overlay.exists(), "{} is left", overlay.display());
    }
    assert_eq!(files_under(&storage_dir(lab)), files_before, "the restore left or removed a file");
    assert_eq!(undo_snapshot_state(lab, snapshot), "failed");
    assert_markers(lab, "live");
    assert_healthy(lab);
    assert_web_serves_db(lab);
    assert_chains_match_the_catalog(lab);
    assert_nothing_left(lab);
}

/// The controller dies in a restore of S right after its record step (the
/// catalog commit), before the journal completed: `recover` finishes it,
/// touching nothing: both VMs run on the restored overlays (on S's images)
/// with S's data, and the undo snapshot is complete.
fn restore_crashed_after_its_record_is_rolled_forward(lab: &LabUnderTest, snapshot: &str) {
    let before = sources(lab);

    crash(lab, &["restore", "demo", snapshot], "restore:record");

    let restored = sources(lab);
    let report = recover(lab, &[]);

    let op = only_operation(&report);
    assert_eq!((op["kind"].as_str(), op["outcome"].as_str()), (Some("restore"), Some("completed")), "{op:#}");
    assert_eq!(sources(lab), restored, "recover moved a disk");
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    let images = images_of(&catalog, snapshot);
    for (disk, overlay) in &restored {
        assert_ne!(Some(overlay), before.get(disk), "{disk:?} was not restored");
        let name = overlay.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("restore-{snapshot}-")), "{disk:?}: {}", overlay.display());
        let active = catalog.image_by_path(overlay).unwrap().unwrap_or_else(|| panic!("{disk:?}: not recorded"));
        let backing = catalog.image(active.backing.unwrap()).unwrap();
        let vm = disk.0.strip_prefix("demo-").unwrap().to_owned();
        assert_eq!(backing.path, images[&(vm, disk.1.clone())], "{disk:?}: on S's image");
        assert_eq!(on_disk_chain(overlay)[1], backing.path, "{disk:?}");
    }
    assert_eq!(undo_snapshot_state(lab, snapshot), "complete");
    assert_markers(lab, "snapshot");
    assert_healthy(lab);
    assert_web_serves_db(lab);
    assert_chains_match_the_catalog(lab);
    assert_nothing_left(lab);
}

/// Marker "delete" on both guests, then snapshots T1 and T2: every disk
/// runs on `active -> T2's image -> T1's image -> ...`.
fn two_snapshots_to_delete(lab: &LabUnderTest) -> (String, String) {
    write_marker(lab, "delete");
    let t1 = lab.json(&["snapshot", "demo", "--json"]);
    let t2 = lab.json(&["snapshot", "demo", "--json"]);
    assert_eq!((&t1["state"], &t2["state"]), (&Value::from("complete"), &Value::from("complete")));
    (t1["name"].as_str().unwrap().to_owned(), t2["name"].as_str().unwrap().to_owned())
}

/// Deleting T2 (the newest) merges each active overlay into T2's image with
/// an active commit. The controller dies right after the first commit job
/// started: QEMU's job goes on to ready and waits there for a pivot that
/// never comes. `recover` aborts it (the disk stays on its chain, which
/// reads as before), then finishes the delete (T2 is `deleted` already):
/// one active commit per disk, the guests running with their data
/// throughout, every chain one image shorter and the catalog's.
fn delete_crashed_with_its_commit_job_running_is_aborted_then_finished(lab: &LabUnderTest, t2: &str) {
    let before = live_chains(lab);
    let boots = boot_ids(lab);

    crash(lab, &["delete-snapshot", "demo", t2, "--json"], "delete:commit-started");

    let jobs = block_jobs(lab);
    assert_eq!(jobs.len(), 1, "the first commit's job outlives the controller: {jobs:?}");
    assert_eq!(live_chains(lab), before, "an active commit moves nothing before its pivot");
    assert_eq!(snapshot_state(lab, t2), "deleted");
    let report = recover(lab, &[]);

    let op = only_operation(&report);
    assert_eq!((op["kind"].as_str(), op["outcome"].as_str()), (Some("delete-snapshot"), Some("rolled-back")), "{op:#}");
    let aborts: Vec<&Value> = op["undo"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["action"].as_str().unwrap().starts_with("abort the block job"))
        .collect();
    assert_eq!(aborts.len(), 1, "{op:#}");
    assert_eq!(aborts[0]["status"], "done", "{op:#}");
    let merged = finished_delete(&report, t2);
    assert_eq!(merged.len(), before.len(), "{report:#}");
    assert!(merged.iter().all(|m| m["method"] == "active-commit"), "{report:#}");
    assert_delete_done(lab, t2, &before, &boots);
}

/// Deleting T1 (now the newest snapshot) commits each active overlay into
/// T1's image. The controller dies after the first disk's commit finished
/// and pivoted, before the catalog heard of it: QEMU writes to T1's image,
/// which the catalog still records below the merged overlay. `recover`
/// finishes the delete: that merge is recognised and recorded (not redone),
/// the other disks are committed; the guests run on with their data, every
/// chain one image shorter, on T1's image, and the catalog's.
fn delete_crashed_after_its_pivot_keeps_the_guests_on_valid_chains_then_finishes(lab: &LabUnderTest, t1: &str) {
    let before = live_chains(lab);
    let boots = boot_ids(lab);
    let t1_images = images_of(&Catalog::open(&lab.config().controller.state_dir).unwrap(), t1);

    crash(lab, &["delete-snapshot", "demo", t1, "--json"], "delete:commit");

    let crashed = live_chains(lab);
    let pivoted: Vec<&(String, String)> =
        crashed.iter().filter(|(disk, chain)| chain[0] == t1_images[*disk]).map(|(disk, _)| disk).collect();
    assert_eq!(pivoted.len(), 1, "the first disk's commit pivoted: {crashed:?}");
    assert!(block_jobs(lab).is_empty());
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    let pivoted_into = catalog.image_by_path(&crashed[pivoted[0]][0]).unwrap().unwrap();
    assert_eq!(catalog.children_of(pivoted_into.id).unwrap().len(), 1, "the catalog lags behind the pivot");
    let report = recover(lab, &[]);

    let op = only_operation(&report);
    assert_eq!((op["kind"].as_str(), op["outcome"].as_str()), (Some("delete-snapshot"), Some("rolled-back")), "{op:#}");
    let merged = finished_delete(&report, t1);
    assert_eq!(merged.len(), before.len(), "{report:#}");
    assert!(merged.iter().all(|m| m["method"] == "active-commit"), "{report:#}");
    assert_delete_done(lab, t1, &before, &boots);
    for (disk, chain) in live_chains(lab) {
        assert_eq!(chain[0], t1_images[&disk], "{disk:?}: on T1's image");
    }
}

/// After a delete that `recover` finished: no job left, every chain one
/// image shorter than `before` and the catalog's, the guests never rebooted
/// (`boots`) and hold their data; a second `recover` finds nothing; deleting
/// the snapshot again says it is deleted already.
fn assert_delete_done(
    lab: &LabUnderTest,
    snapshot: &str,
    before: &BTreeMap<(String, String), Vec<PathBuf>>,
    boots: &[String],
) {
    assert!(block_jobs(lab).is_empty(), "a job is left");
    for (disk, chain) in live_chains(lab) {
        assert_eq!(chain.len() + 1, before[&disk].len(), "{disk:?}: {chain:?}");
    }
    assert_eq!(snapshot_state(lab, snapshot), "deleted");
    assert_eq!(boot_ids(lab), boots, "a guest rebooted");
    assert_markers(lab, "delete");
    assert_healthy(lab);
    assert_web_serves_db(lab);
    assert_chains_match_the_catalog(lab);
    assert_nothing_left(lab);

    let again = lab.json(&["delete-snapshot", "demo", snapshot, "--json"]);

    assert_eq!((&again["deleted"], &again["already_deleted"]), (&Value::Bool(true), &Value::Bool(true)), "{again:#}");
}

/// What `recover` merged when it ran the delete of `snapshot` again.
fn finished_delete<'r>(report: &'r Value, snapshot: &str) -> &'r Vec<Value> {
    let deletes = report["environments"][0]["deletes"].as_array().unwrap();
    assert_eq!(deletes.len(), 1, "{report:#}");
    assert_eq!((deletes[0]["snapshot"].as_str(), deletes[0]["outcome"].as_str()), (Some(snapshot), Some("finished")));
    eprintln!("recover finished the delete of {snapshot} in {} ms", deletes[0]["report"]["duration_ms"]);
    deletes[0]["report"]["merged"].as_array().unwrap()
}

/// Runs `envclone snapshot demo` armed to crash at `point`; asserts it did.
fn crash_snapshot(lab: &LabUnderTest, point: &str, args: &[&str]) {
    crash(lab, &[&["snapshot", "demo"], args].concat(), &format!("snapshot:{point}"));
}

/// Runs `envclone ARGS` armed to crash at `point` (`operation:step`); asserts it did.
fn crash(lab: &LabUnderTest, args: &[&str], point: &str) {
    let started = Instant::now();
    let output = lab.envclone_crashing_at(args, point);
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "not killed at {point}: {}", stderr(&output));
    assert!(stderr(&output).contains(&format!("crash point {point} reached")), "{}", stderr(&output));
    eprintln!("envclone {} killed at {point} after {} ms", args.join(" "), started.elapsed().as_millis());
}

/// `envclone recover demo --json ARGS`: exit 0 and its report.
fn recover(lab: &LabUnderTest, args: &[&str]) -> Value {
    let output = lab.envclone(&[&["recover", "demo", "--json"], args].concat());
    assert_eq!(output.status.code(), Some(0), "recover {args:?}: {}{}", stdout(&output), stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    eprintln!("recover {args:?}: {}", serde_json::to_string(&report).unwrap());
    report
}

/// A second `recover` (all environments, human output) finds nothing to do.
fn assert_nothing_left(lab: &LabUnderTest) {
    let output = lab.envclone(&["recover"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("nothing to recover"), "{}", stdout(&output));
    assert!(Catalog::open(&lab.config().controller.state_dir).unwrap().interrupted_operations().unwrap().is_empty());
}

fn only_operation(report: &Value) -> &Value {
    let env = &report["environments"][0];
    assert_eq!(env["env"], "demo");
    let operations = env["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 1, "{report:#}");
    &operations[0]
}

fn checks(report: &Value) -> Vec<&Value> {
    report["environments"][0]["checks"].as_array().unwrap().iter().collect()
}

/// Both agents report nothing frozen and no freeze at work; how long that took.
fn wait_thawed(lab: &LabUnderTest) -> Duration {
    let started = Instant::now();
    for vm in ["web", "db"] {
        envclone::wait::until(&format!("{vm} to thaw"), THAWED_WITHIN, Duration::from_millis(100), || {
            let session = lab.session(vm);
            AgentClient::new(&session).status().map(|s| (s.frozen.is_empty() && !s.freeze_in_progress).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{vm} stayed frozen: {e}"));
    }
    started.elapsed()
}

/// Both agents answer (after a boot); how long that took.
fn wait_for_agents(lab: &LabUnderTest) -> Duration {
    let started = Instant::now();
    for vm in ["web", "db"] {
        envclone::wait::until(&format!("the agent of {vm}"), BOOTED_WITHIN, Duration::from_millis(500), || {
            let config = lab.config();
            let (_, vm_config) = config.vm("demo", vm).unwrap();
            let target = envclone::guest::endpoint::ssh_target(&vm_config.agent);
            let session = GuestSession::connect(&target, &envclone::guest::endpoint::ssh_options(&config.controller))?;
            AgentClient::new(&session).status().map(Some)
        })
        .unwrap_or_else(|e| panic!("{vm}: {e}"));
    }
    started.elapsed()
}

/// Each guest's boot id: it changes when the guest reboots.
fn boot_ids(lab: &LabUnderTest) -> Vec<String> {
    ["web", "db"].into_iter().map(|vm| lab.sh(vm, "cat /proc/sys/kernel/random/boot_id")).collect()
}

/// `marker` on both guests, on disk.
fn write_marker(lab: &LabUnderTest, marker: &str) {
    for vm in ["web", "db"] {
        run(&lab.session(vm), &format!("echo {marker} > /root/marker; sync"));
    }
}

/// Both guests read `marker`.
fn assert_markers(lab: &LabUnderTest, marker: &str) {
    for vm in ["web", "db"] {
        assert_eq!(run(&lab.session(vm), "cat /root/marker").trim(), marker, "{vm}");
    }
}

/// web answers with the records it fetches from db (through the lab's namespace).
fn assert_web_serves_db(lab: &LabUnderTest) {
    let page = envclone::wait::until("web to serve db's records", BOOTED_WITHIN, Duration::from_millis(500), || {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.netns(), "curl", "-sS", "--max-time", "10", WEB_URL])
            .output()?;
        let page = stdout(&output);
        Ok::<_, std::io::Error>((page.trim_end() == DB_RECORDS.trim_end()).then_some(page))
    });
    page.unwrap_or_else(|e| panic!("{e}"));
}

/// Both domains run, their agents answer, nothing is frozen, and every
/// disk's live chain reads end to end (`qemu-img info --backing-chain`).
fn assert_healthy(lab: &LabUnderTest) {
    for domain in DOMAINS {
        assert_eq!(state(lab, domain), DomainState::Running, "{domain}");
    }
    for vm in ["web", "db"] {
        let status = AgentClient::new(&lab.session(vm)).status().unwrap();
        assert!(status.frozen.is_empty() && !status.freeze_in_progress, "{vm}: {status:?}");
    }
    for ((domain, _), source) in sources(lab) {
        let output = Command::new("qemu-img")
            .args(["info", "-U", "--backing-chain", "--output=json"])
            .arg(&source)
            .output()
            .unwrap();
        assert!(output.status.success(), "{domain}: {}: {}", source.display(), stderr(&output));
        let chain: Value = serde_json::from_slice(&output.stdout).unwrap();
        let files: Vec<&str> = chain.as_array().unwrap().iter().map(|i| i["filename"].as_str().unwrap()).collect();
        assert!(!files.is_empty() && files.iter().all(|f| Path::new(f).is_file()), "{domain}: {files:?}");
        assert_eq!(files[0], source.to_str().unwrap());
    }
}

/// libvirt's live chain of every disk and `qemu-img info -U --backing-chain`
/// of its image agree, and start with the catalog's chain of that image (the
/// catalog's ends at envclone's base; what lies below is the lab's).
fn assert_chains_match_the_catalog(lab: &LabUnderTest) {
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    for ((vm, disk), live) in live_chains(lab) {
        let on_disk = on_disk_chain(&live[0]);
        assert_eq!(live, on_disk, "{vm}/{disk}: libvirt and qemu-img disagree");
        let active = catalog.image_by_path(&live[0]).unwrap().unwrap_or_else(|| panic!("{vm}/{disk}: not recorded"));
        let recorded: Vec<PathBuf> = catalog.chain(active.id).unwrap().into_iter().map(|i| i.path).collect();
        assert!(on_disk.starts_with(&recorded), "{vm}/{disk}: catalog {recorded:?}, on disk {on_disk:?}");
    }
}

/// Each disk's live chain (source first) by (VM, target), as libvirt reports it.
fn live_chains(lab: &LabUnderTest) -> BTreeMap<(String, String), Vec<PathBuf>> {
    let hv = hv(lab);
    let mut chains = BTreeMap::new();
    for domain in DOMAINS {
        for disk in hv.domain(domain).unwrap().def.disks() {
            if disk.device != "disk" || disk.readonly {
                continue;
            }
            let vm = domain.strip_prefix("demo-").unwrap().to_owned();
            chains.insert((vm, disk.target), disk.source.into_iter().chain(disk.backing).collect());
        }
    }
    chains
}

/// `qemu-img info -U --backing-chain` of `image`: the files, top first.
fn on_disk_chain(image: &Path) -> Vec<PathBuf> {
    let output =
        Command::new("qemu-img").args(["info", "-U", "--backing-chain", "--output=json"]).arg(image).output().unwrap();
    assert!(output.status.success(), "qemu-img info {}: {}", image.display(), stderr(&output));
    envclone::host::parse_chain(&output.stdout).unwrap()
}

/// The block jobs running on any disk: (domain, disk).
fn block_jobs(lab: &LabUnderTest) -> Vec<(String, String)> {
    let hv = hv(lab);
    live_chains(lab)
        .into_keys()
        .map(|(vm, disk)| (format!("demo-{vm}"), disk))
        .filter(|(domain, disk)| hv.block_job(domain, disk).unwrap().is_some())
        .collect()
}

/// The disk images `snapshot` pins, by (VM, target).
fn images_of(catalog: &Catalog, snapshot: &str) -> BTreeMap<(String, String), PathBuf> {
    catalog
        .images_needed_by(&snapshot_dependent("demo", snapshot))
        .unwrap()
        .into_iter()
        .filter(|i| i.kind != ImageKind::Memory)
        .map(|i| ((i.vm, i.disk.unwrap()), i.path))
        .collect()
}

fn hv(lab: &LabUnderTest) -> LibvirtHypervisor {
    LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap()
}

fn state(lab: &LabUnderTest, domain: &str) -> DomainState {
    hv(lab).domain(domain).unwrap().state
}

/// Every disk of both domains, by (domain, target), as libvirt reports it live.
fn sources(lab: &LabUnderTest) -> BTreeMap<(String, String), PathBuf> {
    let hv = hv(lab);
    DOMAINS
        .into_iter()
        .flat_map(|domain| {
            let disks = hv.domain(domain).unwrap().def.disks();
            disks
                .into_iter()
                .filter(|d| d.device == "disk" && !d.readonly)
                .map(move |d| ((domain.to_owned(), d.target), d.source.unwrap()))
        })
        .collect()
}

fn storage_dir(lab: &LabUnderTest) -> PathBuf {
    let config = lab.config();
    config.environments["demo"].storage_dir(&config, "demo")
}

fn snapshot_state(lab: &LabUnderTest, name: &str) -> String {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    let found = list.as_array().unwrap().iter().find(|s| s["name"] == name);
    found.unwrap_or_else(|| panic!("snapshot {name} is not listed: {list:#}"))["state"].as_str().unwrap().to_owned()
}

/// The state of the newest undo snapshot of a restore of `snapshot`.
fn undo_snapshot_state(lab: &LabUnderTest, snapshot: &str) -> String {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    let label = format!("undo-before-restore-{snapshot}");
    let undo = list.as_array().unwrap().iter().rev().find(|s| s["label"] == label.as_str());
    undo.unwrap_or_else(|| panic!("no {label}: {list:#}"))["state"].as_str().unwrap().to_owned()
}

fn last_snapshot_state(lab: &LabUnderTest) -> String {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    list.as_array().unwrap().last().unwrap()["state"].as_str().unwrap().to_owned()
}

fn is_mem(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "mem")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
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

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
