//! `envclone recover [ENV]`: finishes or rolls back what an interrupted
//! operation (snapshot, restore, delete, clone) left half done, then checks
//! the environment as it really is.
//!
//! For each environment (the one named and those of the operations that
//! act on it, such as a clone of it journaled under the clone's name; or
//! every one the config or the journal knows), holding its lock so no live operation can be mistaken
//! for a dead one:
//!
//! 1. **The journal**: every operation still `running` or `rolling-back`
//!    whose owner is gone (pid gone or reused, another boot), and every
//!    `failed` one with steps still to undo (an undo that failed before),
//!    oldest first. Each is taken over (this process becomes its owner, so
//!    a crash of `recover` itself leaves it to the next `recover`), then:
//!    - **finished** when its work is provably all done and only the
//!      journal's last entries are missing: a snapshot whose catalog row
//!      is already `complete` (its record step writes that last), a
//!      restore whose record step is done (from then on the catalog says
//!      the VMs run on the restored overlays, and so they do);
//!    - otherwise **rolled back**: the undo actions of every step that may
//!      have acted and is not undone yet run newest first (see `undo.rs`);
//!      each step ends `undone`, or `undo-failed` with the error while the
//!      rest go on; the operation ends `rolled-back`, or `failed` to be
//!      retried by the next `recover`.
//!
//!    An interrupted **delete** is rolled back (its one undo aborts a block
//!    job still running: the disk stays on its chain) and then finished:
//!    its snapshot is `deleted` already, and a merge may have happened that
//!    the catalog does not record yet (an active commit that pivoted: QEMU
//!    writes to the snapshot's image, which the catalog still has below the
//!    merged overlay). So every delete of the environment left unfinished
//!    (a `deleted` snapshot that still pins images) runs again, as
//!    `envclone delete-snapshot` would: it recognises the merges already
//!    done, records them and does the rest (or is deferred, changing
//!    nothing). Not when an undo failed: a job may still run.
//!
//!    Disk switches are never undone: a snapshot journals its external
//!    disk snapshots with `fail-snapshot`, not with a pivot, because the
//!    overlays are a valid chain and the guest wrote to them since; the
//!    checks below record them in the catalog instead.
//!
//!    An operation whose journal holds an undo action this build does not
//!    know (a custom kind, or an action it cannot even read: a newer
//!    envclone wrote it) is refused as a whole, untouched, with a clear
//!    error: never guessed at.
//! 2. **Reality** (`reality.rs`), whatever the journal said: domains that
//!    should run run (one the rollback booted again, a restore's, is waited
//!    for until its agent answers), no guest is frozen, the catalog knows
//!    each disk's live image (libvirt's live definition is the truth).
//!
//! `--dry-run` takes the same locks and reads the same things, and reports
//! the plan without changing anything. Running `recover` twice is
//! harmless: the second finds nothing to do (or retries what failed).

mod error;
mod reality;
#[cfg(test)]
mod tests;
mod undo;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use self::error::RecoverError;
pub use self::reality::{Check, CheckStatus, Expected};
pub use self::undo::{describe, KNOWN_CUSTOM_KINDS};

use self::undo::{unknown_kind, Undoer, Undone};
use super::context::OpContext;
use super::{Busy, EnvLock, LockError};
use crate::catalog::{
    Catalog, CatalogError, Operation, OperationId, OperationKind, OperationState, Owner, SnapshotState, Step,
    StepState, UndoAction,
};
use crate::guest::agents::RecoveryAgents;
use crate::ops::delete::{delete_locked, DeleteReport, DeleteSettings};
use crate::ops::restore::RECORD_STEP as RESTORE_RECORD_STEP;
use crate::ops::snapshot::UNDO_FAIL_SNAPSHOT_NAMED;

/// What to recover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoverRequest {
    /// Only this environment; every one otherwise.
    pub env: Option<String>,
    /// Report the plan, change nothing.
    pub dry_run: bool,
}

