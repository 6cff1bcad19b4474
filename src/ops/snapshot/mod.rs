//! `envclone snapshot`: one consistent point in time of every VM of an
//! environment.
//!
//! - `preflight.rs`: domains exist and run, disks can be snapshotted,
//!   storage has room; the name and the file paths.
//! - The agents are reached through the guest agents port's [`Quiescer`]
//!   ([`crate::guest::agents`]; the real one holds each freeze as a lease
//!   on an SSH session opened beforehand).
//! - `barrier.rs`: freeze all, snapshot every VM's disks (atomic per VM, in
//!   parallel), thaw all, under a hard limit on the window.
//! - `memory.rs` and `save_image.rs`: memory captured live at the disk
//!   snapshot's point, written as a libvirt save image; and its restore.
//! - `record.rs`: what the catalog keeps, and the `snapshots` listing.
//! - `steps.rs`: the state machine and the journal.
//!
//! The whole run holds the environment's lock. Any failure thaws every
//! frozen guest (the barrier guarantees it), resumes any guest paused for
//! its memory point, marks the snapshot failed and keeps every VM running
//! on a valid chain: a VM whose disks already switched keeps its overlays
//! (their backing files are intact and read-only), and the catalog records
//! that chain.

mod barrier;
mod error;
pub mod memory;
mod preflight;
pub mod record;
pub mod save_image;
mod steps;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use self::error::SnapshotError;
pub use self::memory::{restore_memory_image, MemoryCapture, MemoryError, MemoryImage, RestoredDomain};
pub use self::preflight::{DiskPlan, VmPlan};
pub use self::record::{list, snapshot_dependent, SnapshotSummary, VmSummary};
pub use self::steps::{Phase, UNDO_FAIL_SNAPSHOT_NAMED};

use self::barrier::{BarrierOutcome, BarrierSettings, BarrierVm};
use super::context::OpContext;
use super::EnvLock;
use crate::catalog::OperationKind;
use crate::catalog::{Consistency, NewSnapshot, SnapshotId, SnapshotState, StepId, UndoAction, VmConsistency};
use crate::config::{Environment, QuiescePolicy};
use crate::guest::agents::{Quiescer, SshQuiescer};
use crate::guest::FreezeRequest;
use crate::hypervisor::{DomainState, Hypervisor};
use crate::ops::journal::{Journal, Journaled, PhaseMachine};

/// Bound on the disk snapshots when no guest is frozen.
const UNFROZEN_SNAPSHOT_WAIT: Duration = Duration::from_secs(120);
/// Extra time a freeze answer may take beyond the hooks' own limit.
const FREEZE_ANSWER_MARGIN: Duration = Duration::from_secs(10);
/// How long a thaw may take to report (it includes the post-thaw hooks).
const THAW_REPORT_WITHIN: Duration = Duration::from_secs(60);

/// What to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub env: String,
    pub label: Option<String>,
    /// Also capture every VM's memory.
    pub memory: bool,
    /// Overrides the environment's `quiesce`.
    pub quiesce: Option<QuiescePolicy>,
    /// The schedule taking it, if any.
    pub schedule: Option<String>,
}

