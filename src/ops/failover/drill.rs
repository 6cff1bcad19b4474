//! `envclone failover ENV --test` (a DR drill) and `--test --end`.
//!
//! The drill starts the standby SB from its restored point while the
//! primary runs untouched: SB's domains already sit, shut off, on isolated
//! copies of the primary's networks (`SB-<net>`: no host address, no
//! forward), so they come up with the primary's addresses and reach
//! nothing of production. Steps, journaled before each runs (operation
//! `failover` on SB), with their undo:
//!
//! 1. `drill overlay VM/DISK`: a throwaway qcow2 overlay on SB's image of
//!    each disk, `<storage>/<vm>/<SB>.<disk>.drill.qcow2` (undo: delete it).
//!    The drill writes only these: SB's own images stay as the last sync
//!    left them, byte for byte, and the next sync needs nothing undone.
//! 2. `point SB-VM at its drill overlays`: the shut-off domain redefined
//!    with its disks on the overlays (undo: back on SB's images, restore's
//!    `restore-redefine-disks`).
//! 3. `create the gateway namespace envclone-c-SB` and `gateway A on
//!    SB-NET` per network with an address: the clone's gateway code
//!    ([`crate::ops::clone::host_net`]), so the controller, `envclone ssh
//!    SB VM` and you (`ip netns exec envclone-c-SB curl ...`) reach SB's
//!    guests at the primary's addresses, and nothing else does.
//! 4. `start SB-VM` per VM (undo: stop it), then `wait for SB's agents`.
//! 5. `record the drill` (undo: forget it): a `failovers` row, mode `test`,
//!    state `running`, with how to reach SB and what the drill made.
//!
//! `--end` stops SB's domains, points them back at SB's images, removes the
//! gateway and the overlays and ends the row: each step idempotent, so an
//! `--end` that was interrupted is finished by running it again. Both are
//! idempotent as a whole: a drill that runs is reported, not started twice;
//! ending none is a no-op.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{undo, FailoverError, Tools};
use crate::catalog::{
    FailoverMode, FailoverState, ImageFormat, NewFailover, OperationKind, StandbyDisk, StandbyRecord, UndoAction,
};
use crate::config::Environment;
use crate::hypervisor::HvError;
use crate::ops::clone::{names, undo as clone_undo};
use crate::ops::context::OpContext;
use crate::ops::journal::{Journal, Journaled};
use crate::ops::restore::steps::{DiskSource, DiskSources, DomainRef};
use crate::ops::restore::UNDO_STOP_DOMAIN;
use crate::ops::EnvLock;

/// How long a standby's agent may take to answer after its boot.
pub const BOOT_WITHIN: Duration = Duration::from_secs(240);

/// Which environment, and which of its standbys (needed when it has several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillRequest {
    pub env: String,
    pub standby: Option<String>,
}

/// What the command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillAction {
    /// The drill was started now.
    Started,
    /// A drill was running already: nothing done (its report is this one).
    AlreadyRunning,
    /// The drill was ended now.
    Ended,
    /// No drill was running: nothing done.
    NotRunning,
}

/// One step, as the runbook report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTime {
    pub name: String,
    /// Milliseconds from the command's start to the step's start.
    pub at_ms: u64,
    pub took_ms: u64,
    pub ok: bool,
}

/// One of the standby's VMs in the drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillVm {
    pub vm: String,
    pub domain: String,
    /// Where its agent answers, through the gateway namespace.
    pub address: String,
    pub disks: Vec<DrillDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillDisk {
    pub target: String,
    /// SB's own image, which the drill never writes.
    pub image: PathBuf,
    /// The throwaway overlay the drill runs on.
    pub overlay: PathBuf,
}

/// What a drill made: what `--end` removes, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillResources {
    pub netns: String,
    pub links: Vec<clone_undo::LinkRef>,
    pub vms: Vec<DrillVm>,
}

