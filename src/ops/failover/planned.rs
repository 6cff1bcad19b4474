//! `envclone failover ENV --planned`: the primary is healthy; the standby
//! SB takes over with everything the primary had.
//!
//! 1. **Final snapshot** of ENV (app-consistent, the usual way: its own
//!    journal and ENV's lock), labelled `failover-final`.
//! 2. **Fence** (operation `failover` on ENV from here on, each step
//!    journaled before it runs): each primary domain is stopped (hard: its
//!    disks hold the final snapshot, and nothing written after it is
//!    carried over, see `unprotected_ms`), its autostart disabled, so a
//!    host reboot cannot bring it back, and the epoch stamped into its
//!    metadata (see `fence.rs`; undo: `failover-unfence`).
//! 3. **Sync**: SB is brought to the final snapshot (`standby sync`'s own
//!    journal; its point must then be the final snapshot).
//! 4. **Take over**: each disk of SB gets a fresh overlay on SB's synced
//!    copy (`<storage>/<vm>/<SB>.<disk>.epoch-N.qcow2`, undo: delete it),
//!    so SB's copy stays the final snapshot and what SB writes is kept
//!    apart for failback; each SB domain, shut off, is redefined on them
//!    with the primary's MACs, interface by interface, and its interfaces
//!    on the primary's networks (undo: `failover-redefine`, its own
//!    identity back), then started (undo: stop it).
//! 5. **Wait** for SB's agents at the primary's addresses (the primary's
//!    agent endpoints), then **record** the switch: a `failovers` row, mode
//!    `planned`, state `active`, with the next epoch of ENV (undo: forget it).
//!
//! The RTO reported is the time from the command's start until every
//! agent of SB answered; the RPO is 0 (SB holds the final snapshot), and
//! `unprotected_ms` says how long ENV ran on after that snapshot's thaw
//! before its last domain was fenced (writes in that window are not
//! carried over; a planned failover is run with the application quiet).
//!
//! Running it again once the switch is recorded does nothing (exit 0) and
//! says at which epoch ENV failed over.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::drill::{millis, pick_standby, DrillRequest, Run, StepTime};
use super::fence::FencedDomain;
use super::readdress::{self, Readdressed};
use super::takeover::{self, in_standby_domains, network_mode, TakeoverVm};
use super::{undo, FailoverError, Tools};
use crate::catalog::{FailoverMode, FailoverState, NewFailover, StandbyRecord, UndoAction};
use crate::config::{Environment, StandbyNetwork};
use crate::ops::context::OpContext;
use crate::ops::journal::Journaled as _;
use crate::ops::snapshot::SnapshotRequest;
use crate::ops::EnvLock;

/// What the command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchAction {
    FailedOver,
    /// ENV had failed over to SB already: nothing done.
    AlreadyFailedOver,
}

/// The JSON report for runbooks (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchReport {
    pub env: String,
    pub standby: String,
    /// `planned`.
    pub mode: FailoverMode,
    pub action: SwitchAction,
    /// The role switch's number for ENV (1 for its first failover).
    pub epoch: i64,
    /// The final snapshot SB was brought to.
    pub snapshot: String,
    pub rpo_seconds: i64,
    /// How long ENV ran on after the final snapshot's thaw until its last
    /// domain was fenced.
    pub unprotected_ms: u64,
    /// From the command's start until every agent of SB answered.
    pub rto_ms: u64,
    pub fenced: Vec<String>,
    /// How each primary domain is fenced: `fenced` (stopped, autostart off,
    /// the epoch stamped in its metadata) or `fenced-unconfirmed` (its
    /// libvirt did not answer).
    #[serde(default)]
    pub fence: Vec<FencedDomain>,
    /// The libvirt URI of the primary's host.
    #[serde(default)]
    pub primary_uri: Option<String>,
    pub vms: Vec<TakeoverVm>,
    /// A standby that took over with its own addresses (`network =
    /// "readdress"`): its networks, addresses and the rewrite map; none
    /// when it took over the primary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readdressed: Option<Readdressed>,
    pub started_at: DateTime<Utc>,
    pub steps: Vec<StepTime>,
    pub duration_ms: u64,
}

fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> FailoverError {
    move |e| FailoverError::Catalog(crate::catalog::CatalogError::Corrupt { what, detail: e.to_string() })
}

/// The report of the switch in force for `env` (to `standby` or another of
/// its standbys), with action `already-failed-over`; a drill of `standby`
/// that runs is refused.
pub(super) fn already_switched(
    ctx: &OpContext<'_>,
    env: &str,
    standby: &str,
) -> Result<Option<SwitchReport>, FailoverError> {
    if let Some(open) = ctx.catalog.open_failover(standby)? {
        if open.mode == FailoverMode::Test {
            return Err(FailoverError::DrillRunning { env: env.to_owned(), standby: standby.to_owned() });
        }
    }
    let Some(open) = ctx.catalog.active_switch(env)? else { return Ok(None) };
    let mut report: SwitchReport = serde_json::from_value(open.report).map_err(corrupt("read a failover's report"))?;
    ctx.note(format!("{env} failed over to standby {} already (epoch {}): nothing to do", open.standby, report.epoch));
    report.action = SwitchAction::AlreadyFailedOver;
    Ok(Some(report))
}

/// Fails ENV over to its standby, planned; see the module documentation.
pub fn planned(ctx: &OpContext<'_>, request: &DrillRequest, tools: Tools<'_>) -> Result<SwitchReport, FailoverError> {
    let started = Instant::now();
    let started_at = ctx.clock.now();
    let standby = pick_standby(ctx, request)?;
    let primary = ctx.config.environment(&request.env)?.clone();
    let network = network_mode(ctx, &standby.name, &primary, &request.env)?;
    if let Some(report) = already_switched(ctx, &request.env, &standby.name)? {
        return Ok(report);
    }
    // The final snapshot and the fence act on the primary's host; the rest on SB's (the context's).
    let primary_ctx = OpContext { host: ctx.host_named(Some(ctx.config.host_of(&request.env)))?, ..*ctx };
    for vm in primary.vms.values() {
        let found = super::inspect(&primary_ctx, &vm.domain)?;
        if !found.state.is_active() {
            return Err(FailoverError::PrimaryDown { env: request.env.clone(), domain: vm.domain.clone() });
        }
    }

    ctx.note(format!("planned failover of {} to standby {}", request.env, standby.name));
    let timer = ctx.begin(format!("final snapshot of {}", request.env));
    let snap = SnapshotRequest {
        env: request.env.clone(),
        label: Some("failover-final".into()),
        memory: false,
        quiesce: None,
        schedule: None,
    };
    let begun = Instant::now();
    let taken = crate::ops::snapshot::take(&primary_ctx, &snap, tools.quiescer);
    let final_step = StepTime {
        name: format!("final snapshot of {}", request.env),
        at_ms: millis(begun - started),
        took_ms: millis(begun.elapsed()),
        ok: taken.is_ok(),
    };
    let snapshot = timer
        .finish(taken)
        .map_err(|e| FailoverError::FinalSnapshot { env: request.env.clone(), source: Box::new(e) })?;
    let thawed = Instant::now();

    let epoch = ctx.catalog.last_epoch(&request.env)? + 1;
    let mut run = Run::new(ctx, tools, &request.env, started)?;
    run.steps.push(final_step);
    let at = FinalPoint { snapshot: &snapshot.name, thawed, epoch };
    let result = switch(&mut run, primary_ctx.host, &standby, &primary, at, network);
    let (takeover, fenced, unprotected, rto) = match result {
        Ok(done) => done,
        Err(error) => return Err(run.roll_back(error)),
    };
    let fence = fenced
        .iter()
        .map(|d| FencedDomain { domain: d.clone(), fence: crate::catalog::FenceKind::Fenced, detail: None })
        .collect();
    let report = SwitchReport {
        env: request.env.clone(),
        standby: standby.name.clone(),
        mode: FailoverMode::Planned,
        action: SwitchAction::FailedOver,
        epoch,
        snapshot: snapshot.name.clone(),
        rpo_seconds: 0,
        unprotected_ms: millis(unprotected),
        rto_ms: millis(rto),
        fenced,
        fence,
        // The guard looks for the primary's domains there.
        primary_uri: (primary_ctx.host.name() != ctx.host.name())
            .then(|| ctx.config.hosts.get(primary_ctx.host.name()).map(|h| h.libvirt_uri.clone()))
            .flatten(),
        vms: takeover.vms,
        readdressed: takeover.readdressed,
        started_at,
        steps: Vec::new(),
        duration_ms: 0,
    };
    record_switch(run, &standby, &primary, report)
}

