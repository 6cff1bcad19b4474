//! End to end: `envclone restore` on a real lab (two TCG guests, web and
//! db, under a private libvirtd in a network namespace; their agents
//! reached over SSH). Needs root and the packages of
//! scripts/install-deps.sh; the static agent is built by scripts/build.sh.
//! All traffic stays inside the lab's namespace.
//!
//! One lab for the whole binary (booting one costs ~30 s): the scenarios
//! run one after the other in a single test, each leaving both guests
//! running on a valid chain, through the real `envclone` binary.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{run, stdout, LabUnderTest};
use envclone::guest::{AgentClient, GuestSession};
use envclone::hypervisor::{Hypervisor, LibvirtHypervisor};
use serde_json::Value;

const LAB: &str = "restore";
const WEB_URL: &str = "http://10.77.1.11/";

/// Generous: TCG guests are slow when other labs run too.
const SLOW: Duration = Duration::from_secs(120);

#[test]
fn restore_end_to_end() {
    let lab = LabUnderTest::up(LAB);

    let snapshot = restore_brings_both_vms_back_to_the_snapshots_data(&lab);
    the_undo_snapshot_brings_back_what_the_restore_replaced(&lab, &snapshot);
    memory_restore_resumes_a_running_process_with_its_state(&lab);
    refused_restores_change_nothing(&lab, &snapshot);
}

/// Known data on both VMs, a snapshot, more data, a restore: both VMs hold
/// exactly the snapshot's data, web still serves db's records, and each
/// active disk is new overlay -> snapshot image -> ... (-> the lab's base
/// for the root disk).
/// Returns the snapshot's name.
fn restore_brings_both_vms_back_to_the_snapshots_data(lab: &LabUnderTest) -> String {
    for vm in ["web", "db"] {
        run(&lab.session(vm), "echo before > /root/data; sync");
    }
    run(&lab.session("db"), "echo 'restore-e2e: before the snapshot' >> /srv/db/records; sync");
    wait_for_page(lab, "restore-e2e: before the snapshot");
    let snapshot = lab.json(&["snapshot", "demo", "--label", "before", "--json"]);
    let name = snapshot["name"].as_str().unwrap().to_owned();
    for vm in ["web", "db"] {
        run(&lab.session(vm), "echo after > /root/data; sync");
    }
    run(&lab.session("db"), "echo 'restore-e2e: after the snapshot' >> /srv/db/records; sync");
    wait_for_page(lab, "restore-e2e: after the snapshot");

    let report = restore_json(lab, &["restore", "demo", &name, "--json"]);

    eprintln!("restore of {name} (cold boot): {} ms", report["duration_ms"]);
    assert_eq!(report["snapshot"], name.as_str());
    assert_eq!(report["memory"], false);
    for vm in ["web", "db"] {
        assert_eq!(run(&lab.session(vm), "cat /root/data").trim(), "before", "{vm}");
    }
    let records = run(&lab.session("db"), "cat /srv/db/records");
    assert!(records.contains("restore-e2e: before the snapshot"), "{records}");
    assert!(!records.contains("restore-e2e: after the snapshot"), "{records}");
    let page = wait_for_page(lab, "restore-e2e: before the snapshot");
    assert!(!page.contains("after the snapshot"), "{page}");
    // The chains on disk: new overlay -> the snapshot's image -> ... -> the lab's cached base.
    for vm in report["vms"].as_array().unwrap() {
        let domain = vm["domain"].as_str().unwrap();
        for disk in vm["disks"].as_array().unwrap() {
            let overlay = PathBuf::from(disk["overlay"].as_str().unwrap());
            let image = disk["image"].as_str().unwrap();
            assert!(disk_sources(lab, domain).contains(&overlay), "{domain}: {overlay:?}");
            let files = backing_chain(&overlay);
            assert!(files.len() >= 2, "{files:?}");
            assert_eq!((files[0].as_str(), files[1].as_str()), (path_str(&overlay).as_str(), image), "{files:?}");
            // The root disk's chain ends in the lab's cached image; the seed disk is an image of its own.
            if disk["disk"] == "vda" {
                assert!(files.len() >= 3 && files.last().unwrap().contains("/lab-images/"), "{files:?}");
            }
        }
    }
    name
}

