//! End to end: `envclone clone`, `clones` and `destroy` on a real lab (two
//! TCG guests, web and db, under a private libvirtd in a network
//! namespace). Needs root and the packages of scripts/install-deps.sh; the
//! static agent is built by scripts/build.sh. All traffic stays inside the
//! lab's namespace and the clone's gateway namespace.
//!
//! One lab for the whole binary: the scenarios run one after the other in
//! a single test, through the real `envclone` binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{run, stdout, LabUnderTest};
use envclone::catalog::Catalog;
use envclone::guest::endpoint::{ssh_options, ssh_target};
use envclone::guest::GuestSession;
use envclone::hypervisor::{Hypervisor, LibvirtHypervisor};
use serde_json::Value;

const LAB: &str = "clone";
const CLONE: &str = "c1";
const GATEWAY_NETNS: &str = "envclone-c-c1";
const WEB_URL: &str = "http://10.77.1.11/";

/// Generous: TCG guests are slow when other labs run too.
const SLOW: Duration = Duration::from_secs(120);

#[test]
fn clone_end_to_end() {
    let lab = LabUnderTest::up(LAB);
    // A first snapshot, so that the clone's own snapshot holds overlays
    // (a snapshot of the VMs' base images is released on delete, never merged).
    lab.json(&["snapshot", "demo", "--json"]);
    let sources = source_state(&lab);

    let report = clone_boots_an_isolated_copy_that_serves_next_to_the_source(&lab, &sources);
    writes_stay_on_their_side(&lab);
    deleting_the_clones_snapshot_is_deferred(&lab, report["snapshot"].as_str().unwrap());
    destroy_leaves_nothing_behind(&lab, &report, &sources);
    let memory_snapshot = a_resumed_clone_carries_on_with_the_memory_of_the_snapshot(&lab);
    a_full_clone_has_disks_of_its_own(&lab, &memory_snapshot);
    refused_clones_and_destroys_change_nothing(&lab);
    lab_down_removes_the_gateway_of_a_clone_left_behind(&lab, &memory_snapshot);
}

fn lab_down_removes_the_gateway_of_a_clone_left_behind(lab: &LabUnderTest, snapshot: &str) {
    lab.json(&["clone", "demo", "--name", "c4", "--from", snapshot, "--start", "off", "--json"]);
    assert!(Path::new("/run/netns/envclone-c-c4").exists());

    let down = lab.envclone(&["lab", "down"]);

    assert!(down.status.success(), "{}", stderr(&down));
    assert!(!Path::new("/run/netns/envclone-c-c4").exists());
}

/// The source's domains: UUIDs and disk sources, and each disk's chain on disk.
#[derive(Debug, PartialEq)]
struct SourceState {
    uuids: Vec<String>,
    disks: Vec<PathBuf>,
    chains: Vec<Vec<String>>,
}

fn source_state(lab: &LabUnderTest) -> SourceState {
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    let mut state = SourceState { uuids: Vec::new(), disks: Vec::new(), chains: Vec::new() };
    for domain in ["demo-web", "demo-db"] {
        let domain = hv.domain(domain).unwrap();
        state.uuids.push(domain.uuid.clone());
        for disk in domain.def.disks().into_iter().filter_map(|d| d.source) {
            state.chains.push(backing_chain(&disk));
            state.disks.push(disk);
        }
    }
    state
}

