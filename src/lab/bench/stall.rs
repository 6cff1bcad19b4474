//! The service-visible stall: what clients of web (HTTP :80, which fetches
//! its page from db) and db (TCP :5432) see while each operation runs on
//! their environment, from a prober sending a request to each every 10 ms.
//!
//! On one two-VM environment (`bsvc`, web + db, 256 MiB each), in this order
//! (each leaves the environment running and serving for the next):
//! `envclone snapshot` (disk only, quiesced), `envclone snapshot --memory`,
//! `envclone clone --disks linked --start resume` (its own memory snapshot
//! included; the clone is destroyed afterwards, outside the measurement),
//! the raw primitive `virsh snapshot-create-as --live --memspec --atomic`
//! on web, and last `virt-clone` of both VMs, which needs them shut off:
//! its stall runs from the shutdown through the copies to the boot, until
//! both services answer again.

use super::exec::{number, Timed};
use super::probe::{self, Prober, Service, Target};
use super::report::{StallFamily, StallOp};
use super::{Bench, BenchError};
use crate::hypervisor::Hypervisor;
use crate::lab::extra::{ExtraEnv, ExtraVm};
use crate::lab::topology::{Role, DB_PORT, GUEST_MEMORY_MIB, WEB_PORT};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ENV: &str = "bsvc";
const SUBNET: u8 = 1;
/// How long services may take to answer again after an operation (a boot).
const RECOVERY: Duration = Duration::from_secs(240);

pub(super) fn run(bench: &Bench<'_>, notes: &mut Vec<String>) -> Result<StallFamily, BenchError> {
    let env = ExtraEnv {
        name: ENV.to_string(),
        subnet: SUBNET,
        vms: vec![
            ExtraVm { name: "web".into(), role: Role::Web, memory_mib: GUEST_MEMORY_MIB, data: None },
            ExtraVm { name: "db".into(), role: Role::Db, memory_mib: GUEST_MEMORY_MIB, data: None },
        ],
    };
    notes.push(format!(
        "Stall: a request to each service every {} ms (one in flight per service, {} s timeout: a request \
         without an answer by then counts as failed); a gap is the time between two answers, so it is never \
         shorter than one request (the idle gap shown).",
        probe::INTERVAL.as_millis(),
        probe::TIMEOUT.as_secs()
    ));
    notes.push(
        "virt-clone needs the VMs shut off: its stall is an in-guest `sync; poweroff -f` of both VMs (the lab \
         guests have no ACPI daemon for `virsh shutdown`), `virt-clone` of each, and their boot until both \
         services answer again."
            .into(),
    );
    bench.with_envs(std::slice::from_ref(&env), || measure(bench, &env))
}

fn measure(bench: &Bench<'_>, env: &ExtraEnv) -> Result<StallFamily, BenchError> {
    let targets = env
        .services()
        .into_iter()
        .map(|(domain, address, role)| {
            let (port, service) = match role {
                Role::Web => (WEB_PORT, Service::Http),
                Role::Db => (DB_PORT, Service::Tcp),
            };
            Target { label: format!("{domain}:{port}"), addr: SocketAddr::from((address, port)), service }
        })
        .collect();
    let prober = Prober::start(&bench.netns, targets)?;
    // The services must answer before anything is measured.
    if !prober.wait_answered_after(Instant::now(), RECOVERY) {
        return Err(BenchError::Timeout {
            step: "stall".into(),
            what: "the services of bsvc to answer".into(),
            waited: RECOVERY,
        });
    }
    let baseline = prober.baseline(Duration::from_secs(3));
    bench.say(&format!("idle gaps: {baseline:?}"));
    let mut operations = Vec::new();

    let step = "envclone snapshot";
    let (snap, op) = observe(bench, &prober, "snapshot", "envclone snapshot (disk only, quiesced)", || {
        bench.tools.envclone(step, &["snapshot", ENV, "--label", "bench"])
    })?;
    operations.push(StallOp { freeze_window_ms: number(&snap.value, "/freeze_window_ms"), ..op });

    let step = "envclone snapshot --memory";
    let (snap, op) = observe(bench, &prober, "snapshot-memory", "envclone snapshot --memory", || {
        bench.tools.envclone(step, &["snapshot", ENV, "--memory", "--label", "bench"])
    })?;
    operations.push(StallOp { freeze_window_ms: number(&snap.value, "/freeze_window_ms"), ..op });

    let step = "envclone clone --start resume";
    let clone = format!("{ENV}-live");
    let (made, op) = observe(
        bench,
        &prober,
        "clone-live",
        "envclone clone (linked, --start resume; its memory snapshot included)",
        || bench.tools.envclone(step, &["clone", ENV, "--name", &clone, "--disks", "linked", "--start", "resume"]),
    )?;
    operations.push(StallOp {
        freeze_window_ms: number(&made.value, "/source_freeze_window_ms"),
        detail: number(&made.value, "/duration_ms").map(|d| format!("clone report duration_ms {d:.0}")),
        ..op
    });
    bench.tools.envclone("envclone destroy", &["destroy", &clone])?;

    operations.push(virsh_live_snapshot(bench, &prober, env)?);
    operations.push(virt_clone(bench, &prober, env)?);

    if let Some(virsh) = operations.iter().find(|o| o.key == "virsh-live-snapshot").map(|o| o.longest_gap_ms) {
        for op in &mut operations {
            op.ratio_to_virsh = Some(op.longest_gap_ms / virsh);
        }
    }
    Ok(StallFamily {
        environment: format!("{ENV} (web + db, {GUEST_MEMORY_MIB} MiB each)"),
        probe_interval_ms: probe::ms(probe::INTERVAL),
        probe_timeout_ms: probe::ms(probe::TIMEOUT),
        baseline_gap_ms: baseline,
        operations,
    })
}

