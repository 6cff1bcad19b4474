//! Scale: environments of 1, 3 and 6 VMs (256 MiB, db service each), all
//! booted at once, then one after the other, the others paused meanwhile:
//! seven `envclone snapshot` (the group freeze window is their median: one
//! TCG sample is noisy),
//! and one `envclone clone --disks linked --start off` without `--from`,
//! so its time includes the consistent snapshot it takes.

use super::exec::number;
use super::probe::median;
use super::report::{ScaleFamily, ScalePoint};
use super::{Bench, BenchError};
use crate::lab::extra::ExtraEnv;
use crate::lab::topology::GUEST_MEMORY_MIB;

const SNAPSHOTS: usize = 7;

pub(super) fn run(bench: &Bench<'_>, sizes: &[usize], notes: &mut Vec<String>) -> Result<ScaleFamily, BenchError> {
    notes.push(format!(
        "Scale: all environments boot at once ({} VMs of {GUEST_MEMORY_MIB} MiB); while one is measured the \
         others are paused (`virsh suspend`: idle TCG guests still take slices of the 2 cores); freeze window: \
         median of {SNAPSHOTS} snapshots.",
        sizes.iter().sum::<usize>()
    ));
    let envs: Vec<ExtraEnv> = sizes
        .iter()
        .enumerate()
        .map(|(index, &count)| ExtraEnv::uniform(&format!("bscale{count}"), 30 + index as u8, count, GUEST_MEMORY_MIB))
        .collect();
    let mut points: Vec<ScalePoint> = bench.with_envs(&envs, || {
        envs.iter()
            .map(|env| {
                let others: Vec<&ExtraEnv> = envs.iter().filter(|other| other.name != env.name).collect();
                bench.with_paused(&others, || measure(bench, env))
            })
            .collect()
    })?;
    let one = points.iter().find(|p| p.vms == 1).or(points.first()).map(|p| (p.freeze_window_ms, p.linked_clone_ms));
    if let Some((freeze, clone)) = one {
        for point in &mut points {
            point.freeze_vs_one = point.freeze_window_ms / freeze;
            point.clone_vs_one = point.linked_clone_ms / clone;
        }
    }
    Ok(ScaleFamily { points })
}

fn measure(bench: &Bench<'_>, env: &ExtraEnv) -> Result<ScalePoint, BenchError> {
    let name = &env.name;
    let mut windows = Vec::new();
    let mut durations = Vec::new();
    for _ in 0..SNAPSHOTS {
        let snapshot = bench.tools.envclone("scale: snapshot", &["snapshot", name, "--label", "bench"])?;
        windows.push(number(&snapshot.value, "/freeze_window_ms").unwrap_or(f64::NAN));
        durations.push(snapshot.ms());
    }
    let clone = format!("{name}-c");
    let made = bench
        .tools
        .envclone("scale: linked clone", &["clone", name, "--name", &clone, "--disks", "linked", "--start", "off"])?;
    bench.tools.envclone("scale: destroy", &["destroy", &clone])?;
    let point = ScalePoint {
        vms: env.vms.len(),
        freeze_window_ms: median(&mut windows.clone()).unwrap_or(f64::NAN),
        freeze_windows_ms: windows,
        snapshot_ms: median(&mut durations).unwrap_or(f64::NAN),
        linked_clone_ms: made.ms(),
        linked_clone_reported_ms: number(&made.value, "/duration_ms"),
        clone_source_freeze_ms: number(&made.value, "/source_freeze_window_ms"),
        freeze_vs_one: 1.0,
        clone_vs_one: 1.0,
    };
    bench.say(&format!(
        "{name}: freeze {:?} ms, linked clone {:.1} s",
        point.freeze_windows_ms,
        point.linked_clone_ms / 1000.0
    ));
    Ok(point)
}
