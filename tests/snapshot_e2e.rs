//! End to end: `envclone snapshot` and `envclone snapshots` on a real lab
//! (two TCG guests, web and db, under a private libvirtd in a network
//! namespace; their agents reached over SSH). Needs root and the packages
//! of scripts/install-deps.sh; the static agent is built by
//! scripts/build.sh. All traffic stays inside the lab's namespace.
//!
//! One lab for the whole binary (booting one costs ~30 s): the scenarios
//! run one after the other in a single test, each leaving both guests
//! running and thawed. The memory scenario comes last: it replaces web by
//! its restored copy.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{run, stdout, LabUnderTest};
use envclone::guest::{AgentClient, GuestSession};
use envclone::hypervisor::{Hypervisor, LibvirtHypervisor};
use serde_json::Value;

const LAB: &str = "snapshot";

/// Generous: TCG guests are slow when other labs run too.
const SLOW: Duration = Duration::from_secs(60);

#[test]
fn snapshot_end_to_end() {
    let lab = LabUnderTest::up(LAB);

    writer_loses_nothing_and_the_snapshot_checks_clean(&lab);
    a_second_operation_is_refused_as_busy(&lab);
    required_with_an_agent_down_fails_and_changes_nothing(&lab);
    best_effort_with_an_agent_down_records_it_crash_consistent(&lab);
    failing_pre_freeze_hook_fails_naming_it_and_leaves_nothing_frozen(&lab);
    memory_snapshot_restores_a_running_process_with_its_state(&lab);
    listing_shows_every_snapshot_with_its_consistency(&lab);
}

/// A writer appends numbered lines to /root/records on web, syncing after
/// each, as fast as it can. Snapshot meanwhile: the writer loses nothing
/// and sees no error; the snapshot's image of vda fscks clean and holds a
/// gap-free prefix of the records; the chain on disk is active overlay ->
/// snapshot image -> base.
fn writer_loses_nothing_and_the_snapshot_checks_clean(lab: &LabUnderTest) {
    let web = lab.session("web");
    common::put(
        &web,
        "/run/writer.sh",
        br#"i=0
while [ ! -e /run/stop-writer ]; do
    i=$((i+1))
    echo "$i" >> /root/records || echo "append $i failed: $?" >> /run/writer.err
    sync || echo "sync after $i failed: $?" >> /run/writer.err
done
echo "$i" > /run/writer.done
"#,
    );
    run(&web, "rm -f /root/records /run/writer.err /run/writer.done /run/stop-writer");
    run(&web, "sh /run/writer.sh </dev/null >/dev/null 2>&1 &");
    wait_for(lab, "web", "the writer to append 20 records", "[ $(wc -l < /root/records) -ge 20 ] && echo yes");

    let report = snapshot_json(lab, &["snapshot", "demo", "--label", "writer", "--json"]);

    run(&web, "sleep 1; touch /run/stop-writer");
    wait_for(lab, "web", "the writer to stop", "cat /run/writer.done");
    let written: usize = run(
        &web,
        r#"awk 'NR != $1 { print "line " NR " is " $0; bad = 1 } END { if (bad) exit 1; print NR }' /root/records"#,
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(run(&web, "cat /run/writer.err 2>/dev/null; true"), "", "the writer saw errors");
    assert!(report.vms.iter().all(|vm| vm.consistency == "app-consistent"), "{report:?}");
    eprintln!(
        "writer snapshot {}: freeze window {} ms, took {} ms; the writer wrote {written} records",
        report.name, report.window_ms, report.duration_ms
    );
    assert!(report.window_ms < 5000);

    // The snapshot's image of web's root disk, as a raw copy: fsck clean, records a gap-free prefix.
    let vda = report.disk("web", "vda");
    let raw = lab.dir().join("web-vda.raw");
    host(&["qemu-img", "convert", "-U", "-O", "raw", &path_str(&vda.image), &path_str(&raw)]);
    let fsck = Command::new("fsck.ext4").args(["-n", "-f"]).arg(&raw).output().unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "fsck of the snapshot: {}{}",
        stdout(&fsck),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let records = host(&["debugfs", "-R", "cat /root/records", &path_str(&raw)]);
    let lines: Vec<&str> = records.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= written, "{} records in the snapshot, {written} written", lines.len());
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(line.trim(), (index + 1).to_string(), "record {} of the snapshot", index + 1);
    }
    eprintln!("the snapshot holds records 1..{} of {written}", lines.len());
    std::fs::remove_file(&raw).unwrap();

    // The chain on disk: active overlay -> the snapshot's image -> the lab's base image.
    let chain: Value = serde_json::from_str(&host(&[
        "qemu-img",
        "info",
        "-U",
        "--backing-chain",
        "--output=json",
        &path_str(&vda.overlay),
    ]))
    .unwrap();
    let files: Vec<&str> = chain.as_array().unwrap().iter().map(|i| i["filename"].as_str().unwrap()).collect();
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!((files[0], files[1]), (path_str(&vda.overlay).as_str(), path_str(&vda.image).as_str()));
    assert!(files[2].contains("/lab-images/"), "{files:?}");
    assert_eq!(disk_sources(lab, "demo-web")[0], vda.overlay);
}