/// The state the restore replaced is the undo snapshot: listed, and
/// restoring it brings back "after" on both VMs.
fn the_undo_snapshot_brings_back_what_the_restore_replaced(lab: &LabUnderTest, snapshot: &str) {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    let undo = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == format!("undo-before-restore-{snapshot}").as_str())
        .expect("the undo snapshot is listed");
    assert_eq!(undo["state"], "complete");
    let undo_name = undo["name"].as_str().unwrap().to_owned();
    eprintln!("undo snapshot {undo_name}: {}", undo["vms"]);
    assert!(undo["vms"].as_array().unwrap().iter().all(|vm| vm["consistency"] == "app-consistent"), "{undo}");

    let report = restore_json(lab, &["restore", "demo", &undo_name, "--json"]);

    eprintln!("restore of the undo snapshot {undo_name}: {} ms", report["duration_ms"]);
    for vm in ["web", "db"] {
        assert_eq!(run(&lab.session(vm), "cat /root/data").trim(), "after", "{vm}");
    }
    wait_for_page(lab, "restore-e2e: after the snapshot");
}

/// A counter process on web (its state only in memory: /run is a tmpfs),
/// a `--memory` snapshot, the process killed, a `--memory` restore: the
/// process runs again and its counter went on; the guests are thawed and
/// their clocks are the host's.
fn memory_restore_resumes_a_running_process_with_its_state(lab: &LabUnderTest) {
    let web = lab.session("web");
    common::put(&web, "/run/counter.sh", b"i=0\nwhile :; do i=$((i+1)); echo $i > /run/counter; sleep 1; done\n");
    run(&web, "sh /run/counter.sh </dev/null >/dev/null 2>&1 & echo $! > /run/counter.pid");
    wait_for(lab, "web", "the counter to reach 3", "[ $(cat /run/counter) -ge 3 ] && cat /run/counter");
    let before: u64 = run(&web, "cat /run/counter").trim().parse().unwrap();
    let snapshot = lab.json(&["snapshot", "demo", "--memory", "--label", "memory", "--json"]);
    let name = snapshot["name"].as_str().unwrap().to_owned();
    run(&web, "kill $(cat /run/counter.pid); rm -f /run/counter");
    assert_eq!(run(&web, "ps | grep -c '[c]ounter.sh'; true").trim(), "0");
    drop(web);

    let report = restore_json(lab, &["restore", "demo", &name, "--memory", "--json"]);

    eprintln!("restore of {name} from memory: {} ms", report["duration_ms"]);
    assert_eq!(report["memory"], true);
    let web = lab.session("web");
    assert_eq!(run(&web, "ps | grep -c '[c]ounter.sh'").trim(), "1", "the counter runs again");
    let after: u64 = run(&web, "cat /run/counter").trim().parse().unwrap();
    assert!(after >= before, "counter {after} after the restore, {before} before the snapshot");
    let later: u64 = run(&web, "sleep 2; cat /run/counter").trim().parse().unwrap();
    assert!(later > after, "the counter stopped at {after}");
    for vm in ["web", "db"] {
        let status = AgentClient::new(&lab.session(vm)).status().unwrap();
        assert!(status.frozen.is_empty() && !status.freeze_in_progress, "{vm}: {status:?}");
        let host = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((status.guest_time as i64 - host).abs() <= 5, "{vm}: guest clock {} vs host {host}", status.guest_time);
        let vm_report = report["vms"].as_array().unwrap().iter().find(|v| v["vm"] == vm).unwrap();
        eprintln!("{vm}: clock stepped {} ms", vm_report["clock_step_ms"]);
        assert_eq!(vm_report["start"], "memory");
    }
    eprintln!("restored web: counter {before} at the snapshot, {after} after the restore, {later} two seconds later");
    wait_for_page(lab, "restore-e2e: after the snapshot");
}

