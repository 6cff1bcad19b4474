//! End to end (issue #5): a linked clone costs the same whatever the data
//! in the source's disks. Two one-VM environments are added to a lab next
//! to `demo` (`envclone::lab::extra`), one with 100 MiB and one with 4 GiB
//! written in a data disk from the host before the VM first boots; each is
//! snapshotted once, then cloned three times from that snapshot with
//! `envclone clone ENV --name X --from SNAP --disks linked --start off`
//! through the real binary. The median of the clones' `duration_ms` for
//! 4 GiB must be within 2x that for 100 MiB, and each clone's data disk
//! must be a small overlay whose backing file is the snapshot's image: no
//! data copied.
//!
//! Needs root and the packages of scripts/install-deps.sh; the static
//! agent is built by scripts/build.sh. Traffic stays in the lab's namespace.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::LabUnderTest;
use envclone::config::DomainType;
use envclone::lab::extra::{DataDisk, ExtraEnv, ExtraLab, ExtraOptions, ExtraVm};
use envclone::lab::topology::Role;
use envclone::lab::{find_agent_binary_near, Lab, DEFAULT_CACHE_DIR};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LAB: &str = "scale";
const MIB: u64 = 1 << 20;
const CLONES: usize = 3;
/// A fresh qcow2 overlay is a few hundred KiB; a copy of the data would be
/// at least 100 MiB.
const OVERLAY_AT_MOST: u64 = 8 * MIB;

#[test]
fn a_linked_clone_of_4_gib_takes_within_2x_the_time_of_one_of_100_mib() {
    let lab = LabUnderTest::up(LAB);
    let lab_handle = lab_handle(&lab);
    let extra = ExtraLab::new(&lab_handle);
    let small = data_env("d100m", 201, 100 * MIB);
    let large = data_env("d4g", 202, 4096 * MIB);
    extra
        .add(&[small.clone(), large.clone()], &extra_options(&lab), &|line| eprintln!("  .. {line}"))
        .expect("the data environments boot and their agents answer");
    let config = extra.config_path();

    let small_ms = linked_clone_durations(&lab, &config, &small.name);
    let large_ms = linked_clone_durations(&lab, &config, &large.name);

    let (small_median, large_median) = (median(small_ms.clone()), median(large_ms.clone()));
    eprintln!("linked clone duration_ms: 100 MiB {small_ms:?} (median {small_median}), 4 GiB {large_ms:?} (median {large_median})");
    assert!(
        large_median <= 2 * small_median,
        "a linked clone of 4 GiB took {large_median} ms, more than 2x the {small_median} ms of 100 MiB"
    );
}

/// Clones `env` from one snapshot [`CLONES`] times (each destroyed before
/// the next) and returns each clone's `duration_ms`, checking on the way
/// that its data disk is a small overlay on the snapshot's image.
fn linked_clone_durations(lab: &LabUnderTest, config: &Path, env: &str) -> Vec<u64> {
    let config = config.to_str().unwrap();
    let snapshot = lab.json(&["--config", config, "snapshot", env, "--json"]);
    let name = snapshot["name"].as_str().unwrap();
    let image = disk_of(&snapshot["vms"][0]["disks"], "vdc")["image"].as_str().unwrap().to_owned();
    (1..=CLONES)
        .map(|i| {
            let clone = format!("{env}-{i}");
            let report = lab.json(&[
                "--config", config, "clone", env, "--name", &clone, "--from", name, "--disks", "linked", "--start",
                "off", "--json",
            ]);

            let overlay = PathBuf::from(disk_of(&report["vms"][0]["disks"], "vdc")["path"].as_str().unwrap());
            let info = image_info(&overlay);
            assert_eq!(info["backing-filename"].as_str(), Some(image.as_str()), "{info:#}");
            let allocated = allocated_bytes(&overlay);
            assert!(allocated <= OVERLAY_AT_MOST, "{} takes {allocated} bytes: data was copied", overlay.display());
            lab.json(&["--config", config, "destroy", &clone, "--json"]);
            report["duration_ms"].as_u64().unwrap()
        })
        .collect()
}

fn data_env(name: &str, subnet: u8, data_bytes: u64) -> ExtraEnv {
    ExtraEnv {
        name: name.to_owned(),
        subnet,
        vms: vec![ExtraVm {
            name: "data".to_owned(),
            role: Role::Db,
            memory_mib: 256,
            data: Some(DataDisk::filled(data_bytes)),
        }],
    }
}

/// The library's handle on the lab the test brought up with the binary.
fn lab_handle(lab: &LabUnderTest) -> Lab {
    let labs_dir = lab.dir().parent().unwrap().to_path_buf();
    let cache = std::env::var_os("ENVCLONE_LAB_CACHE").map_or(PathBuf::from(DEFAULT_CACHE_DIR), PathBuf::from);
    Lab::new(&lab.name, &labs_dir, &cache).unwrap()
}

fn extra_options(lab: &LabUnderTest) -> ExtraOptions {
    ExtraOptions {
        // The agent `lab up` put in the root image, so the image is shared.
        agent_binary: find_agent_binary_near(None, Path::new(env!("CARGO_BIN_EXE_envclone")))
            .expect("the static agent: scripts/build.sh"),
        domain_type: lab.config().lab.map_or(DomainType::Qemu, |l| l.domain_type),
        boot_timeout: Duration::from_secs(300),
    }
}

fn disk_of<'v>(disks: &'v Value, disk: &str) -> &'v Value {
    disks.as_array().unwrap().iter().find(|d| d["disk"] == disk).unwrap_or_else(|| panic!("no {disk} in {disks:#}"))
}

fn image_info(image: &Path) -> Value {
    let output = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(image).output().unwrap();
    assert!(output.status.success(), "qemu-img info {}: {}", image.display(), String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}
