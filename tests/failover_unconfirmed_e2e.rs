//! End to end: an unplanned failover while the primary's libvirt does not
//! answer (its host is down), then that host coming back, on a real lab
//! (two TCG guests, web and db, under a private libvirtd in a network
//! namespace). Needs root and the packages of scripts/install-deps.sh; the
//! static agent is built by scripts/build.sh. All guest traffic stays
//! inside the lab's namespace.
//!
//! The primary's host is played by a path: `--primary-uri` names a libvirt
//! socket that does not exist at the failover (connecting fails: the host
//! is down) and that becomes a symlink to the lab's own libvirt socket
//! later (the host is back). Proven here:
//! - the failover does not wait on the dead host: each primary domain is
//!   recorded `fenced-unconfirmed` (nothing was done to it: its autostart
//!   stays on, no stamp), the standby serves at the primary's address;
//! - `status --json` says the primary could not be checked;
//! - once the host answers and autostart has brought the primary's web
//!   back, `envclone status` fences it again (`returned-refenced`) and
//!   confirms the fence of its db (`fenced`): both shut off, autostart off,
//!   the epoch stamped; the standby still serves.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{run, wait_for_web_page, LabUnderTest};
use envclone::hypervisor::{DomainState, Hypervisor};

const LAB: &str = "unconfirmed";
const BEFORE: &str = "unconfirmed-e2e: before the standby point";

#[test]
fn unplanned_failover_with_the_primary_host_down_then_back() {
    let started = Instant::now();
    let lab = LabUnderTest::up(LAB);
    run(&lab.session("db"), &format!("echo '{BEFORE}' >> /srv/db/records; sync"));
    lab.json(&["snapshot", "demo", "--json"]);
    lab.json(&["standby", "create", "demo", "--name", "sb", "--json"]);
    let hv = lab.hypervisor();
    // The primary's host goes down: its domains stop, autostart still on.
    for domain in ["demo-web", "demo-db"] {
        lab.virsh(&["autostart", domain]);
        hv.destroy_domain(domain).unwrap();
    }
    let host = tempfile::tempdir().unwrap();
    let socket = host.path().join("primary-libvirt-sock");
    let primary_uri = format!("qemu:///system?socket={}", socket.display());

    let began = Instant::now();
    let report = lab.json(&["failover", "demo", "--primary-uri", &primary_uri, "--json"]);

    println!("{report:#}");
    println!(
        "unplanned failover with the primary's libvirt down: {:.1} s, RTO {} ms, RPO {} s",
        began.elapsed().as_secs_f64(),
        report["rto_ms"],
        report["rpo_seconds"]
    );
    assert_eq!(report["action"], "failed-over", "{report:#}");
    let fence = report["fence"].as_array().unwrap();
    assert!(fence.iter().all(|f| f["fence"] == "fenced-unconfirmed"), "{report:#}");
    assert_eq!(report["primary_uri"], primary_uri.as_str());
    for primary in ["demo-web", "demo-db"] {
        assert!(lab.virsh(&["dominfo", primary]).contains("Autostart:      enable"), "nothing done to {primary}");
        assert_eq!(hv.domain(primary).unwrap().def.fence_stamp(), None);
    }
    wait_for_web_page(&lab.netns(), BEFORE);
    let status = lab.json(&["status", "--json"]);
    let switch = &status["failovers"][0];
    assert_eq!(switch["checked"], false, "{switch:#}");
    assert!(switch["unchecked_reason"].as_str().unwrap().contains("does not answer"), "{switch:#}");

    // The host is back, and autostart brought its web up.
    std::os::unix::fs::symlink(lab_socket(&lab), &socket).unwrap();
    lab.virsh(&["start", "demo-web"]);
    let status = lab.json(&["status", "--json"]);

    println!("{:#}", status["failovers"]);
    let switch = &status["failovers"][0];
    assert_eq!(switch["checked"], true, "{switch:#}");
    let mut actions: Vec<(String, String)> = switch["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["domain"].as_str().unwrap().to_owned(), a["action"].as_str().unwrap().to_owned()))
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [("demo-db".to_owned(), "fenced".to_owned()), ("demo-web".to_owned(), "returned-refenced".to_owned())]
    );
    assert!(switch["primary"].as_array().unwrap().iter().all(|f| f["fence"] == "fenced"), "{switch:#}");
    for primary in ["demo-web", "demo-db"] {
        let found = hv.domain(primary).unwrap();
        assert_eq!(found.state, DomainState::ShutOff, "{primary}");
        assert_eq!(found.def.fence_stamp().map(|s| s.epoch), Some(1), "{primary}");
        assert!(lab.virsh(&["dominfo", primary]).contains("Autostart:      disable"), "{primary}");
    }
    assert_eq!(hv.domain("sb-web").unwrap().state, DomainState::Running);
    wait_for_web_page(&lab.netns(), BEFORE);
    println!("unconfirmed e2e done in {:.1} s", started.elapsed().as_secs_f64());
}

/// The lab's libvirt socket, from its URI (`...?socket=PATH`).
fn lab_socket(lab: &LabUnderTest) -> PathBuf {
    let uri = lab.config().controller.libvirt_uri;
    let path = uri.split("socket=").nth(1).expect("the lab's URI names its socket");
    let path = Path::new(path);
    assert!(path.exists(), "{}", path.display());
    path.to_owned()
}