/// Runs `operation` while the prober watches; the stall closes with each
/// service's first answer after the operation ended.
fn observe<T>(
    bench: &Bench<'_>,
    prober: &Prober,
    key: &str,
    command: &str,
    operation: impl FnOnce() -> Result<Timed<T>, BenchError>,
) -> Result<(Timed<T>, StallOp), BenchError> {
    bench.say(command);
    let start = Instant::now();
    let result = operation()?;
    let end = Instant::now();
    prober.wait_answered_after(end, RECOVERY);
    let services = prober.stalls(start, end);
    let op = StallOp {
        key: key.to_string(),
        command: command.to_string(),
        wall_ms: result.ms(),
        longest_gap_ms: services.iter().map(|s| s.longest_gap_ms).fold(0.0, f64::max),
        failed_requests: services.iter().map(|s| s.failed_requests).sum(),
        services,
        freeze_window_ms: None,
        ratio_to_virsh: None,
        detail: None,
    };
    bench.say(&format!(
        "  {:.0} ms, longest gap {:.0} ms, {} failed",
        op.wall_ms, op.longest_gap_ms, op.failed_requests
    ));
    // Let the guests settle before the next operation.
    std::thread::sleep(Duration::from_secs(1));
    Ok((result, op))
}

/// The raw primitive on web: external disk snapshots of every disk plus a
/// live memory image, atomic, no libvirt metadata (as envclone takes them).
fn virsh_live_snapshot(bench: &Bench<'_>, prober: &Prober, env: &ExtraEnv) -> Result<StallOp, BenchError> {
    let step = "virsh snapshot-create-as --live";
    let domain = env.domain("web");
    let scratch = bench.extra.scratch();
    std::fs::create_dir_all(&scratch).map_err(BenchError::io(step, "create", &scratch))?;
    let disks = bench.hv()?.domain(&domain).map_err(BenchError::libvirt(step))?.def.disks();
    let memory = scratch.join(format!("{domain}.virsh.mem"));
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
    let (_, op) = observe(
        bench,
        prober,
        "virsh-live-snapshot",
        "virsh snapshot-create-as --live --memspec --atomic (web only)",
        || bench.tools.virsh(step, &args),
    )?;
    // The disk overlays are web's live disks now; the memory image can go.
    super::exec::remove_files(step, &[memory])?;
    Ok(op)
}

/// Shutdown, `virt-clone` of each VM, boot: the service is down throughout.
fn virt_clone(bench: &Bench<'_>, prober: &Prober, env: &ExtraEnv) -> Result<StallOp, BenchError> {
    let mut made = Vec::new();
    let mut copy_ms = 0.0;
    let (_, mut op) = observe(bench, prober, "virt-clone", "virt-clone (shut off, copy, boot; both VMs)", || {
        let started = Instant::now();
        let vms: Vec<&str> = env.vms.iter().map(|vm| vm.name.as_str()).collect();
        bench.power_off(env, &vms)?;
        for vm in &env.vms {
            let source = env.domain(&vm.name);
            let (copy, files) = bench.virt_clone(&source, &format!("{ENV}-vc-{}", vm.name))?;
            copy_ms += copy.ms();
            made.push((format!("{ENV}-vc-{}", vm.name), files));
        }
        let hv = bench.hv()?;
        for vm in &env.vms {
            let domain = env.domain(&vm.name);
            hv.start_domain(&domain).map_err(BenchError::libvirt(format!("start {domain}")))?;
        }
        // The operation ends once the services answer again.
        let booted = Instant::now();
        prober.wait_answered_after(booted, RECOVERY);
        Ok(Timed { value: (), started, ended: Instant::now() })
    })?;
    op.detail = Some(format!("virt-clone copies: {copy_ms:.0} ms"));
    for (domain, files) in &made {
        bench.drop_virt_clone(domain, files)?;
    }
    Ok(op)
}