/// The switch's last step: its `failovers` row (mode, epoch, how to reach
/// the active side, the fence) and its fence events; then the report.
pub(super) fn record_switch(
    mut run: Run<'_, '_>,
    standby: &crate::catalog::StandbyRecord,
    primary: &crate::config::Environment,
    mut report: SwitchReport,
) -> Result<SwitchReport, FailoverError> {
    let epoch = report.epoch;
    let environment = active_environment(run.ctx, primary, standby, &report.vms, report.readdressed.as_ref());
    let resources = super::fence::SwitchResources {
        fenced: report.fence.clone(),
        primary_uri: report.primary_uri.clone(),
        ..Default::default()
    };
    let request_env = report.env.clone();
    let recorded = run.step(
        &format!("record epoch {epoch}: {} serves {request_env}", standby.name),
        undo::forget_open(&standby.name),
        |run| {
            let mut stored = report.clone();
            stored.steps = run.steps.clone();
            stored.duration_ms = millis(run.started.elapsed());
            let id = run.ctx.catalog.add_failover(&NewFailover {
                env: report.env.clone(),
                standby: report.standby.clone(),
                mode: report.mode,
                epoch: Some(epoch),
                state: FailoverState::Active,
                started_at: report.started_at,
                environment: serde_json::to_value(&environment).unwrap_or_default(),
                resources: serde_json::to_value(&resources).unwrap_or_default(),
                report: serde_json::to_value(&stored).unwrap_or_default(),
            })?;
            for fence in &report.fence {
                run.ctx.catalog.add_fence_event(&crate::catalog::FenceEvent {
                    failover_id: id,
                    env: report.env.clone(),
                    epoch,
                    domain: fence.domain.clone(),
                    kind: fence.fence,
                    detail: fence.detail.clone(),
                    at: run.ctx.clock.now(),
                })?;
            }
            Ok(id)
        },
    );
    if let Err(error) = recorded {
        return Err(run.roll_back(error));
    }
    run.complete()?;
    report.duration_ms = millis(run.started.elapsed());
    report.steps = std::mem::take(&mut run.steps);
    Ok(report)
}

/// The final snapshot, when its guests were thawed, and the switch's epoch.
#[derive(Debug, Clone, Copy)]
struct FinalPoint<'s> {
    snapshot: &'s str,
    thawed: Instant,
    epoch: i64,
}

