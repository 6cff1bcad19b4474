//! `envclone failover ENV` (no `--test`, no `--planned`): the primary is
//! down, or must be given up; the standby SB takes over from its newest
//! restored point. No final snapshot: what the primary wrote after SB's
//! point is lost (the RPO reported is that point's age).
//!
//! 1. **Refuse a healthy primary**: when the primary's libvirt answers and
//!    every primary domain runs, the primary is healthy and an unplanned
//!    failover would throw its newest writes away: refused (exit 2, hint:
//!    `--planned`) unless `--force`. Health is libvirt's word (every domain
//!    running), not the agents': asking a dying guest can hang, and a
//!    domain that runs at all is one that must be fenced by a planned
//!    failover's final snapshot, not thrown away.
//! 2. **Fence** each primary domain (journaled, undo `failover-unfence`):
//!    stopped, autostart off, the epoch stamped into its metadata (see
//!    [`super::fence`]). When the primary's libvirt does not answer, each
//!    domain is recorded `fenced-unconfirmed` (no undo: nothing was done)
//!    and the failover goes on; the guard fences it for real when its host
//!    answers again.
//! 3. **Take over**: each SB domain gets a fresh qcow2 overlay per disk on
//!    SB's synced copy (`<storage>/<vm>/<SB>.<disk>.epoch-N.qcow2`), the
//!    primary's MACs and networks, and starts; its agents are awaited at
//!    the primary's addresses. SB's copy stays exactly its restored point:
//!    everything SB writes from now on is in the overlays.
//! 4. **Record** the switch: a `failovers` row, mode `unplanned`, state
//!    `active`, the next epoch of ENV, and a fence event per domain.
//!
//! A failure before the record rolls every step back (SB stopped and given
//! its own identity and disks back, the overlays deleted, fenced primary
//! domains started again); `envclone recover ENV` does the same for a
//! failover whose process died. Run again once recorded, it reports the
//! switch and does nothing.

use std::time::Instant;

use super::drill::{millis, pick_standby, ready_to_start, DrillRequest, Run};
use super::fence::{self, FencedDomain, PrimaryHost};
use super::planned::{already_switched, record_switch, take_over, SwitchAction, SwitchReport};
use super::takeover::network_mode;
use super::{undo, FailoverError, Tools};
use crate::catalog::{FailoverMode, FenceKind, UndoAction};
use crate::hypervisor::HvError;
use crate::ops::context::OpContext;
use crate::ops::journal::Journaled as _;
use crate::ops::EnvLock;

/// What an unplanned failover is told besides ENV and SB.
#[derive(Debug, Clone, Copy)]
pub struct Unplanned<'h> {
    /// Fail over even though the primary runs.
    pub force: bool,
    /// The primary's libvirt (the controller's connection, or another
    /// host's), or why it could not be reached.
    pub host: PrimaryHost<'h>,
    /// The primary's libvirt URI when it is not the controller's: recorded
    /// so that the guard looks there.
    pub primary_uri: Option<&'h str>,
}