/// What `recover` found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoverReport {
    pub dry_run: bool,
    pub environments: Vec<EnvReport>,
}

impl RecoverReport {
    /// Undos that failed, operations refused, problems found: exit code 1.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for env in &self.environments {
            for op in &env.operations {
                if let Some(error) = &op.error {
                    if matches!(op.outcome, Outcome::Refused) {
                        failures.push(format!("{}: operation {} ({}) refused: {error}", env.env, op.id, op.kind));
                    }
                }
                for undo in op.undo.iter().filter(|u| u.status == UndoStatus::Failed) {
                    failures.push(format!(
                        "{}: operation {} step {} '{}': {}",
                        env.env,
                        op.id,
                        undo.seq,
                        undo.step,
                        undo.detail.as_deref().unwrap_or("failed")
                    ));
                }
            }
            for rerun in env.deletes.iter().filter(|d| d.outcome == RerunOutcome::Failed) {
                failures.push(format!(
                    "{}: finishing the delete of snapshot {}: {}",
                    env.env,
                    rerun.snapshot,
                    rerun.error.as_deref().unwrap_or("failed")
                ));
            }
            for check in env.checks.iter().filter(|c| c.status.is_problem()) {
                failures.push(format!("{}: VM '{}' {}: {}", env.env, check.vm, check.subject, check.detail));
            }
        }
        failures
    }

    /// Who holds the environments that have something to recover: exit code 3.
    pub fn busy(&self) -> Vec<&Busy> {
        self.environments.iter().filter_map(|env| env.blocked_by.as_ref()).collect()
    }

    /// Nothing was (or would be) recovered, fixed or recorded.
    pub fn nothing_to_do(&self) -> bool {
        self.environments.iter().all(|env| {
            env.operations.is_empty()
                && env.deletes.is_empty()
                && env.checks.iter().all(|c| matches!(c.status, CheckStatus::Ok | CheckStatus::Warning))
        })
    }
}

/// One environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvReport {
    pub env: String,
    /// Why it was skipped: another operation holds it.
    pub busy: Option<String>,
    /// Set when it is busy with journal work left to do (it counts for
    /// the exit code); not when only its checks were skipped.
    #[serde(skip)]
    pub blocked_by: Option<Busy>,
    pub operations: Vec<OperationReport>,
    /// Deletes left unfinished, run again after an interrupted delete's rollback.
    pub deletes: Vec<DeleteRerun>,
    pub checks: Vec<Check>,
}

/// A delete run again to finish it; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteRerun {
    pub snapshot: String,
    pub outcome: RerunOutcome,
    /// What the delete did (or why it was deferred).
    pub report: Option<DeleteReport>,
    /// Why it failed (the exit code is then 1; the next `recover` or
    /// `prune` tries again).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RerunOutcome {
    /// Every image merged or released: nothing left to do.
    Finished,
    /// Something else needs an image: nothing changed, `prune` tries again.
    Deferred,
    Failed,
    /// `--dry-run`: would run the delete again.
    WouldRun,
}

/// One interrupted (or failed) operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationReport {
    pub id: OperationId,
    pub kind: OperationKind,
    pub started_at: DateTime<Utc>,
    /// The process that owned it when `recover` found it.
    pub owner_pid: u32,
    /// Its state when found.
    pub was: OperationState,
    pub outcome: Outcome,
    /// Why it was refused, or what failed.
    pub error: Option<String>,
    /// Its undo actions in the order they ran (or would run).
    pub undo: Vec<UndoReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every step undone.
    RolledBack,
    /// Its work was all done; the journal now says so.
    Completed,
    /// Some undo failed: the operation is `failed`, the next `recover` retries.
    Failed,
    /// Left untouched: its journal holds what this build does not know.
    Refused,
    /// `--dry-run`: would be rolled back.
    WouldRollBack,
    /// `--dry-run`: would be completed.
    WouldComplete,
}