/// An unknown snapshot (exit 4, the known ones in the hint), `--memory` on
/// a disk-only snapshot (exit 2) and a busy environment (exit 3) change
/// nothing: same domains running on the same disks, same snapshots.
fn refused_restores_change_nothing(lab: &LabUnderTest, disk_only: &str) {
    let before = (disk_sources(lab, "demo-web"), disk_sources(lab, "demo-db"), snapshot_names(lab));

    let unknown = lab.envclone(&["restore", "demo", "20000101T000000Z"]);
    let memory = lab.envclone(&["restore", "demo", disk_only, "--memory"]);
    let busy = {
        let _held = envclone::ops::EnvLock::acquire(&lab.config().controller.state_dir, "demo", "snapshot").unwrap();
        lab.envclone(&["restore", "demo", disk_only])
    };

    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
    let message = stderr(&unknown);
    assert!(message.contains("no snapshot named \"20000101T000000Z\"") && message.contains(disk_only), "{message}");
    assert_eq!(memory.status.code(), Some(2), "{}", stderr(&memory));
    let message = stderr(&memory);
    assert!(message.contains("taken without memory; nothing was changed"), "{message}");
    assert!(message.contains("hint: restore without --memory"), "{message}");
    assert_eq!(busy.status.code(), Some(3), "{}", stderr(&busy));
    assert!(stderr(&busy).contains("busy: snapshot started at"), "{}", stderr(&busy));
    let after = (disk_sources(lab, "demo-web"), disk_sources(lab, "demo-db"), snapshot_names(lab));
    assert_eq!(after, before, "a refused restore changed something");
    for vm in ["web", "db"] {
        AgentClient::new(&lab.session(vm)).status().unwrap();
    }
}

/// `envclone restore ... --json`, timed, its report parsed.
fn restore_json(lab: &LabUnderTest, args: &[&str]) -> Value {
    let started = Instant::now();
    let report = lab.json(args);
    eprintln!("envclone {}: {:.1} s wall", args.join(" "), started.elapsed().as_secs_f64());
    report
}

/// Polls web's page until it holds `text`; returns it.
fn wait_for_page(lab: &LabUnderTest, text: &str) -> String {
    envclone::wait::until(&format!("web's page to show {text:?}"), SLOW, Duration::from_millis(500), || {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.netns(), "curl", "-sS", "--max-time", "10", WEB_URL])
            .output()?;
        let page = stdout(&output);
        Ok::<_, std::io::Error>(page.contains(text).then_some(page))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `command` in `vm` (a new session each try) until it succeeds with
/// some output; returns that output.
fn wait_for(lab: &LabUnderTest, vm: &str, what: &str, command: &str) -> String {
    let config = lab.config();
    let (_, vm_config) = config.vm("demo", vm).unwrap();
    let target = envclone::guest::endpoint::ssh_target(&vm_config.agent);
    let options = envclone::guest::endpoint::ssh_options(&config.controller);
    envclone::wait::until(what, SLOW, Duration::from_millis(200), || {
        let session = GuestSession::connect(&target, &options)?;
        let output = session.exec(command, None)?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        Ok::<_, envclone::guest::GuestError>((output.status == 0 && !text.trim().is_empty()).then_some(text))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `qemu-img info --backing-chain` of `image`: the file names, top first.
fn backing_chain(image: &Path) -> Vec<String> {
    let output =
        Command::new("qemu-img").args(["info", "-U", "--backing-chain", "--output=json"]).arg(image).output().unwrap();
    assert!(output.status.success(), "qemu-img info {}: {}", image.display(), stderr(&output));
    let chain: Value = serde_json::from_slice(&output.stdout).unwrap();
    chain.as_array().unwrap().iter().map(|i| i["filename"].as_str().unwrap().to_owned()).collect()
}

fn snapshot_names(lab: &LabUnderTest) -> Vec<String> {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    list.as_array().unwrap().iter().map(|s| format!("{} {}", s["name"], s["state"])).collect()
}

fn disk_sources(lab: &LabUnderTest, domain: &str) -> Vec<PathBuf> {
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    hv.domain(domain).unwrap().def.disks().into_iter().filter_map(|d| d.source).collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
