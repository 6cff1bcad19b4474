//! End to end on a real two-host lab (`envclone lab up --hosts 2`): hosts
//! `a` (running demo's two TCG guests) and `b`, each a network and mount
//! namespace with its own libvirtd, storage and dropbear, reached from the
//! controller only over SSH (libvirt's libssh2 transport with pinned host
//! keys). Needs root and the packages of scripts/install-deps.sh; the
//! static agent is built by scripts/build.sh. All traffic stays on the
//! lab's veths and inside its namespaces.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{run, stdout, virsh_at, web_page, LabUnderTest};
use envclone::lab::hosts::addressing::Addressing;
use std::path::Path;
use std::process::Command;

const LAB: &str = "e2e-hosts";

#[test]
fn two_host_lab_keeps_hosts_remote_and_survives_a_power_loss() {
    let (lab, up) = LabUnderTest::up_hosts(LAB, 2);
    eprintln!("lab up --hosts 2 took {}s", up["seconds"]);
    let config = lab.config();
    let (a, b) = (&config.hosts["a"], &config.hosts["b"]);

    // Both agents answer, through host a's namespace; web serves db's records.
    let hostnames: Vec<&str> =
        up["vms"].as_array().unwrap().iter().map(|vm| vm["agent_hostname"].as_str().unwrap()).collect();
    assert_eq!(hostnames, ["web", "db"]);
    assert_eq!(lab.sh("db", "cat /etc/hostname").trim(), "db");
    assert_eq!(web_page(&lab.host_netns("a")).trim_end(), envclone::lab::topology::DB_RECORDS.trim_end());

    // demo runs on a, seen through the remote URI the config names; b runs nothing.
    assert_eq!(config.host_of("demo"), "a");
    assert!(a.libvirt_uri.starts_with("qemu+libssh2://root@"), "{}", a.libvirt_uri);
    let on_a = virsh_at(&a.libvirt_uri, &["list", "--name"]);
    assert!(on_a.status.success(), "{}", String::from_utf8_lossy(&on_a.stderr));
    let mut running: Vec<String> = stdout(&on_a).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    running.sort();
    assert_eq!(running, ["demo-db", "demo-web"]);
    let on_b = virsh_at(&b.libvirt_uri, &["list", "--all", "--name"]);
    assert!(on_b.status.success(), "{}", String::from_utf8_lossy(&on_b.stderr));
    assert_eq!(stdout(&on_b).trim(), "");

    // A host key that is not pinned is refused, never trusted on first use.
    let empty_known_hosts = lab.dir().join("empty_known_hosts");
    std::fs::write(&empty_known_hosts, "").unwrap();
    let unpinned = a.libvirt_uri.replace(
        &format!("known_hosts={}", a.ssh.known_hosts.display()),
        &format!("known_hosts={}", empty_known_hosts.display()),
    );
    assert_ne!(unpinned, a.libvirt_uri);
    let refused = virsh_at(&unpinned, &["list"]);
    assert!(!refused.status.success(), "an unknown host key was accepted");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("host key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // a's storage exists on a only: the controller cannot see it, SSH to a can.
    assert_eq!(a.storage, Path::new("/srv/envclone"));
    assert!(!Path::new("/srv/envclone").exists(), "the controller sees a host's storage");
    let listing = run(&lab.host_session("a"), "ls /srv/envclone/lab");
    for image in ["web-root.qcow2", "web-seed.qcow2", "db-root.qcow2", "db-seed.qcow2"] {
        assert!(listing.lines().any(|l| l == image), "{image} not in a's storage: {listing}");
    }
    assert!(listing.lines().any(|l| l.starts_with("root-") && l.ends_with(".qcow2")), "no base image: {listing}");

    // A shaped link: a token bucket on b's link, in both directions.
    let shaped = lab.json(&["lab", "link", "b", "--rate", "100mbit", "--json"]);
    assert_eq!(shaped["rate"], "100Mbit");
    let qdisc = Command::new("ip")
        .args(["netns", "exec", &lab.host_netns("b"), "tc", "qdisc", "show", "dev", "uplink"])
        .output()
        .unwrap();
    assert!(stdout(&qdisc).contains("qdisc tbf"), "{}", stdout(&qdisc));
    let controller_end = Addressing::new(&lab.name).controller_device("b");
    let qdisc = Command::new("tc").args(["qdisc", "show", "dev", &controller_end]).output().unwrap();
    assert!(stdout(&qdisc).contains("rate 100Mbit"), "{}", stdout(&qdisc));
    let status = lab.json(&["lab", "status", "--json"]);
    let hosts = status["hosts"].as_array().unwrap();
    assert_eq!(hosts.iter().map(|h| h["name"].as_str().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(hosts[1]["rate"], "100Mbit");
    assert_eq!(hosts[0]["rate"], serde_json::Value::Null);
    assert!(hosts.iter().all(|h| h["libvirtd_running"] == true && h["ssh_up"] == true && h["link_up"] == true));

    // Power loss of a: its libvirt does not answer, its QEMUs are gone.
    let down = lab.json(&["lab", "host-down", "a", "--json"]);
    assert!(down["processes_killed"].as_u64().unwrap() >= 4, "{down:#}"); // 2 QEMUs, libvirtd, virtlogd, dropbear
    assert_eq!(down["host"]["link_up"], false);
    assert!(!virsh_at(&a.libvirt_uri, &["list"]).status.success(), "a's libvirt answers while a is down");
    let pids = Command::new("ip").args(["netns", "pids", &lab.host_netns("a")]).output().unwrap();
    assert_eq!(stdout(&pids).trim(), "", "processes left on a after host-down");
    assert!(virsh_at(&b.libvirt_uri, &["list"]).status.success(), "b went down with a");

    // Power back on: libvirt answers with demo's domains defined, shut off
    // (their autostart is off).
    let back = lab.json(&["lab", "host-up", "a", "--json"]);
    assert_eq!(back["host"]["link_up"], true);
    let on_a = virsh_at(&a.libvirt_uri, &["list", "--all"]);
    assert!(on_a.status.success(), "{}", String::from_utf8_lossy(&on_a.stderr));
    let text = stdout(&on_a);
    for domain in ["demo-web", "demo-db"] {
        let line = text.lines().find(|l| l.contains(domain)).unwrap_or_else(|| panic!("{domain} not on a: {text}"));
        assert!(line.contains("shut off"), "{line}");
    }
    assert!(lab.json(&["lab", "host-up", "a", "--json"])["host"]["libvirtd_running"] == true, "host-up twice");

    // Down: nothing of the lab stays (namespaces, veths, route, mounts, processes, files).
    let removed = lab.json(&["lab", "down", "--json"]);
    let hosts_removed: Vec<&str> =
        removed["hosts_removed"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(hosts_removed, ["a", "b"]);
    for netns in [lab.netns(), lab.host_netns("a"), lab.host_netns("b")] {
        assert!(!Path::new("/run/netns").join(&netns).exists(), "namespace {netns} left behind");
    }
    let plan = Addressing::new(&lab.name);
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    assert!(!stdout(&links).contains(&plan.device_prefix()), "veths left behind: {}", stdout(&links));
    let routes = Command::new("ip").args(["route", "show", "type", "unreachable"]).output().unwrap();
    assert!(!stdout(&routes).contains(&plan.subnet().to_string()), "route left behind: {}", stdout(&routes));
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    assert!(!stdout(&loops).contains(&lab.dir().to_string_lossy().to_string()), "{}", stdout(&loops));
    assert!(!lab.dir().exists(), "lab directory left behind");
    let leftover = Command::new("pgrep").args(["-f", &lab.dir().to_string_lossy()]).output().unwrap();
    assert!(stdout(&leftover).trim().is_empty(), "processes left behind: {}", stdout(&leftover));
}

#[test]
fn lab_up_refuses_a_host_count_other_than_one_or_two() {
    let lab = LabUnderTest::new("three-hosts");

    let refused = lab.envclone(&["lab", "up", "--hosts", "3"]);

    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not 3") && stderr.contains("--hosts 2"), "{stderr}");
    assert!(!lab.dir().join("hosts").exists(), "a refused up made hosts");
}

#[test]
fn host_down_on_a_one_host_lab_says_how_to_get_hosts() {
    let lab = LabUnderTest::new("no-hosts");

    let refused = lab.envclone(&["lab", "host-down", "a"]);

    assert_eq!(refused.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no host \"a\"") && stderr.contains("lab up --hosts 2"), "{stderr}");
}