/// Fails ENV over to its standby, unplanned; see the module documentation.
pub fn unplanned(
    ctx: &OpContext<'_>,
    request: &DrillRequest,
    how: Unplanned<'_>,
    tools: Tools<'_>,
) -> Result<SwitchReport, FailoverError> {
    let (force, primary_host) = (how.force, how.host);
    let started = Instant::now();
    let started_at = ctx.clock.now();
    let standby = pick_standby(ctx, request)?;
    let primary = ctx.config.environment(&request.env)?.clone();
    let network = network_mode(ctx, &standby.name, &primary, &request.env)?;
    if let Some(report) = already_switched(ctx, &request.env, &standby.name)? {
        return Ok(report);
    }
    let snapshot = ready_to_start(ctx, &standby)?;
    let down = match primary_host {
        PrimaryHost::Answers(hv) => down_domains(hv, &primary)?,
        PrimaryHost::Unreachable { .. } => primary.vms.values().map(|vm| vm.domain.clone()).collect(),
    };
    if down.is_empty() && !force {
        return Err(FailoverError::PrimaryHealthy { env: request.env.clone() });
    }

    let epoch = ctx.catalog.last_epoch(&request.env)? + 1;
    let why = match primary_host {
        PrimaryHost::Answers(_) if down.is_empty() => "forced while it runs".to_owned(),
        PrimaryHost::Answers(_) => format!("down: {}", down.join(", ")),
        PrimaryHost::Unreachable { uri, .. } => format!("its libvirt at {uri} does not answer"),
    };
    ctx.note(format!(
        "unplanned failover of {} ({why}) to standby {} from snapshot {snapshot}, epoch {epoch}",
        request.env, standby.name
    ));
    let mut run = Run::new(ctx, tools, &request.env, started)?;
    let result = (|| {
        let fence = fence_primary(&mut run, &request.env, &primary, primary_host, epoch)?;
        let takeover = take_over(&mut run, &standby, &primary, epoch, network)?;
        Ok((fence, takeover))
    })();
    let (fence, takeover) = match result {
        Ok(done) => done,
        Err(error) => return Err(run.roll_back(error)),
    };
    let rto = run.started.elapsed();
    let report = SwitchReport {
        env: request.env.clone(),
        standby: standby.name.clone(),
        mode: FailoverMode::Unplanned,
        action: SwitchAction::FailedOver,
        epoch,
        snapshot,
        rpo_seconds: standby.snapshot_created_at.map(|at| (started_at - at).num_seconds().max(0)).unwrap_or(0),
        unprotected_ms: 0,
        rto_ms: millis(rto),
        fenced: fence.iter().filter(|f| f.fence == FenceKind::Fenced).map(|f| f.domain.clone()).collect(),
        fence,
        primary_uri: how.primary_uri.map(str::to_owned),
        vms: takeover.vms,
        readdressed: takeover.readdressed,
        started_at,
        steps: Vec::new(),
        duration_ms: 0,
    };
    record_switch(run, &standby, &primary, report)
}

/// The primary domains that do not run (missing ones included).
fn down_domains(
    hv: &dyn crate::hypervisor::Hypervisor,
    primary: &crate::config::Environment,
) -> Result<Vec<String>, FailoverError> {
    let mut down = Vec::new();
    for vm in primary.vms.values() {
        match hv.domain(&vm.domain) {
            Ok(found) if found.state.is_active() => {}
            Ok(_) | Err(HvError::NoSuchDomain { .. }) => down.push(vm.domain.clone()),
            Err(source) => {
                return Err(FailoverError::InspectDomain { domain: vm.domain.clone(), source: Box::new(source) })
            }
        }
    }
    Ok(down)
}

/// Step 2: each primary domain fenced, or recorded `fenced-unconfirmed`.
fn fence_primary(
    run: &mut Run<'_, '_>,
    env: &str,
    primary: &crate::config::Environment,
    host: PrimaryHost<'_>,
    epoch: i64,
) -> Result<Vec<FencedDomain>, FailoverError> {
    let ctx = run.ctx;
    let mut out = Vec::new();
    // ENV's lock: no snapshot or restore of the primary runs while it is fenced.
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, env, "failover (fence)")?;
    for vm in primary.vms.values() {
        let domain = vm.domain.clone();
        match host {
            PrimaryHost::Answers(hv) => {
                let stamp = fence::stamp(epoch, ctx.clock.now());
                let name = format!("fence {domain}: stop it, autostart off, epoch {epoch}");
                let was_running = hv.domain(&domain).is_ok_and(|d| d.state.is_active());
                let on = ctx.config.host_of(env);
                let undo = if was_running { undo::unfence(&domain, on) } else { undo::unfence_down(&domain, on) };
                let existed = run.step(&name, undo, |_| {
                    fence::fence_domain(hv, &domain, &stamp)
                        .map_err(|e| FailoverError::Fence { domain: domain.clone(), source: Box::new(e) })
                })?;
                let detail = (!existed).then(|| "not defined on the primary's host".to_owned());
                out.push(FencedDomain { domain, fence: FenceKind::Fenced, detail });
            }
            PrimaryHost::Unreachable { uri, reason } => {
                let detail = format!("libvirt at {uri} does not answer: {reason}");
                let name = format!("fence {domain}: unconfirmed, its libvirt does not answer");
                run.step(&name, UndoAction::Nothing, |_| Ok(()))?;
                out.push(FencedDomain { domain, fence: FenceKind::FencedUnconfirmed, detail: Some(detail) });
            }
        }
    }
    Ok(out)
}
