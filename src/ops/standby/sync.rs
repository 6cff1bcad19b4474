//! `envclone standby sync SB`: brings SB to its primary's newest complete
//! snapshot, transferring only what changed since SB's point (see the
//! [module documentation](super) for how).
//!
//! ```text
//! Lock SB -> (ENV's lock) Plan -> Pin -> (ENV's lock released) Copy -> Verify -> Merge+Record -> Done
//! ```
//!
//! Steps, each journaled before it runs (operation `standby-sync` on SB):
//! `pin the images the sync reads` (undo: the pins SB is recorded at);
//! per disk `copy VM/DISK in full` or `copy VM/DISK overlay N` (undo:
//! drop the copy) and `verify` (`qemu-img compare` against the snapshot's
//! chain, or SHA-256 of the copy against the source's); `merge into SB's
//! images and record` (undo: finish it, see `undo.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{undo, StandbyError};
use crate::catalog::{
    Dependent, Image, ImageFormat, ImageId, ImageKind, NewStandbySync, OperationKind, Snapshot, StandbyRecord,
    SyncedDisk, UndoAction,
};
use crate::host::{Host, Storage, StorageError};
use crate::hypervisor::HvError;
use crate::ops::context::OpContext;
use crate::ops::journal::{Journal, Journaled};
use crate::ops::snapshot::snapshot_dependent;
use crate::ops::transfer::{self, At};
use crate::ops::EnvLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    /// SB was at the newest snapshot already: nothing moved.
    UpToDate,
    /// What the snapshot reads, copied flattened.
    Full,
    /// Only the overlays written since SB's point, merged into SB's images.
    Incremental,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::UpToDate => "up-to-date",
            SyncMode::Full => "full",
            SyncMode::Incremental => "incremental",
        }
    }
}

/// What a sync did; also what `--json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub standby: String,
    pub primary: String,
    /// The snapshot SB is at now.
    pub snapshot: String,
    /// The snapshot SB was at before; none before its first sync.
    pub previous: Option<String>,
    /// `full` if any disk was copied in full, else `incremental`, or `up-to-date`.
    pub mode: SyncMode,
    /// Bytes written into SB's storage by this sync.
    pub bytes: u64,
    pub duration_ms: u64,
    pub disks: Vec<DiskReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskReport {
    pub vm: String,
    pub disk: String,
    pub mode: SyncMode,
    /// SB's image.
    pub path: PathBuf,
    pub bytes: u64,
    /// The primary's images copied (oldest first), or the snapshot's image for a full copy.
    pub sources: Vec<PathBuf>,
    /// SHA-256 of the last file written for this disk.
    pub sha256: Option<String>,
}

/// One copied overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayCopy {
    pub source: PathBuf,
    pub copy: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// What the merge step does for one disk: journaled with it, so that
/// `recover` can finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    pub vm: String,
    pub disk: String,
    /// SB's image.
    pub target: PathBuf,
    /// The snapshot's image of this disk: SB's point afterwards.
    pub source_image: ImageId,
    pub source_path: PathBuf,
    pub mode: SyncMode,
    /// Full: the staged copy, renamed over `target`.
    pub staged: Option<PathBuf>,
    /// Incremental: the copies, oldest first, merged in that order.
    pub overlays: Vec<OverlayCopy>,
    pub bytes: u64,
    pub sha256: Option<String>,
}

/// The merge step's journaled data (`standby-finish-sync`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishPlan {
    pub standby: String,
    pub snapshot: String,
    pub snapshot_created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub mode: SyncMode,
    pub bytes: u64,
    pub disks: Vec<DiskPlan>,
}

