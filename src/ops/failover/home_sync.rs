//! The home sync: `envclone standby sync SB` while SB serves its primary
//! ENV (a role switch `active`). Autorestore runs the other way then
//! (issue #6): what SB wrote is carried towards ENV's storage while SB
//! serves, so that failback has only the newest images left to move and
//! ENV's storage lags SB by one snapshot, not by the whole switch.
//!
//! Under SB's lock (no failback runs) and ENV's (no delete merges what is
//! read, no snapshot adds to it), for each disk of SB: its live top as
//! libvirt says, and failback's plan of its chain (`carry.rs`). Every image
//! of the plan but the live top (still written) that is not home yet is
//! copied and rebased exactly as failback does it (same place, same
//! backing), then **verified**: `qemu-img compare` of the copy with its
//! home chain and SB's image with its chain must say identical. Each copy
//! is recorded in the switch's row ([`HomeCopy`] in `resources.home`),
//! with the size and time of its source; with them the newest complete
//! snapshot of ENV all of whose images are home (`home_snapshot`: its age
//! is the lag of the way home, which `status` shows).
//!
//! A recorded copy whose source changed since (a retention delete merged
//! images on SB: its size or time differ, or its backing is not the plan's
//! any more) or whose file is gone is carried again; one whose image is in
//! no plan any more (merged away) is deleted at home and forgotten. Run
//! again with nothing new, it copies nothing (and journals nothing).
//!
//! Steps, each journaled before it runs (operation `failover` on ENV, crash
//! points `home-sync:STEP`): `drop home copy FILE` (no undo: the image is
//! gone), `carry home VM/DISK FILE` (undo: delete the copy), `verify
//! VM/DISK FILE`, and last `record epoch N: K images of ENV home` (the
//! switch's row rewritten). A failure before the record deletes this run's
//! copies; the record stays as it was, and what it lists that is gone is
//! carried again next time. From the record on, `envclone recover`
//! completes the operation ([`super::is_record_step`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::carry::{carry_image, carry_step, live_top, plan_disk, CarryImage, HomeCopy};
use super::drill::{millis, Run, StepTime};
use super::fence::{switch_resources, SwitchResources};
use super::{FailoverError, Tools};
use crate::catalog::{
    CatalogError, FailoverRecord, FailoverState, ImageId, ImageKind, SnapshotState, StandbyRecord, UndoAction,
};
use crate::ops::context::OpContext;
use crate::ops::journal::Journaled as _;
use crate::ops::EnvLock;

/// What `standby sync SB --json` prints while SB serves ENV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeSyncReport {
    pub env: String,
    pub standby: String,
    /// Always `home`: the daemon reads a sync's `mode`.
    pub mode: String,
    /// The switch's epoch.
    pub epoch: i64,
    /// The newest complete snapshot of ENV all of whose images are home now.
    pub snapshot: Option<String>,
    /// That snapshot's age: the lag of the way home.
    pub lag_seconds: Option<i64>,
    /// The images carried now, each verified.
    pub copied: Vec<HomeCopied>,
    /// Copies deleted at home: their images were merged away on SB.
    pub dropped: Vec<PathBuf>,
    /// Bytes copied now.
    pub bytes: u64,
    /// Images home already, from an earlier sync, unchanged since.
    pub already_home: usize,
    /// Bytes of all the images home now.
    pub bytes_home: u64,
    pub steps: Vec<StepTime>,
    pub duration_ms: u64,
}

/// One image carried home now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeCopied {
    pub vm: String,
    pub disk: String,
    /// The copy in ENV's storage.
    pub path: PathBuf,
    /// The image on SB's storage.
    pub from: PathBuf,
    pub bytes: u64,
    /// The copy read like its source, chains included.
    pub verified: bool,
}

/// One image of SB's chains that is not written any more, as planned now.
struct Planned {
    vm: String,
    disk: String,
    image: CarryImage,
}