/// Steps 2 to 5 (before the record); returns SB's takeover, the fenced
/// domains, the unprotected window and the RTO.
fn switch(
    run: &mut Run<'_, '_>,
    primary_host: &dyn crate::host::Host,
    standby: &crate::catalog::StandbyRecord,
    primary: &crate::config::Environment,
    at: FinalPoint<'_>,
    network: StandbyNetwork,
) -> Result<(Takeover, Vec<String>, std::time::Duration, std::time::Duration), FailoverError> {
    let FinalPoint { snapshot, thawed, epoch } = at;
    let ctx = run.ctx;
    let state_dir = &ctx.config.controller.state_dir;
    let mut fenced = Vec::new();
    {
        let _primary_lock = EnvLock::acquire(state_dir, &standby.primary, "failover (fence)")?;
        for vm in primary.vms.values() {
            let domain = vm.domain.clone();
            let stamp = super::fence::stamp(epoch, ctx.clock.now());
            run.step(
                &format!("fence {domain}: stop it, autostart off, epoch {epoch}"),
                undo::unfence(&domain, primary_host.name()),
                |_| {
                    super::fence::fence_domain(primary_host.hypervisor(), &domain, &stamp)
                        .map(drop)
                        .map_err(|e| FailoverError::Fence { domain: domain.clone(), source: Box::new(e) })
                },
            )?;
            fenced.push(domain);
        }
    }
    let unprotected = thawed.elapsed();

    let name = standby.name.clone();
    let synced = run.step(&format!("bring {name} to the final snapshot {snapshot}"), UndoAction::Nothing, |run| {
        crate::ops::standby::sync(run.ctx, &name)
            .map_err(|e| FailoverError::Sync { standby: name.clone(), source: Box::new(e) })
    })?;
    if synced.snapshot != snapshot {
        return Err(FailoverError::SyncedElsewhere {
            standby: name.clone(),
            snapshot: snapshot.to_owned(),
            found: synced.snapshot,
        });
    }

    // On fresh epoch overlays, as an unplanned failover: SB's copy stays
    // the final snapshot, and what SB writes is what a failback carries home.
    let takeover = take_over(run, standby, primary, epoch, network)?;
    let rto = run.started.elapsed();
    Ok((takeover, fenced, unprotected, rto))
}

/// What SB took over with.
pub(super) struct Takeover {
    pub vms: Vec<TakeoverVm>,
    /// SB's own addresses, when it took over with them.
    pub readdressed: Option<Readdressed>,
}

/// SB takes over on fresh epoch overlays: with the primary's MACs and
/// networks ([`takeover::with_primary_addresses`]), or with its own
/// addresses (`readdress.rs`), as its config says (`network`, checked by
/// the caller before the fence).
pub(super) fn take_over(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
    epoch: i64,
    network: StandbyNetwork,
) -> Result<Takeover, FailoverError> {
    let state_dir = &run.ctx.config.controller.state_dir;
    let _standby_lock = EnvLock::acquire(state_dir, &standby.name, "failover (take over)")?;
    if network == StandbyNetwork::Readdress {
        let (vms, readdressed) = readdress::take_over(run, standby, primary, epoch)?;
        return Ok(Takeover { vms, readdressed: Some(readdressed) });
    }
    let vms = takeover::with_primary_addresses(run, standby, primary, epoch)?;
    Ok(Takeover { vms, readdressed: None })
}

/// How to reach ENV while SB is its active side: ENV's VMs in SB's
/// domains (their agents at ENV's addresses, or at SB's own when it took
/// over with them), its snapshots on SB's storage.
/// On SB's host (the context's): ENV's operations run there while SB serves.
pub(super) fn active_environment(
    ctx: &crate::ops::context::OpContext<'_>,
    primary: &Environment,
    standby: &StandbyRecord,
    vms: &[TakeoverVm],
    readdressed: Option<&Readdressed>,
) -> Environment {
    let libvirt_netns = ctx.config.controller.libvirt_netns.as_deref();
    let mut environment = match readdressed {
        Some(readdressed) => readdress::served_environment(primary, vms, readdressed, libvirt_netns),
        None => {
            in_standby_domains(primary, vms, super::takeover::reached_on(ctx.config, &standby.primary, ctx.host.name()))
        }
    };
    environment.storage = Some(standby.storage.join("active"));
    if ctx.host.name() != ctx.config.host_of(&standby.primary) {
        environment.host = Some(ctx.host.name().to_owned());
    }
    environment
}