/// What was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotReport {
    pub env: String,
    pub name: String,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub state: SnapshotState,
    pub quiesce: QuiescePolicy,
    pub memory: bool,
    /// First freeze to last thaw; `None` when nothing was frozen.
    pub freeze_window_ms: Option<u64>,
    pub freeze_limit_ms: u64,
    pub duration_ms: u64,
    pub vms: Vec<VmReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmReport {
    pub vm: String,
    pub domain: String,
    pub consistency: Consistency,
    /// Why it is less than app-consistent.
    pub reason: Option<String>,
    pub memory_image: Option<PathBuf>,
    pub disks: Vec<DiskReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskReport {
    pub disk: String,
    /// The snapshot's image of this disk (read-only from now on).
    pub image: PathBuf,
    /// The overlay the VM writes to from now on.
    pub overlay: PathBuf,
}

/// The real quiescer for `env`: `envclone-agent` over SSH with the
/// controller's key; freezes held under the environment's limits.
pub fn agent_quiescer(ctx: &OpContext<'_>, env: &Environment) -> SshQuiescer {
    let limit: Duration = env.freeze_timeout.into();
    let hook_timeout: Duration = env.hook_timeout.into();
    let request = FreezeRequest {
        // Belt and braces: the agent thaws on its own at the limit if the
        // controller is lost.
        lease_timeout: limit,
        hook_timeout,
        ready_within: freeze_wait(env),
        report_within: THAW_REPORT_WITHIN.max(hook_timeout),
        ..FreezeRequest::default()
    };
    SshQuiescer::new(&ctx.config.controller, env, request)
}

/// How long a freeze may take to answer: its pre-freeze hooks, then FIFREEZE.
fn freeze_wait(env: &Environment) -> Duration {
    Duration::from(env.hook_timeout) + Duration::from(env.freeze_timeout) + FREEZE_ANSWER_MARGIN
}

/// Takes a snapshot of `request.env`; see the module documentation.
pub fn take(
    ctx: &OpContext<'_>,
    request: &SnapshotRequest,
    quiescer: &dyn Quiescer,
) -> Result<SnapshotReport, SnapshotError> {
    let started = Instant::now();
    let env = ctx.config.environment(&request.env)?;
    if request.memory && ctx.host.name() != crate::host::LOCAL {
        return Err(SnapshotError::MemoryOnRemoteHost { env: request.env.clone(), host: ctx.host.name().to_owned() });
    }
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, &request.env, "snapshot")?;
    let journal = Journal::begin(ctx.catalog, OperationKind::Snapshot, &request.env, ctx.clock.now())?;
    let mut run = Run {
        ctx,
        request,
        env,
        policy: request.quiesce.unwrap_or(env.quiesce),
        quiescer,
        journal: Some(journal),
        phase: Phase::Preflight,
        plans: Vec::new(),
        snapshot: None,
        name: String::new(),
        created_at: ctx.clock.now(),
        fallbacks: BTreeMap::new(),
        quiesced: BTreeSet::new(),
        captures: BTreeMap::new(),
        memory_steps: BTreeMap::new(),
        memory_images: BTreeMap::new(),
        barrier: None,
        started,
    };
    ctx.note(format!("snapshot of environment '{}' (quiesce {})", request.env, policy_name(run.policy)));
    match run.execute() {
        Ok(report) => Ok(report),
        Err(error) => Err(run.roll_back(error)),
    }
}

fn policy_name(policy: QuiescePolicy) -> &'static str {
    match policy {
        QuiescePolicy::Required => "required",
        QuiescePolicy::BestEffort => "best-effort",
        QuiescePolicy::Off => "off",
    }
}

/// One snapshot in progress: what has been done so far, for the record or
/// for the rollback.
struct Run<'r, 'c> {
    ctx: &'r OpContext<'c>,
    request: &'r SnapshotRequest,
    env: &'r Environment,
    policy: QuiescePolicy,
    quiescer: &'r dyn Quiescer,
    /// Taken by the commit or the rollback.
    journal: Option<Journal<'c>>,
    phase: Phase,
    plans: Vec<VmPlan>,
    snapshot: Option<SnapshotId>,
    name: String,
    created_at: DateTime<Utc>,
    /// VMs left crash-consistent, with why.
    fallbacks: BTreeMap<String, String>,
    /// VMs to freeze.
    quiesced: BTreeSet<String>,
    captures: BTreeMap<String, MemoryCapture>,
    memory_steps: BTreeMap<String, StepId>,
    memory_images: BTreeMap<String, MemoryImage>,
    barrier: Option<BarrierOutcome>,
    started: Instant,
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = SnapshotError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    // Cannot fail: the journal is taken only by the last line of `execute`
    // and by `roll_back`, and no step runs after either.
    #[allow(clippy::expect_used)]
    fn journal(&mut self) -> &mut Journal<'c> {
        self.journal.as_mut().expect("the journal is only taken at the end of the run")
    }
}

impl<'r, 'c> Run<'r, 'c> {
    /// A free name (in the catalog and on the host's storage) at the
    /// snapshot's time, and the files it will write, their folders made.
    fn name_and_paths(&mut self) -> Result<(), SnapshotError> {
        let ctx = self.ctx;
        self.created_at = ctx.clock.now();
        let storage = self.storage();
        let files = ctx.host.storage();
        self.name =
            preflight::choose_name(ctx.catalog, files, &self.request.env, self.created_at, &storage, &self.plans)?;
        preflight::assign_paths(&mut self.plans, &storage, &self.name);
        preflight::prepare_dirs(files, &self.plans)
    }