/// Brings `standby` to its primary's newest complete snapshot.
pub fn sync(ctx: &OpContext<'_>, standby: &str) -> Result<SyncReport, StandbyError> {
    let started = Instant::now();
    let started_at = ctx.clock.now();
    let state_dir = &ctx.config.controller.state_dir;
    let _lock = EnvLock::acquire(state_dir, standby, "standby sync")?;
    let record = match ctx.catalog.standby_named(standby)? {
        Some(record) => record,
        None => {
            let known = ctx.catalog.standbys(None)?.into_iter().map(|s| s.name).collect();
            return Err(StandbyError::UnknownStandby { name: standby.to_owned(), known });
        }
    };
    if let Some(snapshot) = &record.merging {
        return Err(StandbyError::MergePending { standby: standby.to_owned(), snapshot: snapshot.clone() });
    }
    let sb_ctx = super::on_its_host(ctx, &record)?;
    let primary_host = super::primary_host(ctx, &record)?;
    let ctx = &sb_ctx;
    let transfer = ctx.host.storage();
    refuse_active_side(ctx, &record)?;
    check_shut_off(ctx, &record)?;

    // Under ENV's lock: no delete is half way through the images read.
    let primary_lock = EnvLock::acquire_waiting(
        state_dir,
        &record.primary,
        &format!("standby sync of {standby} (pinning)"),
        super::PRIMARY_LOCK_WAIT,
    )?;
    let snapshot = ctx
        .catalog
        .live_snapshot(&record.primary)?
        .ok_or_else(|| StandbyError::NoSnapshot { env: record.primary.clone(), standby: standby.to_owned() })?;
    let (mut disks, reads) = plan(ctx, primary_host.storage(), &record, &snapshot)?;
    let report = |disks: &[DiskPlan], mode, bytes| SyncReport {
        standby: standby.to_owned(),
        primary: record.primary.clone(),
        snapshot: snapshot.name.clone(),
        previous: record.snapshot.clone(),
        mode,
        bytes,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        disks: disks.iter().map(disk_report).collect(),
    };
    if record.snapshot.as_deref() == Some(snapshot.name.as_str()) && disks.iter().all(|d| d.mode == SyncMode::UpToDate)
    {
        ctx.note(format!("standby {standby} is at snapshot {} already: nothing to do", snapshot.name));
        return Ok(report(&disks, SyncMode::UpToDate, 0));
    }
    ctx.note(format!(
        "standby {standby}: from {} to snapshot {} of {}",
        record.snapshot.as_deref().unwrap_or("nothing"),
        snapshot.name,
        record.primary
    ));
    let journal = Journal::begin(ctx.catalog, OperationKind::StandbySync, standby, ctx.clock.now())?;
    journal.on_host(ctx.host.name())?;
    let mut run = Run { ctx, journal, transfer, primary_host, primary_env: &record.primary, standby };
    let result = (|| {
        let dependent = Dependent::standby_named(standby);
        run.step("pin the images the sync reads", undo::restore_pins(standby), |run| {
            for image in &reads {
                run.ctx.catalog.pin(*image, &dependent)?;
            }
            Ok(())
        })?;
        drop(primary_lock);
        run.copy(&mut disks, &snapshot)?;
        let mode = if disks.iter().any(|d| d.mode == SyncMode::Full) { SyncMode::Full } else { SyncMode::Incremental };
        let plan = FinishPlan {
            standby: standby.to_owned(),
            snapshot: snapshot.name.clone(),
            snapshot_created_at: snapshot.created_at,
            started_at,
            mode,
            bytes: disks.iter().map(|d| d.bytes).sum(),
            disks: disks.clone(),
        };
        let undo_finish = UndoAction::Custom {
            kind: undo::UNDO_FINISH_SYNC.to_owned(),
            data: serde_json::to_value(&plan).unwrap_or_default(),
        };
        run.step("merge into the standby's images and record", undo_finish, |run| finish(run.ctx, &plan))?;
        Ok(plan)
    })();
    match result {
        Ok(plan) => {
            run.journal.complete()?;
            Ok(report(&plan.disks, plan.mode, plan.bytes))
        }
        Err(error) => Err(run.roll_back(error)),
    }
}

/// A standby that serves its primary is not synced (nor destroyed): its
/// images hold the environment's live data, even with its domains stopped.
/// (`envclone standby sync SB` runs the home sync for it instead, see
/// `ops::failover::home_sync`.)
pub(crate) fn refuse_active_side(ctx: &OpContext<'_>, record: &StandbyRecord) -> Result<(), StandbyError> {
    match ctx.catalog.open_failover(&record.name)? {
        Some(open) if open.mode != crate::catalog::FailoverMode::Test => Err(StandbyError::ActiveSide {
            standby: record.name.clone(),
            env: record.primary.clone(),
            epoch: open.epoch.unwrap_or(0),
        }),
        _ => Ok(()),
    }
}