/// The JSON report for runbooks (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillReport {
    pub env: String,
    pub standby: String,
    /// Always `test`.
    pub mode: FailoverMode,
    pub action: DrillAction,
    /// The primary's snapshot SB was started from (its restored point).
    pub snapshot: Option<String>,
    pub snapshot_created_at: Option<DateTime<Utc>>,
    /// The RPO a failover at the drill's start would have achieved: the
    /// age of SB's restored point then.
    pub rpo_seconds: Option<i64>,
    /// The RTO measured: from the command's start until every agent of
    /// SB answered.
    pub rto_ms: Option<u64>,
    pub gateway_netns: Option<String>,
    pub vms: Vec<DrillVm>,
    pub started_at: DateTime<Utc>,
    pub steps: Vec<StepTime>,
    pub duration_ms: u64,
}

/// The standby of `request.env` the failover is about.
pub(crate) fn pick_standby(ctx: &OpContext<'_>, request: &DrillRequest) -> Result<StandbyRecord, FailoverError> {
    ctx.config.environment(&request.env)?;
    let mut standbys = ctx.catalog.standbys(Some(&request.env))?;
    let names: Vec<String> = standbys.iter().map(|s| s.name.clone()).collect();
    match &request.standby {
        Some(name) => match standbys.iter().position(|s| &s.name == name) {
            Some(index) => Ok(standbys.swap_remove(index)),
            None => {
                Err(FailoverError::UnknownStandby { env: request.env.clone(), standby: name.clone(), known: names })
            }
        },
        None if standbys.is_empty() => Err(FailoverError::NoStandby { env: request.env.clone() }),
        None if standbys.len() > 1 => Err(FailoverError::SeveralStandbys { env: request.env.clone(), standbys: names }),
        None => Ok(standbys.remove(0)),
    }
}

/// Starts each of `domains`, one journaled step each (undo: stop it).
pub(super) fn start_domains<'d>(
    run: &mut Run<'_, '_>,
    domains: impl Iterator<Item = &'d str>,
) -> Result<(), FailoverError> {
    for domain in domains {
        run.step(&format!("start {domain}"), DomainRef::undo(UNDO_STOP_DOMAIN, domain), |run| {
            run.ctx
                .host
                .hypervisor()
                .start_domain(domain)
                .map_err(|e| FailoverError::Start { domain: domain.to_owned(), source: Box::new(e) })
        })?;
    }
    Ok(())
}

/// The restored point `standby` can start from, once it is known to hold
/// one completely (synced, no merge pending) and to be shut off.
pub(crate) fn ready_to_start(ctx: &OpContext<'_>, standby: &StandbyRecord) -> Result<String, FailoverError> {
    let Some(snapshot) = standby.snapshot.clone() else {
        return Err(FailoverError::NotSynced { standby: standby.name.clone() });
    };
    if let Some(merging) = &standby.merging {
        return Err(FailoverError::MergePending { standby: standby.name.clone(), snapshot: merging.clone() });
    }
    for domain in &standby.resources.domains {
        let found = super::inspect(ctx, &domain.domain)?;
        if found.state.is_active() {
            return Err(FailoverError::StandbyRunning { standby: standby.name.clone(), domain: domain.domain.clone() });
        }
    }
    Ok(snapshot)
}

/// Where the drill's overlay of `disk` of `vm` lives.
pub fn overlay_path(standby: &StandbyRecord, vm: &str, disk: &str) -> PathBuf {
    standby.storage.join(vm).join(format!("{}.{disk}.drill.qcow2", standby.name))
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Journals and times the steps of one failover command.
pub(super) struct Run<'r, 'c> {
    pub(super) ctx: &'r OpContext<'c>,
    pub(super) tools: Tools<'r>,
    journal: Option<Journal<'c>>,
    pub(super) started: Instant,
    pub(super) steps: Vec<StepTime>,
    /// The crash-point family hit after each step: `failover`, `failback`.
    pub(super) points: &'static str,
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = FailoverError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    // Cannot fail: the journal is taken only by `complete` and `roll_back`,
    // and no step runs after either.
    #[allow(clippy::expect_used)]
    fn journal(&mut self) -> &mut Journal<'c> {
        self.journal.as_mut().expect("the journal is only taken at the end of the run")
    }

    fn crash_points(&self) -> Option<&'static str> {
        Some(self.points)
    }

    /// Its record: from there the drill runs or the standby serves, and a
    /// switch is finished, never rolled back (as `recover` does).
    fn is_point_of_no_return(&self, step: &str) -> bool {
        super::is_record_step(step)
    }

    /// The runbook report lists every step with its time.
    fn step_ended(&mut self, name: &str, begun: Instant, took: Duration, ok: bool) {
        self.steps.push(StepTime {
            name: name.to_owned(),
            at_ms: millis(begun.duration_since(self.started)),
            took_ms: millis(took),
            ok,
        });
    }
}

