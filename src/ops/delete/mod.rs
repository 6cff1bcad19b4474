//! `envclone delete-snapshot ENV SNAP`: deletes one snapshot and merges
//! its images away, live, so chains stay short; never changes or deletes an
//! image that a clone, a standby or another snapshot still needs.
//!
//! # The chains
//!
//! After snapshots S1, S2 and S3 each disk runs on a chain (catalog and
//! `qemu-img` agree; the VM writes to the left end):
//!
//! ```text
//! active  ->  O2  ->  O1  ->  B
//!             S3      S2      S1      (who pins which image)
//! ```
//!
//! A snapshot's images are the ones it pins (`snapshot_dependent`); `B` is
//! the VM's original disk, a `base` that envclone never changes or deletes.
//! Snapshot Sk's restore point is what its image reads through its backing
//! chain, so deleting Sk only has to keep what every *other* snapshot (and
//! clone, standby...) reads. Merging Sk's image P away can change one of
//! two images: its backing file Q (commit P down) or its child C (commit C
//! up into P, or pull P into C). Q is nearly always pinned (by S(k-1), or
//! a base): committing down would change a restore point someone else
//! needs, and is exactly the lab's blockcommit hazard. So envclone never
//! commits down; it merges P with its only child C.
//!
//! # The rule, per image P of the snapshot
//!
//! 1. P is a `base` (or a full copy): the snapshot's pin is released, P
//!    stays as it is. The chain does not get shorter below a base.
//! 2. Anything else pins P (clone, standby, another snapshot), or P backs
//!    more than one image (a branch: a restore, a clone's overlay), or C
//!    is pinned by anything but snapshots, or (live) C's child is, or C
//!    backs more than one image: **deferred**. Nothing changes; the report
//!    names each image and who needs it, and the snapshot stays complete
//!    (restorable) with the request recorded, so `prune` tries again.
//! 3. Nothing backs onto P (an image left by a restore's undo snapshot):
//!    P goes (catalog first, then the file).
//! 4. The VM runs on a chain holding C and P: **commit C into P** with
//!    libvirt. P is needed by S alone, so P may change; afterwards P reads
//!    exactly what C read, so C's pins (later snapshots) move to P, C's
//!    child (libvirt rewrote its backing file) backs onto P, and C goes.
//!    - C is the active image: an active commit (`block_commit{active}`),
//!      waited for until ready, then pivoted: the guest keeps running and
//!      writes to P from then on.
//!    - C is a later snapshot's image: a commit of a non-active layer
//!      (`block_commit{top: C, base: P}`; libvirt 9.0 with QEMU's
//!      blockdev layer does this live and rewrites the child's backing
//!      file), waited for until the job is gone.
//!    - Memory images of the snapshots that pinned C name C's path in
//!      their domain XML: they are rewritten in place to name P (see
//!      `memory.rs`) before C's file is removed.
//! 5. The VM does not run (or runs another branch): **pull P into C**
//!    offline (`qemu-img rebase -b Q C`, safe mode): C takes P's data and
//!    keeps its path and what it reads, so C's pins, children, memory
//!    images and the domain definition stay valid; P goes. No QEMU has the
//!    files open.
//!
//! Each merge is checked before (the live chain from libvirt, or
//! `qemu-img info --backing-chain` offline, must match the catalog) and
//! after (libvirt's live chain and `qemu-img`'s, read shared, must match
//! the catalog's chain without the merged image). Memory images of the
//! deleted snapshot go with it, unless something pins them (deferred).
//!
//! # Steps, journal and failures
//!
//! Planning (all of the above) changes nothing. Then, under the
//! environment's lock and journaled (`journal.rs`) before each step runs:
//! mark the snapshot `deleted` (its restore point is about to change);
//! remove its memory images; per disk: merge (its undo aborts a block job
//! still running), re-point memory images, record the merge in the
//! catalog (one transaction that re-checks the rule), remove the merged
//! file (record before file: a crash leaves an orphan file, never a record
//! of a file that is gone).
//!
//! A failure at any step leaves every chain valid: an aborted or failed
//! commit leaves C over a partly merged P, which reads the same as before
//! (C's clusters mask P's); a finished commit leaves C's file readable
//! until the last step. The snapshot stays `deleted` with its remaining
//! pins, and running the delete again (or `prune`; after a crash,
//! `envclone recover` does it) finishes: the plan recognises a merge that
//! already happened (the live chain lacks C) and goes on from the catalog
//! record. Deleting a deleted snapshot with
//! nothing left is a no-op that reports it deleted.
//!
//! # Crash points
//!
//! For the tests of `envclone recover` ([`crate::ops::crashpoint`]), in the
//! order they are reached; a point reached once per image or disk aborts
//! at the first:
//!
//! | point | reached |
//! | --- | --- |
//! | `delete:mark-deleted` | the snapshot is `deleted`; nothing merged or removed yet |
//! | `delete:remove-memory` | one memory image of the snapshot is removed (catalog and file) |
//! | `delete:release` | the snapshot's pin on a base image is released |
//! | `delete:remove-orphan` | an image nothing backed onto is removed (catalog and file) |
//! | `delete:commit-started` | the only point inside a step: the block commit job was started and is not waited for (an active commit stays ready, never pivoted; a non-active one finishes in QEMU on its own) |
//! | `delete:commit` | the commit is finished (active: pivoted) and verified; the catalog still records the merged image in the chain |
//! | `delete:repoint-memory` | a memory image of a later snapshot names the image merged into |
//! | `delete:pull` | (offline) the snapshot's image is pulled into its child and verified; not recorded yet |
//! | `delete:record` | the merge is recorded in the catalog; the merged file is not removed yet |
//! | `delete:remove` | the merged file is removed |