/// The domains of a standby must be shut off while its images change.
fn check_shut_off(ctx: &OpContext<'_>, record: &StandbyRecord) -> Result<(), StandbyError> {
    for domain in &record.resources.domains {
        match ctx.host.hypervisor().domain(&domain.domain) {
            Ok(found) if found.state.is_active() => {
                return Err(StandbyError::StandbyRunning {
                    standby: record.name.clone(),
                    domain: domain.domain.clone(),
                })
            }
            Ok(_) | Err(HvError::NoSuchDomain { .. }) => {}
            Err(source) => {
                return Err(StandbyError::InspectDomain {
                    vm: domain.vm.clone(),
                    domain: domain.domain.clone(),
                    source: Box::new(source),
                })
            }
        }
    }
    Ok(())
}

/// Per disk: up to date, incremental (the overlays above SB's point) or
/// full; and every image the sync reads.
fn plan(
    ctx: &OpContext<'_>,
    primary: &dyn Storage,
    record: &StandbyRecord,
    snapshot: &Snapshot,
) -> Result<(Vec<DiskPlan>, Vec<ImageId>), StandbyError> {
    let catalog = ctx.catalog;
    let mut images: BTreeMap<(String, String), Image> = BTreeMap::new();
    for image in catalog.images_needed_by(&snapshot_dependent(&record.primary, &snapshot.name))? {
        if let Some(disk) = image.disk.clone() {
            if image.kind != ImageKind::Memory {
                images.insert((image.vm.clone(), disk), image);
            }
        }
    }
    let mut plans = Vec::new();
    let mut reads = Vec::new();
    for disk in &record.disks {
        let Some(top) = images.get(&(disk.vm.clone(), disk.disk.clone())) else {
            return Err(StandbyError::SnapshotLacksDisk {
                snapshot: snapshot.name.clone(),
                vm: disk.vm.clone(),
                disk: disk.disk.clone(),
            });
        };
        if !primary.exists(&top.path)? {
            return Err(StandbyError::ImageMissing {
                vm: disk.vm.clone(),
                disk: disk.disk.clone(),
                path: top.path.clone(),
            });
        }
        let chain = catalog.chain(top.id)?;
        let position = disk.source_image.and_then(|id| chain.iter().position(|image| image.id == id));
        let have_target = ctx.host.storage().exists(&disk.path)?;
        let mut plan = DiskPlan {
            vm: disk.vm.clone(),
            disk: disk.disk.clone(),
            target: disk.path.clone(),
            source_image: top.id,
            source_path: top.path.clone(),
            mode: SyncMode::Full,
            staged: None,
            overlays: Vec::new(),
            bytes: 0,
            sha256: disk.sha256.clone(),
        };
        match position {
            Some(0) if have_target => {
                plan.mode = SyncMode::UpToDate;
            }
            Some(k)
                if have_target
                    && chain[..k].iter().all(|i| i.kind == ImageKind::Overlay && i.format == ImageFormat::Qcow2) =>
            {
                plan.mode = SyncMode::Incremental;
                for image in chain[..k].iter().rev() {
                    reads.push(image.id);
                    plan.overlays.push(OverlayCopy {
                        source: image.path.clone(),
                        copy: super::overlay_copy_path(&record.storage, &record.name, &disk.vm, &disk.disk, image.id.0),
                        sha256: String::new(),
                        bytes: 0,
                    });
                }
            }
            _ => {
                reads.extend(chain.iter().map(|image| image.id));
                plan.staged = Some(super::staged_path(&disk.path));
            }
        }
        plans.push(plan);
    }
    Ok((plans, reads))
}

