//! End to end on a real lab: a private libvirtd in a network namespace, two
//! TCG guests booted from the real image, their agents reached over SSH.
//! Needs root and the packages of scripts/install-deps.sh; the static agent
//! is built by scripts/build.sh. All traffic stays inside the lab's namespace.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{stdout, LabUnderTest};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const LAB: &str = "e2e-lab";

#[test]
fn lab_up_serves_demo_and_lab_down_leaves_nothing() {
    let lab = LabUnderTest::new(LAB);

    // Up: both agents answer over SSH, each as its own host.
    let up = lab.json(&["lab", "up", "--json"]);
    let hostnames: Vec<&str> =
        up["vms"].as_array().unwrap().iter().map(|vm| vm["agent_hostname"].as_str().unwrap()).collect();
    assert_eq!(hostnames, ["web", "db"]);
    assert_eq!(up["domain_type"], "qemu");

    // web answers with db's records, fetched over TCP through app.env's DSN.
    let page = lab.curl("http://10.77.1.11/");
    assert_eq!(page.trim_end(), envclone::lab::topology::DB_RECORDS.trim_end());

    // check --live: libvirt objects exist and every agent answers with a verified host key.
    let check = lab.json(&["check", "--live", "--json"]);
    let live = check["live"].as_array().unwrap();
    let subjects: Vec<&str> = live.iter().map(|c| c["subject"].as_str().unwrap()).collect();
    for subject in ["network demo-net", "domain demo-web", "domain demo-db", "agent demo/web", "agent demo/db"] {
        assert!(subjects.contains(&subject), "check --live did not check {subject}: {subjects:?}");
    }
    assert!(live.iter().all(|c| c["ok"] == true), "failed live checks: {live:#?}");

    // ssh runs a command in the guest and passes its exit status through.
    let env = lab.envclone(&["ssh", "demo", "web", "--", "cat", "/etc/demo/app.env"]);
    assert!(stdout(&env).contains("DATABASE_URL=postgres://demo@10.77.1.12:5432/demo"), "{}", stdout(&env));
    assert_eq!(lab.envclone(&["ssh", "demo", "db", "--", "exit", "7"]).status.code(), Some(7));

    // A changed host key is refused, never trusted; the other guest is unaffected.
    let original_known_hosts = swap_web_host_key(&lab.dir().join("keys/known_hosts"));
    let refused = lab.envclone(&["ssh", "demo", "web", "--", "true"]);
    assert_eq!(refused.status.code(), Some(5), "stderr: {}", String::from_utf8_lossy(&refused.stderr));
    assert!(
        String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("host key mismatch"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let check = lab.envclone(&["check", "--live"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(stdout(&check).contains("FAIL agent demo/web"), "{}", stdout(&check));
    assert!(stdout(&check).contains("ok   agent demo/db"), "{}", stdout(&check));
    std::fs::write(lab.dir().join("keys/known_hosts"), original_known_hosts).unwrap();

    // A second up changes nothing and finds the same guests running.
    let again = lab.json(&["lab", "up", "--json"]);
    assert_eq!(again["vms"].as_array().unwrap().len(), 2);
    assert_eq!(again["root_image"], up["root_image"]);
    assert!(again["vms"].as_array().unwrap().iter().all(|vm| vm["stale_image"] == false), "{again:#}");

    // An up with another agent build keeps the running guests and says they are stale.
    let other_agent = lab.dir().join("other-envclone-agent");
    let mut agent_bytes =
        std::fs::read(envclone::lab::find_agent_binary_near(None, Path::new(env!("CARGO_BIN_EXE_envclone"))).unwrap())
            .unwrap();
    agent_bytes.push(0); // same program, other content: another root image
    std::fs::write(&other_agent, agent_bytes).unwrap();
    let rebuilt = lab.json(&["lab", "up", "--json", "--agent-bin", &other_agent.to_string_lossy()]);
    assert_ne!(rebuilt["root_image"], up["root_image"]);
    assert!(rebuilt["vms"].as_array().unwrap().iter().all(|vm| vm["stale_image"] == true), "{rebuilt:#}");
    let status = lab.json(&["lab", "status", "--json"]);
    let states: Vec<&str> =
        status["domains"].as_array().unwrap().iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["running", "running"]);

    // Down removes the domains, the network, the daemons, the namespace and the files.
    let down = lab.json(&["lab", "down", "--json"]);
    let mut domains: Vec<&str> =
        down["domains_removed"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    domains.sort();
    assert_eq!(domains, ["demo-db", "demo-web"]);
    assert_eq!(down["networks_removed"], serde_json::json!(["demo-net"]));
    assert!(!Path::new("/run/netns").join(lab.netns()).exists(), "namespace {} left behind", lab.netns());
    assert!(!lab.dir().exists(), "lab directory left behind");
    let leftover = Command::new("pgrep").args(["-f", &lab.dir().to_string_lossy()]).output().unwrap();
    assert!(stdout(&leftover).trim().is_empty(), "processes left behind: {}", stdout(&leftover));
}

/// web's known_hosts line made to carry db's key: what a swapped or spoofed
/// guest looks like to the controller.
fn swap_web_host_key(known_hosts: &Path) -> String {
    let original = std::fs::read_to_string(known_hosts).unwrap();
    let db_key = original.lines().find(|l| l.starts_with("10.77.1.12 ")).unwrap().split_once(' ').unwrap().1;
    let tampered: String = original
        .lines()
        .map(
            |line| if line.starts_with("10.77.1.11 ") { format!("10.77.1.11 {db_key}\n") } else { format!("{line}\n") },
        )
        .collect();
    std::fs::write(known_hosts, tampered).unwrap();
    original
}

#[test]
fn lab_down_on_a_lab_that_was_never_up_is_harmless() {
    let lab = LabUnderTest::new("never-up");

    let down = lab.json(&["lab", "down", "--json"]);

    assert_eq!(down["domains_removed"], serde_json::json!([]));
    assert_eq!(down["netns_removed"], false);
    assert_eq!(down["dir_removed"], Value::Null);
}