    fn execute(&mut self) -> Result<SnapshotReport, SnapshotError> {
        let ctx = self.ctx;
        let hv = ctx.host.hypervisor();

        // Preflight.
        self.step("preflight", UndoAction::Nothing, |run| {
            run.plans = preflight::inspect(hv, run.env)?;
            let storage = run.storage();
            let memory: u64 = if run.request.memory { run.plans.iter().map(|p| p.memory_bytes).sum() } else { 0 };
            let needed = ctx.config.controller.min_free_space.bytes().saturating_add(memory);
            preflight::check_space(ctx.host.storage(), &storage, needed)?;
            Ok(())
        })?;

        // Open sessions: every agent answers (the preflight status check).
        self.phase.enter(Phase::OpenSessions);
        self.step("open agent sessions", UndoAction::Nothing, |run| run.open_sessions())?;

        // The snapshot's name, paths and catalog row.
        self.name_and_paths()?;
        let reserve = UndoAction::Custom {
            kind: UNDO_FAIL_SNAPSHOT_NAMED.to_owned(),
            data: serde_json::json!({ "env": self.request.env, "snapshot": self.name }),
        };
        let name = self.name.clone();
        let snapshot = self.step(&format!("record snapshot {name}"), reserve, |run| {
            let id = ctx.catalog.create_snapshot(&NewSnapshot {
                env: run.request.env.clone(),
                name: run.name.clone(),
                label: run.request.label.clone(),
                schedule: run.request.schedule.clone(),
                created_at: run.created_at,
                memory: run.request.memory,
            })?;
            run.snapshot = Some(id);
            Ok(id)
        })?;

        // Memory images: prefix written, stream listened for, capability on.
        if self.request.memory {
            for index in 0..self.plans.len() {
                let plan = self.plans[index].clone();
                let step = self.journal().record(
                    format!("memory image of {}", plan.vm),
                    UndoAction::DeleteFile { path: plan.memory_image.clone() },
                )?;
                self.memory_steps.insert(plan.vm.clone(), step);
                let capture = MemoryCapture::prepare(hv, &plan.domain, &memory_definition(&plan)?, &plan.memory_image)
                    .map_err(|source| SnapshotError::Memory { vm: plan.vm.clone(), source })?;
                self.captures.insert(plan.vm.clone(), capture);
            }
        }

        // The barrier, journaled as a whole before the first freeze.
        self.phase.enter(Phase::Freeze);
        let barrier_steps = self.journal_barrier(snapshot)?;
        let outcome = {
            let mut captures = std::mem::take(&mut self.captures);
            let mut vms: Vec<BarrierVm<'_>> = Vec::new();
            let mut by_vm: BTreeMap<&str, &mut MemoryCapture> =
                captures.iter_mut().map(|(vm, capture)| (vm.as_str(), capture)).collect();
            for plan in &self.plans {
                vms.push(BarrierVm {
                    plan,
                    freeze: self.quiesced.contains(&plan.vm),
                    memory: by_vm.remove(plan.vm.as_str()),
                });
            }
            let settings = BarrierSettings {
                snapshot: self.name.clone(),
                limit: self.env.freeze_timeout.into(),
                freeze_failure_aborts: self.policy == QuiescePolicy::Required,
                freeze_wait: freeze_wait(self.env),
                unfrozen_wait: UNFROZEN_SNAPSHOT_WAIT,
            };
            let outcome = barrier::run(hv, self.quiescer, &mut vms, &settings, ctx.progress);
            drop(vms);
            self.captures = captures;
            outcome
        };
        self.phase.enter(Phase::DiskSnapshot);
        self.phase.enter(Phase::Thaw);
        let closed = self.close_barrier_steps(&barrier_steps, &outcome);
        if let Some(window) = outcome.window {
            ctx.note(format!(
                "guests frozen for {} ms (limit {} ms)",
                window.as_millis(),
                Duration::from(self.env.freeze_timeout).as_millis()
            ));
        }
        // Kept before anything can fail: the rollback records the chains it changed.
        let mut outcome = outcome;
        let mut failures = std::mem::take(&mut outcome.failures);
        self.barrier = Some(outcome);
        if let Err(error) = closed {
            failures.push(error);
        }
        if !failures.is_empty() {
            return Err(combine(failures));
        }
        crate::ops::crashpoint::hit("snapshot", "thaw");

        // Memory streams, with the guests thawed.
        if self.request.memory {
            self.phase.enter(Phase::Memory);
            let timer = ctx.begin("memory images");
            for plan in self.plans.clone() {
                let Some(capture) = self.captures.remove(&plan.vm) else { continue };
                let result = capture.finish(hv, memory::stream_budget(plan.memory_bytes));
                let image = result.map_err(|source| SnapshotError::Memory { vm: plan.vm.clone(), source });
                let image = match image {
                    Ok(image) => image,
                    Err(error) => {
                        timer.failed();
                        return Err(error);
                    }
                };
                let step = self.memory_steps[&plan.vm];
                self.journal().done(step)?;
                self.memory_images.insert(plan.vm.clone(), image);
            }
            timer.done();
        }

        // Record.
        self.phase.enter(Phase::Record);
        let report = self.step("record images and consistency", UndoAction::Nothing, |run| run.record(snapshot))?;
        // Cannot fail: only this line and `roll_back` take the journal. It
        // stays an Option because a failed completion still rolls back.
        #[allow(clippy::expect_used)]
        let journal = self.journal.take().expect("the journal is taken once");
        journal.complete()?;
        self.phase.enter(Phase::Done);
        Ok(report)
    }