/// Carries what SB wrote home while it serves; see the module documentation.
pub fn sync_home(ctx: &OpContext<'_>, standby: &str, tools: Tools<'_>) -> Result<HomeSyncReport, FailoverError> {
    let started = Instant::now();
    let state_dir = &ctx.config.controller.state_dir;
    let record = ctx
        .catalog
        .standby_named(standby)?
        .ok_or_else(|| CatalogError::NotFound { what: format!("standby {standby}") })?;
    let env = record.primary.clone();
    let _standby_lock = EnvLock::acquire(state_dir, standby, "standby sync (home)")?;
    let switch = serving_switch(ctx, &record)?;
    let primary = ctx.config.environment(&env)?.clone();
    let _env_lock = EnvLock::acquire_waiting(
        state_dir,
        &env,
        &format!("standby sync of {standby} (home)"),
        crate::ops::standby::PRIMARY_LOCK_WAIT,
    )?;
    let mut resources = switch_resources(&switch);
    let epoch = switch.epoch.unwrap_or(0);
    // SB's images are on its host; their copies go to ENV's (the context's).
    let sb = ctx.host_named(Some(&record.host))?;
    let sb_ctx = OpContext { host: sb, ..*ctx };

    let mut planned = Vec::new();
    for domain in &record.resources.domains {
        for disk in record.disks.iter().filter(|d| d.vm == domain.vm) {
            let top = live_top(&sb_ctx, &domain.domain, &disk.disk)?;
            let home_dir = primary.storage_dir(ctx.config, &env).join(&disk.vm);
            for image in plan_disk(ctx, &record, disk, &top, &home_dir)? {
                // The live overlay is still written: failback carries it.
                if image.from != top {
                    planned.push(Planned { vm: disk.vm.clone(), disk: disk.disk.clone(), image });
                }
            }
        }
    }
    let mut kept = Vec::new();
    let mut to_carry = Vec::new();
    for plan in planned.iter() {
        match resources
            .home
            .iter()
            .find(|c| c.image == plan.image.id && c.still_valid(&plan.image, ctx.host.storage(), sb.storage()))
        {
            Some(copy) => kept.push(copy.clone()),
            None => to_carry.push(plan),
        }
    }
    // A copy of an image no plan has (merged away), or at a place the plan
    // does not use any more, is garbage; one at a place a carry is about to
    // fill is replaced there instead.
    let places: BTreeSet<&PathBuf> = planned.iter().map(|p| &p.image.to).collect();
    let dropped: Vec<PathBuf> =
        resources.home.iter().filter(|c| !kept.contains(c) && !places.contains(&c.to)).map(|c| c.to.clone()).collect();
    let newest = ctx.catalog.live_snapshot(&env)?.map(|s| s.name);
    let mut report = HomeSyncReport {
        env: env.clone(),
        standby: standby.to_owned(),
        mode: "home".into(),
        epoch,
        snapshot: None,
        lag_seconds: None,
        copied: Vec::new(),
        dropped: Vec::new(),
        bytes: 0,
        already_home: kept.len(),
        bytes_home: 0,
        steps: Vec::new(),
        duration_ms: 0,
    };

    if to_carry.is_empty() && dropped.is_empty() {
        // Nothing moves: only what the record says about snapshots may
        // change (a first sync, or a snapshot whose images all were home).
        resources.home = kept;
        finish_record(ctx, &record, &mut resources, newest)?;
        ctx.note(format!("standby {standby} serves {env}: its images are home already, nothing to carry"));
        return Ok(fill(report, &resources, ctx, started));
    }

    ctx.note(format!(
        "standby {standby} serves {env} (epoch {epoch}): carrying {} images home, {} there already",
        to_carry.len(),
        kept.len()
    ));
    let mut run = Run::new(ctx, tools, &env, started)?;
    run.points = "home-sync";
    let carried = carry_steps(&mut run, sb, &to_carry, &dropped);
    let (copies, copied) = match carried {
        Ok(carried) => carried,
        Err(error) => return Err(run.roll_back(error)),
    };
    resources.home = kept.into_iter().chain(copies).collect();
    let name = format!("record epoch {epoch}: {} images of {env} home", resources.home.len());
    let recorded = run.step(&name, UndoAction::Nothing, |run| finish_record(run.ctx, &record, &mut resources, newest));
    if let Err(error) = recorded {
        return Err(run.roll_back(error));
    }
    run.complete()?;
    report.bytes = copied.iter().map(|c| c.bytes).sum();
    report.copied = copied;
    report.dropped = dropped;
    report.steps = std::mem::take(&mut run.steps);
    Ok(fill(report, &resources, ctx, started))
}

/// SB's switch, refusing a standby that does not serve its primary or
/// whose switch is failing back.
fn serving_switch(ctx: &OpContext<'_>, standby: &StandbyRecord) -> Result<FailoverRecord, FailoverError> {
    let env = standby.primary.as_str();
    let switch = ctx.catalog.switch_in_force(env)?.filter(|s| s.standby == standby.name);
    match switch {
        Some(switch) if switch.state == FailoverState::Active => Ok(switch),
        Some(switch) => {
            Err(FailoverError::FailbackInterrupted { env: env.to_owned(), epoch: switch.epoch.unwrap_or(0) })
        }
        None => Err(FailoverError::NotServing { standby: standby.name.clone(), env: env.to_owned() }),
    }
}