/// Another operation holds the environment: exit 3 and who holds it.
fn a_second_operation_is_refused_as_busy(lab: &LabUnderTest) {
    let state_dir = lab.config().controller.state_dir;
    let _held = envclone::ops::EnvLock::acquire(&state_dir, "demo", "restore").unwrap();

    let output = lab.envclone(&["snapshot", "demo"]);

    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("busy: restore started at"), "{message}");
    assert!(message.contains(&format!("by pid {}", std::process::id())), "{message}");
}

/// db's agent cannot be reached (a config whose db agent port is wrong):
/// `required` fails with exit 5 naming db, and nothing changes: no file,
/// no snapshot, the disks where they were.
fn required_with_an_agent_down_fails_and_changes_nothing(lab: &LabUnderTest) {
    let config = agent_down_config(lab);
    let before = (storage_files(lab), snapshot_names(lab), disk_sources(lab, "demo-web"), disk_sources(lab, "demo-db"));

    let output = lab.envclone(&["--config", &path_str(&config), "snapshot", "demo"]);

    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("VM 'db'") && message.contains("not ready"), "{message}");
    let after = (storage_files(lab), snapshot_names(lab), disk_sources(lab, "demo-web"), disk_sources(lab, "demo-db"));
    assert_eq!(after, before, "a refused snapshot changed something");
    assert_nothing_frozen(lab);
}

/// The same with `best-effort`: a complete snapshot, db crash-consistent
/// with the reason, web app-consistent.
fn best_effort_with_an_agent_down_records_it_crash_consistent(lab: &LabUnderTest) {
    let config = agent_down_config(lab);

    let report =
        snapshot_json(lab, &["--config", &path_str(&config), "snapshot", "demo", "--quiesce", "best-effort", "--json"]);

    let db = report.vm("db");
    assert_eq!(db["consistency"], "crash-consistent");
    assert!(db["reason"].as_str().unwrap().contains("agent not ready"), "{db}");
    assert_eq!(report.vm("web")["consistency"], "app-consistent");
    eprintln!(
        "best-effort snapshot {}: freeze window {} ms, took {} ms",
        report.name, report.window_ms, report.duration_ms
    );
}

