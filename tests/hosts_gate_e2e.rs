//! End to end on a real two-host lab: the start gate. `lab up --hosts 2`
//! puts the hook on each host before its libvirtd starts and grants demo
//! its lease on a. With a short lease (20 s), a standby on b and demo's
//! autostart on: host a is lost (`lab host-down a`), `envclone failover
//! demo` fences it unconfirmed, the lease runs out, and when a comes back
//! (`lab host-up a`) its libvirtd's autostart of demo's domains is refused
//! by the gate: nothing of demo runs on a, not even for a moment. Then the
//! guard (`envclone status demo`) confirms the fences, and `virsh start` of
//! a fenced domain is refused with the gate's message even under a fresh
//! lease written by hand.
//! Needs root and the packages of scripts/install-deps.sh.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{stdout, virsh_at, LabUnderTest};
use envclone::config::HumanDuration;

const LAB: &str = "e2e-hgate";
const LEASE: Duration = Duration::from_secs(20);
/// How long a's list is watched after it comes back: libvirtd runs its
/// autostart right after it starts.
const WATCH: Duration = Duration::from_secs(20);

fn running(uri: &str) -> String {
    let list = virsh_at(uri, &["list", "--name"]);
    assert!(list.status.success(), "virsh list: {}", String::from_utf8_lossy(&list.stderr));
    stdout(&list).trim().to_owned()
}

#[test]
fn a_returning_host_starts_nothing_of_a_failed_over_environment_and_refuses_a_fenced_domain() {
    let began = Instant::now();
    let (lab, _) = LabUnderTest::up_hosts(LAB, 2);
    let lab_up = began.elapsed();
    let config = lab.config();
    let a_uri = config.hosts["a"].libvirt_uri.clone();

    // `lab up` installed the gate on both hosts and granted demo its lease on a.
    let gate = lab.json(&["gate", "status", "--json"]);
    let hosts = gate["hosts"].as_array().unwrap();
    assert!(hosts.iter().all(|h| h["hook"] == "current"), "{gate:#}");
    assert_eq!(hosts[0]["host"], "a");
    assert_eq!(hosts[0]["protected_current"], true, "{gate:#}");
    assert!(hosts[0]["leases"][0]["expires_in_seconds"].as_i64().unwrap() > 0, "{gate:#}");

    lab.edit_config(|config| config.hosts.get_mut("a").unwrap().lease = Some(HumanDuration(LEASE)));
    lab.json(&["snapshot", "demo", "--json"]);
    lab.json(&["standby", "create", "demo", "--name", "sb", "--host", "b", "--json"]);
    for domain in ["demo-web", "demo-db"] {
        assert!(virsh_at(&a_uri, &["autostart", domain]).status.success());
    }
    let renewed = lab.json(&["gate", "renew", "--host", "a", "--json"]);
    let renewed_at = Instant::now();
    assert_eq!(renewed["hosts"][0]["granted"][0]["expires_in_seconds"], LEASE.as_secs(), "{renewed:#}");

    let down = lab.envclone(&["lab", "host-down", "a", "--json"]);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let failover = lab.json(&["failover", "demo", "--json"]);
    assert!(failover["fence"].as_array().unwrap().iter().all(|f| f["fence"] == "fenced-unconfirmed"), "{failover:#}");
    let status = lab.json(&["status", "--json"]);
    let a_leases = status["leases"].as_array().unwrap().iter().find(|h| h["host"] == "a").unwrap().clone();
    assert!(a_leases["error"].is_string(), "a does not answer: {a_leases:#}");

    // a comes back once its last lease has run out.
    let expired = renewed_at + LEASE + Duration::from_secs(2);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    let up = lab.envclone(&["lab", "host-up", "a", "--json"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        assert_eq!(running(&a_uri), "", "nothing of demo may run on a, not even for a moment");
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = lab.host_libvirtd_log("a");
    for domain in ["demo-web", "demo-db"] {
        let refused = format!("Failed to autostart VM '{domain}'");
        let line = log.lines().find(|l| l.contains(&refused)).unwrap_or_else(|| panic!("{refused} not in:\n{log}"));
        assert!(line.contains("envclone start gate") && line.contains("lease for environment demo"), "{line}");
    }

    // The guard confirms the fences now that a answers; the lease stays withheld.
    let status = lab.json(&["status", "demo", "--json"]);
    let switch = &status["failovers"][0];
    assert_eq!(switch["checked"], true, "{switch:#}");
    assert!(switch["primary"].as_array().unwrap().iter().all(|f| f["fence"] == "fenced"), "{switch:#}");
    assert_eq!(status["leases"][0]["withheld"][0], "demo", "{status:#}");
    let epoch = switch["epoch"].as_i64().unwrap();

    // A fenced domain stays refused even under a fresh lease (written by hand).
    let on_a = lab.host_session("a");
    let gate_dir = config.hosts["a"].gate_dir();
    let write = on_a.exec(&format!("echo $(( $(date +%s) + 600 )) > {}/demo.lease", gate_dir.display()), None).unwrap();
    assert_eq!(write.status, 0, "{}", String::from_utf8_lossy(&write.stderr));
    let start = virsh_at(&a_uri, &["start", "demo-web"]);
    let refusal = String::from_utf8_lossy(&start.stderr);
    assert!(!start.status.success(), "a fenced domain started");
    assert!(refusal.contains("envclone start gate: refusing to start domain demo-web"), "{refusal}");
    assert!(refusal.contains(&format!("epoch {epoch}")) && refusal.contains("`envclone status`"), "{refusal}");
    assert_eq!(running(&a_uri), "");

    // The next renewal takes the hand-made lease back.
    let renewed = lab.json(&["gate", "renew", "--host", "a", "--json"]);
    assert_eq!(renewed["hosts"][0]["withheld"][0], "demo", "{renewed:#}");
    let gate = lab.json(&["gate", "status", "--host", "a", "--json"]);
    assert!(gate["hosts"][0]["leases"].as_array().unwrap().is_empty(), "{gate:#}");
    eprintln!(
        "start gate e2e: lab up {:.1} s, whole test {:.1} s",
        lab_up.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}