fn disk_report(plan: &DiskPlan) -> DiskReport {
    DiskReport {
        vm: plan.vm.clone(),
        disk: plan.disk.clone(),
        mode: plan.mode,
        path: plan.target.clone(),
        bytes: plan.bytes,
        sources: match plan.mode {
            SyncMode::Full => vec![plan.source_path.clone()],
            _ => plan.overlays.iter().map(|o| o.source.clone()).collect(),
        },
        sha256: plan.sha256.clone(),
    }
}

struct Run<'r, 'c> {
    ctx: &'r OpContext<'c>,
    /// Consumed by the commit or the rollback, which end the run.
    journal: Journal<'c>,
    /// SB's host's.
    transfer: &'r dyn Storage,
    /// Where the primary's images are read.
    primary_host: &'r dyn Host,
    primary_env: &'r str,
    standby: &'r str,
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = StandbyError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    fn journal(&mut self) -> &mut Journal<'c> {
        &mut self.journal
    }
}

impl Run<'_, '_> {
    /// Copies and verifies every disk that is not up to date.
    fn copy(&mut self, disks: &mut [DiskPlan], snapshot: &Snapshot) -> Result<(), StandbyError> {
        let mut first = true;
        for plan in disks.iter_mut() {
            if plan.mode == SyncMode::UpToDate {
                continue;
            }
            let dir = plan.target.parent().map(PathBuf::from).unwrap_or_default();
            self.ctx.host.storage().create_dir(&dir)?;
            let (vm, disk) = (plan.vm.clone(), plan.disk.clone());
            let transfer_error = transfer_error(&vm, &disk);
            if let Some(staged) = plan.staged.clone() {
                if transfer::same_host(self.primary_host, self.ctx.host) {
                    self.copy_full_here(plan, &staged, snapshot, &mut first)?;
                } else {
                    self.ship_full(plan, &staged, snapshot, &mut first)?;
                }
                continue;
            }
            for index in 0..plan.overlays.len() {
                let overlay = plan.overlays[index].clone();
                let name = format!("copy {vm}/{disk} overlay {}", overlay.source.display());
                let progress = self.ctx.progress_of(&name);
                let copied = self.step(&name, undo::drop_copy(self.standby, &overlay.copy), |run| {
                    run.transfer.remove(&overlay.copy).map_err(transfer_error("remove a stale copy"))?;
                    let (from, to) = (At::new(run.primary_host, &overlay.source), At::new(run.ctx.host, &overlay.copy));
                    transfer::copy_file(run.ctx.config, from, to, &progress).map_err(|source| StandbyError::Ship {
                        vm: vm.clone(),
                        disk: disk.clone(),
                        step: "copy an overlay",
                        source: Box::new(source),
                    })
                })?;
                hit_once(&mut first, "copy");
                self.step(
                    &format!("verify {vm}/{disk} copy {}", overlay.copy.display()),
                    UndoAction::Nothing,
                    |run| {
                        let written = run.transfer.sha256(&overlay.copy).map_err(transfer_error("checksum"))?;
                        if written == copied.sha256 {
                            Ok(())
                        } else {
                            Err(StandbyError::Verify {
                                vm: vm.clone(),
                                disk: disk.clone(),
                                path: overlay.copy.clone(),
                                detail: format!("has SHA-256 {written}, its source {}", copied.sha256),
                            })
                        }
                    },
                )?;
                plan.overlays[index].sha256 = copied.sha256.clone();
                plan.overlays[index].bytes = copied.bytes;
                plan.bytes += copied.bytes;
                plan.sha256 = Some(copied.sha256);
            }
        }
        crate::ops::crashpoint::hit("standby-sync", "verify");
        Ok(())
    }