fn clone_boots_an_isolated_copy_that_serves_next_to_the_source(lab: &LabUnderTest, before: &SourceState) -> Value {
    run(&lab.session("db"), "echo 'clone-e2e: before the clone' >> /srv/db/records; sync");
    wait_for_page(&lab.netns(), "clone-e2e: before the clone");

    let report = lab.json(&["clone", "demo", "--name", CLONE, "--disks", "linked", "--start", "boot", "--json"]);

    eprintln!("clone: {} ms", report["duration_ms"]);
    assert_eq!(report["snapshot_taken"], true, "{report:#}");
    assert_eq!(report["gateway_netns"], GATEWAY_NETNS);
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    for vm in report["vms"].as_array().unwrap() {
        let domain = hv.domain(vm["domain"].as_str().unwrap()).unwrap();
        assert!(domain.state.is_active(), "{vm:#}");
        assert!(!before.uuids.contains(&domain.uuid), "{vm:#}");
        for iface in domain.def.interfaces() {
            assert!(iface.network.as_deref().unwrap().starts_with("c1-"), "{iface:?}");
            assert!(vm["macs"].as_array().unwrap().iter().any(|m| Some(m.as_str().unwrap()) == iface.mac.as_deref()));
        }
        for disk in vm["disks"].as_array().unwrap() {
            let path = PathBuf::from(disk["path"].as_str().unwrap());
            assert_eq!(backing_chain(&path)[1], disk["backing"].as_str().unwrap());
        }
    }
    for network in report["networks"].as_array().unwrap() {
        let def = hv.network(network["name"].as_str().unwrap()).unwrap().def;
        assert_eq!(def.ip(), None, "an isolated copy has no host address");
        assert_eq!(def.forward_mode(), None);
        assert!(network["bridge"].as_str().unwrap().len() <= 15);
    }
    // Both serve: the clone through its gateway, the source as before.
    let page = wait_for_page(GATEWAY_NETNS, "clone-e2e: before the clone");
    assert!(page.contains("clone-e2e: before the clone"), "{page}");
    wait_for_page(&lab.netns(), "clone-e2e: before the clone");
    // `envclone ssh` reaches the clone's VMs by the clone's name.
    let output = lab.envclone(&["ssh", CLONE, "web", "--", "hostname"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let clones = lab.json(&["clones", "--json"]);
    assert_eq!(clones.as_array().unwrap().len(), 1, "{clones:#}");
    assert_eq!(clones[0]["name"], CLONE);
    assert_eq!(clones[0]["source"], "demo");
    // The source is untouched: same UUIDs; its chains only grew by the
    // snapshot the clone took (a new top over the same images).
    let after = source_state(lab);
    assert_eq!(after.uuids, before.uuids);
    for (chain_before, chain_after) in before.chains.iter().zip(&after.chains) {
        assert!(chain_after.ends_with(chain_before), "{chain_before:?} -> {chain_after:?}");
    }
    report
}

/// A record written in the clone's db shows on the clone's web only, and
/// one written in the source's db on the source's web only.
fn writes_stay_on_their_side(lab: &LabUnderTest) {
    run(&clone_session(lab, "db"), "echo 'clone-e2e: written in the clone' >> /srv/db/records; sync");
    run(&lab.session("db"), "echo 'clone-e2e: written in the source' >> /srv/db/records; sync");

    let clone_page = wait_for_page(GATEWAY_NETNS, "clone-e2e: written in the clone");
    let source_page = wait_for_page(&lab.netns(), "clone-e2e: written in the source");

    assert!(!clone_page.contains("written in the source"), "{clone_page}");
    assert!(!source_page.contains("written in the clone"), "{source_page}");
    let clone_records = run(&clone_session(lab, "db"), "cat /srv/db/records");
    assert!(!clone_records.contains("written in the source"), "{clone_records}");
}

fn deleting_the_clones_snapshot_is_deferred(lab: &LabUnderTest, snapshot: &str) {
    let output = lab.envclone(&["delete-snapshot", "demo", snapshot, "--json"]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["deleted"], false, "{report:#}");
    assert!(report["reason"].as_str().unwrap().contains("clone 'c1'"), "{report:#}");
}

fn destroy_leaves_nothing_behind(lab: &LabUnderTest, clone: &Value, before: &SourceState) {
    let report = lab.json(&["destroy", CLONE, "--json"]);

    assert_eq!(report["existed"], true, "{report:#}");
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    let domains = hv.domain_names().unwrap();
    assert!(!domains.iter().any(|d| d.starts_with("c1-")), "{domains:?}");
    let networks = hv.network_names().unwrap();
    assert!(!networks.iter().any(|n| n.starts_with("c1-")), "{networks:?}");
    assert!(!Path::new("/run/netns").join(GATEWAY_NETNS).exists());
    for vm in clone["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            assert!(!Path::new(disk["path"].as_str().unwrap()).exists(), "{disk:#}");
        }
    }
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    let dependent = envclone::catalog::Dependent::clone_named(CLONE);
    assert!(catalog.images_needed_by(&dependent).unwrap().is_empty());
    assert!(lab.json(&["clones", "--json"]).as_array().unwrap().is_empty());
    // The source's disks and chains: as before the clone, one snapshot
    // (the clone's) later: each chain is the same below its new top.
    let after = source_state(lab);
    assert_eq!(after.uuids, before.uuids);
    for (chain_before, chain_after) in before.chains.iter().zip(&after.chains) {
        assert!(chain_after.ends_with(chain_before), "{chain_before:?} -> {chain_after:?}");
    }
    // The snapshot the clone pinned can go now.
    let snapshot = clone["snapshot"].as_str().unwrap();
    let deleted = lab.json(&["delete-snapshot", "demo", snapshot, "--json"]);
    assert_eq!(deleted["deleted"], true, "{deleted:#}");
    wait_for_page(&lab.netns(), "clone-e2e: written in the source");
    // Idempotent.
    let again = lab.json(&["destroy", CLONE, "--json"]);
    assert_eq!(again["existed"], false, "{again:#}");
}

/// A marker in web's tmpfs (lost by any boot) is in the clone resumed from
/// a memory snapshot, and the clone serves.
fn a_resumed_clone_carries_on_with_the_memory_of_the_snapshot(lab: &LabUnderTest) -> String {
    run(&lab.session("web"), "echo clone-e2e-in-memory > /run/clone-e2e-marker");
    let snapshot = lab.json(&["snapshot", "demo", "--memory", "--json"]);
    let name = snapshot["name"].as_str().unwrap();

    let report = lab.json(&["clone", "demo", "--name", "c2", "--from", name, "--start", "resume", "--json"]);

    eprintln!("clone --start resume: {} ms", report["duration_ms"]);
    let netns = "envclone-c-c2";
    let output = lab.envclone(&["ssh", "c2", "web", "--", "cat", "/run/clone-e2e-marker"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "clone-e2e-in-memory");
    wait_for_page(netns, "clone-e2e: written in the source");
    for vm in report["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            let mem = Path::new(disk["path"].as_str().unwrap()).with_file_name("c2.mem");
            assert!(!mem.exists(), "the memory image copy is deleted once restored: {}", mem.display());
        }
    }
    let destroyed = lab.json(&["destroy", "c2", "--json"]);
    assert_eq!(destroyed["existed"], true);
    assert!(!Path::new("/run/netns").join(netns).exists());
    name.to_owned()
}

/// `--disks full`: standalone copies (no backing file) that boot and serve.
fn a_full_clone_has_disks_of_its_own(lab: &LabUnderTest, snapshot: &str) {
    let report = lab.json(&["clone", "demo", "--name", "c3", "--from", snapshot, "--disks", "full", "--json"]);

    eprintln!("clone --disks full: {} ms", report["duration_ms"]);
    for vm in report["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            let chain = backing_chain(Path::new(disk["path"].as_str().unwrap()));
            assert_eq!(chain.len(), 1, "{chain:?}");
        }
    }
    wait_for_page("envclone-c-c3", "clone-e2e: written in the source");
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    assert!(catalog.images_needed_by(&envclone::catalog::Dependent::clone_named("c3")).unwrap().is_empty());
    let destroyed = lab.json(&["destroy", "c3", "--json"]);
    assert_eq!(destroyed["existed"], true);
    for vm in report["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            assert!(!Path::new(disk["path"].as_str().unwrap()).exists());
        }
    }
}