mod error;
mod journal;
pub mod memory;
mod plan;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use self::error::DeleteError;
pub use self::journal::{abort_block_job, undo, UNDO_ABORT_BLOCK_JOB};

use self::plan::{CommitStep, DiskStep, Plan, PullStep};
use super::context::OpContext;
use super::EnvLock;
use crate::catalog::OperationKind;
use crate::catalog::{CommitMerge, Image, PullMerge, Snapshot, SnapshotState, UndoAction};
use crate::config::Environment;
use crate::host::Storage;
use crate::hypervisor::BlockCommit;
use crate::ops::journal::{Journal, Journaled};

/// How long merges may take and how often their jobs are polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteSettings {
    /// Bound on one block commit job (until ready, or gone).
    pub job_deadline: Duration,
    pub poll: Duration,
}

impl Default for DeleteSettings {
    fn default() -> Self {
        DeleteSettings { job_deadline: Duration::from_secs(3600), poll: Duration::from_millis(100) }
    }
}

/// What to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteSnapshotRequest {
    pub env: String,
    pub snapshot: String,
}

/// What a delete did; also what `--json` prints. The daemon reads
/// `deferred` (non-empty: deferred) and `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteReport {
    pub env: String,
    pub snapshot: String,
    /// The snapshot is deleted (now, or it already was).
    pub deleted: bool,
    /// It already was, and nothing was left to do.
    pub already_deleted: bool,
    /// Why nothing was done, one line per image and what needs it; empty
    /// when the delete went through.
    pub deferred: Vec<String>,
    /// `deferred` in one line.
    pub reason: Option<String>,
    pub merged: Vec<MergeReport>,
    /// Base images the snapshot no longer pins; they stay.
    pub released: Vec<PathBuf>,
    /// Files removed: merged images, memory images.
    pub removed: Vec<PathBuf>,
    /// Space given back: the files removed, less what the merges grew.
    pub freed_bytes: u64,
    pub duration_ms: u64,
}

/// One image merged away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    pub vm: String,
    pub disk: String,
    /// `active-commit` (then pivot), `commit` (a non-active layer, live) or
    /// `pull` (offline).
    pub method: &'static str,
    /// The image that went.
    pub merged: PathBuf,
    /// The image that holds its data now.
    pub into: PathBuf,
    /// Snapshots whose image is `into` now.
    pub moved_pins: Vec<String>,
    /// Memory images rewritten to name `into`.
    pub memory_images: Vec<PathBuf>,
}

/// Deletes `request.snapshot`, holding the environment's lock; see the
/// module documentation.
pub fn delete_snapshot(
    ctx: &OpContext<'_>,
    request: &DeleteSnapshotRequest,
    settings: &DeleteSettings,
) -> Result<DeleteReport, DeleteError> {
    let _files = ctx.host.storage();
    let env = ctx.config.environment(&request.env)?;
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, &request.env, "delete-snapshot")?;
    let snapshot = find(ctx, &request.env, &request.snapshot)?;
    delete_locked(ctx, &request.env, env, snapshot, settings)
}

