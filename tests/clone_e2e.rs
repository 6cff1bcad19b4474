//! End to end: `envclone clone`, `clones`, `check --live CLONE` and
//! `destroy` on a real lab (two TCG guests, web and db, under a private
//! libvirtd in a network namespace). Needs root and the packages of
//! scripts/install-deps.sh; the static agent is built by scripts/build.sh.
//! All traffic stays inside the lab's namespace and the clones' gateway
//! namespaces.
//!
//! One lab for the whole binary: the scenarios run one after the other in
//! a single test, through the real `envclone` binary. What issue #5 asks of
//! an isolated clone, each proven here:
//! - a client requesting the source's web every 50 ms through a whole
//!   `envclone clone` sees no request fail (the longest gap is printed);
//! - the clone's web answers with what the clone's db held at the
//!   snapshot; writes on either side stay on that side;
//! - isolated: both sides keep their addresses, and from the clone no
//!   source address answers (a listener on the source's gateway address
//!   answers the source's guests, not the clone's; the clone's guests
//!   reach their own peers' MACs, never the source's);
//! - `resume`: a process started in the source before the snapshot runs on
//!   in the clone, from its value then;
//! - `full`: the clone's disks equal the snapshot's (`qemu-img compare`);
//! - `destroy` leaves no domain, network, namespace, veth, image or record
//!   of the clone, and the source's chains and images are unchanged
//!   (`qemu-img check`, SHA-256).

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::traffic::{Banner, Client, ClientReport};
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
const WEB: &str = "10.77.1.11:80";
/// The source's gateway address (the lab's bridge, in the lab's namespace);
/// every clone's gateway namespace holds it too.
const GATEWAY: &str = "10.77.1.1";
/// A port nothing else listens on, for the isolation probe.
const PROBE_PORT: u16 = 47_701;
const EVERY: Duration = Duration::from_millis(50);

/// Generous: TCG guests are slow when other labs run too.
const SLOW: Duration = Duration::from_secs(120);

#[test]
fn clone_end_to_end() {
    let lab = LabUnderTest::up(LAB);
    // A first snapshot, so that the clone's own snapshot holds overlays
    // (a snapshot of the VMs' base images is released on delete, never merged).
    lab.json(&["snapshot", "demo", "--json"]);
    let sources = source_state(&lab);

    let (report, images) = clone_boots_an_isolated_copy_while_the_source_serves_every_50_ms(&lab, &sources);
    check_live_reaches_the_clone(&lab);
    no_source_address_answers_from_the_clone(&lab, &report);
    writes_stay_on_their_side(&lab);
    deleting_the_clones_snapshot_is_deferred(&lab, report["snapshot"].as_str().unwrap());
    destroy_leaves_nothing_behind_and_the_source_unchanged(&lab, &report, &sources, &images);
    let memory_snapshot = a_resumed_clone_carries_on_with_the_processes_of_the_snapshot(&lab);
    a_full_clone_has_disks_of_its_own_equal_to_the_snapshot(&lab, &memory_snapshot);
    refused_clones_and_destroys_change_nothing(&lab);
    lab_down_removes_the_gateway_of_a_clone_left_behind(&lab, &memory_snapshot);
}

/// The source's domains: UUIDs and disk sources, and each disk's chain on disk.
#[derive(Debug, PartialEq)]
struct SourceState {
    uuids: Vec<String>,
    disks: Vec<PathBuf>,
    chains: Vec<Vec<String>>,
}

