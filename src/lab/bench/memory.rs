//! Memory state against RAM size: for each size, one VM (all booted at
//! once, captured one after the other) whose RAM is first
//! filled with non-zero data (60% of it, in a tmpfs, copied from a data
//! disk the host wrote: zero pages would cost a capture nothing and flatter
//! it), then captured twice while a prober watches its service and a
//! [`PauseWatch`] watches libvirt's state:
//!
//! 1. `envclone snapshot --memory`: QEMU's background-snapshot migration
//!    through QMP, inside the freeze barrier (see
//!    `src/ops/snapshot/memory.rs`);
//! 2. `virsh snapshot-create-as --live --memspec ... --atomic`: libvirt's
//!    live snapshot (a pre-copy migration to a file, paused for its last
//!    pass and the disk snapshot).

use super::exec::{self, number, text};
use super::probe::{PauseWatch, Prober, Service, Target};
use super::report::{Capture, MemoryFamily, MemoryPoint, MIB};
use super::{Bench, BenchError};
use crate::hypervisor::Hypervisor;
use crate::lab::extra::{DataDisk, ExtraEnv, ExtraVm};
use crate::lab::topology::{Role, DB_PORT};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Share of the RAM filled before the captures.
const FILL: f64 = 0.6;

pub(super) fn run(bench: &Bench<'_>, sizes_mib: &[u64], notes: &mut Vec<String>) -> Result<MemoryFamily, BenchError> {
    notes.push(format!(
        "Memory: each VM's RAM is {:.0}% filled with non-zero data first (a tmpfs file read from a data disk the \
         host wrote), so the images hold real pages. Pause: longest interval libvirt reported the domain paused \
         (polled every {} ms). envclone's capture time is the whole `envclone snapshot --memory` (agents, freeze \
         and disk snapshot included).",
        FILL * 100.0,
        super::probe::PAUSE_POLL.as_millis()
    ));
    // Booted together (saves a boot per size); captured one at a time.
    let envs: Vec<(ExtraEnv, u64, u64)> = sizes_mib
        .iter()
        .enumerate()
        .map(|(index, &ram)| {
            let filled_mib = (ram as f64 * FILL) as u64;
            let env = ExtraEnv {
                name: format!("bmem{ram}"),
                subnet: 20 + index as u8,
                vms: vec![ExtraVm {
                    name: "mem".into(),
                    role: Role::Db,
                    memory_mib: ram,
                    data: Some(DataDisk::filled(filled_mib << 20)),
                }],
            };
            (env, ram, filled_mib)
        })
        .collect();
    let all: Vec<ExtraEnv> = envs.iter().map(|(env, _, _)| env.clone()).collect();
    let points = bench.with_envs(&all, || {
        envs.iter().map(|(env, ram, filled)| measure(bench, env, *ram, *filled)).collect::<Result<Vec<_>, _>>()
    })?;
    Ok(MemoryFamily { points })
}

fn measure(bench: &Bench<'_>, env: &ExtraEnv, ram_mib: u64, filled_mib: u64) -> Result<MemoryPoint, BenchError> {
    let name = &env.name;
    let domain = env.domain("mem");
    bench.say(&format!("{name}: filling {filled_mib} MiB of its {ram_mib} MiB"));
    bench.sh(
        name,
        "mem",
        &format!(
            "mkdir -p /mnt/fill && mount -t tmpfs -o size=80% tmpfs /mnt/fill && \
             dd if=/dev/vdc of=/mnt/fill/pattern bs=1M count={filled_mib} 2>/dev/null && \
             sync && echo 3 > /proc/sys/vm/drop_caches"
        ),
    )?;
    let address = env.address(0);
    let prober = Prober::start(
        &bench.netns,
        vec![Target {
            label: format!("{domain}:{DB_PORT}"),
            addr: SocketAddr::from((address, DB_PORT)),
            service: Service::Tcp,
        }],
    )?;
    prober.wait_answered_after(Instant::now(), Duration::from_secs(60));
    let watch = PauseWatch::start(&bench.tools.libvirt_uri, &domain)?;
    let ram_bytes = (ram_mib << 20) as f64;

    bench.say(&format!("{name}: envclone snapshot --memory"));
    let start = Instant::now();
    let snapshot = bench.tools.envclone("memory: envclone snapshot --memory", &["snapshot", name, "--memory"])?;
    let end = Instant::now();
    prober.wait_answered_after(end, Duration::from_secs(60));
    let stall = &prober.stalls(start, end)[0];
    let image = text("memory: envclone snapshot --memory", &snapshot.value, "/vms/0/memory_image")?;
    let image_bytes = exec::file_size(&PathBuf::from(image));
    let background = Capture {
        command: "envclone snapshot --memory".into(),
        wall_ms: snapshot.ms(),
        pause_ms: super::probe::ms(watch.longest(start, end)),
        stall_ms: stall.longest_gap_ms,
        failed_requests: stall.failed_requests,
        image_bytes,
        image_vs_ram: image_bytes as f64 / ram_bytes,
        freeze_window_ms: number(&snapshot.value, "/freeze_window_ms"),
    };
    std::thread::sleep(Duration::from_secs(1));

    bench.say(&format!("{name}: virsh snapshot-create-as --live --memspec"));
    let scratch = bench.extra.scratch();
    std::fs::create_dir_all(&scratch).map_err(BenchError::io("memory: virsh", "create", &scratch))?;
    let memory = scratch.join(format!("{domain}.virsh.mem"));
    let disks = bench.hv()?.domain(&domain).map_err(BenchError::libvirt("memory: virsh"))?.def.disks();
    let mut args = vec![
        "snapshot-create-as".to_string(),
        domain.clone(),
        "bench-raw".into(),
        "--memspec".into(),
        format!("file={},snapshot=external", memory.display()),
    ];
    for disk in &disks {
        args.push("--diskspec".into());
        args.push(format!(
            "{},snapshot=external,file={}",
            disk.target,
            scratch.join(format!("{domain}.virsh.{}.qcow2", disk.target)).display()
        ));
    }
    args.extend(["--live", "--atomic", "--no-metadata"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let raw = bench.tools.virsh("memory: virsh snapshot-create-as --live", &args)?;
    let end = Instant::now();
    prober.wait_answered_after(end, Duration::from_secs(60));
    let stall = &prober.stalls(start, end)[0];
    let image_bytes = exec::file_size(&memory);
    let libvirt_live = Capture {
        command: "virsh snapshot-create-as --live --memspec --atomic".into(),
        wall_ms: raw.ms(),
        pause_ms: super::probe::ms(watch.longest(start, end)),
        stall_ms: stall.longest_gap_ms,
        failed_requests: stall.failed_requests,
        image_bytes,
        image_vs_ram: image_bytes as f64 / ram_bytes,
        freeze_window_ms: None,
    };
    exec::remove_files("memory: virsh", &[memory])?;
    bench.say(&format!(
        "{name}: background {:.0} ms (pause {:.0} ms, {} MiB), libvirt live {:.0} ms (pause {:.0} ms, {} MiB)",
        background.wall_ms,
        background.pause_ms,
        (background.image_bytes as f64 / MIB) as u64,
        libvirt_live.wall_ms,
        libvirt_live.pause_ms,
        (libvirt_live.image_bytes as f64 / MIB) as u64
    ));
    Ok(MemoryPoint { ram_mib, filled_mib, background, libvirt_live })
}