/// A pre-freeze hook on db that fails: the snapshot fails naming the hook
/// and its stderr, nothing is frozen afterwards, no disk moved.
fn failing_pre_freeze_hook_fails_naming_it_and_leaves_nothing_frozen(lab: &LabUnderTest) {
    let db = lab.session("db");
    run(&db, "mkdir -p /etc/envclone/hooks.d");
    common::put(&db, "/etc/envclone/hooks.d/10-refuse", b"#!/bin/sh\necho 'db refused backup mode' >&2\nexit 3\n");
    run(&db, "chmod +x /etc/envclone/hooks.d/10-refuse");
    let before = (disk_sources(lab, "demo-web"), disk_sources(lab, "demo-db"));

    let output = lab.envclone(&["snapshot", "demo"]);

    run(&db, "rm -rf /etc/envclone/hooks.d");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    for expected in ["VM 'db'", "10-refuse", "db refused backup mode"] {
        assert!(message.contains(expected), "{expected:?} not in: {message}");
    }
    assert_nothing_frozen(lab);
    assert_eq!((disk_sources(lab, "demo-web"), disk_sources(lab, "demo-db")), before);
    let list = lab.json(&["snapshots", "demo", "--json"]);
    assert_eq!(list.as_array().unwrap().last().unwrap()["state"], "failed");
}

/// A process started on web before a `--memory` snapshot keeps running
/// with its state after web is restored from the snapshot's memory image:
/// its counter lives on /run (tmpfs), so only memory can have kept it.
fn memory_snapshot_restores_a_running_process_with_its_state(lab: &LabUnderTest) {
    let web = lab.session("web");
    common::put(&web, "/run/counter.sh", b"i=0\nwhile :; do i=$((i+1)); echo $i > /run/counter; sleep 1; done\n");
    run(&web, "sh /run/counter.sh </dev/null >/dev/null 2>&1 &");
    wait_for(lab, "web", "the counter to reach 3", "[ $(cat /run/counter) -ge 3 ] && cat /run/counter");
    let before: u64 = run(&web, "cat /run/counter").trim().parse().unwrap();

    let report = snapshot_json(lab, &["snapshot", "demo", "--memory", "--label", "memory", "--json"]);

    assert!(report.json["memory"].as_bool().unwrap());
    let image = PathBuf::from(report.vm("web")["memory_image"].as_str().unwrap());
    assert!(image.is_file());
    eprintln!(
        "memory snapshot {}: freeze window {} ms, took {} ms, web's memory image {} MiB",
        report.name,
        report.window_ms,
        report.duration_ms,
        std::fs::metadata(&image).unwrap().len() >> 20
    );
    drop(web);

    // Restore web from its memory image, on new overlays over the snapshot's images.
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    hv.destroy_domain("demo-web").unwrap();
    let restored_dir = lab.dir().join("restored");
    let restored = envclone::ops::snapshot::restore_memory_image(&hv, &image, &|disk| {
        restored_dir.join(format!("web.{}.qcow2", disk.target))
    })
    .unwrap();
    let vda = report.disk("web", "vda");
    assert_eq!(restored.overlays[0], ("vda".to_owned(), restored_dir.join("web.vda.qcow2"), vda.image.clone()));

    // The process runs, and its counter went on from where it was.
    let counter = wait_for(lab, "web", "the restored web to answer", "cat /run/counter");
    let after: u64 = counter.trim().parse().unwrap();
    assert!(after > before, "counter {after} after the restore, {before} before the snapshot");
    let web = lab.session("web");
    assert_eq!(run(&web, "ps | grep -c '[c]ounter.sh'").trim(), "1");
    let later: u64 = run(&web, "sleep 2; cat /run/counter").trim().parse().unwrap();
    assert!(later > after, "the counter stopped at {after}");
    // Captured frozen, it resumed frozen; its lease timeout thawed it.
    envclone::wait::until("the restored web to thaw", SLOW, Duration::from_millis(200), || {
        AgentClient::new(&web).status().map(|s| (s.frozen.is_empty() && !s.freeze_in_progress).then_some(()))
    })
    .expect("the restored guest thawed");
    eprintln!("restored web: counter {before} before the snapshot, {after} after the restore");
}