/// The drops, then each carry and its verification; returns the copies to
/// record and what the report says of them.
fn carry_steps(
    run: &mut Run<'_, '_>,
    sb: &dyn crate::host::Host,
    to_carry: &[&Planned],
    dropped: &[PathBuf],
) -> Result<(Vec<HomeCopy>, Vec<HomeCopied>), FailoverError> {
    for path in dropped {
        run.step(&format!("drop home copy {}", path.display()), UndoAction::Nothing, |run| {
            run.ctx.host.storage().remove(path).map_err(|e| FailoverError::Remove {
                what: format!("the home copy {}", path.display()),
                detail: crate::error::chain(&e),
            })
        })?;
    }
    let mut copies = Vec::new();
    let mut copied = Vec::new();
    for Planned { vm, disk, image } in to_carry.iter().copied() {
        let undo = UndoAction::DeleteFile { path: image.to.clone() };
        let (bytes, source) = run.step(&carry_step(vm, disk, image), undo, |run| {
            // Looked at before the copy: a source that changes during it
            // differs from what is recorded, and is carried again.
            let source = sb.storage().stamp(&image.from).map_err(|e| FailoverError::Carry {
                vm: vm.clone(),
                disk: disk.clone(),
                step: "look at",
                path: image.from.clone(),
                source: Box::new(e),
            })?;
            Ok((carry_image(run.ctx, sb, vm, disk, image)?, source))
        })?;
        let name = image.from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        run.step(&format!("verify {vm}/{disk} {name}"), UndoAction::Nothing, |run| {
            // Across hosts the copy arrived verified by SHA-256 on both: its
            // chain at home is checked instead of read against SB's.
            let home = run.ctx.host.storage();
            let verified = if crate::ops::transfer::same_host(sb, run.ctx.host) {
                home.same_content(&image.from, &image.to)
            } else {
                crate::ops::failover::carry::chain_sound(home, &image.to, &image.backing_path)
            };
            match verified {
                Ok(true) => Ok(()),
                Ok(false) => Err(FailoverError::HomeCopyDiffers {
                    vm: vm.clone(),
                    disk: disk.clone(),
                    from: image.from.clone(),
                    to: image.to.clone(),
                }),
                Err(source) => Err(FailoverError::Carry {
                    vm: vm.clone(),
                    disk: disk.clone(),
                    step: "compare",
                    path: image.to.clone(),
                    source: Box::new(source),
                }),
            }
        })?;
        copies.push(HomeCopy::new(image, source, bytes, run.ctx.clock.now()));
        copied.push(HomeCopied {
            vm: vm.clone(),
            disk: disk.clone(),
            path: image.to.clone(),
            from: image.from.clone(),
            bytes,
            verified: true,
        });
    }
    Ok((copies, copied))
}

/// Sets what the record says of snapshots for `resources.home` and writes
/// it into the switch's row.
fn finish_record(
    ctx: &OpContext<'_>,
    standby: &StandbyRecord,
    resources: &mut SwitchResources,
    newest: Option<String>,
) -> Result<(), FailoverError> {
    resources.home_snapshot = home_snapshot(ctx, standby, &resources.home)?;
    resources.home_checked = newest;
    resources.home_synced_at = Some(ctx.clock.now());
    let switch = serving_switch(ctx, standby)?;
    let value = serde_json::to_value(&*resources).unwrap_or_default();
    if !ctx.catalog.set_failover_resources(switch.id, FailoverState::Active, &value)? {
        return Err(FailoverError::NotServing { standby: standby.name.clone(), env: standby.primary.clone() });
    }
    Ok(())
}

/// The newest complete snapshot of SB's primary whose disk images, with
/// their chains, are all home: in its storage, or carried there (`home`).
/// Memory images stay where they were taken (failback leaves them too).
fn home_snapshot(
    ctx: &OpContext<'_>,
    standby: &StandbyRecord,
    home: &[HomeCopy],
) -> Result<Option<String>, FailoverError> {
    let catalog = ctx.catalog;
    let carried: BTreeSet<ImageId> = home.iter().map(|c| c.image).collect();
    let env = standby.primary.as_str();
    for snapshot in catalog.snapshots(env)?.into_iter().rev().filter(|s| s.state == SnapshotState::Complete) {
        let dependent = crate::ops::snapshot::snapshot_dependent(env, &snapshot.name);
        let mut all_home = true;
        for image in catalog.images_needed_by(&dependent)? {
            if image.kind == ImageKind::Memory || image.disk.is_none() {
                continue;
            }
            let chain = catalog.chain(image.id)?;
            if chain.iter().any(|i| i.path.starts_with(&standby.storage) && !carried.contains(&i.id)) {
                all_home = false;
                break;
            }
        }
        if all_home {
            return Ok(Some(snapshot.name));
        }
    }
    Ok(None)
}

/// The report's totals, from the record as written.
fn fill(
    mut report: HomeSyncReport,
    resources: &SwitchResources,
    ctx: &OpContext<'_>,
    started: Instant,
) -> HomeSyncReport {
    report.snapshot = resources.home_snapshot.clone();
    // The sync is done and recorded: a lag that cannot be read is left out.
    report.lag_seconds =
        super::fence::home_lag(ctx.catalog, &report.env, report.snapshot.as_deref(), ctx.clock.now()).ok().flatten();
    report.bytes_home = resources.home.iter().map(|c| c.bytes).sum();
    report.duration_ms = millis(started.elapsed());
    report
}