fn source_state(lab: &LabUnderTest) -> SourceState {
    let hv = hypervisor(lab);
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

/// The images below the source's active overlays (read-only from the
/// snapshots on, the clones' backing files among them): SHA-256 each, and
/// each must pass `qemu-img check`.
fn read_only_images(state: &SourceState) -> BTreeMap<String, String> {
    let mut images = BTreeMap::new();
    for chain in &state.chains {
        for image in &chain[1..] {
            qemu_img_check(Path::new(image));
            images.insert(image.clone(), sha256(Path::new(image)));
        }
    }
    images
}

fn clone_boots_an_isolated_copy_while_the_source_serves_every_50_ms(
    lab: &LabUnderTest,
    before: &SourceState,
) -> (Value, BTreeMap<String, String>) {
    run(&lab.session("db"), "echo 'clone-e2e: before the clone' >> /srv/db/records; sync");
    let source_page = wait_for_page(&lab.netns(), "clone-e2e: before the clone");
    let client = Client::start(&lab.netns(), web_address(), EVERY);

    let report = lab.json(&["clone", "demo", "--name", CLONE, "--disks", "linked", "--start", "boot", "--json"]);

    let traffic = client.stop();
    print_traffic("clone --start boot", &report, &traffic);
    assert!(traffic.failures.is_empty(), "requests to the source failed during the clone: {traffic:#?}");
    assert!(traffic.requests > 20, "{traffic:#?}");
    assert_eq!(report["snapshot_taken"], true, "{report:#}");
    assert!(report["source_freeze_window_ms"].as_u64().is_some(), "{report:#}");
    assert_eq!(report["gateway_netns"], GATEWAY_NETNS);
    let hv = hypervisor(lab);
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
    // Both serve: the clone through its gateway with what its db held at
    // the snapshot (the source's page then, exactly), the source as before.
    let clone_page = wait_for_page(GATEWAY_NETNS, "clone-e2e: before the clone");
    assert_eq!(clone_page, source_page);
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
    // What destroy must leave as it is: the clone's backing images among them.
    let images = read_only_images(&after);
    for vm in report["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            assert!(images.contains_key(disk["backing"].as_str().unwrap()), "{disk:#} {images:#?}");
        }
    }
    (report, images)
}

/// `envclone check --live c1` checks the clone's domains, networks and
/// agents (through its gateway namespace), and only those.
fn check_live_reaches_the_clone(lab: &LabUnderTest) {
    let report = lab.json(&["check", "--live", CLONE, "--json"]);

    let subjects: Vec<&str> =
        report["live"].as_array().unwrap().iter().map(|c| c["subject"].as_str().unwrap()).collect();
    for expected in ["domain c1-web", "domain c1-db", "agent c1/web", "agent c1/db"] {
        assert!(subjects.contains(&expected), "{expected}: {report:#}");
    }
    assert!(subjects.iter().any(|s| s.starts_with("network c1-")), "{report:#}");
    for source in ["domain demo-web", "domain demo-db", "agent demo/web", "agent demo/db", "network demo-net"] {
        assert!(!subjects.contains(&source), "only the clone is checked: {report:#}");
    }
    assert!(report["live"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{report:#}");
    let unknown = lab.envclone(&["check", "--live", "no-such-clone"]);
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
}

/// Both sides keep their addresses; from the clone, no source address
/// answers. A listener on the source's gateway address (in the lab's
/// namespace) answers the source's web, and not the clone's web, whose
/// 10.77.1.1 is its gateway namespace's (no listener there); and the
/// clone's web reaches 10.77.1.12 and 10.77.1.1 at the clone's MACs.
fn no_source_address_answers_from_the_clone(lab: &LabUnderTest, clone: &Value) {
    let _banner = Banner::start(&lab.netns(), probe(), "the source's gateway answers");
    let ask = format!("nc -w 5 {GATEWAY} {PROBE_PORT} </dev/null 2>&1; true");

    let from_source = run(&lab.session("web"), &ask);
    let from_clone = run(&clone_session(lab, CLONE, "web"), &ask);

    assert!(from_source.contains("the source's gateway answers"), "the probe must answer the source: {from_source:?}");
    assert!(!from_clone.contains("the source's gateway answers"), "the clone reached the source: {from_clone:?}");
    // The same addresses on both sides...
    let address = |session: &GuestSession| guest_addresses(&run(session, "ip -4 addr show"));
    assert_eq!(address(&clone_session(lab, CLONE, "web")), address(&lab.session("web")));
    assert_eq!(address(&clone_session(lab, CLONE, "db")), address(&lab.session("db")));
    // ...reached at the clone's own MACs: the clone's db, and the gateway namespace's veth.
    let clone_web = clone_session(lab, CLONE, "web");
    run(
        &clone_web,
        &format!("nc -w 5 10.77.1.12 5432 </dev/null >/dev/null; nc -w 5 {GATEWAY} 22 </dev/null >/dev/null; true"),
    );
    let arp = run(&clone_web, "cat /proc/net/arp");
    let clone_db_mac = vm_report(clone, "db")["macs"][0].as_str().unwrap().to_owned();
    let source_db_mac = hypervisor(lab).domain("demo-db").unwrap().def.interfaces()[0].mac.clone().unwrap();
    assert!(arp_entry(&arp, "10.77.1.12").as_deref() == Some(clone_db_mac.as_str()), "{arp}");
    assert_ne!(clone_db_mac, source_db_mac);
    let gateway_mac = arp_entry(&arp, GATEWAY);
    let clone_gateway_mac = gateway_mac_in(GATEWAY_NETNS);
    let source_gateway_mac = gateway_mac_in(&lab.netns());
    assert_eq!(gateway_mac.as_deref(), Some(clone_gateway_mac.as_str()), "{arp}");
    assert_ne!(clone_gateway_mac, source_gateway_mac);
    eprintln!("the clone's web sees 10.77.1.12 at {clone_db_mac} (the source's db: {source_db_mac}), {GATEWAY} at {clone_gateway_mac} (the source's: {source_gateway_mac})");
}

/// A record written in the clone's db shows on the clone's web only, and
/// one written in the source's db on the source's web only.
fn writes_stay_on_their_side(lab: &LabUnderTest) {
    run(&clone_session(lab, CLONE, "db"), "echo 'clone-e2e: written in the clone' >> /srv/db/records; sync");
    run(&lab.session("db"), "echo 'clone-e2e: written in the source' >> /srv/db/records; sync");

    let clone_page = wait_for_page(GATEWAY_NETNS, "clone-e2e: written in the clone");
    let source_page = wait_for_page(&lab.netns(), "clone-e2e: written in the source");

    assert!(!clone_page.contains("written in the source"), "{clone_page}");
    assert!(!source_page.contains("written in the clone"), "{source_page}");
    let clone_records = run(&clone_session(lab, CLONE, "db"), "cat /srv/db/records");
    assert!(!clone_records.contains("written in the source"), "{clone_records}");
    let source_records = run(&lab.session("db"), "cat /srv/db/records");
    assert!(!source_records.contains("written in the clone"), "{source_records}");
}

fn deleting_the_clones_snapshot_is_deferred(lab: &LabUnderTest, snapshot: &str) {
    let output = lab.envclone(&["delete-snapshot", "demo", snapshot, "--json"]);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["deleted"], false, "{report:#}");
    assert!(report["reason"].as_str().unwrap().contains("clone 'c1'"), "{report:#}");
}

fn destroy_leaves_nothing_behind_and_the_source_unchanged(
    lab: &LabUnderTest,
    clone: &Value,
    before: &SourceState,
    images_before: &BTreeMap<String, String>,
) {
    let config = lab.config();
    let storage = config.controller.state_dir.join("images").join(CLONE);
    let veths: Vec<String> =
        clone["networks"].as_array().unwrap().iter().map(|n| n["veth"].as_str().unwrap().to_owned()).collect();
    // All there before (so that the checks below can fail).
    assert!(storage.is_dir());
    assert!(Path::new("/run/netns").join(GATEWAY_NETNS).exists());
    for veth in &veths {
        assert!(link_exists(&lab.netns(), veth), "{veth}");
    }
    let chains_before = source_state(lab).chains;

    let report = lab.json(&["destroy", CLONE, "--json"]);

    eprintln!("destroy: {} ms", report["duration_ms"]);
    assert_eq!(report["existed"], true, "{report:#}");
    let hv = hypervisor(lab);
    let domains = hv.domain_names().unwrap();
    assert!(!domains.iter().any(|d| d.starts_with("c1-")), "{domains:?}");
    let networks = hv.network_names().unwrap();
    assert!(!networks.iter().any(|n| n.starts_with("c1-")), "{networks:?}");
    assert!(!Path::new("/run/netns").join(GATEWAY_NETNS).exists());
    for veth in &veths {
        assert!(!link_exists(&lab.netns(), veth), "{veth}");
    }
    assert!(!storage.exists(), "{} is left", storage.display());
    let catalog = Catalog::open(&config.controller.state_dir).unwrap();
    for vm in clone["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            let path = Path::new(disk["path"].as_str().unwrap());
            assert!(!path.exists(), "{disk:#}");
            assert!(catalog.image_by_path(path).unwrap().is_none(), "{disk:#}");
        }
    }
    let dependent = envclone::catalog::Dependent::clone_named(CLONE);
    assert!(catalog.images_needed_by(&dependent).unwrap().is_empty());
    assert!(catalog.clone_named(CLONE).unwrap().is_none());
    assert!(lab.json(&["clones", "--json"]).as_array().unwrap().is_empty());
    // The source: same domains, same chains, every read-only image intact
    // and byte for byte what it was when the clone was made.
    let after = source_state(lab);
    assert_eq!(after.uuids, before.uuids);
    assert_eq!(after.chains, chains_before);
    assert_eq!(&read_only_images(&after), images_before);
    wait_for_page(&lab.netns(), "clone-e2e: written in the source");
    // The snapshot the clone pinned can go now.
    let snapshot = clone["snapshot"].as_str().unwrap();
    let deleted = lab.json(&["delete-snapshot", "demo", snapshot, "--json"]);
    assert_eq!(deleted["deleted"], true, "{deleted:#}");
    wait_for_page(&lab.netns(), "clone-e2e: written in the source");
    // Idempotent.
    let again = lab.json(&["destroy", CLONE, "--json"]);
    assert_eq!(again["existed"], false, "{again:#}");
}

/// A counter process started in the source's web before the snapshot runs
/// in the clone (same pid), from its value at the snapshot; a marker in
/// web's tmpfs (lost by any boot) is there too. The source serves every
/// 50 ms throughout. Returns the clone's (memory) snapshot.
fn a_resumed_clone_carries_on_with_the_processes_of_the_snapshot(lab: &LabUnderTest) -> String {
    let web = lab.session("web");
    run(&web, "echo clone-e2e-in-memory > /run/clone-e2e-marker");
    run(
        &web,
        "setsid sh -c 'i=0; while :; do i=$((i+1)); echo \"$$ $i\" > /run/counter; sleep 1; done' \
         </dev/null >/dev/null 2>&1 &",
    );
    let (pid, _) = counter(&web);
    let client = Client::start(&lab.netns(), web_address(), EVERY);
    // At least a tick later, so the clone has a value to continue from.
    let (_, before) = wait_counter_above(&web, 1);

    let report = lab.json(&["clone", "demo", "--name", "c2", "--start", "resume", "--json"]);

    let traffic = client.stop();
    let clone_web = clone_session(lab, "c2", "web");
    let (clone_pid, in_clone) = counter(&clone_web);
    let (source_pid, in_source) = counter(&web);
    print_traffic("clone --start resume", &report, &traffic);
    eprintln!("counter: {before} before the clone, {in_clone} in the clone, {in_source} in the source");
    assert!(traffic.failures.is_empty(), "requests to the source failed during the clone: {traffic:#?}");
    assert_eq!(report["snapshot_taken"], true, "{report:#}");
    assert!(report["source_freeze_window_ms"].as_u64().is_some(), "{report:#}");
    assert_eq!((clone_pid, source_pid), (pid, pid));
    assert!(in_clone >= before, "the clone's counter went back: {before} -> {in_clone}");
    assert!(in_clone < in_source, "the clone's counter ({in_clone}) is not behind the source's ({in_source})");
    wait_counter_above(&clone_web, in_clone);
    run(&clone_web, &format!("kill -0 {pid}"));
    let output = lab.envclone(&["ssh", "c2", "web", "--", "cat", "/run/clone-e2e-marker"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "clone-e2e-in-memory");
    wait_for_page("envclone-c-c2", "clone-e2e: written in the source");
    for vm in report["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            let mem = Path::new(disk["path"].as_str().unwrap()).with_file_name("c2.mem");
            assert!(!mem.exists(), "the memory image copy is deleted once restored: {}", mem.display());
        }
    }
    // Written after the snapshot: never in a clone of it.
    run(&lab.session("db"), "echo 'clone-e2e: after the memory snapshot' >> /srv/db/records; sync");
    wait_for_page(&lab.netns(), "clone-e2e: after the memory snapshot");
    let page = wait_for_page("envclone-c-c2", "clone-e2e: written in the source");
    assert!(!page.contains("after the memory snapshot"), "{page}");
    run(&web, &format!("kill {pid}"));
    let destroyed = lab.json(&["destroy", "c2", "--json"]);
    assert_eq!(destroyed["existed"], true);
    assert!(!Path::new("/run/netns/envclone-c-c2").exists());
    report["snapshot"].as_str().unwrap().to_owned()
}

/// `--disks full`: standalone copies (no backing file) whose data equals
/// the snapshot's images (compared before the clone's VMs ever ran: the
/// clone is made `--start off`), that then boot and serve what the source
/// held at the snapshot.
fn a_full_clone_has_disks_of_its_own_equal_to_the_snapshot(lab: &LabUnderTest, snapshot: &str) {
    let report =
        lab.json(&["clone", "demo", "--name", "c3", "--from", snapshot, "--disks", "full", "--start", "off", "--json"]);

    eprintln!("clone --disks full --start off: {} ms", report["duration_ms"]);
    assert_eq!(report["snapshot_taken"], false, "{report:#}");
    assert_eq!(report["source_freeze_window_ms"], Value::Null, "{report:#}");
    for vm in report["vms"].as_array().unwrap() {
        for disk in vm["disks"].as_array().unwrap() {
            let copy = Path::new(disk["path"].as_str().unwrap());
            let chain = backing_chain(copy);
            assert_eq!(chain.len(), 1, "{chain:?}");
            let compare = Command::new("qemu-img")
                .args(["compare", "-U"])
                .arg(copy)
                .arg(disk["backing"].as_str().unwrap())
                .output()
                .unwrap();
            assert!(compare.status.success(), "{disk:#}: {}{}", stdout(&compare), stderr(&compare));
        }
    }
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    assert!(catalog.images_needed_by(&envclone::catalog::Dependent::clone_named("c3")).unwrap().is_empty());
    let hv = hypervisor(lab);
    for vm in report["vms"].as_array().unwrap() {
        hv.start_domain(vm["domain"].as_str().unwrap()).unwrap();
    }
    let page = wait_for_page("envclone-c-c3", "clone-e2e: written in the source");
    assert!(!page.contains("after the memory snapshot"), "{page}");
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
    let hv = hypervisor(lab);
    assert!(!hv.domain_names().unwrap().iter().any(|d| d.starts_with("c2-")));
    assert!(!hv.network_names().unwrap().iter().any(|n| n.starts_with("c2-")));
    assert!(!Path::new("/run/netns/envclone-c-c2").exists());
}

fn lab_down_removes_the_gateway_of_a_clone_left_behind(lab: &LabUnderTest, snapshot: &str) {
    lab.json(&["clone", "demo", "--name", "c4", "--from", snapshot, "--start", "off", "--json"]);
    assert!(Path::new("/run/netns/envclone-c-c4").exists());

    let down = lab.envclone(&["lab", "down"]);

    assert!(down.status.success(), "{}", stderr(&down));
    assert!(!Path::new("/run/netns/envclone-c-c4").exists());
}

fn print_traffic(what: &str, report: &Value, traffic: &ClientReport) {
    eprintln!(
        "{what}: {} ms (source frozen {} ms); a request every {} ms to the source: {} requests, {} failed, \
         longest gap between answers {} ms, slowest request {} ms",
        report["duration_ms"],
        report["source_freeze_window_ms"],
        EVERY.as_millis(),
        traffic.requests,
        traffic.failures.len(),
        traffic.longest_gap.as_millis(),
        traffic.longest_request.as_millis(),
    );
}

/// The counter's pid and value (`/run/counter` holds `PID N`).
fn counter(session: &GuestSession) -> (u32, u64) {
    envclone::wait::until("the counter", SLOW, Duration::from_millis(200), || {
        let text = run(session, "cat /run/counter 2>/dev/null; true");
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        Ok::<_, std::io::Error>(match (fields.next(), fields.next()) {
            (Some(Ok(pid)), Some(Ok(value))) => Some((u32::try_from(pid).unwrap(), value)),
            _ => None,
        })
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn wait_counter_above(session: &GuestSession, value: u64) -> (u32, u64) {
    envclone::wait::until(&format!("the counter to pass {value}"), SLOW, Duration::from_millis(300), || {
        let (pid, now) = counter(session);
        Ok::<_, std::io::Error>((now > value).then_some((pid, now)))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn vm_report<'v>(clone: &'v Value, vm: &str) -> &'v Value {
    clone["vms"].as_array().unwrap().iter().find(|v| v["vm"] == vm).unwrap()
}

/// The MAC `/proc/net/arp` holds for `ip`.
fn arp_entry(arp: &str, ip: &str) -> Option<String> {
    arp.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&ip) && fields.get(3).is_some_and(|mac| *mac != "00:00:00:00:00:00"))
        .map(|fields| fields[3].to_owned())
}

/// The MAC of the device holding the gateway address in `netns`.
fn gateway_mac_in(netns: &str) -> String {
    let line = run_host(&["ip", "-n", netns, "-4", "-o", "addr", "show", "to", GATEWAY]);
    let device = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("no {GATEWAY} in {netns}: {line:?}"));
    run_host(&["ip", "netns", "exec", netns, "cat", &format!("/sys/class/net/{device}/address")]).trim().to_owned()
}

/// The IPv4 addresses of `ip -4 addr show` but loopback's.
fn guest_addresses(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|pair| pair[0] == "inet" && !pair[1].starts_with("127."))
        .map(|pair| pair[1].to_owned())
        .collect()
}

fn link_exists(netns: &str, link: &str) -> bool {
    Command::new("ip").args(["-n", netns, "link", "show", link]).output().unwrap().status.success()
}

fn run_host(args: &[&str]) -> String {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    stdout(&output)
}

fn hypervisor(lab: &LabUnderTest) -> LibvirtHypervisor {
    LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap()
}

fn web_address() -> SocketAddr {
    WEB.parse().unwrap()
}

fn probe() -> SocketAddr {
    SocketAddr::new(GATEWAY.parse().unwrap(), PROBE_PORT)
}

fn clone_session(lab: &LabUnderTest, clone: &str, vm: &str) -> GuestSession {
    let config = lab.config();
    let catalog = Catalog::open(&config.controller.state_dir).unwrap();
    let env = envclone::ops::clone::resolve_environment(&config, &catalog, clone).unwrap();
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

/// `qemu-img check` of a qcow2 image (raw images have nothing to check).
fn qemu_img_check(image: &Path) {
    let info = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(image).output().unwrap();
    assert!(info.status.success(), "qemu-img info {}: {}", image.display(), stderr(&info));
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    if info["format"] != "qcow2" {
        return;
    }
    let output = Command::new("qemu-img").args(["check", "-U"]).arg(image).output().unwrap();
    assert!(output.status.success(), "qemu-img check {}: {}{}", image.display(), stdout(&output), stderr(&output));
}

fn sha256(image: &Path) -> String {
    let output = Command::new("sha256sum").arg(image).output().unwrap();
    assert!(output.status.success(), "sha256sum {}: {}", image.display(), stderr(&output));
    stdout(&output).split_whitespace().next().unwrap().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