/// The snapshot named `name` of `env`, or [`DeleteError::UnknownSnapshot`].
pub fn find(ctx: &OpContext<'_>, env: &str, name: &str) -> Result<Snapshot, DeleteError> {
    ctx.catalog
        .snapshot_named(env, name)?
        .ok_or_else(|| DeleteError::UnknownSnapshot { env: env.to_owned(), snapshot: name.to_owned() })
}

/// What deleting a snapshot would do now, without doing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preview {
    /// Why it would be deferred; empty: it would be deleted.
    pub deferred: Vec<String>,
    /// Images that would be merged away (or, for orphans, removed).
    pub would_remove: Vec<PathBuf>,
}

/// Plans deleting `snapshot` and says what would happen; changes nothing.
pub fn preview(
    ctx: &OpContext<'_>,
    env_name: &str,
    env: &Environment,
    snapshot: Snapshot,
) -> Result<Preview, DeleteError> {
    let files = ctx.host.storage();
    check_state(env_name, &snapshot)?;
    let plan = plan::plan(ctx, files, env_name, env, snapshot)?;
    let mut would_remove: Vec<PathBuf> = plan.memory.iter().map(|m| m.path.clone()).collect();
    for step in &plan.disks {
        match step {
            DiskStep::Release { .. } => {}
            DiskStep::RemoveOrphan { image } => would_remove.push(image.path.clone()),
            DiskStep::Commit(commit) => would_remove.push(commit.top.path.clone()),
            DiskStep::Pull(pull) => would_remove.push(pull.removed.path.clone()),
        }
    }
    Ok(Preview { deferred: plan.blockers, would_remove })
}

fn check_state(env: &str, snapshot: &Snapshot) -> Result<(), DeleteError> {
    if snapshot.state == SnapshotState::InProgress {
        return Err(DeleteError::InProgress { env: env.to_owned(), snapshot: snapshot.name.clone() });
    }
    Ok(())
}