/// One undo action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UndoReport {
    pub seq: u32,
    /// The step's journaled name ("freeze web").
    pub step: String,
    /// The step's state before `recover`.
    pub state: StepState,
    /// What undoing it does.
    pub action: String,
    pub status: UndoStatus,
    /// What happened, or why it failed.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UndoStatus {
    Done,
    /// A file kept because something needs it (the step still counts as undone).
    Kept,
    Failed,
    /// `--dry-run`, or not run because the operation was refused.
    Planned,
}

/// Recovers `request.env`, or every environment; see the module documentation.
/// An environment named explicitly that another operation holds is a
/// [`RecoverError::Lock`] (busy); when scanning, it is reported and skipped.
pub fn recover(
    ctx: &OpContext<'_>,
    agents: &dyn RecoveryAgents,
    request: &RecoverRequest,
) -> Result<RecoverReport, RecoverError> {
    let catalog = ctx.catalog;
    let pending_ops = pending(catalog)?;
    let pending_envs: BTreeSet<String> = pending_ops.iter().map(|op| op.env.clone()).collect();
    let envs: Vec<String> = match &request.env {
        Some(env) => {
            if !pending_envs.contains(env) && catalog.environment(env)?.is_none() {
                ctx.config.environment(env)?;
            }
            // An operation journaled under another environment that acts
            // on ENV (a clone of ENV) is recovered under its own lock.
            let mut related: BTreeSet<String> =
                pending_ops.iter().filter(|op| op.touches_env(env)).map(|op| op.env.clone()).collect();
            related.remove(env);
            std::iter::once(env.clone()).chain(related).collect()
        }
        None => {
            let mut all: BTreeSet<String> = ctx.config.environments.keys().cloned().collect();
            all.extend(pending_envs.iter().cloned());
            all.into_iter().collect()
        }
    };
    let purpose = if request.dry_run { "recover --dry-run" } else { "recover" };
    let mut report = RecoverReport { dry_run: request.dry_run, environments: Vec::new() };
    for env in envs {
        let _lock = match EnvLock::acquire(&ctx.config.controller.state_dir, &env, purpose) {
            Ok(lock) => lock,
            Err(LockError::Busy(busy)) if request.env.as_ref() != Some(&env) => {
                let blocked_by = pending_envs.contains(&env).then(|| busy.clone());
                ctx.note(format!("{env}: {busy}; skipped"));
                report.environments.push(EnvReport {
                    env,
                    busy: Some(busy.to_string()),
                    blocked_by,
                    operations: Vec::new(),
                    deletes: Vec::new(),
                    checks: Vec::new(),
                });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let recorded = pending_ops.iter().filter(|op| op.env == env).find_map(|op| op.host.clone());
        let host = match recorded {
            Some(host) => ctx.host_named(Some(&host))?,
            None => host_of(ctx, &env)?,
        };
        let on_its_host = OpContext { host, ..*ctx };
        report.environments.push(recover_env(&on_its_host, agents, &env, request.dry_run)?);
    }
    Ok(report)
}

/// The host `env`'s operations act on: an environment's (from the
/// config), a standby's (as recorded), else the context's.
fn host_of<'c>(ctx: &OpContext<'c>, env: &str) -> Result<&'c dyn crate::host::Host, RecoverError> {
    if ctx.config.environments.contains_key(env) {
        return Ok(ctx.host_named(Some(ctx.config.host_of(env)))?);
    }
    match ctx.catalog.standby_named(env)? {
        Some(standby) => Ok(ctx.host_named(Some(&standby.host))?),
        None => Ok(ctx.host),
    }
}

/// Operations with work left: interrupted ones, and failed ones with
/// steps still to undo (or an undo plan this build cannot read).
pub(crate) fn pending(catalog: &Catalog) -> Result<Vec<Operation>, CatalogError> {
    let mut operations = catalog.interrupted_operations()?;
    for failed in catalog.operations_in(OperationState::Failed)? {
        let work_left = match catalog.undo_plan(failed.id) {
            Ok(plan) => !plan.is_empty(),
            Err(CatalogError::Corrupt { .. }) => true,
            Err(e) => return Err(e),
        };
        if work_left {
            operations.push(failed);
        }
    }
    operations.sort_by_key(|op| op.id);
    Ok(operations)
}