/// `snapshots --json`: every snapshot with state, consistency, memory and window.
fn listing_shows_every_snapshot_with_its_consistency(lab: &LabUnderTest) {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    let list = list.as_array().unwrap();
    let states: Vec<(&str, &str)> =
        list.iter().map(|s| (s["label"].as_str().unwrap_or(""), s["state"].as_str().unwrap())).collect();
    assert_eq!(states, [("writer", "complete"), ("", "complete"), ("", "failed"), ("memory", "complete")]);
    let memory = &list[3];
    assert_eq!(memory["memory"], true);
    assert!(memory["vms"].as_array().unwrap().iter().all(|vm| vm["memory"] == true));
    assert!(memory["size_bytes"].as_u64().unwrap() > 100 << 20, "{memory}");
    let best_effort = &list[1];
    let db = best_effort["vms"].as_array().unwrap().iter().find(|vm| vm["vm"] == "db").unwrap();
    assert_eq!(db["consistency"], "crash-consistent");
    assert!(list.iter().filter(|s| s["state"] == "complete").all(|s| s["freeze_window_ms"].as_u64().unwrap() < 5000));
    let human = stdout(&lab.envclone(&["snapshots", "demo"]));
    assert!(human.contains("memory") && human.contains("crash-consistent"), "{human}");
}

/// The parts of a `snapshot --json` report the scenarios look at.
#[derive(Debug)]
struct Report {
    json: Value,
    name: String,
    window_ms: u64,
    duration_ms: u64,
    vms: Vec<VmConsistency>,
}

#[derive(Debug)]
struct VmConsistency {
    consistency: String,
}

struct DiskPaths {
    image: PathBuf,
    overlay: PathBuf,
}

impl Report {
    fn vm(&self, vm: &str) -> &Value {
        self.json["vms"].as_array().unwrap().iter().find(|v| v["vm"] == vm).unwrap()
    }

    fn disk(&self, vm: &str, disk: &str) -> DiskPaths {
        let disk = self.vm(vm)["disks"].as_array().unwrap().iter().find(|d| d["disk"] == disk).unwrap();
        DiskPaths {
            image: PathBuf::from(disk["image"].as_str().unwrap()),
            overlay: PathBuf::from(disk["overlay"].as_str().unwrap()),
        }
    }
}

fn snapshot_json(lab: &LabUnderTest, args: &[&str]) -> Report {
    let json = lab.json(args);
    Report {
        name: json["name"].as_str().unwrap().to_owned(),
        window_ms: json["freeze_window_ms"].as_u64().unwrap(),
        duration_ms: json["duration_ms"].as_u64().unwrap(),
        vms: json["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|vm| VmConsistency { consistency: vm["consistency"].as_str().unwrap().to_owned() })
            .collect(),
        json,
    }
}

/// A copy of the lab's config whose db agent listens nowhere.
fn agent_down_config(lab: &LabUnderTest) -> PathBuf {
    let mut config = lab.config();
    config.environments.get_mut("demo").unwrap().vms.get_mut("db").unwrap().agent.port = 2;
    let path = lab.dir().join("db-agent-down.toml");
    std::fs::write(&path, envclone::config::to_toml(&config)).unwrap();
    path
}

/// Every file under the environment's snapshot storage.
fn storage_files(lab: &LabUnderTest) -> Vec<PathBuf> {
    let config = lab.config();
    let storage = config.environments["demo"].storage_dir(&config, "demo");
    let mut files = Vec::new();
    let mut dirs = vec![storage];
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

fn snapshot_names(lab: &LabUnderTest) -> Vec<String> {
    let list = lab.json(&["snapshots", "demo", "--json"]);
    list.as_array().unwrap().iter().map(|s| format!("{} {}", s["name"], s["state"])).collect()
}

fn disk_sources(lab: &LabUnderTest, domain: &str) -> Vec<PathBuf> {
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    hv.domain(domain).unwrap().def.disks().into_iter().filter_map(|d| d.source).collect()
}

fn assert_nothing_frozen(lab: &LabUnderTest) {
    for vm in ["web", "db"] {
        let status = AgentClient::new(&lab.session(vm)).status().unwrap();
        assert!(status.frozen.is_empty() && !status.freeze_in_progress, "{vm}: {status:?}");
    }
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
