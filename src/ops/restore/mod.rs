//! `envclone restore ENV SNAP [--memory] [--discard]`: puts every VM of an
//! environment back, in place, to a snapshot.
//!
//! - `resolve.rs`: the snapshot, its images per VM and disk, the domains,
//!   the memory images; the new overlays' paths.
//! - `files.rs` and `guests.rs`: qemu-img and the agents behind small
//!   traits ([`ImageFiles`], [`GuestAgents`]), faked in unit tests.
//! - `steps.rs`: the state machine and the journal; `undo.rs`: how each
//!   step is undone (also for `envclone recover`).
//!
//! ```text
//! Lock -> Resolve -> Stop -> [UndoSnapshot] -> NewOverlays -> Redefine -> Start -> Record -> [Discard] -> Done
//! ```
//!
//! 1. **Stop**: every running VM is frozen (best effort, through its agent:
//!    hooks then FIFREEZE, as a snapshot does) and destroyed while frozen,
//!    so the state it leaves behind is application-consistent where the
//!    agent answered and crash-consistent otherwise (a power cut). Not
//!    `shutdown`: guests need not honour ACPI, and waiting for them to
//!    stop would make a restore slow and unbounded.
//! 2. **UndoSnapshot** (unless `--discard`): the disks the VMs wrote to
//!    until now become a regular snapshot, labelled
//!    `undo-before-restore-<SNAP>`, that `envclone restore ENV <undo>`
//!    brings back. It costs no copy and no barrier: the VMs are stopped,
//!    their images simply stop changing. (`ops::snapshot::take` cannot be
//!    called here: it takes the environment's lock, which the restore
//!    holds, and it needs running VMs and answering agents, which a
//!    restore, often run because a guest broke, cannot count on.)
//! 3. **NewOverlays**: one qcow2 overlay per disk on the snapshot's image,
//!    `<storage>/<vm>/restore-<SNAP>-<time>.<disk>.qcow2`; the snapshot's
//!    images are never written, so a snapshot can be restored any number
//!    of times.
//! 4. **Redefine**: each domain's persistent definition points at its new
//!    overlays (everything else kept).
//! 5. **Start**: with `--memory`, each domain is restored from the
//!    snapshot's memory image onto the new overlays, thawed through its
//!    agent (a guest captured frozen resumes frozen) and given the
//!    controller's time (it resumes at the snapshot's); otherwise each
//!    domain boots and the restore waits until its agent answers.
//! 6. **Record**: one catalog transaction: the new overlays are the disks'
//!    active images on the snapshot's images; the undo snapshot is
//!    complete and pins the previous images.
//! 7. **Discard** (`--discard`): each previous image is deleted if nothing
//!    needs it ([`Catalog::can_delete`]: never a base, never an image a
//!    snapshot, clone or standby pins or another image backs onto);
//!    the others are kept and listed with why.
//!
//! Every step is journaled before it runs, with how to undo it. A failure
//! before Record rolls back: freezes thaw, new domains stop, definitions
//! point back at the previous disks, new overlays go, the undo snapshot is
//! marked failed, and every VM that ran runs again on its previous disks.
//! The error names the step and the VM.
//!
//! Crash points for the tests of `envclone recover` ([`crate::ops::crashpoint`]),
//! in the order they are reached: `restore:stop` (every running VM
//! stopped, the undo snapshot not recorded yet), `restore:new-overlays`,
//! `restore:redefine`, `restore:start` (the VMs run on their new overlays,
//! nothing recorded), `restore:record` (the catalog commit is done, the
//! journal not completed: roll forward).
//!
//! [`Catalog::can_delete`]: crate::catalog::Catalog::can_delete

mod error;
pub mod files;
pub mod guests;
mod resolve;
pub mod steps;
#[cfg(test)]
mod tests;
pub mod undo;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use self::error::RestoreError;
pub use self::files::{ImageFileError, ImageFiles, QemuImg};
pub use self::guests::{GuestAgents, SshAgents};
pub use self::resolve::{DiskPlan, VmPlan};
pub use self::steps::{Phase, UNDO_REDEFINE_DISKS, UNDO_START_DOMAIN, UNDO_STOP_DOMAIN};
pub use self::undo::{undo_action, RECORD_STEP};