/// One environment, its lock held.
fn recover_env(
    ctx: &OpContext<'_>,
    agents: &dyn RecoveryAgents,
    env: &str,
    dry_run: bool,
) -> Result<EnvReport, RecoverError> {
    // Judged again now that the lock is held: no live owner can be working on these.
    let operations: Vec<Operation> = pending(ctx.catalog)?.into_iter().filter(|op| op.env == env).collect();
    let env_config = ctx.config.environments.get(env);
    let mut expected = Expected::default();
    let mut reports = Vec::new();
    let undoer = Undoer::new(ctx, agents, env);
    for operation in operations {
        let (report, steps) = recover_operation(ctx, &undoer, &operation, dry_run)?;
        if report.outcome != Outcome::Refused {
            expect_from(&mut expected, &operation, &steps, env_config);
        }
        reports.push(report);
    }
    expected.booting = undoer.started.take();
    let clone_rolled_back =
        reports.iter().any(|op| op.kind == OperationKind::Clone && op.outcome == Outcome::RolledBack);
    if env_config.is_none() && clone_rolled_back {
        // The clone's storage folder (its undos deleted the files, not the
        // folders); only empty folders go, so a live clone's stay.
        crate::ops::clone::remove_empty_dirs(
            ctx.host.storage(),
            &ctx.config.controller.state_dir.join("images").join(env),
        );
    }
    let interrupted_delete = reports.iter().any(|op| {
        op.kind == OperationKind::DeleteSnapshot && matches!(op.outcome, Outcome::RolledBack | Outcome::WouldRollBack)
    });
    let deletes = match env_config {
        Some(config) if interrupted_delete => finish_deletes(ctx, env, config, dry_run)?,
        _ => Vec::new(),
    };
    let checks = match env_config {
        Some(config) => reality::check_env(ctx, agents, env, config, &expected, dry_run),
        None => {
            ctx.note(format!("{env}: not in the config; only its journal was recovered"));
            Vec::new()
        }
    };
    Ok(EnvReport { env: env.to_owned(), busy: None, blocked_by: None, operations: reports, deletes, checks })
}

/// Runs every unfinished delete of `env` (a `deleted` snapshot that still
/// pins images) again, under the lock `recover` holds; see the module
/// documentation.
fn finish_deletes(
    ctx: &OpContext<'_>,
    env: &str,
    config: &crate::config::Environment,
    dry_run: bool,
) -> Result<Vec<DeleteRerun>, RecoverError> {
    let mut reruns = Vec::new();
    for id in ctx.catalog.unfinished_deletes(env)? {
        let snapshot = ctx.catalog.snapshot(id)?;
        if snapshot.state != SnapshotState::Deleted {
            // A complete snapshot whose delete was deferred: `prune`'s.
            continue;
        }
        let name = snapshot.name.clone();
        if dry_run {
            reruns.push(DeleteRerun { snapshot: name, outcome: RerunOutcome::WouldRun, report: None, error: None });
            continue;
        }
        let timer = ctx.begin(format!("finish the delete of snapshot {name}"));
        let rerun = match delete_locked(ctx, env, config, snapshot, &DeleteSettings::default()) {
            Ok(report) => {
                timer.done();
                let outcome = if report.deferred.is_empty() { RerunOutcome::Finished } else { RerunOutcome::Deferred };
                DeleteRerun { snapshot: name, outcome, report: Some(report), error: None }
            }
            Err(error) => {
                timer.failed();
                let error = Some(crate::error::chain(&error));
                DeleteRerun { snapshot: name, outcome: RerunOutcome::Failed, report: None, error }
            }
        };
        reruns.push(rerun);
    }
    Ok(reruns)
}

