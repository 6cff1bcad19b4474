//! End to end: `envclone clone` killed half way (`ENVCLONE_CRASHPOINT`,
//! a test hook: the process aborts on the spot, like a SIGKILL) and
//! `envclone recover` on a real lab (two TCG guests, web and db, under a
//! private libvirtd in a network namespace). Needs root and the packages of
//! scripts/install-deps.sh; the static agent is built by scripts/build.sh.
//! All traffic stays inside the lab's namespace and the clone's gateway
//! namespace.
//!
//! The clone `c9` is killed after its domains are defined, after they were
//! started, and (resumed from memory) with its memory image copies
//! written; each time `recover` leaves nothing of it (no domain, network,
//! namespace, veth, file, record or pin), and a second `recover` finds
//! nothing to do. A client requests the source's web every 50 ms through
//! all of it, and no request fails. Then a clone of the same name is made,
//! serves, and is destroyed.
//!
//! One lab for the whole binary: the scenarios run one after the other in
//! a single test.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::traffic::Client;
use common::{run, stdout, LabUnderTest};
use envclone::catalog::{Catalog, Dependent};
use envclone::hypervisor::{DomainState, Hypervisor, LibvirtHypervisor};
use envclone::lab::topology::NETWORK;
use envclone::ops::clone::names;
use serde_json::Value;

const LAB: &str = "clonerec";
const CLONE: &str = "c9";
const GATEWAY_NETNS: &str = "envclone-c-c9";
const WEB: &str = "10.77.1.11:80";
const WEB_URL: &str = "http://10.77.1.11/";
const EVERY: Duration = Duration::from_millis(50);
/// Generous: TCG guests are slow when other labs run too.
const SLOW: Duration = Duration::from_secs(180);

#[test]
fn interrupted_clones_are_rolled_back_by_recover() {
    let lab = LabUnderTest::up(LAB);
    // A first snapshot, so that the clones' snapshots hold overlays.
    lab.json(&["snapshot", "demo", "--json"]);
    run(&lab.session("db"), "echo 'clone-recover-e2e: in the source' >> /srv/db/records; sync");
    wait_for_page(&lab.netns(), "clone-recover-e2e: in the source");
    let client = Client::start(&lab.netns(), WEB.parse::<SocketAddr>().unwrap(), EVERY);

    killed_after_its_domains_are_defined(&lab);
    let snapshot = killed_after_its_domains_started(&lab);
    killed_with_its_memory_image_copies_written(&lab);
    the_same_name_clones_afterwards(&lab, &snapshot);

    let traffic = client.stop();
    eprintln!(
        "the source's web through it all, a request every {} ms: {} requests, {} failed, longest gap {} ms",
        EVERY.as_millis(),
        traffic.requests,
        traffic.failures.len(),
        traffic.longest_gap.as_millis()
    );
    assert!(traffic.failures.is_empty(), "the source stopped serving: {traffic:#?}");
}

/// Killed right after the last domain was defined (with a fresh snapshot:
/// networks, gateway, overlays, both domains made; nothing started).
fn killed_after_its_domains_are_defined(lab: &LabUnderTest) {
    crash(lab, &["clone", "demo", "--name", CLONE, "--start", "boot"], "clone:define c9-web for web");

    let left = leftovers(lab);
    assert_eq!(left.domains.len(), 2, "{left:#?}");
    assert!(!left.networks.is_empty() && left.netns && left.links.len() == 2 && !left.files.is_empty(), "{left:#?}");

    recover_rolls_the_clone_back(lab);
}

/// Killed right after both domains were started (not waited for), from
/// an existing snapshot; returns that snapshot.
fn killed_after_its_domains_started(lab: &LabUnderTest) -> String {
    let snapshot = lab.json(&["snapshot", "demo", "--json"])["name"].as_str().unwrap().to_owned();

    crash(lab, &["clone", "demo", "--name", CLONE, "--from", &snapshot], "clone:start c9-web");

    let hv = hypervisor(lab);
    for domain in ["c9-db", "c9-web"] {
        assert_eq!(hv.domain(domain).unwrap().state, DomainState::Running, "{domain}");
    }
    recover_rolls_the_clone_back(lab);
    snapshot
}

/// `--start resume`: killed with the copies of the memory images (rewritten
/// for the clone) written, before any restore.
fn killed_with_its_memory_image_copies_written(lab: &LabUnderTest) {
    let snapshot = lab.json(&["snapshot", "demo", "--memory", "--json"])["name"].as_str().unwrap().to_owned();

    crash(
        lab,
        &["clone", "demo", "--name", CLONE, "--from", &snapshot, "--start", "resume"],
        "clone:memory image of web for c9-web",
    );

    let left = leftovers(lab);
    assert!(left.files.iter().any(|f| f.extension().is_some_and(|e| e == "mem")), "{left:#?}");
    recover_rolls_the_clone_back(lab);
    // The snapshot's own memory images stay.
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    let snap = catalog.snapshot_named("demo", &snapshot).unwrap().unwrap();
    for image in catalog.images_of_snapshot(snap.id).unwrap() {
        assert!(image.path.exists(), "{}", image.path.display());
    }
}

