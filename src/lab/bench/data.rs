//! Clone time against the data written in a disk: for each size, one VM
//! with a data disk (`vdc`) holding that much, written from the host before
//! the VM first boots (`qemu-io -t none`, far faster than writing it from
//! a TCG guest). After one quiesced snapshot, in this order: an envclone
//! linked clone from it (`--start off`, destroyed right after), pairs of
//! an envclone full clone and the reference copy of the same snapshot
//! images with `qemu-img convert -t none -T none` (the copy limit of this
//! disk; each deleted right after, the median of each kept), and
//! `virt-clone` of the VM shut off (deleted right after). One size at a time, its environment removed before the
//! next, so the disk's peak is one data disk plus one copy.

use super::exec::{self, number, text};
use super::probe::median;
use super::report::{DataFamily, DataPoint, MIB};
use super::{Bench, BenchError};
use crate::lab::extra::{DataDisk, ExtraEnv, ExtraVm};
use crate::lab::topology::{Role, GUEST_MEMORY_MIB};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

const GIB: u64 = 1 << 30;

pub(super) fn run(bench: &Bench<'_>, sizes_gib: &[u64], notes: &mut Vec<String>) -> Result<DataFamily, BenchError> {
    notes.push(
        "Data: written from the host into a qcow2 data disk with `qemu-io -t none -c 'write -P 0x5a ...'` (non-zero, \
         so every cluster is allocated) before the VM first boots, instead of from the TCG guest. envclone's full \
         clone copies with `qemu-img convert -U -O qcow2 -t none -T none` (direct I/O, where the filesystem has \
         it); the reference is the same images copied the same way by hand (this disk's copy limit). virt-clone copies the \
         shut-off VM through libvirt's storage API. Throughput counts the data bytes only."
            .into(),
    );
    let mut points: Vec<DataPoint> = Vec::new();
    for (index, &size) in sizes_gib.iter().enumerate() {
        let env = ExtraEnv {
            name: format!("bdata{size}"),
            subnet: 10 + index as u8,
            vms: vec![ExtraVm {
                name: "data".into(),
                role: Role::Db,
                memory_mib: GUEST_MEMORY_MIB,
                data: Some(DataDisk::filled(size * GIB)),
            }],
        };
        let write_started = Instant::now();
        let point = bench.with_envs(std::slice::from_ref(&env), || {
            // Writing the data is part of setting up (before the boot).
            let write_s = write_started.elapsed().as_secs_f64();
            measure(bench, &env, size, write_s)
        })?;
        bench.say(&format!(
            "{size} GiB: linked {:.1} s, full {:.1} s, convert {:.1} s, virt-clone {:.1} s",
            point.linked_ms / 1000.0,
            point.full_ms / 1000.0,
            point.convert_ms / 1000.0,
            point.virt_clone_ms / 1000.0
        ));
        points.push(point);
    }
    let smallest = points.first().map(|p| p.linked_ms).unwrap_or(f64::NAN);
    for point in &mut points {
        point.linked_vs_smallest = point.linked_ms / smallest;
    }
    Ok(DataFamily { points })
}

