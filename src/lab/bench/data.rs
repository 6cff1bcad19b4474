//! Clone time against the data written in a disk: for each size, one VM
//! with a data disk (`vdc`) holding that much, written from the host before
//! the VM first boots (`qemu-io -t none`, far faster than writing it from
//! a TCG guest). After one quiesced snapshot, in this order: envclone
//! linked and full clones from it (`--start off`, each destroyed right
//! after), the reference copy of the same snapshot images with
//! `qemu-img convert -t none -T none` (the copy limit of this disk,
//! deleted right after), and `virt-clone` of the VM shut off (deleted
//! right after). One size at a time, its environment removed before the
//! next, so the disk's peak is one data disk plus one copy.

use super::exec::{self, number, text};
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

    bench.say(&format!("{name}: full clone"));
    let full_name = format!("{name}-f");
    let full = bench.tools.envclone(
        "data: full clone",
        &["clone", name, "--name", &full_name, "--from", &snap, "--disks", "full", "--start", "off"],
    )?;
    bench.tools.envclone("data: destroy", &["destroy", &full_name])?;

    bench.say(&format!("{name}: qemu-img convert of the same images"));
    let scratch = bench.extra.scratch();
    std::fs::create_dir_all(&scratch).map_err(BenchError::io("data: convert", "create", &scratch))?;
    let mut convert_ms = 0.0;
    for (disk, image) in &images {
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

    bench.say(&format!("{name}: virt-clone (VM shut off first)"));
    bench.power_off(env, &["data"])?;
    let vc_name = format!("{name}-vc");
    let (virt_clone, files) = bench.virt_clone(&env.domain("data"), &vc_name)?;
    bench.drop_virt_clone(&vc_name, &files)?;

    let data_mib = (size_gib * GIB) as f64 / MIB;
    let full_mib_s = data_mib / (full.ms() / 1000.0);
    let convert_mib_s = data_mib / (convert_ms / 1000.0);
    Ok(DataPoint {
        size_gib,
        written_bytes: size_gib * GIB,
        write_s,
        linked_ms: linked.ms(),
        linked_reported_ms: number(&linked.value, "/duration_ms"),
        linked_overlay_bytes,
        full_ms: full.ms(),
        full_reported_ms: number(&full.value, "/duration_ms"),
        virt_clone_ms: virt_clone.ms(),
        convert_ms,
        full_mib_s,
        convert_mib_s,
        full_vs_convert: full_mib_s / convert_mib_s,
        linked_vs_smallest: 1.0,
        virt_clone_vs_full: virt_clone.ms() / full.ms(),
    })
}

/// (disk, snapshot image) of every disk of the snapshot report's VMs.
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
