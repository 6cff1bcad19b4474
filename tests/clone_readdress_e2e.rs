//! End to end: `envclone clone --network readdress` on a real lab (two TCG
//! guests, web and db, under a private libvirtd in a network namespace).
//! Needs root and the packages of scripts/install-deps.sh; the static agent
//! is built by scripts/build.sh. All traffic stays inside the lab's
//! namespace and the clones' gateway namespaces.
//!
//! One lab for the whole binary: the scenarios run one after the other in
//! a single test, through the real `envclone` binary.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{put, run, stdout, LabUnderTest};
use envclone::catalog::{Catalog, OperationKind, OperationState, Step};
use envclone::hypervisor::{Hypervisor, LibvirtHypervisor};
use serde_json::Value;

const LAB: &str = "readdress";
/// The lab's pool is 10.90.0.0/16; demo-net (10.77.1.0/24) gets the first /24.
const WEB: &str = "10.90.0.11";
const DB: &str = "10.90.0.12";

#[test]
fn readdress_end_to_end() {
    let lab = LabUnderTest::up(LAB);
    let source_env = lab.sh("web", "cat /etc/demo/app.env");

    a_readdressed_clone_talks_to_its_own_db_under_new_names(&lab);
    an_unmapped_source_address_stops_the_clone_before_the_link_goes_up(&lab);

    // The source never noticed.
    assert_eq!(lab.sh("web", "cat /etc/demo/app.env"), source_env);
    assert!(lab.curl("http://10.77.1.11/").contains("alice"));
}

fn a_readdressed_clone_talks_to_its_own_db_under_new_names(lab: &LabUnderTest) {
    run(&lab.session("db"), "echo 'readdress-e2e: at the snapshot' >> /srv/db/records; sync");

    let known_hosts = lab.config().controller.known_hosts;
    let source_key = key_of(&std::fs::read_to_string(&known_hosts).unwrap(), "10.77.1.11");

    let report = lab.json(&[
        "clone",
        "demo",
        "--name",
        "r1",
        "--network",
        "readdress",
        "--start",
        "resume",
        "--new-host-keys",
        "--json",
    ]);

    eprintln!("readdress clone: {} ms", report["duration_ms"]);
    assert_eq!(report["network"], "readdress", "{report:#}");
    assert_eq!(report["gateway_netns"], Value::Null, "the quarantine's gateway is gone");
    assert_eq!(report["addresses"]["networks"][0]["subnet"], "10.90.0.0/24", "{report:#}");
    let vms: Vec<(String, String)> = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned()))
        .collect();
    assert!(vms.contains(&("web".into(), WEB.into())) && vms.contains(&("db".into(), DB.into())), "{vms:?}");

    // Its web names its own db, by the new address; the page comes from there.
    let app_env = ssh(lab, "r1", "web", "cat /etc/demo/app.env");
    assert!(app_env.contains(&format!("postgres://demo@{DB}:5432/demo")), "{app_env}");
    assert!(!app_env.contains("10.77.1."), "{app_env}");
    let hosts = ssh(lab, "r1", "web", "cat /etc/hosts");
    assert!(hosts.contains(&format!("{DB} r1-db")) && !hosts.contains("10.77.1."), "{hosts}");
    assert_eq!(ssh(lab, "r1", "web", "hostname").trim(), "r1-web");
    assert_eq!(ssh(lab, "r1", "db", "ip -4 -o addr show | grep -c 10.77.1. || true").trim(), "0");
    let page = lab.curl(&format!("http://{WEB}/"));
    assert!(page.contains("readdress-e2e: at the snapshot"), "{page}");
    // A write to the clone's db shows in the clone's web only.
    ssh(lab, "r1", "db", "echo 'readdress-e2e: clone only' >> /srv/db/records; sync");
    assert!(lab.curl(&format!("http://{WEB}/")).contains("clone only"));
    assert!(!lab.curl("http://10.77.1.11/").contains("clone only"));

    // The links went up only after every VM's scan was clean.
    let steps = clone_steps(lab, "r1", OperationState::Completed);
    let last_scan = position(&steps, |s| s.name.starts_with("scan ")).last().copied().expect("scans");
    let first_link = position(&steps, |s| s.name.starts_with("link up")).first().copied().expect("link up");
    assert!(last_scan < first_link, "{:#?}", steps.iter().map(|s| &s.name).collect::<Vec<_>>());
    assert_eq!(position(&steps, |s| s.name.starts_with("scan ")).len(), 2);

    // No quarantine left: the clone is on its own network only.
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    let networks: Vec<String> = hv.network_names().unwrap().into_iter().filter(|n| n.starts_with("r1-")).collect();
    assert_eq!(networks, ["r1-demo-net"]);
    for domain in ["r1-web", "r1-db"] {
        let def = hv.domain(domain).unwrap().def;
        assert_eq!(def.interfaces()[0].network.as_deref(), Some("r1-demo-net"));
    }
    assert!(!Path::new("/run/netns/envclone-c-r1").exists());
    // New host keys, trusted at the new addresses (every login above was verified against them).
    let known = std::fs::read_to_string(&known_hosts).unwrap();
    assert_ne!(key_of(&known, WEB), source_key, "{known}");
    assert_eq!(known.lines().filter(|l| l.starts_with(&format!("{WEB} "))).count(), 1, "{known}");

    let snapshot = report["snapshot"].as_str().unwrap().to_owned();
    an_isolated_clone_with_new_host_keys_is_trusted_under_an_alias(lab, &snapshot, &source_key);

    let destroy = lab.envclone(&["destroy", "r1"]);
    assert!(destroy.status.success(), "{}", String::from_utf8_lossy(&destroy.stderr));
    assert!(hv.network_names().unwrap().iter().all(|n| !n.starts_with("r1-")));
    let known = std::fs::read_to_string(known_hosts).unwrap();
    assert!(!known.contains(WEB) && !known.contains(DB), "the clone's known_hosts lines go with it: {known}");
}