/// What an operation's journal says the environment looked like.
fn expect_from(
    expected: &mut Expected,
    operation: &Operation,
    steps: &[Step],
    env: Option<&crate::config::Environment>,
) {
    if operation.kind == OperationKind::Snapshot {
        // A snapshot only starts on an environment whose domains all run.
        if let Some(env) = env {
            expected.running.extend(env.vms.values().map(|vm| vm.domain.clone()));
        }
    }
    for step in steps {
        match &step.undo {
            UndoAction::ThawAgent { vm } => {
                expected.thawed.insert(vm.clone());
            }
            UndoAction::ResumeDomain { domain } => {
                expected.running.insert(domain.clone());
            }
            _ => {}
        }
    }
}

/// What to do with an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Complete,
    RollBack,
    Refuse(String),
}

fn decide(ctx: &OpContext<'_>, operation: &Operation, steps: &[Step]) -> Result<Decision, CatalogError> {
    if let Some(kind) = steps.iter().filter(|s| s.state.needs_undo()).find_map(|s| unknown_kind(&s.undo)) {
        return Ok(Decision::Refuse(format!(
            "its journal holds an undo of kind '{kind}', unknown to this envclone (known: {}): run the newer \
             envclone that wrote it; nothing was changed",
            KNOWN_CUSTOM_KINDS.join(", ")
        )));
    }
    if operation.state == OperationState::Running
        && operation.kind == OperationKind::Restore
        && steps.iter().any(|s| s.name == RESTORE_RECORD_STEP && s.state == StepState::Done)
    {
        // From its record on, the catalog says the VMs run on the restored
        // overlays, and so they do: a restore is rolled forward from there.
        if let Some(step) = steps.iter().find(|s| !matches!(s.state, StepState::Running | StepState::Done)) {
            return Ok(Decision::Refuse(format!(
                "its '{RESTORE_RECORD_STEP}' step is done, so it can only be finished, but step {} '{}' is {}: \
                 check the VMs and finish it by hand",
                step.seq, step.name, step.state
            )));
        }
        return Ok(Decision::Complete);
    }
    if operation.state == OperationState::Running
        && operation.kind == OperationKind::Failover
        && steps.iter().any(|s| crate::ops::failover::is_record_step(&s.name) && s.state == StepState::Done)
    {
        // Recorded: the drill runs, or the standby serves (a switch is
        // never rolled back from there; `--test --end` ends a drill).
        return Ok(Decision::Complete);
    }
    if operation.state == OperationState::Running
        && operation.kind == OperationKind::Snapshot
        && steps.iter().all(|s| matches!(s.state, StepState::Running | StepState::Done))
        && snapshot_of(ctx, steps)?.is_some_and(|state| state == SnapshotState::Complete)
    {
        return Ok(Decision::Complete);
    }
    Ok(Decision::RollBack)
}