impl<'r, 'c> Run<'r, 'c> {
    pub(super) fn new(
        ctx: &'r OpContext<'c>,
        tools: Tools<'r>,
        env: &str,
        started: Instant,
    ) -> Result<Self, FailoverError> {
        let journal = Journal::begin(ctx.catalog, OperationKind::Failover, env, ctx.clock.now())?;
        Ok(Run { ctx, tools, journal: Some(journal), started, steps: Vec::new(), points: "failover" })
    }

    pub(super) fn complete(&mut self) -> Result<(), FailoverError> {
        // Cannot fail: each command calls `complete` once, last. It stays an
        // Option because the callers read `steps` after completing.
        #[allow(clippy::expect_used)]
        let journal = self.journal.take().expect("the journal is taken once");
        journal.complete()?;
        Ok(())
    }

    pub(super) fn roll_back(&mut self, error: FailoverError) -> FailoverError {
        let ctx = self.ctx;
        let cause = crate::error::chain(&error);
        let failures = match self.journal.take() {
            Some(journal) => journal.roll_back(&cause, |action| undo::undo_action(ctx, action)),
            None => Vec::new(),
        };
        if failures.is_empty() {
            error
        } else {
            FailoverError::CleanupFailed { cause: Box::new(error), failures }
        }
    }
}

/// Starts a drill; see the module documentation.
pub fn start(ctx: &OpContext<'_>, request: &DrillRequest, tools: Tools<'_>) -> Result<DrillReport, FailoverError> {
    let started = Instant::now();
    let started_at = ctx.clock.now();
    let standby = pick_standby(ctx, request)?;
    if standby.host != crate::host::LOCAL {
        // The drill's guests are reached through a gateway namespace on the
        // host that runs them: out of the controller's reach on another.
        return Err(FailoverError::Unsupported {
            what: format!("a DR drill of standby {}, which lives on host {}", standby.name, standby.host),
        });
    }
    let primary = ctx.config.environment(&request.env)?.clone();
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, &standby.name, "failover --test")?;
    if let Some(open) = ctx.catalog.open_failover(&standby.name)? {
        if open.mode != FailoverMode::Test {
            return Err(FailoverError::Unsupported {
                what: format!("a drill of standby {} while its {} failover is in force", standby.name, open.mode),
            });
        }
        let mut report: DrillReport = serde_json::from_value(open.report).map_err(|e| {
            FailoverError::Catalog(crate::catalog::CatalogError::Corrupt {
                what: "read a drill's report",
                detail: e.to_string(),
            })
        })?;
        ctx.note(format!("a drill of {} on standby {} runs already: nothing to do", request.env, standby.name));
        report.action = DrillAction::AlreadyRunning;
        return Ok(report);
    }
    let snapshot = ready_to_start(ctx, &standby)?;

    ctx.note(format!(
        "DR drill of {}: standby {} starts from snapshot {snapshot} in its isolated networks; {} keeps running",
        request.env, standby.name, request.env
    ));
    let mut run = Run::new(ctx, tools, &standby.name, started)?;
    let made = drill_steps(&mut run, &standby, &primary);
    let (resources, environment, rto) = match made {
        Ok(made) => made,
        Err(error) => return Err(run.roll_back(error)),
    };
    let mut report = DrillReport {
        env: request.env.clone(),
        standby: standby.name.clone(),
        mode: FailoverMode::Test,
        action: DrillAction::Started,
        snapshot: Some(snapshot),
        snapshot_created_at: standby.snapshot_created_at,
        rpo_seconds: standby.snapshot_created_at.map(|at| (started_at - at).num_seconds().max(0)),
        rto_ms: Some(millis(rto)),
        gateway_netns: Some(resources.netns.clone()),
        vms: resources.vms.clone(),
        started_at,
        steps: Vec::new(),
        duration_ms: 0,
    };
    let record = NewFailover {
        env: request.env.clone(),
        standby: standby.name.clone(),
        mode: FailoverMode::Test,
        epoch: None,
        state: FailoverState::Running,
        started_at,
        environment: serde_json::to_value(&environment).unwrap_or_default(),
        resources: serde_json::to_value(&resources).unwrap_or_default(),
        report: serde_json::Value::Null,
    };
    let recorded = run.step("record the drill", undo::forget_open(&standby.name), |run| {
        // The report it stores is the one printed: its steps up to here.
        let mut stored = report.clone();
        stored.steps = run.steps.clone();
        stored.duration_ms = millis(run.started.elapsed());
        let record = NewFailover { report: serde_json::to_value(&stored).unwrap_or_default(), ..record };
        Ok(run.ctx.catalog.add_failover(&record)?)
    });
    if let Err(error) = recorded {
        return Err(run.roll_back(error));
    }
    run.complete()?;
    report.steps = run.steps;
    report.duration_ms = millis(started.elapsed());
    Ok(report)
}