    /// On one host: a full copy of the snapshot's chain, verified by
    /// reading both.
    fn copy_full_here(
        &mut self,
        plan: &mut DiskPlan,
        staged: &Path,
        snapshot: &Snapshot,
        first: &mut bool,
    ) -> Result<(), StandbyError> {
        let (vm, disk) = (plan.vm.clone(), plan.disk.clone());
        let transfer_error = transfer_error(&vm, &disk);
        let source = plan.source_path.clone();
        let name = format!("copy {vm}/{disk} in full (snapshot {})", snapshot.name);
        let bytes = self.step(&name, undo::drop_copy(self.standby, staged), |run| {
            // Left by an interrupted sync that was rolled back: garbage.
            run.transfer.remove(staged).map_err(transfer_error("remove a stale copy"))?;
            run.transfer.copy_full(&source, staged, &|_| {}).map_err(transfer_error("copy in full"))
        })?;
        hit_once(first, "copy");
        let sha256 = self.step(&format!("verify {vm}/{disk}"), UndoAction::Nothing, |run| {
            let same = run.transfer.same_content(&source, staged).map_err(transfer_error("compare"))?;
            if !same {
                return Err(StandbyError::Verify {
                    vm: vm.clone(),
                    disk: disk.clone(),
                    path: staged.to_owned(),
                    detail: format!("does not read like {}", source.display()),
                });
            }
            run.transfer.sha256(staged).map_err(transfer_error("checksum"))
        })?;
        plan.bytes = bytes;
        plan.sha256 = Some(sha256);
        Ok(())
    }

    /// To another host: the snapshot's chain flattened on the primary's
    /// host, shipped (verified by SHA-256 on both hosts), then checked on
    /// SB's host by `qemu-img check`.
    fn ship_full(
        &mut self,
        plan: &mut DiskPlan,
        staged: &Path,
        snapshot: &Snapshot,
        first: &mut bool,
    ) -> Result<(), StandbyError> {
        let (vm, disk) = (plan.vm.clone(), plan.disk.clone());
        let transfer_error = transfer_error(&vm, &disk);
        let source = plan.source_path.clone();
        let scratch = super::scratch_path(self.ctx.config, self.primary_env, self.standby, &vm, &disk);
        let name = format!("ship {vm}/{disk} in full to host {} (snapshot {})", self.ctx.host.name(), snapshot.name);
        let progress = self.ctx.progress_of(&name);
        let copied = self.step(&name, undo::drop_copy(self.standby, staged), |run| {
            run.transfer.remove(staged).map_err(transfer_error("remove a stale copy"))?;
            let (from, to) = (At::new(run.primary_host, &source), At::new(run.ctx.host, staged));
            transfer::copy_full(run.ctx.config, from, &scratch, to, &progress).map_err(|source| StandbyError::Ship {
                vm: vm.clone(),
                disk: disk.clone(),
                step: "ship in full",
                source: Box::new(source),
            })
        })?;
        hit_once(first, "copy");
        self.step(&format!("verify {vm}/{disk}"), UndoAction::Nothing, |run| {
            let problems = run.transfer.check(staged).map_err(transfer_error("check"))?;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(StandbyError::Verify {
                    vm: vm.clone(),
                    disk: disk.clone(),
                    path: staged.to_owned(),
                    detail: format!("is not a sound image: {}", problems.join(", ")),
                })
            }
        })?;
        plan.bytes = copied.bytes;
        plan.sha256 = Some(copied.sha256);
        Ok(())
    }

    fn roll_back(self, error: StandbyError) -> StandbyError {
        let (ctx, _transfer) = (self.ctx, self.transfer);
        let cause = crate::error::chain(&error);
        let failures = self.journal.roll_back(&cause, |action| undo::undo_action(ctx, action).map(drop));
        if failures.is_empty() {
            error
        } else {
            StandbyError::CleanupFailed { cause: Box::new(error), failures }
        }
    }
}

/// A failure of one disk's `step` on SB's storage.
fn transfer_error(vm: &str, disk: &str) -> impl Fn(&'static str) -> Box<dyn FnOnce(StorageError) -> StandbyError> {
    let (vm, disk) = (vm.to_owned(), disk.to_owned());
    move |step| {
        let (vm, disk) = (vm.clone(), disk.clone());
        Box::new(move |source| StandbyError::Transfer { vm, disk, step, source: Box::new(source) })
    }
}

fn hit_once(first: &mut bool, point: &str) {
    if std::mem::take(first) {
        crate::ops::crashpoint::hit("standby-sync", point);
    }
}