/// Deletes `snapshot` of `env_name`; the caller holds the environment's
/// lock (`prune` deletes several under one lock).
pub fn delete_locked(
    ctx: &OpContext<'_>,
    env_name: &str,
    env: &Environment,
    snapshot: Snapshot,
    settings: &DeleteSettings,
) -> Result<DeleteReport, DeleteError> {
    let files = ctx.host.storage();
    let started = Instant::now();
    check_state(env_name, &snapshot)?;
    let was_deleted = snapshot.state == SnapshotState::Deleted;
    let plan = plan::plan(ctx, files, env_name, env, snapshot)?;
    let mut report = DeleteReport {
        env: env_name.to_owned(),
        snapshot: plan.snapshot.name.clone(),
        deleted: was_deleted,
        already_deleted: false,
        deferred: Vec::new(),
        reason: None,
        merged: Vec::new(),
        released: Vec::new(),
        removed: Vec::new(),
        freed_bytes: 0,
        duration_ms: 0,
    };
    if !plan.blockers.is_empty() {
        let reason = plan.blockers.join("; ");
        if !was_deleted {
            ctx.catalog.defer_snapshot_delete(plan.snapshot.id, ctx.clock.now(), &reason)?;
        }
        ctx.note(format!("delete of {} deferred: {reason}", plan.snapshot.name));
        report.deferred = plan.blockers;
        report.reason = Some(reason);
        report.duration_ms = millis(started.elapsed());
        return Ok(report);
    }
    if was_deleted && plan.disks.is_empty() && plan.memory.is_empty() {
        report.already_deleted = true;
        report.duration_ms = millis(started.elapsed());
        return Ok(report);
    }
    let journal = Journal::begin(ctx.catalog, OperationKind::DeleteSnapshot, env_name, ctx.clock.now())?;
    let mut run = Run { ctx, files, settings, journal, report, freed: 0 };
    match run.execute(&plan) {
        Ok(()) => {
            run.journal.complete()?;
            let mut report = run.report;
            report.freed_bytes = u64::try_from(run.freed.max(0)).unwrap_or(0);
            report.duration_ms = millis(started.elapsed());
            Ok(report)
        }
        Err(error) => {
            let cause = crate::error::chain(&error);
            let failures = run.journal.roll_back(&cause, |action| undo(ctx.host.hypervisor(), action));
            if failures.is_empty() {
                Err(error)
            } else {
                Err(DeleteError::CleanupFailed { cause: Box::new(error), failures })
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One delete in progress.
struct Run<'r, 'c> {
    ctx: &'r OpContext<'c>,
    files: &'r dyn Storage,
    settings: &'r DeleteSettings,
    /// Consumed by the commit or the rollback, which end the run.
    journal: Journal<'c>,
    report: DeleteReport,
    /// Bytes freed so far (merges can grow the image they keep).
    freed: i128,
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = DeleteError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    fn journal(&mut self) -> &mut Journal<'c> {
        &mut self.journal
    }

    /// Every step: a delete's steps have no undo, and one that stopped is
    /// finished by running it again, so a delete that has begun goes on
    /// to its end; a signal stops it only before its first step.
    fn is_point_of_no_return(&self, _step: &str) -> bool {
        true
    }
}

impl<'c> Run<'_, 'c> {
    fn execute(&mut self, plan: &Plan) -> Result<(), DeleteError> {
        let ctx = self.ctx;
        let snapshot = &plan.snapshot;
        if snapshot.state != SnapshotState::Deleted {
            self.step(&format!("mark snapshot {} deleted", snapshot.name), UndoAction::Nothing, |run| {
                ctx.catalog.mark_snapshot_deleted(snapshot.id, ctx.clock.now())?;
                run.report.deleted = true;
                Ok(())
            })?;
            crate::ops::crashpoint::hit("delete", "mark-deleted");
        }
        for image in &plan.memory {
            self.step(&format!("remove memory image {}", image.path.display()), UndoAction::Nothing, |run| {
                run.remove_image(image)
            })?;
            crate::ops::crashpoint::hit("delete", "remove-memory");
        }
        for disk in &plan.disks {
            match disk {
                DiskStep::Release { image } => {
                    let name = format!("release {} (a base image: it stays)", image.path.display());
                    self.step(&name, UndoAction::Nothing, |run| {
                        ctx.catalog.unpin(image.id, &plan.pin)?;
                        run.report.released.push(image.path.clone());
                        Ok(())
                    })?;
                    crate::ops::crashpoint::hit("delete", "release");
                }
                DiskStep::RemoveOrphan { image } => {
                    let name = format!("remove {} (nothing backs onto it)", image.path.display());
                    self.step(&name, UndoAction::Nothing, |run| {
                        ctx.catalog.unpin(image.id, &plan.pin)?;
                        run.remove_image(image)
                    })?;
                    crate::ops::crashpoint::hit("delete", "remove-orphan");
                }
                DiskStep::Commit(commit) => self.commit(plan, commit)?,
                DiskStep::Pull(pull) => self.pull(plan, pull)?,
            }
        }
        Ok(())
    }

    /// Forgets an image (the catalog re-checks that nothing needs it), then
    /// removes its file.
    fn remove_image(&mut self, image: &Image) -> Result<(), DeleteError> {
        let size = self.files.size(&image.path).unwrap_or(0);
        self.ctx.catalog.remove_image(image.id)?;
        self.files.remove(&image.path).map_err(|e| DeleteError::RemoveFile(Box::new(e)))?;
        self.freed += i128::from(size);
        self.report.removed.push(image.path.clone());
        Ok(())
    }

    fn commit(&mut self, plan: &Plan, commit: &CommitStep) -> Result<(), DeleteError> {
        let ctx = self.ctx;
        let (vm, disk) = (commit.vm.as_str(), commit.disk.as_str());
        let top_size = self.files.size(&commit.top.path).unwrap_or(0);
        let into_before = self.files.size(&commit.into.path).unwrap_or(0);
        let how = if commit.active { "active commit" } else { "commit" };
        let name = format!("{how} {vm}/{disk}: {} into {}", commit.top.path.display(), commit.into.path.display());
        self.step(&name, abort_block_job(&commit.domain, disk), |run| {
            if !commit.done {
                run.run_commit_job(commit)?;
            }
            run.verify_commit(commit)
        })?;
        crate::ops::crashpoint::hit("delete", "commit");
        let mut rewritten = Vec::new();
        for image in &commit.memory {
            let name = format!("point memory image {} at {}", image.display(), commit.into.path.display());
            self.step(&name, UndoAction::Nothing, |_| {
                if memory::repoint(image, &commit.top.path, &commit.into.path, commit.into.format.as_str())? {
                    rewritten.push(image.clone());
                }
                Ok(())
            })?;
            crate::ops::crashpoint::hit("delete", "repoint-memory");
        }
        let into_size = self.files.size(&commit.into.path).unwrap_or(into_before);
        let moved = self.step(&format!("record the merge of {vm}/{disk}"), UndoAction::Nothing, |_| {
            Ok(ctx.catalog.record_commit_merge(&CommitMerge {
                released: plan.pin.clone(),
                top: commit.top.id,
                into: commit.into.id,
                into_size,
            })?)
        })?;
        crate::ops::crashpoint::hit("delete", "record");
        self.step(&format!("remove {}", commit.top.path.display()), UndoAction::Nothing, |run| {
            run.files.remove(&commit.top.path).map_err(|e| DeleteError::RemoveFile(Box::new(e)))
        })?;
        crate::ops::crashpoint::hit("delete", "remove");
        self.freed += i128::from(top_size) + i128::from(into_before) - i128::from(into_size);
        self.report.removed.push(commit.top.path.clone());
        self.report.merged.push(MergeReport {
            vm: vm.to_owned(),
            disk: disk.to_owned(),
            method: if commit.active { "active-commit" } else { "commit" },
            merged: commit.top.path.clone(),
            into: commit.into.path.clone(),
            moved_pins: moved.into_iter().map(|d| d.name).collect(),
            memory_images: rewritten,
        });
        Ok(())
    }

    /// Starts the block commit and waits for it: until ready, then pivots
    /// (active), or until the job is gone (a non-active layer). On a
    /// timeout the job is aborted.
    fn run_commit_job(&self, commit: &CommitStep) -> Result<(), DeleteError> {
        let hv = self.ctx.host.hypervisor();
        let (domain, disk) = (commit.domain.as_str(), commit.disk.as_str());
        let fail = |source| DeleteError::Commit {
            vm: commit.vm.clone(),
            disk: commit.disk.clone(),
            top: commit.top.path.clone(),
            base: commit.into.path.clone(),
            source: Box::new(source),
        };
        if hv.block_job(domain, disk).map_err(fail)?.is_some() {
            return Err(DeleteError::BlockJobRunning { vm: commit.vm.clone(), disk: commit.disk.clone() });
        }
        let opts = BlockCommit {
            active: commit.active,
            base: Some(commit.into.path.clone()),
            top: (!commit.active).then(|| commit.top.path.clone()),
            ..BlockCommit::default()
        };
        hv.block_commit(domain, disk, &opts).map_err(fail)?;
        crate::ops::crashpoint::hit("delete", "commit-started");
        let what = format!("the commit job of {}/{}", commit.vm, commit.disk);
        let waited = crate::wait::until::<_, crate::hypervisor::HvError, _>(
            &what,
            self.settings.job_deadline,
            self.settings.poll,
            || match hv.block_job(domain, disk)? {
                Some(job) if commit.active && job.is_ready() => Ok(Some(true)),
                Some(_) => Ok(None),
                None => Ok(Some(false)),
            },
        );
        match waited {
            Ok(true) => hv.block_job_pivot(domain, disk).map_err(fail),
            Ok(false) if commit.active => Err(DeleteError::CommitVanished {
                vm: commit.vm.clone(),
                disk: commit.disk.clone(),
                top: commit.top.path.clone(),
            }),
            Ok(false) => Ok(()),
            Err(crate::wait::WaitError::Timeout { waited, .. }) => {
                if let Err(e) = hv.block_job_abort(domain, disk) {
                    tracing::error!("cannot abort the commit job on {domain}/{disk}: {e}");
                }
                Err(DeleteError::CommitTimeout {
                    vm: commit.vm.clone(),
                    disk: commit.disk.clone(),
                    top: commit.top.path.clone(),
                    waited_s: waited.as_secs(),
                })
            }
        }
    }

    /// After a commit: libvirt's live chain and qemu-img's both read the
    /// catalog's chain without the merged image.
    fn verify_commit(&self, commit: &CommitStep) -> Result<(), DeleteError> {
        let live = self.ctx.host.hypervisor().domain(&commit.domain).map_err(|source| DeleteError::InspectDomain {
            vm: commit.vm.clone(),
            domain: commit.domain.clone(),
            source: Box::new(source),
        })?;
        let found: Vec<PathBuf> = live
            .def
            .disks()
            .into_iter()
            .find(|d| d.target == commit.disk)
            .map(|d| d.source.into_iter().chain(d.backing).collect())
            .unwrap_or_default();
        let merged = !found.contains(&commit.top.path)
            && if found.len() > 1 { found.starts_with(&commit.after) } else { found.first() == commit.after.first() };
        if !merged {
            if found.contains(&commit.top.path) {
                return Err(DeleteError::CommitVanished {
                    vm: commit.vm.clone(),
                    disk: commit.disk.clone(),
                    top: commit.top.path.clone(),
                });
            }
            return Err(DeleteError::ChainMismatch {
                vm: commit.vm.clone(),
                disk: commit.disk.clone(),
                seen_by: "libvirt",
                expected: commit.after.clone(),
                found,
            });
        }
        self.verify_on_disk(&commit.vm, &commit.disk, &commit.after)
    }

    /// `qemu-img info --backing-chain` of `expected[0]` starts with `expected`.
    fn verify_on_disk(&self, vm: &str, disk: &str, expected: &[PathBuf]) -> Result<(), DeleteError> {
        let Some(top) = expected.first() else { return Ok(()) };
        let found = self.files.backing_chain(top).map_err(|source| DeleteError::ReadChain {
            vm: vm.to_owned(),
            disk: disk.to_owned(),
            path: top.clone(),
            source: Box::new(source),
        })?;
        if !found.starts_with(expected) {
            return Err(DeleteError::ChainMismatch {
                vm: vm.to_owned(),
                disk: disk.to_owned(),
                seen_by: "qemu-img",
                expected: expected.to_vec(),
                found,
            });
        }
        Ok(())
    }

    fn pull(&mut self, plan: &Plan, pull: &PullStep) -> Result<(), DeleteError> {
        let ctx = self.ctx;
        let (vm, disk) = (pull.vm.as_str(), pull.disk.as_str());
        let removed_size = self.files.size(&pull.removed.path).unwrap_or(0);
        let top_before = self.files.size(&pull.top.path).unwrap_or(0);
        let name = format!("pull {vm}/{disk}: {} into {}", pull.removed.path.display(), pull.top.path.display());
        let after: Vec<PathBuf> =
            std::iter::once(pull.top.path.clone()).chain(pull.backing.iter().map(|b| b.path.clone())).collect();
        self.step(&name, UndoAction::Nothing, |run| {
            if !pull.done {
                let backing = pull.backing.as_ref().map(|b| (b.path.as_path(), b.format));
                run.files.pull(&pull.top.path, backing).map_err(|source| DeleteError::Pull {
                    vm: vm.to_owned(),
                    disk: disk.to_owned(),
                    removed: pull.removed.path.clone(),
                    into: pull.top.path.clone(),
                    source: Box::new(source),
                })?;
            }
            run.verify_on_disk(vm, disk, &after)
        })?;
        crate::ops::crashpoint::hit("delete", "pull");
        let top_size = self.files.size(&pull.top.path).unwrap_or(top_before);
        self.step(&format!("record the merge of {vm}/{disk}"), UndoAction::Nothing, |_| {
            Ok(ctx.catalog.record_pull_merge(&PullMerge {
                released: plan.pin.clone(),
                removed: pull.removed.id,
                into: pull.top.id,
                into_size: top_size,
            })?)
        })?;
        crate::ops::crashpoint::hit("delete", "record");
        self.step(&format!("remove {}", pull.removed.path.display()), UndoAction::Nothing, |run| {
            run.files.remove(&pull.removed.path).map_err(|e| DeleteError::RemoveFile(Box::new(e)))
        })?;
        crate::ops::crashpoint::hit("delete", "remove");
        self.freed += i128::from(removed_size) + i128::from(top_before) - i128::from(top_size);
        self.report.removed.push(pull.removed.path.clone());
        self.report.merged.push(MergeReport {
            vm: vm.to_owned(),
            disk: disk.to_owned(),
            method: "pull",
            merged: pull.removed.path.clone(),
            into: pull.top.path.clone(),
            moved_pins: Vec::new(),
            memory_images: Vec::new(),
        });
        Ok(())
    }
}