    fn storage(&self) -> PathBuf {
        self.env.storage_dir(self.ctx.config, &self.request.env)
    }

    /// Logs in to every agent in parallel and checks it answers; under
    /// `best-effort` a VM whose agent does not becomes crash-consistent.
    fn open_sessions(&mut self) -> Result<(), SnapshotError> {
        if self.policy == QuiescePolicy::Off {
            for plan in &self.plans {
                self.fallbacks.insert(plan.vm.clone(), "quiesce is off".into());
            }
            return Ok(());
        }
        let quiescer = self.quiescer;
        let results: Vec<(String, Result<(), crate::guest::GuestError>)> =
            super::parallel::each(&self.plans, |plan| (plan.vm.clone(), quiescer.prepare(&plan.vm)))
                .into_iter()
                // A panic here is a bug: carried on, never a VM silently
                // dropped from the snapshot's consistency record. No guest
                // is frozen yet.
                .map(|result| result.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect();
        for (vm, result) in results {
            match result {
                Ok(()) => {
                    self.quiesced.insert(vm);
                }
                Err(source) if self.policy == QuiescePolicy::Required => {
                    return Err(SnapshotError::AgentNotReady { vm, source: Box::new(source) });
                }
                Err(source) => {
                    let reason = format!("agent not ready: {}", crate::error::chain(&source));
                    self.ctx.note(format!("{vm}: crash-consistent ({reason})"));
                    self.fallbacks.insert(vm, reason);
                }
            }
        }
        Ok(())
    }

    /// Journals the barrier's steps; returns them by kind and VM.
    fn journal_barrier(&mut self, snapshot: SnapshotId) -> Result<BarrierSteps, SnapshotError> {
        let mut steps = BarrierSteps::default();
        let best_effort = if self.policy == QuiescePolicy::BestEffort { " (best effort)" } else { "" };
        for plan in self.plans.clone() {
            if self.quiesced.contains(&plan.vm) {
                let id = self.journal().record(
                    format!("freeze {}{best_effort}", plan.vm),
                    UndoAction::ThawAgent { vm: plan.vm.clone() },
                )?;
                steps.freeze.insert(plan.vm.clone(), id);
            }
        }
        for plan in self.plans.clone() {
            if self.captures.contains_key(&plan.vm) {
                let undo = UndoAction::ResumeDomain { domain: plan.domain.clone() };
                let id = self.journal().record(format!("pause {} for its memory point", plan.vm), undo)?;
                steps.memory_point.insert(plan.vm.clone(), id);
            }
            let id = self
                .journal()
                .record(format!("external disk snapshot of {}", plan.vm), UndoAction::FailSnapshot { snapshot })?;
            steps.disks.insert(plan.vm.clone(), id);
        }
        if !self.quiesced.is_empty() {
            steps.thaw = Some(self.journal().record("thaw", UndoAction::Nothing)?);
        }
        Ok(steps)
    }

    /// Marks the barrier's steps from its outcome.
    fn close_barrier_steps(&mut self, steps: &BarrierSteps, outcome: &BarrierOutcome) -> Result<(), SnapshotError> {
        const NOT_REACHED: &str = "not reached: the barrier stopped before it";
        let best_effort = self.policy == QuiescePolicy::BestEffort;
        for (vm, step) in &steps.freeze {
            match outcome.vms.get(vm).and_then(|v| v.freeze.as_ref()) {
                Some(Ok(())) => self.journal().done(*step)?,
                // A best-effort freeze that fell back did its job.
                Some(Err(_)) if best_effort => self.journal().done(*step)?,
                Some(Err(e)) => self.journal().failed(*step, e)?,
                None => self.journal().failed(*step, NOT_REACHED)?,
            }
        }
        for (vm, step) in &steps.memory_point {
            match outcome.vms.get(vm).and_then(|v| v.memory_point.as_ref()) {
                Some(Ok(())) => self.journal().done(*step)?,
                Some(Err(e)) => self.journal().failed(*step, e)?,
                None => self.journal().failed(*step, NOT_REACHED)?,
            }
        }
        for (vm, step) in &steps.disks {
            match outcome.vms.get(vm).and_then(|v| v.disks.as_ref()) {
                Some(Ok(())) => self.journal().done(*step)?,
                Some(Err(e)) => self.journal().failed(*step, e)?,
                None => self.journal().failed(*step, NOT_REACHED)?,
            }
        }
        if let Some(step) = steps.thaw {
            let stuck: Vec<&str> = outcome.vms.iter().filter(|(_, v)| !v.thawed()).map(|(vm, _)| vm.as_str()).collect();
            if stuck.is_empty() {
                self.journal().done(step)?;
            } else {
                self.journal().failed(step, &format!("not thawed: {}", stuck.join(", ")))?;
            }
        }
        Ok(())
    }

    fn record(&mut self, snapshot: SnapshotId) -> Result<SnapshotReport, SnapshotError> {
        let ctx = self.ctx;
        let catalog = ctx.catalog;
        let now = ctx.clock.now();
        let dependent = snapshot_dependent(&self.request.env, &self.name);
        let barrier = self.barrier.as_ref();
        let mut vms = Vec::new();
        for plan in &self.plans {
            record::record_chain(catalog, ctx.host.storage(), plan, Some(&dependent), now)?;
            let memory_image = self.memory_images.get(&plan.vm);
            if let Some(image) = memory_image {
                record::record_memory(catalog, snapshot, &plan.vm, image, now)?;
            }
            let freeze = barrier.and_then(|b| b.vms.get(&plan.vm)).and_then(|v| v.freeze.clone());
            let (consistency, reason) = match (freeze, self.fallbacks.get(&plan.vm)) {
                (Some(Ok(())), _) => (Consistency::AppConsistent, None),
                (Some(Err(why)), _) => (Consistency::CrashConsistent, Some(format!("freeze failed: {why}"))),
                (None, Some(why)) => (Consistency::CrashConsistent, Some(why.clone())),
                (None, None) => (Consistency::CrashConsistent, Some("not frozen".to_owned())),
            };
            catalog.record_vm_consistency(
                snapshot,
                &VmConsistency { vm: plan.vm.clone(), consistency, reason: reason.clone() },
            )?;
            vms.push(VmReport {
                vm: plan.vm.clone(),
                domain: plan.domain.clone(),
                consistency,
                reason,
                memory_image: memory_image.map(|i| i.path.clone()),
                disks: plan
                    .disks
                    .iter()
                    .map(|d| DiskReport { disk: d.target.clone(), image: d.image.clone(), overlay: d.overlay.clone() })
                    .collect(),
            });
        }
        let window = barrier.and_then(|b| b.window);
        if let Some(window) = window {
            catalog.set_freeze_window(snapshot, window)?;
        }
        catalog.set_snapshot_state(snapshot, SnapshotState::Complete)?;
        Ok(SnapshotReport {
            env: self.request.env.clone(),
            name: self.name.clone(),
            label: self.request.label.clone(),
            created_at: self.created_at,
            state: SnapshotState::Complete,
            quiesce: self.policy,
            memory: self.request.memory,
            freeze_window_ms: window.map(record::millis),
            freeze_limit_ms: record::millis(self.env.freeze_timeout.into()),
            duration_ms: record::millis(self.started.elapsed()),
            vms,
        })
    }

    /// Undoes what the run did and returns the error to report.
    fn roll_back(&mut self, error: SnapshotError) -> SnapshotError {
        self.phase.enter(Phase::Failed);
        let ctx = self.ctx;
        let hv = ctx.host.hypervisor();
        let mut failures = Vec::new();
        // Guests paused for a memory point run again; half-written memory images go.
        for (vm, capture) in std::mem::take(&mut self.captures) {
            for failure in capture.abort(hv) {
                failures.push(format!("VM '{vm}': {}", crate::error::chain(&failure)));
            }
        }
        // Chains that changed are recorded whatever else failed.
        if let Some(barrier) = &self.barrier {
            let now = ctx.clock.now();
            for plan in self.plans.iter().filter(|p| barrier.vms.get(&p.vm).is_some_and(|v| v.disks_switched())) {
                if let Err(e) = record::record_chain(ctx.catalog, ctx.host.storage(), plan, None, now) {
                    failures.push(format!("VM '{}': cannot record its new overlays in the catalog: {e}", plan.vm));
                }
            }
        }
        let cause = crate::error::chain(&error);
        let thawed: BTreeMap<String, bool> = self
            .barrier
            .as_ref()
            .map(|b| b.vms.iter().map(|(vm, v)| (vm.clone(), v.thawed())).collect())
            .unwrap_or_default();
        if let Some(journal) = self.journal.take() {
            let undo_failures = journal.roll_back(&cause, |action| self.undo(action, &thawed));
            failures.extend(undo_failures);
        }
        if let Some(snapshot) = self.snapshot {
            if let Err(e) = record::fail_snapshot(ctx.catalog, snapshot) {
                failures.push(format!("cannot mark snapshot {} failed: {e}", self.name));
            }
        }
        if failures.is_empty() {
            error
        } else {
            SnapshotError::CleanupFailed { cause: Box::new(error), failures }
        }
    }

    /// One undo action, in this process (idempotent, like every undo).
    fn undo(&self, action: &UndoAction, thawed: &BTreeMap<String, bool>) -> Result<(), String> {
        let ctx = self.ctx;
        match action {
            UndoAction::Nothing => Ok(()),
            UndoAction::DeleteFile { path } => ctx.host.storage().remove(path).map_err(|e| crate::error::chain(&e)),
            UndoAction::ThawAgent { vm } => {
                if thawed.get(vm).copied().unwrap_or(true) {
                    return Ok(());
                }
                self.quiescer
                    .recover(vm)
                    .map_err(|e| format!("VM '{vm}': THAW FAILED, still frozen: {}", crate::error::chain(&e)))
            }
            UndoAction::ResumeDomain { domain } => resume_if_paused(ctx.host.hypervisor(), domain),
            UndoAction::FailSnapshot { snapshot } => record::fail_snapshot(ctx.catalog, *snapshot)
                .map_err(|e| format!("cannot mark the snapshot failed: {e}")),
            UndoAction::Custom { kind, data } if kind == UNDO_FAIL_SNAPSHOT_NAMED => {
                let env = data["env"].as_str().unwrap_or_default();
                let name = data["snapshot"].as_str().unwrap_or_default();
                match ctx.catalog.snapshot_named(env, name) {
                    Ok(Some(snapshot)) => record::fail_snapshot(ctx.catalog, snapshot.id).map_err(|e| e.to_string()),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            other => Err(format!("no undo for {other:?} in a snapshot")),
        }
    }
}

/// The barrier's journal steps.
#[derive(Debug, Default)]
struct BarrierSteps {
    freeze: BTreeMap<String, StepId>,
    memory_point: BTreeMap<String, StepId>,
    disks: BTreeMap<String, StepId>,
    thaw: Option<StepId>,
}

/// The definition a memory image carries: the live one from before the
/// snapshot, whose disks are the snapshot's images.
fn memory_definition(plan: &VmPlan) -> Result<crate::hypervisor::DomainDef, SnapshotError> {
    let mut def = plan.def.clone();
    for disk in &plan.disks {
        def.set_disk_source(&disk.target, &disk.image, disk.format.as_str()).map_err(|source| {
            SnapshotError::InspectDomain { vm: plan.vm.clone(), domain: plan.domain.clone(), source: Box::new(source) }
        })?;
    }
    Ok(def)
}

fn resume_if_paused(hv: &dyn Hypervisor, domain: &str) -> Result<(), String> {
    match hv.domain(domain) {
        Ok(d) if d.state == DomainState::Paused => crate::hypervisor::qmp(hv, domain, qapi::qmp::cont {})
            .map(|_| ())
            .map_err(|e| format!("domain {domain} stays PAUSED: {}", crate::error::chain(&e))),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot check whether domain {domain} is paused: {}", crate::error::chain(&e))),
    }
}

/// One error for several: the first, with the others as cleanup failures.
fn combine(mut failures: Vec<SnapshotError>) -> SnapshotError {
    let first = failures.remove(0);
    if failures.is_empty() {
        first
    } else {
        SnapshotError::CleanupFailed {
            cause: Box::new(first),
            failures: failures.iter().map(|e| crate::error::chain(e)).collect(),
        }
    }
}