fn measure(bench: &Bench<'_>, env: &ExtraEnv, size_gib: u64, write_s: f64) -> Result<DataPoint, BenchError> {
    let name = &env.name;
    bench.say(&format!("{name}: snapshot"));
    let snapshot = bench.tools.envclone("data: snapshot", &["snapshot", name, "--label", "bench"])?;
    let snap = text("data: snapshot", &snapshot.value, "/name")?.to_string();
    let images = snapshot_images(&snapshot.value);

    bench.say(&format!("{name}: linked clone"));
    let linked_name = format!("{name}-l");
    let linked = bench.tools.envclone(
        "data: linked clone",
        &["clone", name, "--name", &linked_name, "--from", &snap, "--disks", "linked", "--start", "off"],
    )?;
    let overlay = clone_disk(&linked.value, "vdc");
    let linked_overlay_bytes = overlay.as_deref().map_or(0, exec::allocated_bytes);
    bench.tools.envclone("data: destroy", &["destroy", &linked_name])?;

    // This disk's throughput swings between runs (a virtual disk with
    // bursts, and ext4 discarding the copy just deleted), so the full clone
    // and the reference copy run in pairs, alternating which goes first,
    // and each is its median.
    let mut full_runs = Vec::new();
    let mut convert_runs = Vec::new();
    for pair in 0..pairs(size_gib) {
        for full_first in [pair % 2 == 0, pair % 2 == 1] {
            if full_first {
                bench.say(&format!("{name}: full clone ({})", pair + 1));
                full_runs.push(full_clone(bench, name, &snap)?);
            } else {
                bench.say(&format!("{name}: qemu-img convert of the same images ({})", pair + 1));
                convert_runs.push(reference_copy(bench, name, &images)?);
            }
        }
    }
    let full_ms = median(&mut full_runs.iter().map(|(ms, _)| *ms).collect::<Vec<_>>()).unwrap_or(f64::NAN);
    let full_reported_ms = full_runs.iter().find(|(ms, _)| *ms == full_ms).and_then(|(_, reported)| *reported);
    let convert_ms = median(&mut convert_runs.clone()).unwrap_or(f64::NAN);

    bench.say(&format!("{name}: virt-clone (VM shut off first)"));
    bench.power_off(env, &["data"])?;
    let vc_name = format!("{name}-vc");
    let (virt_clone, files) = bench.virt_clone(&env.domain("data"), &vc_name)?;
    bench.drop_virt_clone(&vc_name, &files)?;

    let data_mib = (size_gib * GIB) as f64 / MIB;
    let full_mib_s = data_mib / (full_ms / 1000.0);
    let convert_mib_s = data_mib / (convert_ms / 1000.0);
    Ok(DataPoint {
        size_gib,
        written_bytes: size_gib * GIB,
        write_s,
        linked_ms: linked.ms(),
        linked_reported_ms: number(&linked.value, "/duration_ms"),
        linked_overlay_bytes,
        full_ms,
        full_reported_ms,
        full_runs_ms: full_runs.iter().map(|(ms, _)| *ms).collect(),
        virt_clone_ms: virt_clone.ms(),
        convert_ms,
        convert_runs_ms: convert_runs,
        full_mib_s,
        convert_mib_s,
        full_vs_convert: full_mib_s / convert_mib_s,
        linked_vs_smallest: 1.0,
        virt_clone_vs_full: virt_clone.ms() / full_ms,
    })
}

/// (disk, snapshot image) of every disk of the snapshot report's VMs.
/// Pairs of (full clone, reference copy) per size: three up to 4 GiB, one
/// above (a 16 GiB pair takes minutes, and bursts matter less over it).
fn pairs(size_gib: u64) -> usize {
    if size_gib <= 4 {
        3
    } else {
        1
    }
}

/// One `envclone clone --disks full` from `snap`, destroyed right after:
/// its wall time and the report's `duration_ms`.
fn full_clone(bench: &Bench<'_>, name: &str, snap: &str) -> Result<(f64, Option<f64>), BenchError> {
    let full_name = format!("{name}-f");
    let full = bench.tools.envclone(
        "data: full clone",
        &["clone", name, "--name", &full_name, "--from", snap, "--disks", "full", "--start", "off"],
    )?;
    bench.tools.envclone("data: destroy", &["destroy", &full_name])?;
    Ok((full.ms(), number(&full.value, "/duration_ms")))
}

/// The snapshot's images copied by hand as envclone copies them (this
/// disk's copy limit), deleted right after: milliseconds.
fn reference_copy(bench: &Bench<'_>, name: &str, images: &[(String, PathBuf)]) -> Result<f64, BenchError> {
    let scratch = bench.extra.scratch();
    std::fs::create_dir_all(&scratch).map_err(BenchError::io("data: convert", "create", &scratch))?;
    let mut convert_ms = 0.0;
    for (disk, image) in images {
        let copy = scratch.join(format!("{name}.convert.{disk}.qcow2"));
        let (source, target) = (image.to_string_lossy(), copy.to_string_lossy());
        let timed = exec::tool(
            "data: qemu-img convert",
            "qemu-img",
            &["convert", "-U", "-t", "none", "-T", "none", "-O", "qcow2", &source, &target],
        );
        let removed = exec::remove_files("data: qemu-img convert", std::slice::from_ref(&copy));
        convert_ms += timed?.ms();
        removed?;
    }
    Ok(convert_ms)
}

fn snapshot_images(report: &Value) -> Vec<(String, PathBuf)> {
    report["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|vm| vm["disks"].as_array().into_iter().flatten())
        .filter_map(|d| Some((d["disk"].as_str()?.to_string(), PathBuf::from(d["image"].as_str()?))))
        .collect()
}

/// The clone's own image of `disk`, from its report.
fn clone_disk(report: &Value, disk: &str) -> Option<PathBuf> {
    report["vms"]
        .as_array()?
        .iter()
        .flat_map(|vm| vm["disks"].as_array().into_iter().flatten())
        .find(|d| d["disk"] == disk)
        .and_then(|d| d["path"].as_str())
        .map(PathBuf::from)
}