/// Steps 1 to 4 of the module documentation; returns what was made, how
/// to reach SB, and the time until its agents answered.
fn drill_steps(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
) -> Result<(DrillResources, Environment, Duration), FailoverError> {
    let ctx = run.ctx;
    let sb = &standby.name;
    let netns = names::gateway_netns(sb);
    let mut vms = Vec::new();
    for domain in &standby.resources.domains {
        let current = super::inspect(ctx, &domain.domain)?;
        let mut def = current.def.clone();
        let mut disks = Vec::new();
        let mut back = DiskSources { domain: domain.domain.clone(), disks: Vec::new() };
        for disk in standby.disks.iter().filter(|d| d.vm == domain.vm) {
            let overlay = overlay_path(standby, &domain.vm, &disk.disk);
            let undo = UndoAction::DeleteFile { path: overlay.clone() };
            // A drill overlay left by an end that was interrupted is stale.
            fresh_overlay(run, &format!("drill overlay {}/{}", domain.vm, disk.disk), undo, disk, &overlay)?;
            let redefine = |e: HvError| FailoverError::Redefine { domain: domain.domain.clone(), source: Box::new(e) };
            def.set_disk_source(&disk.disk, &overlay, ImageFormat::Qcow2.as_str()).map_err(redefine)?;
            back.disks.push(DiskSource {
                target: disk.disk.clone(),
                path: disk.path.clone(),
                format: ImageFormat::Qcow2.as_str().to_owned(),
            });
            disks.push(DrillDisk { target: disk.disk.clone(), image: disk.path.clone(), overlay });
        }
        run.step(&format!("point {} at its drill overlays", domain.domain), back.undo(), |run| {
            run.ctx
                .host
                .hypervisor()
                .define_domain(&def)
                .map(drop)
                .map_err(|e| FailoverError::Redefine { domain: domain.domain.clone(), source: Box::new(e) })
        })?;
        let address = primary.vms.get(&domain.vm).map(|v| v.agent.address.clone()).unwrap_or_default();
        vms.push(DrillVm { vm: domain.vm.clone(), domain: domain.domain.clone(), address, disks });
    }

    let links = gateway(run, sb, &netns, &standby.resources.networks)?;

    start_domains(run, vms.iter().map(|vm| vm.domain.as_str()))?;

    let mut environment = primary.clone();
    environment.description = Some(format!("DR drill of standby {sb} of {}", standby.primary));
    environment.networks = standby.resources.networks.iter().map(|n| n.name.clone()).collect();
    environment.storage = Some(standby.storage.clone());
    environment.retention = None;
    for vm in &vms {
        if let Some(config) = environment.vms.get_mut(&vm.vm) {
            config.domain = vm.domain.clone();
            config.agent.netns = Some(netns.clone());
        }
    }
    wait_for_agents(run, &format!("wait for {sb}'s agents"), &environment)?;
    let rto = run.started.elapsed();
    Ok((DrillResources { netns, links, vms }, environment, rto))
}

