//! End to end on a real two-host lab: host a, which runs `demo`, is lost
//! (`lab host-down a`: its QEMUs and libvirtd killed, its link cut, its
//! domains' autostart on). `envclone failover demo` gives up on a within a
//! bounded time (its fences recorded `fenced-unconfirmed`), defines demo's
//! network on b from what `standby create` recorded, and starts the
//! standby there from its newest synced point: db serves its last synced
//! write at its own address, in b's network. When a comes back and its
//! autostart starts demo's domains, the guard (`envclone status`) fences
//! them: shut off, autostart off, stamped with the epoch. Then what b
//! wrote goes home: `envclone failback demo` carries it to a, and a serves.
//! Needs root and the packages of scripts/install-deps.sh.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{run, stdout, virsh_at, LabUnderTest};
use envclone::guest::endpoint::{ssh_options, ssh_target};
use envclone::guest::GuestSession;

const LAB: &str = "e2e-hfo";
const MARKER: &str = "written-on-a-before-the-loss";

/// A session to demo's `vm` at its own address, entered through host `host`'s namespace.
fn session_on(lab: &LabUnderTest, host: &str, vm: &str) -> GuestSession {
    let config = lab.config();
    let (_, vm) = config.vm("demo", vm).unwrap();
    let mut agent = vm.agent.clone();
    agent.netns = Some(lab.host_netns(host));
    GuestSession::connect(&ssh_target(&agent), &ssh_options(&config.controller)).unwrap()
}

fn domains(uri: &str) -> String {
    stdout(&virsh_at(uri, &["list", "--name"]))
}

#[test]
fn losing_host_a_fails_demo_over_to_host_b_and_a_returning_is_fenced() {
    let (lab, _) = LabUnderTest::up_hosts(LAB, 2);
    let config = lab.config();
    let (a_uri, b_uri) = (config.hosts["a"].libvirt_uri.clone(), config.hosts["b"].libvirt_uri.clone());

    lab.json(&["snapshot", "demo", "--json"]);
    lab.json(&["standby", "create", "demo", "--name", "sb", "--host", "b", "--json"]);
    run(&lab.session("db"), &format!("echo {MARKER} > /srv/db/marker && sync"));
    lab.json(&["snapshot", "demo", "--json"]);
    let synced = lab.json(&["standby", "sync", "sb", "--json"]);
    assert_eq!(synced["mode"], "incremental", "{synced:#}");
    for domain in ["demo-web", "demo-db"] {
        assert!(virsh_at(&a_uri, &["autostart", domain]).status.success());
    }

    let down = lab.envclone(&["lab", "host-down", "a", "--json"]);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(!virsh_at(&a_uri, &["list"]).status.success(), "a's libvirt is gone");

    let began = Instant::now();
    let report = lab.json(&["failover", "demo", "--json"]);
    let took = began.elapsed();
    eprintln!(
        "unplanned failover after the loss of host a: {:.1} s wall, RTO {} ms, RPO {} s",
        took.as_secs_f64(),
        report["rto_ms"],
        report["rpo_seconds"]
    );
    assert_eq!(report["action"], "failed-over", "{report:#}");
    assert_eq!(report["mode"], "unplanned", "{report:#}");
    assert!(report["fence"].as_array().unwrap().iter().all(|f| f["fence"] == "fenced-unconfirmed"), "{report:#}");
    assert_eq!(report["primary_uri"], a_uri.as_str(), "the guard looks for demo's domains on a");

    // SB serves on b, at db's own address, with the last synced write.
    let on_b = domains(&b_uri);
    assert!(on_b.contains("sb-db") && on_b.contains("sb-web"), "{on_b}");
    let db = session_on(&lab, "b", "db");
    assert_eq!(run(&db, "cat /srv/db/marker").trim(), MARKER);
    let status = lab.json(&["status", "--json"]);
    let switch = &status["failovers"][0];
    assert_eq!(switch["checked"], false, "a does not answer: {switch:#}");

    // a comes back; its autostart starts demo's domains; the guard fences them.
    let up = lab.envclone(&["lab", "host-up", "a", "--json"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !virsh_at(&a_uri, &["list"]).status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = lab.json(&["status", "--json"]);
    let switch = &status["failovers"][0];
    assert_eq!(switch["checked"], true, "{switch:#}");
    assert!(switch["primary"].as_array().unwrap().iter().all(|f| f["fence"] == "fenced"), "{switch:#}");
    assert_eq!(domains(&a_uri).trim(), "", "nothing of demo runs on a");
    for domain in ["demo-web", "demo-db"] {
        let info = stdout(&virsh_at(&a_uri, &["dominfo", domain]));
        assert!(info.contains("Autostart:      disable"), "{domain}: {info}");
    }
    assert_eq!(run(&session_on(&lab, "b", "db"), "cat /srv/db/marker").trim(), MARKER, "b still serves");

    // Writes on b, then failback: what b wrote is carried home (shipped,
    // verified on both hosts) and a serves it.
    run(&session_on(&lab, "b", "db"), "echo written-on-b > /srv/db/from-b && sync");
    let back = lab.json(&["failback", "demo", "--json"]);
    eprintln!("failback from b to a: downtime {} ms, carried {} bytes", back["downtime_ms"], back["bytes_home"]);
    assert_eq!(back["action"], "failed-back", "{back:#}");
    let running_on_a = domains(&a_uri);
    assert!(running_on_a.contains("demo-db") && running_on_a.contains("demo-web"), "{running_on_a}");
    assert_eq!(domains(&b_uri).trim(), "", "sb waits again, shut off");
    assert_eq!(run(&lab.session("db"), "cat /srv/db/from-b").trim(), "written-on-b");
    assert_eq!(run(&lab.session("db"), "cat /srv/db/marker").trim(), MARKER);
}