fn the_same_name_clones_afterwards(lab: &LabUnderTest, snapshot: &str) {
    let report = lab.json(&["clone", "demo", "--name", CLONE, "--from", snapshot, "--json"]);

    eprintln!("clone {CLONE} again: {} ms", report["duration_ms"]);
    wait_for_page(GATEWAY_NETNS, "clone-recover-e2e: in the source");
    let destroyed = lab.json(&["destroy", CLONE, "--json"]);
    assert_eq!(destroyed["existed"], true, "{destroyed:#}");
    assert_eq!(leftovers(lab), Leftovers::default());
}

/// `envclone recover --json` rolls back the clone's operation, every undo
/// done, and leaves nothing of it; a second `recover` finds nothing to do.
fn recover_rolls_the_clone_back(lab: &LabUnderTest) {
    let started = Instant::now();
    let output = lab.envclone(&["recover", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();

    let env = report["environments"].as_array().unwrap().iter().find(|e| e["env"] == CLONE).expect("c9 recovered");
    let operations = env["operations"].as_array().unwrap();
    eprintln!(
        "recover: {} ms, the clone's operation {}, {} steps undone",
        started.elapsed().as_millis(),
        operations[0]["outcome"],
        operations[0]["undo"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(operations.len(), 1, "{env:#}");
    assert_eq!(operations[0]["kind"], "clone", "{env:#}");
    assert_eq!(operations[0]["outcome"], "rolled-back", "{env:#}");
    assert!(operations[0]["undo"].as_array().unwrap().iter().all(|u| u["status"] == "done"), "{env:#}");
    assert_eq!(leftovers(lab), Leftovers::default());
    let again = lab.envclone(&["recover"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(stdout(&again).contains("nothing to recover"), "{}", stdout(&again));
    wait_for_page(&lab.netns(), "clone-recover-e2e: in the source");
}

/// What exists of the clone `c9`.
#[derive(Debug, Default, PartialEq)]
struct Leftovers {
    domains: Vec<String>,
    networks: Vec<String>,
    netns: bool,
    /// The clone's links in the lab's namespace (its bridge, its veth).
    links: Vec<String>,
    /// Files under the clone's storage folder.
    files: Vec<PathBuf>,
    /// The storage folder itself (empty folders of its VMs included).
    storage: bool,
    record: bool,
    pins: usize,
}

fn leftovers(lab: &LabUnderTest) -> Leftovers {
    let config = lab.config();
    let hv = hypervisor(lab);
    let prefix = format!("{CLONE}-");
    let storage = config.controller.state_dir.join("images").join(CLONE);
    let catalog = Catalog::open(&config.controller.state_dir).unwrap();
    // Its bridge and its gateway's veth end live in libvirtd's (the lab's) namespace.
    let (veth, _) = names::veth_pair(CLONE, NETWORK);
    let links = [names::bridge(CLONE, NETWORK), veth]
        .into_iter()
        .filter(|link| {
            Command::new("ip").args(["-n", &lab.netns(), "link", "show", link]).output().unwrap().status.success()
        })
        .collect();
    Leftovers {
        domains: hv.domain_names().unwrap().into_iter().filter(|d| d.starts_with(&prefix)).collect(),
        networks: hv.network_names().unwrap().into_iter().filter(|n| n.starts_with(&prefix)).collect(),
        netns: Path::new("/run/netns").join(GATEWAY_NETNS).exists(),
        links,
        files: files_under(&storage),
        storage: storage.exists(),
        record: catalog.clone_named(CLONE).unwrap().is_some(),
        pins: catalog.images_needed_by(&Dependent::clone_named(CLONE)).unwrap().len(),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Runs `envclone ARGS` armed to crash at `point` (`operation:step`); asserts it did.
fn crash(lab: &LabUnderTest, args: &[&str], point: &str) {
    let started = Instant::now();
    let output = lab.envclone_crashing_at(args, point);
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "not killed at {point}: {}", stderr(&output));
    assert!(stderr(&output).contains(&format!("crash point {point} reached")), "{}", stderr(&output));
    eprintln!("envclone {} killed at {point} after {} ms", args.join(" "), started.elapsed().as_millis());
}

fn hypervisor(lab: &LabUnderTest) -> LibvirtHypervisor {
    LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap()
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

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