/// The gateway namespace and one veth per network whose primary network
/// has an address (the address the guests know as their gateway).
pub(super) fn gateway(
    run: &mut Run<'_, '_>,
    sb: &str,
    netns: &str,
    networks: &[crate::catalog::ClonedNetwork],
) -> Result<Vec<clone_undo::LinkRef>, FailoverError> {
    let libvirt_netns = run.ctx.config.controller.libvirt_netns.clone();
    let fail = |netns: &str| {
        let netns = netns.to_owned();
        move |e| FailoverError::Gateway { netns, source: Box::new(e) }
    };
    let undo = UndoAction::Custom {
        kind: clone_undo::UNDO_REMOVE_NETNS.to_owned(),
        data: serde_json::json!({ "netns": netns }),
    };
    run.step(&format!("create the gateway namespace {netns}"), undo, |run| {
        run.ctx.host.net().add_netns(netns).map_err(fail(netns))
    })?;
    let mut links = Vec::new();
    for network in networks {
        let source = run
            .ctx
            .host
            .hypervisor()
            .network(&network.source)
            .map_err(|e| FailoverError::InspectNetwork { network: network.source.clone(), source: Box::new(e) })?;
        let Some((std::net::IpAddr::V4(address), prefix)) = source.def.ip() else { continue };
        let address = format!("{address}/{prefix}");
        let (veth, peer) = names::veth_pair(sb, &network.source);
        let link = clone_undo::LinkRef { netns: libvirt_netns.clone(), link: veth.clone() };
        let undo = UndoAction::Custom {
            kind: clone_undo::UNDO_REMOVE_LINK.to_owned(),
            data: serde_json::to_value(&link).unwrap_or_default(),
        };
        run.step(&format!("gateway {address} on {}", network.name), undo, |run| {
            // One left by an end that was interrupted is replaced.
            run.ctx.host.net().delete_link(libvirt_netns.as_deref(), &veth).map_err(fail(netns))?;
            run.ctx
                .host
                .net()
                .add_gateway(libvirt_netns.as_deref(), &network.bridge, &veth, netns, &peer, &address)
                .map_err(fail(netns))
        })?;
        links.push(link);
    }
    Ok(links)
}

/// The gateway's links and namespace removed (each idempotent: gone is done).
pub(super) fn remove_gateway(
    run: &mut Run<'_, '_>,
    netns: &str,
    links: &[clone_undo::LinkRef],
) -> Result<(), FailoverError> {
    let fail = |e| FailoverError::Gateway { netns: netns.to_owned(), source: Box::new(e) };
    for link in links {
        run.step(&format!("remove the gateway link {}", link.link), UndoAction::Nothing, |run| {
            run.ctx.host.net().delete_link(link.netns.as_deref(), &link.link).map_err(fail)
        })?;
    }
    run.step(&format!("remove the gateway namespace {netns}"), UndoAction::Nothing, |run| {
        run.ctx.host.net().delete_netns(netns).map_err(fail)
    })
}

/// Waits for every VM's agent of `environment`, in parallel.
pub(super) fn wait_for_agents(
    run: &mut Run<'_, '_>,
    what: &str,
    environment: &Environment,
) -> Result<(), FailoverError> {
    let vms: Vec<String> = environment.vms.keys().cloned().collect();
    run.step(what, UndoAction::Nothing, |run| {
        let agents = (run.tools.agents)(environment);
        let agents = agents.as_ref();
        let results = crate::ops::parallel::each(&vms, |vm| {
            agents
                .wait_ready(vm, BOOT_WITHIN)
                .map_err(|source| FailoverError::AgentNotReady { vm: vm.clone(), source: Box::new(source) })
        });
        results.into_iter().try_for_each(|result| result.unwrap_or(Err(FailoverError::Panicked)))
    })
}

