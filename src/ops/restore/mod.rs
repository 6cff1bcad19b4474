//! `envclone restore ENV SNAP [--memory] [--discard]`: puts every VM of an
//! environment back, in place, to a snapshot.
//!
//! - `resolve.rs`: the snapshot, its images per VM and disk, the domains,
//!   the memory images; the new overlays' paths.
//! - The agents are reached through the guest agents port
//!   ([`Quiescer`] to freeze before the stop, [`RestoreAgents`] after the
//!   start), faked in unit tests; the image files are the host's storage
//!   ([`crate::host::Storage`]).
//! - `steps.rs`: the state machine and the journal; `undo.rs`: how each
//!   step is undone (also for `envclone recover`).
//! - One file per phase, each handed the one before's output: `stop.rs`,
//!   `undo_snapshot.rs`, `overlays.rs` (NewOverlays, Redefine), `start.rs`,
//!   `record.rs` (Record, Discard, the report).
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
mod overlays;
mod record;
mod resolve;
mod start;
pub mod steps;
mod stop;
#[cfg(test)]
mod tests;
pub mod undo;
mod undo_snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use self::error::RestoreError;
pub use self::resolve::{DiskPlan, VmPlan};
pub use self::steps::{Phase, UNDO_REDEFINE_DISKS, UNDO_START_DOMAIN, UNDO_STOP_DOMAIN};
pub use self::undo::{undo_action, RECORD_STEP};

use self::stop::UndoConsistency;
use self::undo_snapshot::UndoSnapshot;
use super::context::OpContext;
use super::EnvLock;
use crate::catalog::OperationKind;
use crate::catalog::{Consistency, Snapshot, StepId, UndoAction};
use crate::config::Environment;
use crate::guest::agents::{FrozenGuest, Quiescer, RestoreAgents};
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
/// the start. The image files are the host's ([`OpContext::host`]).
#[derive(Clone, Copy)]
pub struct Tools<'t> {
    pub quiescer: &'t dyn Quiescer,
    pub agents: &'t dyn RestoreAgents,
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").finish_non_exhaustive()
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
    let mut run = Run { ctx, request, env, tools, journal, phase: Phase::Lock, frozen: BTreeMap::new(), started };
    ctx.note(format!("restore of environment '{}' to snapshot {}", request.env, request.snapshot));
    match run.execute() {
        Ok(restored) => run.finish(restored),
        Err(error) => Err(run.roll_back(error)),
    }
}

/// One restore in progress: what has been done so far, for the record or
/// for the rollback.
struct Run<'r, 'c> {
    ctx: &'r OpContext<'c>,
    request: &'r RestoreRequest,
    env: &'r Environment,
    tools: Tools<'r>,
    /// Consumed by the commit or the rollback, which end the run.
    journal: Journal<'c>,
    phase: Phase,
    /// Freezes still held (a VM not stopped yet): thawed by a rollback.
    frozen: BTreeMap<String, Box<dyn FrozenGuest>>,
    started: Instant,
}

/// What the phases up to the commit hand to Discard and the report.
struct Restored {
    snapshot: Snapshot,
    /// With their new overlays.
    plans: Vec<VmPlan>,
    consistency: UndoConsistency,
    /// None with `--discard`.
    undo_snapshot: Option<UndoSnapshot>,
    /// `--memory`: how far each guest's clock was stepped, in ms.
    clock_steps: BTreeMap<String, i64>,
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = RestoreError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    fn journal(&mut self) -> &mut Journal<'c> {
        &mut self.journal
    }

    /// Its record: from there the catalog says the VMs run on the
    /// restored overlays, and so they do; a restore is finished from
    /// there, never rolled back (as `recover` does).
    fn is_point_of_no_return(&self, step: &str) -> bool {
        step == RECORD_STEP
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

    /// Everything up to the catalog commit, each phase handed the one
    /// before's output; an error rolls back.
    fn execute(&mut self) -> Result<Restored, RestoreError> {
        self.phase.enter(Phase::Resolve);
        let (snapshot, plans) = self.step("resolve", UndoAction::Nothing, |run| {
            let (catalog, request) = (run.ctx.catalog, run.request);
            let snapshot = resolve::snapshot(catalog, &request.env, &request.snapshot)?;
            let plans = resolve::plan(
                catalog,
                run.ctx.host.hypervisor(),
                run.ctx.host.storage(),
                &request.env,
                run.env,
                &snapshot,
                request.memory,
            )?;
            Ok((snapshot, plans))
        })?;

        self.phase.enter(Phase::Stop);
        let stopped = self.stop(&plans)?;
        crate::ops::crashpoint::hit("restore", "stop");

        let undo_snapshot = if self.request.discard {
            None
        } else {
            self.phase.enter(Phase::UndoSnapshot);
            Some(self.record_undo_snapshot(&plans, &stopped.consistency)?)
        };

        self.phase.enter(Phase::NewOverlays);
        let plans = self.new_overlays(plans)?;
        crate::ops::crashpoint::hit("restore", "new-overlays");

        self.phase.enter(Phase::Redefine);
        self.redefine(&plans, &stopped.defs)?;
        crate::ops::crashpoint::hit("restore", "redefine");

        self.phase.enter(Phase::Start);
        let clock_steps = self.start(&plans)?;
        crate::ops::crashpoint::hit("restore", "start");

        self.phase.enter(Phase::Record);
        self.step(RECORD_STEP, UndoAction::Nothing, |run| run.record(&plans, undo_snapshot.as_ref()))?;
        crate::ops::crashpoint::hit("restore", "record");
        Ok(Restored { snapshot, plans, consistency: stopped.consistency, undo_snapshot, clock_steps })
    }

    /// After the commit: `--discard`, then the journal's end. Nothing here
    /// rolls back; what fails is reported.
    fn finish(mut self, restored: Restored) -> Result<RestoreReport, RestoreError> {
        let (discarded, kept) = if self.request.discard {
            self.phase.enter(Phase::Discard);
            self.discard(&restored.plans)
        } else {
            (Vec::new(), Vec::new())
        };
        // Built first: once the journal is moved out to complete, `self` cannot be borrowed whole.
        let report = self.report(&restored, discarded, kept);
        self.journal.complete()?;
        self.phase.enter(Phase::Done);
        Ok(report)
    }

    /// Undoes what the run did and returns the error to report.
    fn roll_back(mut self, error: RestoreError) -> RestoreError {
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
        failures.extend(self.journal.roll_back(&cause, |action| undo_action(ctx.host, ctx.catalog, action)));
        if failures.is_empty() {
            error
        } else {
            RestoreError::CleanupFailed { cause: Box::new(error), failures }
        }
    }
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