use self::steps::{DiskSource, DiskSources, DomainRef};
use super::context::OpContext;
use super::snapshot::{snapshot_dependent, FreezeInfo, FrozenGuest, Quiescer, UNDO_FAIL_SNAPSHOT_NAMED};
use super::EnvLock;
use crate::catalog::OperationKind;
use crate::catalog::{
    Consistency, ImageFormat, ImageKind, NewImage, NewSnapshot, RestoreRecord, Snapshot, SnapshotId, StepId,
    UndoAction, UndoSnapshotRecord, VmConsistency,
};
use crate::config::{Environment, QuiescePolicy};
use crate::hypervisor::{DomainDef, HvError};
use crate::ops::journal::{Journal, Journaled, PhaseMachine};

/// How long a booted guest's agent may take to answer.
const BOOT_WITHIN: Duration = Duration::from_secs(240);
/// How long a guest restored from memory may take to thaw.
const THAW_WITHIN: Duration = Duration::from_secs(120);
/// A freeze counts as held at the stop if the stop came this long before
/// the lease timeout, at least.
const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// What to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    pub env: String,
    pub snapshot: String,
    /// Resume from the snapshot's memory images instead of booting.
    pub memory: bool,
    /// Keep no undo snapshot; delete the previous overlays nothing needs.
    pub discard: bool,
}

/// What the restore works with besides the context: the agents before the
/// stop (the snapshot's quiescer, for the best-effort freeze) and after
/// the start, and the image files.
#[derive(Clone, Copy)]
pub struct Tools<'t> {
    pub quiescer: &'t dyn Quiescer,
    pub agents: &'t dyn GuestAgents,
    pub files: &'t dyn ImageFiles,
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").field("files", &self.files).finish_non_exhaustive()
    }
}

/// What was restored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreReport {
    pub env: String,
    pub snapshot: String,
    /// The restored snapshot's label.
    pub label: Option<String>,
    pub memory: bool,
    pub discard: bool,
    /// The snapshot that holds the state the restore replaced (`None` with
    /// `--discard`): `envclone restore ENV <it>` goes back.
    pub undo_snapshot: Option<String>,
    pub duration_ms: u64,
    pub vms: Vec<VmReport>,
    /// `--discard`: previous images deleted.
    pub discarded: Vec<PathBuf>,
    /// `--discard`: previous images kept, with why.
    pub kept: Vec<KeptImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmReport {
    pub vm: String,
    pub domain: String,
    /// `memory` (resumed from the memory image) or `boot`.
    pub start: StartKind,
    pub was_running: bool,
    /// How consistent the undo snapshot's part of this VM is.
    pub undo_consistency: Option<Consistency>,
    pub undo_reason: Option<String>,
    /// `--memory`: how far the guest clock was stepped, in ms.
    pub clock_step_ms: Option<i64>,
    pub disks: Vec<DiskReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartKind {
    Memory,
    Boot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskReport {
    pub disk: String,
    /// The snapshot's image: the overlay's backing file.
    pub image: PathBuf,
    /// The new overlay the VM writes to from now on.
    pub overlay: PathBuf,
    /// What the VM wrote to until the restore.
    pub previous: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptImage {
    pub path: PathBuf,
    pub reason: String,
}

/// Restores `request.env` to `request.snapshot`; see the module documentation.
pub fn restore(ctx: &OpContext<'_>, request: &RestoreRequest, tools: Tools<'_>) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let env = ctx.config.environment(&request.env)?;
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, &request.env, "restore")?;
    let journal = Journal::begin(ctx.catalog, OperationKind::Restore, &request.env, ctx.clock.now())?;
    let mut run = Run {
        ctx,
        request,
        env,
        tools,
        journal: Some(journal),
        phase: Phase::Lock,
        snapshot: None,
        plans: Vec::new(),
        stopped: BTreeMap::new(),
        frozen: BTreeMap::new(),
        undo_consistency: BTreeMap::new(),
        undo_snapshot: None,
        clock_steps: BTreeMap::new(),
        discarded: Vec::new(),
        kept: Vec::new(),
        started,
    };
    ctx.note(format!("restore of environment '{}' to snapshot {}", request.env, request.snapshot));
    if let Err(error) = run.execute() {
        return Err(run.roll_back(error));
    }
    run.finish()
}

/// One restore in progress: what has been done so far, for the record or
/// for the rollback.
struct Run<'r, 'c> {
    ctx: &'r OpContext<'c>,
    request: &'r RestoreRequest,
    env: &'r Environment,
    tools: Tools<'r>,
    /// Taken by the commit or the rollback.
    journal: Option<Journal<'c>>,
    phase: Phase,
    snapshot: Option<Snapshot>,
    plans: Vec<VmPlan>,
    /// Each domain's definition once stopped: what Redefine edits.
    stopped: BTreeMap<String, DomainDef>,
    /// Freezes still held (a VM not stopped yet): thawed by a rollback.
    frozen: BTreeMap<String, Box<dyn FrozenGuest>>,
    undo_consistency: BTreeMap<String, (Consistency, Option<String>)>,
    undo_snapshot: Option<(SnapshotId, String)>,
    clock_steps: BTreeMap<String, i64>,
    discarded: Vec<PathBuf>,
    kept: Vec<KeptImage>,
    started: Instant,
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = RestoreError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    fn journal(&mut self) -> &mut Journal<'c> {
        self.journal.as_mut().expect("the journal is only taken at the end of the run")
    }
}