/// Ends the drill; see the module documentation.
pub fn end(ctx: &OpContext<'_>, request: &DrillRequest, tools: Tools<'_>) -> Result<DrillReport, FailoverError> {
    let started = Instant::now();
    let started_at = ctx.clock.now();
    let standby = pick_standby(ctx, request)?;
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, &standby.name, "failover --test --end")?;
    let mut report = DrillReport {
        env: request.env.clone(),
        standby: standby.name.clone(),
        mode: FailoverMode::Test,
        action: DrillAction::NotRunning,
        snapshot: standby.snapshot.clone(),
        snapshot_created_at: standby.snapshot_created_at,
        rpo_seconds: None,
        rto_ms: None,
        gateway_netns: None,
        vms: Vec::new(),
        started_at,
        steps: Vec::new(),
        duration_ms: 0,
    };
    let open = match ctx.catalog.open_failover(&standby.name)? {
        Some(open) if open.mode == FailoverMode::Test => open,
        _ => {
            ctx.note(format!("no drill of {} on standby {} runs: nothing to end", request.env, standby.name));
            report.duration_ms = millis(started.elapsed());
            return Ok(report);
        }
    };
    let resources: DrillResources = serde_json::from_value(open.resources).map_err(|e| {
        FailoverError::Catalog(crate::catalog::CatalogError::Corrupt {
            what: "read what a drill made",
            detail: e.to_string(),
        })
    })?;
    let mut run = Run::new(ctx, tools, &standby.name, started)?;
    if let Err(error) = end_steps(&mut run, &standby.name, &resources) {
        return Err(run.roll_back(error));
    }
    run.complete()?;
    report.action = DrillAction::Ended;
    report.gateway_netns = Some(resources.netns);
    report.vms = resources.vms;
    report.steps = run.steps;
    report.duration_ms = millis(started.elapsed());
    Ok(report)
}

/// Every step idempotent, none with an undo: an interrupted end is
/// finished by running `--end` again.
fn end_steps(run: &mut Run<'_, '_>, sb: &str, resources: &DrillResources) -> Result<(), FailoverError> {
    for vm in &resources.vms {
        run.step(&format!("stop {}", vm.domain), UndoAction::Nothing, |run| {
            match run.ctx.host.hypervisor().destroy_domain(&vm.domain) {
                Ok(()) | Err(HvError::NoSuchDomain { .. }) => Ok(()),
                Err(e) => Err(FailoverError::Stop { domain: vm.domain.clone(), source: Box::new(e) }),
            }
        })?;
        let back = DiskSources {
            domain: vm.domain.clone(),
            disks: vm
                .disks
                .iter()
                .map(|d| DiskSource {
                    target: d.target.clone(),
                    path: d.image.clone(),
                    format: ImageFormat::Qcow2.as_str().to_owned(),
                })
                .collect(),
        };
        run.step(&format!("point {} back at its own disks", vm.domain), UndoAction::Nothing, |run| {
            crate::ops::restore::undo_action(run.ctx.host, run.ctx.catalog, &back.undo())
                .map_err(|detail| FailoverError::Remove { what: format!("the drill disks of {}", vm.domain), detail })
        })?;
    }
    remove_gateway(run, &resources.netns, &resources.links)?;
    for vm in &resources.vms {
        for disk in &vm.disks {
            run.step(&format!("delete drill overlay {}/{}", vm.vm, disk.target), UndoAction::Nothing, |run| {
                run.ctx.host.storage().remove(&disk.overlay).map_err(|e| FailoverError::Remove {
                    what: disk.overlay.display().to_string(),
                    detail: e.to_string(),
                })
            })?;
        }
    }
    run.step("end the drill", UndoAction::Nothing, |run| {
        let at = run.ctx.clock.now();
        run.ctx.catalog.end_failover(sb, at).map(drop).map_err(FailoverError::from)
    })
}

/// Journals `step` making `overlay` a fresh qcow2 overlay on SB's synced
/// copy of `disk`: a file a rolled-back or interrupted run left there is
/// stale, so it is removed first. Drill and epoch overlays both use it.
pub(super) fn fresh_overlay(
    run: &mut Run<'_, '_>,
    step: &str,
    undo: UndoAction,
    disk: &StandbyDisk,
    overlay: &Path,
) -> Result<(), FailoverError> {
    run.step(step, undo, |run| {
        let storage = run.ctx.host.storage();
        storage
            .remove(overlay)
            .map_err(|e| FailoverError::Remove { what: overlay.display().to_string(), detail: e.to_string() })?;
        storage.create_overlay(overlay, &disk.path, ImageFormat::Qcow2).map_err(|source| FailoverError::Overlay {
            vm: disk.vm.clone(),
            disk: disk.disk.clone(),
            source: Box::new(source),
        })
    })
}