/// The state of the snapshot a snapshot operation's journal names.
fn snapshot_of(ctx: &OpContext<'_>, steps: &[Step]) -> Result<Option<SnapshotState>, CatalogError> {
    for step in steps {
        match &step.undo {
            UndoAction::FailSnapshot { snapshot } => match ctx.catalog.snapshot(*snapshot) {
                Ok(found) => return Ok(Some(found.state)),
                Err(CatalogError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            },
            UndoAction::Custom { kind, data } if kind == UNDO_FAIL_SNAPSHOT_NAMED => {
                if let (Some(env), Some(name)) = (data["env"].as_str(), data["snapshot"].as_str()) {
                    return Ok(ctx.catalog.snapshot_named(env, name)?.map(|s| s.state));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

fn recover_operation(
    ctx: &OpContext<'_>,
    undoer: &Undoer<'_, '_>,
    operation: &Operation,
    dry_run: bool,
) -> Result<(OperationReport, Vec<Step>), RecoverError> {
    let catalog = ctx.catalog;
    let mut report = OperationReport {
        id: operation.id,
        kind: operation.kind,
        started_at: operation.started_at,
        owner_pid: operation.owner.pid,
        was: operation.state,
        outcome: Outcome::RolledBack,
        error: None,
        undo: Vec::new(),
    };
    let steps = match catalog.steps(operation.id) {
        Ok(steps) => steps,
        Err(CatalogError::Corrupt { detail, .. }) => {
            report.outcome = Outcome::Refused;
            report.error = Some(format!(
                "its journal holds a step this envclone cannot read ({detail}); a newer envclone wrote it: run \
                 that one; nothing was changed"
            ));
            ctx.note(format!("operation {} ({}): refused", operation.id, operation.kind));
            return Ok((report, Vec::new()));
        }
        Err(e) => return Err(e.into()),
    };
    let decision = decide(ctx, operation, &steps)?;
    // Newest first: the order to undo in.
    let to_undo: Vec<&Step> = steps.iter().rev().filter(|s| s.state.needs_undo()).collect();
    report.undo = to_undo
        .iter()
        .map(|step| UndoReport {
            seq: step.seq,
            step: step.name.clone(),
            state: step.state,
            action: describe(&step.undo),
            status: UndoStatus::Planned,
            detail: None,
        })
        .collect();
    let who = format!(
        "operation {} ({}, started {} by pid {})",
        operation.id,
        operation.kind,
        operation.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
        operation.owner.pid
    );
    match (&decision, dry_run) {
        (Decision::Refuse(why), _) => {
            report.outcome = Outcome::Refused;
            report.error = Some(why.clone());
            ctx.note(format!("{who}: refused: {why}"));
            return Ok((report, steps));
        }
        (Decision::Complete, true) => {
            report.outcome = Outcome::WouldComplete;
            report.undo.clear();
            return Ok((report, steps));
        }
        (Decision::RollBack, true) => {
            report.outcome = Outcome::WouldRollBack;
            return Ok((report, steps));
        }
        _ => {}
    }

    catalog.take_over(operation.id, &Owner::current())?;
    if decision == Decision::Complete {
        for step in steps.iter().filter(|s| s.state == StepState::Running) {
            catalog.finish_step(step.id)?;
        }
        catalog.complete_operation(operation.id)?;
        report.outcome = Outcome::Completed;
        report.undo.clear();
        ctx.note(format!("{who}: its work was done; completed"));
        return Ok((report, steps));
    }

    let cause = match operation.state {
        OperationState::Failed => "retried by envclone recover".to_owned(),
        _ => format!("interrupted (its owner, pid {}, is gone); rolled back by envclone recover", operation.owner.pid),
    };
    if operation.state != OperationState::RollingBack {
        catalog.begin_rollback(operation.id, &cause)?;
    }
    let mut failures = Vec::new();
    for (step, line) in to_undo.iter().zip(report.undo.iter_mut()) {
        let timer = ctx.begin(format!("undo step {} '{}': {}", step.seq, step.name, line.action));
        match undoer.run(&step.undo) {
            Ok(done) => {
                timer.done();
                catalog.mark_undone(step.id)?;
                let (status, detail) = match done {
                    Undone::Done(detail) => (UndoStatus::Done, detail),
                    Undone::Kept(detail) => (UndoStatus::Kept, detail),
                };
                line.status = status;
                line.detail = Some(detail);
            }
            Err(error) => {
                timer.failed();
                catalog.fail_undo(step.id, &error)?;
                line.status = UndoStatus::Failed;
                line.detail = Some(error.clone());
                failures.push(error);
            }
        }
    }
    if failures.is_empty() {
        catalog.finish_rollback(operation.id)?;
        report.outcome = Outcome::RolledBack;
    } else {
        let error = failures.join("; ");
        catalog.fail_operation(operation.id, &error)?;
        report.outcome = Outcome::Failed;
        report.error = Some(error);
    }
    Ok((report, steps))
}