/// Merges (or installs) every disk's verified copies into SB's images,
/// records SB at the plan's snapshot (pins moved) and removes the copies.
/// Idempotent: what `recover` runs to finish an interrupted merge.
pub(crate) fn finish(ctx: &OpContext<'_>, plan: &FinishPlan) -> Result<(), StandbyError> {
    let catalog = ctx.catalog;
    let Some(record) = catalog.standby_named(&plan.standby)? else {
        ctx.note(format!("standby {} is gone: nothing to finish", plan.standby));
        return Ok(());
    };
    let sb_ctx = super::on_its_host(ctx, &record)?;
    let ctx = &sb_ctx;
    let transfer = ctx.host.storage();
    let recorded = record.merging.is_none()
        && record.snapshot.as_deref() == Some(plan.snapshot.as_str())
        && plan.disks.iter().all(|d| {
            record.disks.iter().any(|r| r.vm == d.vm && r.disk == d.disk && r.source_image == Some(d.source_image))
        });
    if !recorded {
        // Checked once more before anything is merged; not when resuming an
        // interrupted merge: merging rewrites a copy's header (its backing
        // file), and its content was verified before the merge began.
        let resuming = record.merging.as_deref() == Some(plan.snapshot.as_str());
        if !resuming {
            for disk in &plan.disks {
                for overlay in &disk.overlays {
                    let written = transfer.sha256(&overlay.copy).map_err(|source| StandbyError::Transfer {
                        vm: disk.vm.clone(),
                        disk: disk.disk.clone(),
                        step: "checksum before the merge",
                        source: Box::new(source),
                    })?;
                    if written != overlay.sha256 {
                        return Err(StandbyError::Verify {
                            vm: disk.vm.clone(),
                            disk: disk.disk.clone(),
                            path: overlay.copy.clone(),
                            detail: format!("has SHA-256 {written} before the merge, {} when copied", overlay.sha256),
                        });
                    }
                }
            }
        }
        catalog.begin_standby_merge(&plan.standby, &plan.snapshot)?;
        let mut first = true;
        for disk in &plan.disks {
            let transfer_error = transfer_error(&disk.vm, &disk.disk);
            if let Some(staged) = &disk.staged {
                if transfer.exists(staged).map_err(transfer_error("look at the full copy"))? {
                    transfer.install(staged, &disk.target).map_err(transfer_error("install the full copy"))?;
                } else if !transfer.exists(&disk.target).map_err(transfer_error("look at the copy"))? {
                    return Err(StandbyError::Verify {
                        vm: disk.vm.clone(),
                        disk: disk.disk.clone(),
                        path: staged.clone(),
                        detail: "is gone and was never installed".into(),
                    });
                }
            }
            for overlay in &disk.overlays {
                if !transfer.exists(&overlay.copy).map_err(transfer_error("look at the copy"))? {
                    return Err(StandbyError::Verify {
                        vm: disk.vm.clone(),
                        disk: disk.disk.clone(),
                        path: overlay.copy.clone(),
                        detail: "is gone before its merge finished: sync the standby in full".into(),
                    });
                }
                transfer.merge(&overlay.copy, &disk.target).map_err(transfer_error("merge"))?;
            }
            if disk.mode != SyncMode::UpToDate {
                hit_once(&mut first, "merge");
            }
        }
        let disks = plan
            .disks
            .iter()
            .map(|d| SyncedDisk {
                vm: d.vm.clone(),
                disk: d.disk.clone(),
                source_image: d.source_image,
                sha256: d.sha256.clone().unwrap_or_default(),
            })
            .collect();
        catalog.record_standby_sync(
            &plan.standby,
            &NewStandbySync {
                snapshot: plan.snapshot.clone(),
                snapshot_created_at: plan.snapshot_created_at,
                mode: match plan.mode {
                    SyncMode::Full => "full".into(),
                    _ => "incremental".into(),
                },
                bytes: plan.bytes,
                started_at: plan.started_at,
                finished_at: ctx.clock.now(),
                disks,
            },
        )?;
    }
    for disk in &plan.disks {
        for copy in disk.overlays.iter().map(|o| &o.copy).chain(disk.staged.iter()) {
            if let Err(e) = transfer.remove(copy) {
                ctx.note(format!("cannot remove {}: {}", copy.display(), crate::error::chain(&e)));
            }
        }
    }
    Ok(())
}
