//! End to end: `envclone recover` after `envclone snapshot` was killed at
//! its crash points (`ENVCLONE_CRASHPOINT`, a test hook: the process
//! aborts on the spot, like a SIGKILL) on a real lab (two TCG guests, web
//! and db, under a private libvirtd in a network namespace; their agents
//! reached over SSH). Needs root and the packages of
//! scripts/install-deps.sh; the static agent is built by scripts/build.sh.
//! All traffic stays inside the lab's namespace.
//!
//! One lab for the whole binary (booting one costs ~30 s): the scenarios
//! run one after the other in a single test, each leaving both guests
//! running, thawed and on valid chains, with nothing left to recover.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{stdout, LabUnderTest};
use envclone::catalog::{Catalog, ImageKind};
use envclone::guest::AgentClient;
use envclone::hypervisor::{DomainState, Hypervisor, LibvirtHypervisor};
use serde_json::Value;

const LAB: &str = "recover";
const DOMAINS: [&str; 2] = ["demo-db", "demo-web"];
/// The agents' lease timeout is the environment's freeze_timeout (5 s):
/// a guest whose controller died is thawed well within this.
const THAWED_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn recover_end_to_end() {
    let lab = LabUnderTest::up(LAB);

    crash_while_frozen_is_rolled_back_and_nothing_stays_frozen(&lab);
    crash_after_the_disk_snapshots_keeps_the_new_overlays_and_records_them(&lab);
    crash_at_the_memory_point_resumes_the_guest_and_removes_the_memory_image(&lab);
    a_snapshot_after_all_this_succeeds(&lab);
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
fn a_snapshot_after_all_this_succeeds(lab: &LabUnderTest) {
    let report = lab.json(&["snapshot", "demo", "--json"]);

    assert_eq!(report["state"], "complete");
    assert_healthy(lab);
}

/// Runs `envclone snapshot demo` armed to crash at `point`; asserts it did.
fn crash_snapshot(lab: &LabUnderTest, point: &str, args: &[&str]) {
    let output = envclone(lab, &[&["snapshot", "demo"], args].concat(), Some(&format!("snapshot:{point}")));
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "not killed at {point}: {}", stderr(&output));
    assert!(stderr(&output).contains(&format!("crash point snapshot:{point} reached")), "{}", stderr(&output));
}

/// `envclone recover demo --json ARGS`: exit 0 and its report.
fn recover(lab: &LabUnderTest, args: &[&str]) -> Value {
    let output = envclone(lab, &[&["recover", "demo", "--json"], args].concat(), None);
    assert_eq!(output.status.code(), Some(0), "recover {args:?}: {}{}", stdout(&output), stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    eprintln!("recover {args:?}: {}", serde_json::to_string(&report).unwrap());
    report
}

/// A second `recover` (all environments, human output) finds nothing to do.
fn assert_nothing_left(lab: &LabUnderTest) {
    let output = envclone(lab, &["recover"], None);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("nothing to recover"), "{}", stdout(&output));
    assert!(Catalog::open(&lab.config().controller.state_dir).unwrap().interrupted_operations().unwrap().is_empty());
}

fn envclone(lab: &LabUnderTest, args: &[&str], crashpoint: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_envclone"));
    command
        .args(args)
        .env("ENVCLONE_LAB", &lab.name)
        .env("ENVCLONE_LABS_DIR", lab.dir().parent().unwrap())
        .env("ENVCLONE_CONFIG", lab.config_path())
        .env_remove("ENVCLONE_LIBVIRT_URI")
        .env_remove(envclone::ops::crashpoint::VARIABLE);
    if let Some(point) = crashpoint {
        command.env(envclone::ops::crashpoint::VARIABLE, point);
    }
    command.output().expect("run envclone")
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
    config.environments["demo"].storage_dir(&config.controller, "demo")
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