fn an_isolated_clone_with_new_host_keys_is_trusted_under_an_alias(
    lab: &LabUnderTest,
    snapshot: &str,
    source_key: &str,
) {
    let known_hosts = lab.config().controller.known_hosts;
    lab.json(&["clone", "demo", "--name", "k1", "--from", snapshot, "--start", "resume", "--new-host-keys", "--json"]);

    let known = std::fs::read_to_string(&known_hosts).unwrap();
    let alias_key = key_of(&known, "k1-web");
    assert_ne!(alias_key, source_key, "{known}");
    // The clone at the source's address, with its own key; the source as before.
    assert_eq!(ssh(lab, "k1", "web", "hostname").trim(), "web");
    assert_eq!(key_of(&known, "10.77.1.11"), source_key);
    assert_eq!(lab.sh("web", "hostname").trim(), "web");

    a_clone_of_a_clone_runs_and_keeps_its_source_clone_alive(lab);

    let destroy = lab.envclone(&["destroy", "k1"]);
    assert!(destroy.status.success(), "{}", String::from_utf8_lossy(&destroy.stderr));
    assert!(!std::fs::read_to_string(&known_hosts).unwrap().contains("k1-web"));
    // With it went the snapshot it took for k2, and every file it made.
    let storage = lab.config().controller.state_dir.join("images").join("k1");
    assert!(!storage.exists(), "{}", storage.display());
}

fn a_clone_of_a_clone_runs_and_keeps_its_source_clone_alive(lab: &LabUnderTest) {
    ssh(lab, "k1", "db", "echo 'readdress-e2e: k1 only' >> /srv/db/records; sync");

    let report = lab.json(&["clone", "k1", "--name", "k2", "--start", "resume", "--json"]);

    assert_eq!(report["source"], "k1");
    let page = stdout(
        &std::process::Command::new("ip")
            .args(["netns", "exec", "envclone-c-k2", "curl", "-sS", "--max-time", "10", "http://10.77.1.11/"])
            .output()
            .unwrap(),
    );
    assert!(page.contains("k1 only"), "{page}");
    let refused = lab.envclone(&["destroy", "k1"]);
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("clone k2"));
    assert_eq!(ssh(lab, "k1", "web", "hostname").trim(), "web", "a refused destroy removes nothing");

    let destroy = lab.envclone(&["destroy", "k2"]);
    assert!(destroy.status.success(), "{}", String::from_utf8_lossy(&destroy.stderr));
}

/// The key (type and base64) known_hosts lists for `host`.
fn key_of(known_hosts: &str, host: &str) -> String {
    known_hosts
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{host} ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no known_hosts line for {host}: {known_hosts}"))
}

fn an_unmapped_source_address_stops_the_clone_before_the_link_goes_up(lab: &LabUnderTest) {
    // A production cache no map names: it is in the source's subnet.
    put(&lab.session("web"), "/etc/demo/cache.env", b"CACHE_URL=memcached://10.77.1.50:11211\n");

    let output = lab.envclone(&["clone", "demo", "--name", "r2", "--network", "readdress", "--start", "resume"]);

    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}\n{}", stdout(&output));
    assert!(stderr.contains("/etc/demo/cache.env:1: CACHE_URL=memcached://10.77.1.50:11211"), "{stderr}");
    assert!(stderr.contains("link stays down"), "{stderr}");
    let steps = clone_steps(lab, "r2", OperationState::RolledBack);
    assert!(position(&steps, |s| s.name.starts_with("scan web")).len() == 1, "{steps:#?}");
    assert!(position(&steps, |s| s.name.starts_with("link up") || s.name.starts_with("readdress ")).is_empty());
    // Nothing of it is left.
    let hv = LibvirtHypervisor::connect(&lab.config().controller.libvirt_uri).unwrap();
    assert!(hv.domain_names().unwrap().iter().all(|d| !d.starts_with("r2-")));
    assert!(hv.network_names().unwrap().iter().all(|n| !n.starts_with("r2-")));
    assert!(!Path::new("/run/netns/envclone-c-r2").exists());
    let clones = lab.json(&["clones", "--json"]);
    assert_eq!(clones.as_array().map(Vec::len), Some(0), "{clones:#}");

    run(&lab.session("web"), "rm /etc/demo/cache.env");
}

/// A command in a clone's VM through `envclone ssh`.
fn ssh(lab: &LabUnderTest, clone: &str, vm: &str, command: &str) -> String {
    let output = envclone::wait::until(
        &format!("{vm} of {clone} to answer `{command}`"),
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let output = lab.envclone(&["ssh", clone, vm, "--", command]);
            Ok::<_, std::io::Error>(output.status.success().then_some(output))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    stdout(&output)
}

/// The steps of the last clone operation on `clone` that ended in `state`.
fn clone_steps(lab: &LabUnderTest, clone: &str, state: OperationState) -> Vec<Step> {
    let catalog = Catalog::open(&lab.config().controller.state_dir).unwrap();
    let operation = catalog
        .operations_in(state)
        .unwrap()
        .into_iter()
        .rfind(|o| o.kind == OperationKind::Clone && o.env == clone)
        .unwrap_or_else(|| panic!("no {state:?} clone operation on {clone}"));
    catalog.steps(operation.id).unwrap()
}

fn position(steps: &[Step], pick: impl Fn(&Step) -> bool) -> Vec<usize> {
    steps.iter().enumerate().filter(|(_, s)| pick(s)).map(|(i, _)| i).collect()
}
