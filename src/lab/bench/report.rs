//! The bench's figures, the targets they are judged against (reported,
//! never tuned to), and the Markdown tables printed from them. The JSON
//! file is this very structure, serialized.

use super::probe::ServiceStall;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// UTC, RFC 3339.
    pub measured_at: String,
    pub machine: Machine,
    pub lab: String,
    /// Wall time of the whole bench.
    pub seconds: f64,
    /// How the figures were made, and what to keep in mind reading them.
    pub notes: Vec<String>,
    /// What could not be measured, and why.
    pub not_measured: Vec<String>,
    pub stall: Option<StallFamily>,
    pub data: Option<DataFamily>,
    pub memory: Option<MemoryFamily>,
    pub scale: Option<ScaleFamily>,
    pub hosts: Option<HostsFamily>,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    /// libvirt domain type of the guests: `qemu` (TCG) or `kvm`.
    pub domain_type: String,
    pub kernel: String,
    pub qemu: String,
    pub libvirt: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StallFamily {
    pub environment: String,
    pub probe_interval_ms: f64,
    pub probe_timeout_ms: f64,
    /// Each service's median gap between answers with nothing happening:
    /// the resolution of every stall below.
    pub baseline_gap_ms: Vec<(String, f64)>,
    pub operations: Vec<StallOp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StallOp {
    /// `snapshot`, `snapshot-memory`, `clone-live`, `virsh-live-snapshot`, `virt-clone`.
    pub key: String,
    pub command: String,
    /// Wall time of the operation (for virt-clone: shutdown, copies, boot
    /// until every service answers again).
    pub wall_ms: f64,
    /// The longest gap of any service.
    pub longest_gap_ms: f64,
    pub failed_requests: usize,
    pub services: Vec<ServiceStall>,
    /// The agents' freeze window: the snapshot report's
    /// `freeze_window_ms`, the clone report's `source_freeze_window_ms`.
    pub freeze_window_ms: Option<f64>,
    /// longest_gap_ms / the raw virsh live snapshot's.
    pub ratio_to_virsh: Option<f64>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataFamily {
    pub points: Vec<DataPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataPoint {
    pub size_gib: u64,
    pub written_bytes: u64,
    /// Seconds the host took to write the data (qemu-io, direct I/O).
    pub write_s: f64,
    /// `envclone clone --from SNAP --disks linked --start off`: wall, and
    /// the report's `duration_ms`.
    pub linked_ms: f64,
    pub linked_reported_ms: Option<f64>,
    /// Bytes the linked clone's data-disk overlay takes on disk.
    pub linked_overlay_bytes: u64,
    /// The median of `full_runs_ms`, and that run's reported `duration_ms`.
    pub full_ms: f64,
    pub full_reported_ms: Option<f64>,
    pub full_runs_ms: Vec<f64>,
    /// `virt-clone` of the shut-off VM (the copies only; its shutdown and
    /// boot are in the stall family).
    pub virt_clone_ms: f64,
    /// `qemu-img convert -t none -T none` of the same snapshot images.
    /// The median of `convert_runs_ms`.
    pub convert_ms: f64,
    pub convert_runs_ms: Vec<f64>,
    /// Data bytes per second (MiB/s) of the full clone and of the reference copy.
    pub full_mib_s: f64,
    pub convert_mib_s: f64,
    /// full_mib_s / convert_mib_s.
    pub full_vs_convert: f64,
    /// linked_ms / the smallest size's linked_ms.
    pub linked_vs_smallest: f64,
    /// virt_clone_ms / full_ms.
    pub virt_clone_vs_full: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryFamily {
    pub points: Vec<MemoryPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryPoint {
    pub ram_mib: u64,
    /// Guest RAM filled with non-zero data before the captures (a tmpfs
    /// file): what a busy guest would have to save.
    pub filled_mib: u64,
    /// `envclone snapshot --memory` (QEMU background-snapshot through QMP).
    pub background: Capture,
    /// `virsh snapshot-create-as --live --memspec ... --atomic`.
    pub libvirt_live: Capture,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capture {
    pub command: String,
    pub wall_ms: f64,
    /// The longest interval libvirt reported the domain paused.
    pub pause_ms: f64,
    /// The guest service's longest gap between answers.
    pub stall_ms: f64,
    pub failed_requests: usize,
    pub image_bytes: u64,
    /// image_bytes / guest RAM.
    pub image_vs_ram: f64,
    pub freeze_window_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleFamily {
    pub points: Vec<ScalePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    pub vms: usize,
    /// Median of `freeze_windows_ms`.
    pub freeze_window_ms: f64,
    pub freeze_windows_ms: Vec<f64>,
    pub snapshot_ms: f64,
    /// `envclone clone ENV --name NEW --disks linked --start off` (a fresh snapshot
    /// included): wall, and the report's duration_ms.
    pub linked_clone_ms: f64,
    pub linked_clone_reported_ms: Option<f64>,
    pub clone_source_freeze_ms: Option<f64>,
    /// freeze_window_ms / the 1-VM environment's.
    pub freeze_vs_one: f64,
    pub clone_vs_one: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostsFamily {
    /// The two-host lab it ran on.
    pub lab: String,
    /// Where the standby lives (its link is the shaped one).
    pub standby_host: String,
    /// `lab link b --rate`, and the same in bytes per second.
    pub link_rate: String,
    pub link_bytes_per_s: f64,
    /// The schedule interval the RPO is derived for.
    pub schedule_interval_s: f64,
    pub full: FullSync,
    pub points: Vec<HostsPoint>,
    /// db/vda's ship time against its bytes over the sizes, least
    /// squares: the slope as a rate (MB/s) and the intercept (the fixed
    /// cost of one ship, ms). Derived; `None` with fewer than two sizes.
    pub marginal_mb_s: Option<f64>,
    pub ship_fixed_ms: Option<f64>,
    /// Unplanned cross-host failover after `lab host-down a`.
    pub rto_ms: Option<f64>,
    pub rto_note: String,
}

/// The standby's first sync: a full copy of what the snapshot reads.
#[derive(Debug, Clone, Serialize)]
pub struct FullSync {
    /// Every disk's bytes across the link.
    pub bytes: u64,
    /// `envclone standby create` (networks and domains defined on b, the
    /// full sync).
    pub create_ms: f64,
    pub sync_reported_ms: Option<f64>,
    pub db_vda_bytes: u64,
    /// db/vda's journaled ship step (the chain flattened on a, relayed,
    /// SHA-256 on both hosts).
    pub db_vda_ship_ms: f64,
}

/// One size written in `db`, then a snapshot and an incremental sync.
#[derive(Debug, Clone, Serialize)]
pub struct HostsPoint {
    pub written_mib: u64,
    pub written_bytes: u64,
    /// db/vda's bytes across the link (the sync report's).
    pub shipped_bytes: u64,
    /// Every disk's.
    pub shipped_all_bytes: u64,
    /// shipped_bytes / written_bytes.
    pub shipped_vs_written: f64,
    /// `envclone snapshot demo`, wall.
    pub snapshot_ms: f64,
    /// `envclone standby sync`, wall, and its report's `duration_ms`.
    pub sync_ms: f64,
    pub sync_reported_ms: Option<f64>,
    /// The journaled ship step of db/vda, and of every disk together.
    pub ship_ms: f64,
    pub ship_all_ms: f64,
    /// shipped_bytes / ship_ms, MB/s (10^6 bytes).
    pub ship_mb_s: f64,
    /// shipped_all_bytes / sync_ms, MB/s.
    pub sync_mb_s: f64,
    /// Derived: schedule interval + snapshot + sync, seconds.
    pub rpo_s: f64,
}

/// One target of issue #7 (or #14), as measured.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// measured / reference, where the target is a ratio.
    pub ratio: Option<f64>,
    /// `None` when something it needs was not measured.
    pub met: Option<bool>,
}

impl BenchReport {
    /// Judges every target the figures allow.
    pub fn check_targets(&mut self) {
        let mut targets = Vec::new();
        if let Some(scale) = &self.scale {
            let one = scale.points.iter().find(|p| p.vms == 1);
            let three = scale.points.iter().find(|p| p.vms == 3);
            let (measured, ratio, met) = match (one, three) {
                (Some(one), Some(three)) => {
                    let ratio = three.freeze_window_ms / one.freeze_window_ms;
                    let measured =
                        format!("3 VMs {:.0} ms, 1 VM {:.0} ms", three.freeze_window_ms, one.freeze_window_ms);
                    (measured, Some(ratio), Some(ratio <= 1.5 && three.freeze_window_ms < 1000.0))
                }
                _ => ("not measured".into(), None, None),
            };
            targets.push(TargetCheck {
                target: "group freeze window: 3 VMs <= 1.5x 1 VM, and < 1 s".into(),
                measured,
                ratio,
                met,
            });
        }
        if let Some(data) = &self.data {
            let smallest = data.points.first();
            let largest = data.points.last();
            let (measured, ratio, met) = match (smallest, largest) {
                (Some(s), Some(l)) if s.size_gib != l.size_gib => {
                    let ratio = l.linked_ms / s.linked_ms;
                    (
                        format!("{} GiB {:.0} ms, {} GiB {:.0} ms", l.size_gib, l.linked_ms, s.size_gib, s.linked_ms),
                        Some(ratio),
                        Some(ratio <= 1.5),
                    )
                }
                _ => ("not measured".into(), None, None),
            };
            targets.push(TargetCheck {
                target: format!(
                    "linked clone time: {} GiB <= 1.5x {} GiB",
                    largest.map_or(16, |p| p.size_gib),
                    smallest.map_or(1, |p| p.size_gib)
                ),
                measured,
                ratio,
                met,
            });
            for point in &data.points {
                targets.push(TargetCheck {
                    target: format!("full clone throughput >= 80% of qemu-img convert ({} GiB)", point.size_gib),
                    measured: format!("{:.0} MiB/s vs {:.0} MiB/s", point.full_mib_s, point.convert_mib_s),
                    ratio: Some(point.full_vs_convert),
                    met: Some(point.full_vs_convert >= 0.8),
                });
            }
        }
        if let Some(stall) = &self.stall {
            let op = |key: &str| stall.operations.iter().find(|o| o.key == key);
            let (clone, virsh, virt_clone) = (op("clone-live"), op("virsh-live-snapshot"), op("virt-clone"));
            let (measured, ratio, met) = match (clone, virsh) {
                (Some(c), Some(v)) => (
                    format!("{:.0} ms vs {:.0} ms", c.longest_gap_ms, v.longest_gap_ms),
                    Some(c.longest_gap_ms / v.longest_gap_ms),
                    Some(c.longest_gap_ms <= v.longest_gap_ms + 100.0),
                ),
                _ => ("not measured".into(), None, None),
            };
            targets.push(TargetCheck {
                target: "live clone stall <= raw virsh live snapshot's + 100 ms".into(),
                measured,
                ratio,
                met,
            });
            let (measured, ratio, met) = match (clone, virt_clone) {
                (Some(c), Some(v)) => {
                    let ratio = v.longest_gap_ms / c.longest_gap_ms;
                    (
                        format!("{:.0} ms vs {:.0} ms", c.longest_gap_ms, v.longest_gap_ms),
                        Some(ratio),
                        Some(ratio >= 50.0),
                    )
                }
                _ => ("not measured".into(), None, None),
            };
            targets.push(TargetCheck {
                target: "live clone stall >= 50x shorter than virt-clone's".into(),
                measured,
                ratio,
                met,
            });
        }
        if let Some(memory) = &self.memory {
            for point in &memory.points {
                for (how, capture) in
                    [("background-snapshot", &point.background), ("libvirt live", &point.libvirt_live)]
                {
                    targets.push(TargetCheck {
                        target: format!("memory image <= 1.05x RAM ({} MiB, {how})", point.ram_mib),
                        measured: format!("{:.0} MiB", capture.image_bytes as f64 / MIB),
                        ratio: Some(capture.image_vs_ram),
                        met: Some(capture.image_vs_ram <= 1.05),
                    });
                }
            }
        }
        if let Some(hosts) = &self.hosts {
            hosts_targets(&mut targets, hosts);
        }
        self.targets = targets;
    }

    /// The Markdown printed on stdout and kept in README.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Measured {} on {} cores, {:.0} GiB, {} guests ({}; {}; {}), lab `{}`, in {:.0} s.\n",
            self.measured_at,
            m.cores,
            m.memory_gib,
            if m.domain_type == "qemu" { "TCG".to_string() } else { m.domain_type.clone() },
            m.kernel,
            m.qemu,
            m.libvirt,
            self.lab,
            self.seconds
        );
        if let Some(stall) = &self.stall {
            stall_table(&mut md, stall);
        }
        if let Some(data) = &self.data {
            data_table(&mut md, data);
        }
        if let Some(memory) = &self.memory {
            memory_table(&mut md, memory);
        }
        if let Some(scale) = &self.scale {
            scale_table(&mut md, scale);
        }
        if let Some(hosts) = &self.hosts {
            hosts_table(&mut md, hosts);
        }
        if !self.targets.is_empty() {
            targets_table(&mut md, &self.targets);
        }
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        for missing in &self.not_measured {
            let _ = writeln!(md, "- not measured: {missing}");
        }
        md
    }
}

fn stall_table(md: &mut String, stall: &StallFamily) {
    let baseline: Vec<String> = stall.baseline_gap_ms.iter().map(|(s, g)| format!("{s} {g:.0} ms")).collect();
    let _ = writeln!(
        md,
        "**Service-visible stall** (environment `{}`: a request to each service every {:.0} ms from the lab's namespace, one in flight per service; idle gap between answers: {}):\n",
        stall.environment,
        stall.probe_interval_ms,
        baseline.join(", ")
    );
    md.push_str("| operation | wall | longest gap | failed requests | freeze window | gap / virsh |\n");
    md.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for op in &stall.operations {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            op.command,
            secs(op.wall_ms),
            millis(op.longest_gap_ms),
            op.failed_requests,
            op.freeze_window_ms.map_or("-".into(), millis),
            op.ratio_to_virsh.map_or("-".into(), |r| format!("{r:.2}x"))
        );
    }
    md.push('\n');
}

fn data_table(md: &mut String, data: &DataFamily) {
    md.push_str("**Clone time against data size** (data written from the host with `qemu-io -t none -c 'write -P 0x5a ...'` before the VM first boots; clones from a snapshot, `--start off`; envclone full and qemu-img convert: the median of alternating pairs, the runs in the JSON):\n\n");
    md.push_str("| data | envclone linked | linked overlay | envclone full | virt-clone (VM off) | qemu-img convert -t none -T none | full / convert throughput | linked / smallest |\n");
    md.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for p in &data.points {
        let _ = writeln!(
            md,
            "| {} GiB | {} | {} | {} ({:.0} MiB/s) | {} | {} ({:.0} MiB/s) | {:.0}% | {:.2}x |",
            p.size_gib,
            secs(p.linked_ms),
            bytes(p.linked_overlay_bytes),
            secs(p.full_ms),
            p.full_mib_s,
            secs(p.virt_clone_ms),
            secs(p.convert_ms),
            p.convert_mib_s,
            p.full_vs_convert * 100.0,
            p.linked_vs_smallest
        );
    }
    md.push('\n');
}

fn memory_table(md: &mut String, memory: &MemoryFamily) {
    md.push_str("**Memory state** (one VM; RAM filled with non-zero data first; pause = longest interval libvirt reported the domain paused, stall = its service's longest gap):\n\n");
    md.push_str("| RAM (filled) | method | capture | pause | stall | image | image / RAM |\n");
    md.push_str("| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for p in &memory.points {
        for (how, c) in [
            ("envclone snapshot --memory (background-snapshot)", &p.background),
            ("virsh snapshot-create-as --live --memspec", &p.libvirt_live),
        ] {
            let _ = writeln!(
                md,
                "| {} MiB ({} MiB) | {how} | {} | {} | {} | {} | {:.2} |",
                p.ram_mib,
                p.filled_mib,
                secs(c.wall_ms),
                millis(c.pause_ms),
                millis(c.stall_ms),
                bytes(c.image_bytes),
                c.image_vs_ram
            );
        }
    }
    md.push('\n');
}

fn scale_table(md: &mut String, scale: &ScaleFamily) {
    md.push_str(&format!("**Scale** (environments of 256 MiB VMs, the others paused; freeze window: median of {} `envclone snapshot`; linked clone: `envclone clone ENV --name NEW --disks linked --start off`, its own snapshot included):\n\n", scale.points.first().map_or(0, |p| p.freeze_windows_ms.len())));
    md.push_str("| VMs | group freeze window | vs 1 VM | snapshot | linked clone | vs 1 VM |\n");
    md.push_str("| ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for p in &scale.points {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2}x | {} | {} | {:.2}x |",
            p.vms,
            millis(p.freeze_window_ms),
            p.freeze_vs_one,
            secs(p.snapshot_ms),
            secs(p.linked_clone_ms),
            p.clone_vs_one
        );
    }
    md.push('\n');
}

/// Issue #14's targets for shipping to another host.
fn hosts_targets(targets: &mut Vec<TargetCheck>, hosts: &HostsFamily) {
    let slack = super::hosts::CLUSTER_SLACK;
    for p in &hosts.points {
        let limit = 1.1 * p.written_bytes as f64 + slack as f64;
        targets.push(TargetCheck {
            target: format!("bytes shipped <= 1.1x written + {} ({} MiB)", bytes(slack), p.written_mib),
            measured: format!("{} for {}", bytes(p.shipped_bytes), bytes(p.written_bytes)),
            ratio: Some(p.shipped_vs_written),
            met: Some(p.shipped_bytes as f64 <= limit),
        });
    }
    let link_mb_s = hosts.link_bytes_per_s / 1e6;
    if let Some(big) = hosts.points.iter().max_by_key(|p| p.written_bytes) {
        for (how, mb_s) in [("db/vda's ship step", big.ship_mb_s), ("whole sync, every disk", big.sync_mb_s)] {
            targets.push(TargetCheck {
                target: format!(
                    "sync throughput >= 90% of the shaped link ({}, {link_mb_s:.1} MB/s; {} MiB, {how})",
                    hosts.link_rate, big.written_mib
                ),
                measured: format!("{mb_s:.1} MB/s"),
                ratio: Some(mb_s / link_mb_s),
                met: Some(mb_s >= 0.9 * link_mb_s),
            });
        }
        targets.push(TargetCheck {
            target: format!(
                "RPO <= schedule interval + ship time ({:.0} s schedule, {} MiB)",
                hosts.schedule_interval_s, big.written_mib
            ),
            measured: format!(
                "derived, not measured: {:.0} s + snapshot {:.1} s + sync {:.1} s = {:.0} s",
                hosts.schedule_interval_s,
                big.snapshot_ms / 1000.0,
                big.sync_ms / 1000.0,
                big.rpo_s
            ),
            ratio: None,
            met: None,
        });
    }
    targets.push(TargetCheck {
        target: "unplanned cross-host failover RTO (host-down a) <= 60 s".into(),
        measured: hosts.rto_ms.map_or_else(|| hosts.rto_note.clone(), secs),
        ratio: None,
        met: hosts.rto_ms.map(|ms| ms <= 60_000.0),
    });
}

fn hosts_table(md: &mut String, hosts: &HostsFamily) {
    let full = &hosts.full;
    let _ = writeln!(
        md,
        "**Shipping to a standby on another host** (lab `{}`: a standby of `demo` on host {}, its link shaped to \
         {} = {:.1} MB/s; its first sync, a full copy: {} in {} with `standby create`, db/vda {} in a {} ship step; \
         then per size: `dd` into db, `envclone snapshot`, `envclone standby sync`; ship = db/vda's journaled ship \
         step; MB = 10^6 bytes):\n",
        hosts.lab,
        hosts.standby_host,
        hosts.link_rate,
        hosts.link_bytes_per_s / 1e6,
        bytes(full.bytes),
        secs(full.create_ms),
        bytes(full.db_vda_bytes),
        secs(full.db_vda_ship_ms),
    );
    md.push_str(
        "| written in db | db/vda shipped | shipped / written | all disks shipped | snapshot | ship db/vda | \
         ship throughput | sync (all disks) | sync throughput | RPO, 1-min schedule (derived) |\n",
    );
    md.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for p in &hosts.points {
        let _ = writeln!(
            md,
            "| {} MiB | {} | {:.3}x | {} | {} | {} | {:.1} MB/s | {} | {:.1} MB/s | {:.0} s |",
            p.written_mib,
            bytes(p.shipped_bytes),
            p.shipped_vs_written,
            bytes(p.shipped_all_bytes),
            secs(p.snapshot_ms),
            secs(p.ship_ms),
            p.ship_mb_s,
            secs(p.sync_ms),
            p.sync_mb_s,
            p.rpo_s
        );
    }
    md.push('\n');
    if let (Some(rate), Some(fixed)) = (hosts.marginal_mb_s, hosts.ship_fixed_ms) {
        let _ = writeln!(
            md,
            "Derived from db/vda's ship steps (least squares over the sizes): {rate:.1} MB/s once a ship is under \
             way ({:.0}% of the link), plus {} per ship whatever its size (its SSH commands: the stale copy \
             removed, extents listed, SHA-256 on both hosts).\n",
            100.0 * rate * 1e6 / hosts.link_bytes_per_s,
            secs(fixed)
        );
    }
    let _ = writeln!(
        md,
        "RTO of an unplanned failover after `lab host-down a`: {}.\n",
        hosts.rto_ms.map_or_else(|| hosts.rto_note.clone(), secs)
    );
}

fn targets_table(md: &mut String, targets: &[TargetCheck]) {
    md.push_str(
        "**Targets** (reported, not tuned to):\n\n| target | measured | ratio | met |\n| --- | --- | ---: | --- |\n",
    );
    for t in targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.target,
            t.measured,
            t.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        );
    }
    md.push('\n');
}

pub const MIB: f64 = 1024.0 * 1024.0;

fn millis(ms: f64) -> String {
    format!("{ms:.0} ms")
}

fn secs(ms: f64) -> String {
    if ms < 10_000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BenchReport {
        BenchReport {
            measured_at: "2026-01-01T00:00:00Z".into(),
            machine: Machine {
                cores: 2,
                memory_gib: 24.0,
                domain_type: "qemu".into(),
                kernel: "6.1".into(),
                qemu: "QEMU 7.2".into(),
                libvirt: "libvirt 9.0".into(),
            },
            lab: "lab".into(),
            seconds: 1.0,
            notes: vec![],
            not_measured: vec![],
            stall: None,
            data: None,
            memory: None,
            hosts: None,
            scale: Some(ScaleFamily {
                points: [(1, 200.0), (3, 290.0), (6, 500.0)]
                    .into_iter()
                    .map(|(vms, freeze)| ScalePoint {
                        vms,
                        freeze_window_ms: freeze,
                        freeze_windows_ms: vec![freeze],
                        snapshot_ms: 1000.0,
                        linked_clone_ms: 3000.0,
                        linked_clone_reported_ms: Some(2900.0),
                        clone_source_freeze_ms: Some(freeze),
                        freeze_vs_one: freeze / 200.0,
                        clone_vs_one: 1.0,
                    })
                    .collect(),
            }),
            targets: vec![],
        }
    }

    #[test]
    fn the_freeze_target_compares_three_vms_with_one() {
        let mut report = report();

        report.check_targets();

        assert_eq!(report.targets.len(), 1);
        assert_eq!(report.targets[0].ratio, Some(1.45));
        assert_eq!(report.targets[0].met, Some(true));
    }

    fn hosts(points: &[(u64, u64, f64)]) -> HostsFamily {
        HostsFamily {
            lab: "lab-hosts".into(),
            standby_host: "b".into(),
            link_rate: "100mbit".into(),
            link_bytes_per_s: 12.5e6,
            schedule_interval_s: 60.0,
            full: FullSync {
                bytes: 250 << 20,
                create_ms: 40_000.0,
                sync_reported_ms: Some(37_000.0),
                db_vda_bytes: 212 << 20,
                db_vda_ship_ms: 24_000.0,
            },
            points: points
                .iter()
                .map(|&(mib, shipped, ship_mb_s)| HostsPoint {
                    written_mib: mib,
                    written_bytes: mib << 20,
                    shipped_bytes: shipped,
                    shipped_all_bytes: shipped + (1 << 20),
                    shipped_vs_written: shipped as f64 / (mib << 20) as f64,
                    snapshot_ms: 3000.0,
                    sync_ms: 20_000.0,
                    sync_reported_ms: Some(19_800.0),
                    ship_ms: 8000.0,
                    ship_all_ms: 12_000.0,
                    ship_mb_s,
                    sync_mb_s: 3.0,
                    rpo_s: 83.0,
                })
                .collect(),
            marginal_mb_s: Some(9.3),
            ship_fixed_ms: Some(1800.0),
            rto_ms: None,
            rto_note: "not measured yet (cross-host failover in progress)".into(),
        }
    }

    #[test]
    fn hosts_targets_judge_bytes_and_throughput_and_leave_the_derived_rpo_and_the_rto_unjudged() {
        let mut report = report();
        report.scale = None;
        // 4 MiB: 6 MiB shipped is within 1.1x + 2 MiB; 16 MiB: 20 MiB is not.
        report.hosts = Some(hosts(&[(4, 6 << 20, 2.0), (16, 20 << 20, 6.0), (64, 65 << 20, 11.5)]));

        report.check_targets();

        let met: Vec<Option<bool>> = report.targets.iter().map(|t| t.met).collect();
        assert_eq!(
            met,
            [Some(true), Some(false), Some(true), Some(true), Some(false), None, None],
            "{:#?}",
            report.targets
        );
        assert!(report.targets[3].target.contains("64 MiB, db/vda's ship step"), "{:?}", report.targets[3]);
        assert!(report.targets[5].measured.starts_with("derived, not measured: 60 s + snapshot 3.0 s + sync 20.0 s"));
        assert!(report.targets[6].measured.contains("not measured yet"));
    }

    #[test]
    fn the_hosts_table_has_a_row_per_size_and_says_what_is_derived() {
        let mut report = report();
        report.hosts = Some(hosts(&[(64, 65 << 20, 11.5)]));
        report.check_targets();

        let md = report.markdown();

        assert!(
            md.contains(
                "| 64 MiB | 65.0 MiB | 1.016x | 66.0 MiB | 3.00 s | 8.00 s | 11.5 MB/s | 20.0 s | 3.0 MB/s | 83 s |"
            ),
            "{md}"
        );
        assert!(md.contains("9.3 MB/s once a ship is under way (74% of the link), plus 1.80 s per ship"), "{md}");
        assert!(md.contains("after `lab host-down a`: not measured yet"), "{md}");
    }

    #[test]
    fn a_family_not_run_has_no_table_and_no_target() {
        let mut report = report();
        report.check_targets();

        let md = report.markdown();

        assert!(md.contains("| 3 | 290 ms | 1.45x |"), "{md}");
        assert!(!md.contains("Service-visible stall"));
        assert!(md.contains("2 cores, 24 GiB, TCG guests"), "{md}");
    }
}