fn refused_clones_and_destroys_change_nothing(lab: &LabUnderTest) {
    let not_a_clone = lab.envclone(&["destroy", "demo"]);
    assert_eq!(not_a_clone.status.code(), Some(2), "{}", stderr(&not_a_clone));
    let bad_name = lab.envclone(&["clone", "demo", "--name", "Bad_Name", "--from", "x"]);
    assert_eq!(bad_name.status.code(), Some(2), "{}", stderr(&bad_name));
    let unknown = lab.envclone(&["clone", "demo", "--name", "c2", "--from", "no-such-snapshot"]);
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    assert!(!hv.domain_names().unwrap().iter().any(|d| d.starts_with("c2-")));
    assert!(!hv.network_names().unwrap().iter().any(|n| n.starts_with("c2-")));
    assert!(!Path::new("/run/netns/envclone-c-c2").exists());
}

fn clone_session(lab: &LabUnderTest, vm: &str) -> GuestSession {
    let config = lab.config();
    let catalog = Catalog::open(&config.controller.state_dir).unwrap();
    let env = envclone::ops::clone::resolve_environment(&config, &catalog, CLONE).unwrap();
    let target = ssh_target(&env.vms[vm].agent);
    GuestSession::connect(&target, &ssh_options(&config.controller)).expect("SSH into the clone's VM")
}

fn wait_for_page(netns: &str, text: &str) -> String {
    envclone::wait::until(&format!("web's page in {netns} to show {text:?}"), SLOW, Duration::from_millis(500), || {
        let output =
            Command::new("ip").args(["netns", "exec", netns, "curl", "-sS", "--max-time", "10", WEB_URL]).output()?;
        let page = stdout(&output);
        Ok::<_, std::io::Error>(page.contains(text).then_some(page))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn backing_chain(image: &Path) -> Vec<String> {
    let output =
        Command::new("qemu-img").args(["info", "-U", "--backing-chain", "--output=json"]).arg(image).output().unwrap();
    assert!(output.status.success(), "qemu-img info {}: {}", image.display(), stderr(&output));
    let chain: Value = serde_json::from_slice(&output.stdout).unwrap();
    chain.as_array().unwrap().iter().map(|i| i["filename"].as_str().unwrap().to_owned()).collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