impl<'r, 'c> Run<'r, 'c> {
    /// Marks journaled steps run together from their results; returns the
    /// first error (the others as cleanup failures).
    fn close_steps(&mut self, results: Vec<(StepId, Result<(), RestoreError>)>) -> Result<(), RestoreError> {
        let mut errors = Vec::new();
        for (step, result) in results {
            match result {
                Ok(()) => self.journal().done(step)?,
                Err(error) => {
                    self.journal().failed(step, &crate::error::chain(&error))?;
                    errors.push(error);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(combine(errors))
        }
    }

    /// Everything up to the catalog commit; an error rolls back.
    fn execute(&mut self) -> Result<(), RestoreError> {
        let ctx = self.ctx;

        self.phase.enter(Phase::Resolve);
        self.step("resolve", UndoAction::Nothing, |run| {
            let snapshot = resolve::snapshot(ctx.catalog, &run.request.env, &run.request.snapshot)?;
            run.plans = resolve::plan(
                ctx.catalog,
                ctx.hv,
                run.tools.files,
                &run.request.env,
                run.env,
                &snapshot,
                run.request.memory,
            )?;
            run.snapshot = Some(snapshot);
            Ok(())
        })?;

        self.phase.enter(Phase::Stop);
        self.stop()?;
        crate::ops::crashpoint::hit("restore", "stop");

        if !self.request.discard {
            self.phase.enter(Phase::UndoSnapshot);
            self.record_undo_snapshot()?;
        }

        self.phase.enter(Phase::NewOverlays);
        let storage = self.env.storage_dir(&ctx.config.controller, &self.request.env);
        resolve::assign_overlays(
            ctx.catalog,
            self.tools.files,
            &mut self.plans,
            &storage,
            &self.request.snapshot,
            ctx.clock.now(),
        )?;
        for plan in self.plans.clone() {
            let dir = storage.join(&plan.vm);
            std::fs::create_dir_all(&dir).map_err(|source| RestoreError::StorageDir { path: dir, source })?;
            for disk in &plan.disks {
                let undo = UndoAction::DeleteFile { path: disk.overlay.clone() };
                self.step(&format!("create overlay {}/{}", plan.vm, disk.target), undo, |run| {
                    run.tools.files.create_overlay(&disk.overlay, &disk.image.path, disk.image.format).map_err(
                        |source| RestoreError::CreateOverlay {
                            vm: plan.vm.clone(),
                            disk: disk.target.clone(),
                            source: Box::new(source),
                        },
                    )
                })?;
            }
        }

        crate::ops::crashpoint::hit("restore", "new-overlays");

        self.phase.enter(Phase::Redefine);
        for plan in self.plans.clone() {
            let previous = DiskSources {
                domain: plan.domain.clone(),
                disks: plan
                    .disks
                    .iter()
                    .map(|d| DiskSource {
                        target: d.target.clone(),
                        path: d.previous.clone(),
                        format: d.previous_format.clone(),
                    })
                    .collect(),
            };
            self.step(&format!("redefine {} on its new overlays", plan.vm), previous.undo(), |run| {
                let redefine = |source: HvError| RestoreError::Redefine {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                };
                let mut def = run.stopped.get(&plan.vm).cloned().unwrap_or_else(|| plan.def.clone());
                for disk in &plan.disks {
                    def.set_disk_source(&disk.target, &disk.overlay, ImageFormat::Qcow2.as_str()).map_err(redefine)?;
                }
                ctx.hv.define_domain(&def).map_err(redefine)?;
                Ok(())
            })?;
        }

        crate::ops::crashpoint::hit("restore", "redefine");

        self.phase.enter(Phase::Start);
        self.start()?;
        crate::ops::crashpoint::hit("restore", "start");

        self.phase.enter(Phase::Record);
        self.step(RECORD_STEP, UndoAction::Nothing, |run| run.record())?;
        crate::ops::crashpoint::hit("restore", "record");
        Ok(())
    }

    /// Freezes (best effort) and stops every running VM; reads each
    /// domain's definition once stopped.
    fn stop(&mut self) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        let freeze = !self.request.discard && self.env.quiesce != QuiescePolicy::Off;
        let active: Vec<VmPlan> = self.plans.iter().filter(|p| p.was_active).cloned().collect();
        let mut frozen_at: BTreeMap<String, Instant> = BTreeMap::new();
        if freeze && !active.is_empty() {
            let mut steps = Vec::new();
            for plan in &active {
                let undo = UndoAction::ThawAgent { vm: plan.vm.clone() };
                steps.push(self.journal().record(format!("freeze {} (best effort)", plan.vm), undo)?);
            }
            let timer = ctx.begin(format!("freeze {} guests (best effort)", active.len()));
            let quiescer = self.tools.quiescer;
            let results = super::parallel::each(&active, |plan| {
                let frozen = quiescer.prepare(&plan.vm).and_then(|()| quiescer.freeze(&plan.vm));
                // The agent's lease runs from its first FIFREEZE, before its answer.
                let at = |info: FreezeInfo| Instant::now().checked_sub(info.freezing);
                let frozen = frozen.map(|(guest, info)| (guest, at(info).unwrap_or_else(Instant::now)));
                (plan.vm.clone(), frozen)
            });
            timer.done();
            for (step, result) in steps.into_iter().zip(results) {
                // A best-effort freeze that falls back did its job.
                self.journal().done(step)?;
                let Ok((vm, frozen)) = result else {
                    tracing::error!("a freeze thread panicked");
                    continue;
                };
                match frozen {
                    Ok((guest, at)) => {
                        self.frozen.insert(vm.clone(), guest);
                        frozen_at.insert(vm, at);
                    }
                    Err(error) => {
                        let reason = format!("not frozen: {}", crate::error::chain(&error));
                        ctx.note(format!("{vm}: the undo snapshot will be crash-consistent ({reason})"));
                        self.undo_consistency.insert(vm, (Consistency::CrashConsistent, Some(reason)));
                    }
                }
            }
        }
        let lease: Duration = self.env.freeze_timeout.into();
        for plan in self.plans.iter().filter(|p| !p.was_active) {
            let reason = "it was not running".to_owned();
            self.undo_consistency.insert(plan.vm.clone(), (Consistency::CrashConsistent, Some(reason)));
        }
        // Every VM at once: the freezes' window is the slowest stop, not their sum.
        let mut steps = Vec::new();
        for plan in &active {
            let undo = DomainRef::undo(UNDO_START_DOMAIN, &plan.domain);
            steps.push(self.journal().record(format!("stop {}", plan.vm), undo)?);
        }
        let timer = ctx.begin(format!("stop {} VMs", active.len()));
        let hv = ctx.hv;
        let results: Vec<Result<Instant, RestoreError>> = joined(super::parallel::each(&active, |plan| {
            hv.destroy_domain(&plan.domain).map(|()| Instant::now()).map_err(|source| RestoreError::Stop {
                vm: plan.vm.clone(),
                domain: plan.domain.clone(),
                source: Box::new(source),
            })
        }));
        let mut closed = Vec::new();
        for ((plan, step), result) in active.iter().zip(steps).zip(results) {
            if let Ok(stopped_at) = &result {
                // The guest is gone and its freeze with it: the lease's
                // channel closes without waiting, and its warning about a
                // lease dropped unthawed would only be noise here.
                if let Some(guest) = self.frozen.remove(&plan.vm) {
                    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || drop(guest));
                    tracing::debug!(vm = %plan.vm, "its freeze ended with the VM");
                }
                let consistency = match frozen_at.get(&plan.vm) {
                    Some(at) if stopped_at.duration_since(*at) + LEASE_MARGIN < lease => {
                        (Consistency::AppConsistent, None)
                    }
                    Some(_) => (
                        Consistency::CrashConsistent,
                        Some("the freeze's lease ran out before the VM stopped".to_owned()),
                    ),
                    None => self
                        .undo_consistency
                        .remove(&plan.vm)
                        .unwrap_or((Consistency::CrashConsistent, Some("quiesce is off".to_owned()))),
                };
                self.undo_consistency.insert(plan.vm.clone(), consistency);
            }
            closed.push((step, result.map(|_| ())));
        }
        timer.finish(self.close_steps(closed))?;
        for plan in &self.plans {
            match ctx.hv.domain(&plan.domain) {
                Ok(domain) => {
                    self.stopped.insert(plan.vm.clone(), domain.def);
                }
                // A transient domain is gone once stopped: define it from what it ran with.
                Err(HvError::NoSuchDomain { .. }) => {
                    ctx.note(format!("{}: domain {} was transient; it is defined again", plan.vm, plan.domain));
                }
                Err(source) => {
                    return Err(RestoreError::InspectDomain {
                        vm: plan.vm.clone(),
                        domain: plan.domain.clone(),
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(())
    }

    /// Records the undo snapshot, in progress until Record completes it.
    fn record_undo_snapshot(&mut self) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        let now = ctx.clock.now();
        let name = resolve::undo_snapshot_name(ctx.catalog, &self.request.env, now)?;
        let undo = UndoAction::Custom {
            kind: UNDO_FAIL_SNAPSHOT_NAMED.to_owned(),
            data: serde_json::json!({ "env": self.request.env, "snapshot": name }),
        };
        self.step(&format!("record undo snapshot {name}"), undo, |run| {
            let id = ctx.catalog.create_snapshot(&NewSnapshot {
                env: run.request.env.clone(),
                name: name.clone(),
                label: Some(format!("undo-before-restore-{}", run.request.snapshot)),
                schedule: None,
                created_at: now,
                memory: false,
            })?;
            run.undo_snapshot = Some((id, name.clone()));
            for plan in &run.plans {
                let (consistency, reason) = run
                    .undo_consistency
                    .get(&plan.vm)
                    .cloned()
                    .unwrap_or((Consistency::CrashConsistent, Some("not frozen".to_owned())));
                ctx.catalog.record_vm_consistency(id, &VmConsistency { vm: plan.vm.clone(), consistency, reason })?;
            }
            Ok(())
        })
    }

    /// Starts every VM on its new overlays (from memory, or a boot), in
    /// parallel; then thaws and sets the clock of each, or waits for its
    /// agent.
    fn start(&mut self) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        let memory = self.request.memory;
        let mut steps = Vec::new();
        for plan in self.plans.clone() {
            let name = if memory { format!("restore {} from memory", plan.vm) } else { format!("start {}", plan.vm) };
            steps.push(self.journal().record(name, DomainRef::undo(UNDO_STOP_DOMAIN, &plan.domain))?);
        }
        let timer = ctx.begin(format!("start {} VMs{}", self.plans.len(), if memory { " from memory" } else { "" }));
        let hv = ctx.hv;
        let results: Vec<Result<(), RestoreError>> =
            joined(super::parallel::each(&self.plans, |plan| match &plan.memory_image {
                Some(image) if memory => start_from_memory(hv, plan, image),
                _ => hv.start_domain(&plan.domain).map_err(|source| RestoreError::Start {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                }),
            }));
        let results: Vec<_> = steps.into_iter().zip(results).collect();
        let started = timer.finish(self.close_steps(results));
        started?;

        let mut steps = Vec::new();
        for plan in self.plans.clone() {
            let name = if memory {
                format!("thaw {} and set its clock", plan.vm)
            } else {
                format!("wait for the agent of {}", plan.vm)
            };
            steps.push(self.journal().record(name, UndoAction::Nothing)?);
        }
        let timer = ctx.begin(if memory { "thaw and set the clocks" } else { "wait for the agents" });
        let agents = self.tools.agents;
        let results: Vec<Result<Option<i64>, RestoreError>> = joined(super::parallel::each(&self.plans, |plan| {
            let vm = plan.vm.as_str();
            if memory {
                agents
                    .thaw(vm, THAW_WITHIN)
                    .map_err(|source| RestoreError::Thaw { vm: vm.to_owned(), source: Box::new(source) })?;
                let step = agents
                    .set_clock(vm)
                    .map_err(|source| RestoreError::SetClock { vm: vm.to_owned(), source: Box::new(source) })?;
                Ok(Some(step))
            } else {
                agents
                    .wait_ready(vm, BOOT_WITHIN)
                    .map_err(|source| RestoreError::AgentNotReady { vm: vm.to_owned(), source: Box::new(source) })?;
                Ok(None)
            }
        }));
        let mut closed = Vec::new();
        for ((plan, step), result) in self.plans.clone().iter().zip(steps).zip(results) {
            closed.push((
                step,
                result.map(|clock| {
                    if let Some(ms) = clock {
                        self.clock_steps.insert(plan.vm.clone(), ms);
                    }
                }),
            ));
        }
        timer.finish(self.close_steps(closed))
    }

    /// The catalog commit: see [`Catalog::record_restore`](crate::catalog::Catalog::record_restore).
    fn record(&mut self) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        let now = ctx.clock.now();
        let files = self.tools.files;
        let mut overlays = Vec::new();
        let mut previous = Vec::new();
        for plan in &self.plans {
            for disk in &plan.disks {
                overlays.push(NewImage {
                    path: disk.overlay.clone(),
                    vm: plan.vm.clone(),
                    disk: Some(disk.target.clone()),
                    kind: ImageKind::Overlay,
                    format: ImageFormat::Qcow2,
                    size_bytes: files.size(&disk.overlay).unwrap_or(0),
                    backing: Some(disk.image.id),
                    snapshot: None,
                    created_at: now,
                });
                previous.push(NewImage {
                    path: disk.previous.clone(),
                    vm: plan.vm.clone(),
                    disk: Some(disk.target.clone()),
                    kind: ImageKind::Base,
                    format: resolve::image_format(&disk.previous_format),
                    size_bytes: files.size(&disk.previous).unwrap_or(0),
                    backing: None,
                    snapshot: None,
                    created_at: now,
                });
            }
        }
        let undo = self.undo_snapshot.as_ref().map(|(id, name)| UndoSnapshotRecord {
            snapshot: *id,
            dependent: snapshot_dependent(&self.request.env, name),
            images: previous,
        });
        ctx.catalog.record_restore(&RestoreRecord { overlays, undo })?;
        Ok(())
    }

    /// After the commit: `--discard`, then the journal's end. Nothing here
    /// rolls back; what fails is reported.
    fn finish(mut self) -> Result<RestoreReport, RestoreError> {
        if self.request.discard {
            self.phase.enter(Phase::Discard);
            self.discard();
        }
        self.journal.take().expect("the journal is only taken at the end of the run").complete()?;
        self.phase.enter(Phase::Done);
        Ok(self.report())
    }

    /// Deletes each previous image that nothing needs any more.
    fn discard(&mut self) {
        let ctx = self.ctx;
        let mut previous: Vec<PathBuf> =
            self.plans.iter().flat_map(|p| p.disks.iter().map(|d| d.previous.clone())).collect();
        previous.sort();
        previous.dedup();
        let step = match self.journal().record("discard the previous overlays", UndoAction::Nothing) {
            Ok(step) => step,
            Err(e) => {
                let reason = format!("not deleted: the journal failed: {}", crate::error::chain(&e));
                self.kept.extend(previous.into_iter().map(|path| KeptImage { path, reason: reason.clone() }));
                return;
            }
        };
        let timer = ctx.begin("discard the previous overlays");
        for path in previous {
            let image = match ctx.catalog.image_by_path(&path) {
                Ok(Some(image)) => image,
                Ok(None) => {
                    let reason = "not in the catalog: envclone deletes only images it made".to_owned();
                    self.kept.push(KeptImage { path, reason });
                    continue;
                }
                Err(e) => {
                    self.kept.push(KeptImage { path, reason: crate::error::chain(&e) });
                    continue;
                }
            };
            // The record goes first (with the check, in one transaction):
            // a crash in between leaves an orphan file, never a record of a
            // file that is gone.
            match ctx.catalog.remove_image(image.id) {
                Ok(_) => match self.tools.files.remove(&path) {
                    Ok(()) => self.discarded.push(path),
                    Err(e) => {
                        let reason = format!("forgotten by the catalog but not deleted: {e}");
                        ctx.note(format!("{}: {reason}", path.display()));
                        self.kept.push(KeptImage { path, reason });
                    }
                },
                Err(crate::catalog::CatalogError::Refused(refusal)) => {
                    let reasons: Vec<String> = refusal.reasons.iter().map(ToString::to_string).collect();
                    self.kept.push(KeptImage { path, reason: reasons.join("; ") });
                }
                Err(e) => self.kept.push(KeptImage { path, reason: crate::error::chain(&e) }),
            }
        }
        timer.done();
        if let Err(e) = self.journal().done(step) {
            tracing::error!("journal: cannot mark the discard done: {e}");
        }
    }

    fn report(&self) -> RestoreReport {
        let snapshot = self.snapshot.as_ref();
        RestoreReport {
            env: self.request.env.clone(),
            snapshot: self.request.snapshot.clone(),
            label: snapshot.and_then(|s| s.label.clone()),
            memory: self.request.memory,
            discard: self.request.discard,
            undo_snapshot: self.undo_snapshot.as_ref().map(|(_, name)| name.clone()),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            vms: self
                .plans
                .iter()
                .map(|plan| {
                    let undo = self.undo_snapshot.as_ref().and_then(|_| self.undo_consistency.get(&plan.vm));
                    VmReport {
                        vm: plan.vm.clone(),
                        domain: plan.domain.clone(),
                        start: if self.request.memory { StartKind::Memory } else { StartKind::Boot },
                        was_running: plan.was_active,
                        undo_consistency: undo.map(|(c, _)| *c),
                        undo_reason: undo.and_then(|(_, r)| r.clone()),
                        clock_step_ms: self.clock_steps.get(&plan.vm).copied(),
                        disks: plan
                            .disks
                            .iter()
                            .map(|d| DiskReport {
                                disk: d.target.clone(),
                                image: d.image.path.clone(),
                                overlay: d.overlay.clone(),
                                previous: d.previous.clone(),
                            })
                            .collect(),
                    }
                })
                .collect(),
            discarded: self.discarded.clone(),
            kept: self.kept.clone(),
        }
    }

    /// Undoes what the run did and returns the error to report.
    fn roll_back(&mut self, error: RestoreError) -> RestoreError {
        self.phase.enter(Phase::Failed);
        let ctx = self.ctx;
        let mut failures = Vec::new();
        // Guests still frozen (not stopped yet) thaw first.
        for (vm, guest) in std::mem::take(&mut self.frozen) {
            if let Err(e) = guest.thaw() {
                let retried = self.tools.quiescer.recover(&vm);
                if let Err(again) = retried {
                    failures.push(format!(
                        "VM '{vm}': THAW FAILED, still frozen: {} (and `envclone-agent thaw`: {})",
                        crate::error::chain(&e),
                        crate::error::chain(&again)
                    ));
                }
            }
        }
        let cause = crate::error::chain(&error);
        if let Some(journal) = self.journal.take() {
            let tools = self.tools;
            failures.extend(journal.roll_back(&cause, |action| undo_action(ctx.hv, ctx.catalog, tools.files, action)));
        }
        if failures.is_empty() {
            error
        } else {
            RestoreError::CleanupFailed { cause: Box::new(error), failures }
        }
    }
}

/// Restores `plan`'s domain from its memory image, onto its new overlays.
fn start_from_memory(
    hv: &dyn crate::hypervisor::Hypervisor,
    plan: &VmPlan,
    image: &std::path::Path,
) -> Result<(), RestoreError> {
    let fail = |source: HvError| RestoreError::RestoreMemory {
        vm: plan.vm.clone(),
        domain: plan.domain.clone(),
        source: Box::new(source),
    };
    let mut def = resolve::saved_definition(&plan.vm, image)?;
    for disk in &plan.disks {
        def.set_disk_source(&disk.target, &disk.overlay, ImageFormat::Qcow2.as_str()).map_err(fail)?;
    }
    hv.restore_memory(image, Some(&def)).map_err(fail)
}

/// A worker thread's result; a panic becomes an error.
/// A panicked worker is a failed step: the restore rolls back.
fn joined<T>(results: Vec<std::thread::Result<Result<T, RestoreError>>>) -> Vec<Result<T, RestoreError>> {
    results.into_iter().map(|result| result.unwrap_or(Err(RestoreError::Panicked))).collect()
}

/// One error for several VMs: the first, with the others' messages.
fn combine(mut errors: Vec<RestoreError>) -> RestoreError {
    let first = errors.remove(0);
    if errors.is_empty() {
        first
    } else {
        RestoreError::Several {
            first: Box::new(first),
            others: errors.iter().map(|e| crate::error::chain(e)).collect(),
        }
    }
}
