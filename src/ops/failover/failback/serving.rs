//! Failback steps 0 to 3, SB still serving: ENV's images of SB's point
//! pinned, the `failback-sync` snapshot, every read-only image of SB's
//! chains carried home, the `failback-final` snapshot.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::catalog::{Dependent, StandbyRecord, UndoAction};
use crate::config::Environment;
use crate::host::Host;
use crate::ops::context::OpContext;
use crate::ops::failover::carry::{carry_image, carry_step, live_top, plan_disk, CarryImage};
use crate::ops::failover::drill::Run;
use crate::ops::failover::FailoverError;
use crate::ops::journal::Journaled as _;
use crate::ops::snapshot::SnapshotRequest;
use crate::ops::EnvLock;

/// One disk of SB as carried so far.
#[derive(Debug, Default)]
pub(super) struct DiskCarry {
    /// Carried, lowest first.
    pub images: Vec<CarryImage>,
    pub bytes: u64,
    /// Of the images, the bytes the home sync had carried already.
    pub home_before: u64,
    /// SB's live image of the disk when last looked at.
    pub standby_top: PathBuf,
}

pub(super) type Carried = BTreeMap<(String, String), DiskCarry>;

/// What steps 0 to 3 hand on.
pub(super) struct Serving {
    /// `failback-sync` and `failback-final`.
    pub snapshots: Vec<String>,
    pub carried: Carried,
    pub bytes_while_serving: u64,
}

/// Steps 0 to 3 of the module documentation.
pub(super) fn while_serving(
    run: &mut Run<'_, '_>,
    active_ctx: &OpContext<'_>,
    standby: &StandbyRecord,
    primary: &Environment,
) -> Result<Serving, FailoverError> {
    let env = standby.primary.as_str();
    // (a) The copies home will hang on ENV's images of SB's point: pinned
    // by SB (its restored point) until the catalog records them as their
    // backing. SB pins them already; pinning again says so and is harmless.
    let point = standby.snapshot.clone().unwrap_or_default();
    run.step(&format!("pin {env}'s images of {point} for {}", standby.name), UndoAction::Nothing, |run| {
        let dependent = Dependent::standby_named(&standby.name);
        for disk in &standby.disks {
            let image = disk.source_image.ok_or_else(|| FailoverError::NotSynced { standby: standby.name.clone() })?;
            run.ctx.catalog.pin(image, &dependent)?;
        }
        Ok(())
    })?;
    let mut snapshots = vec![snapshot(run, active_ctx, env, &standby.name, "failback-sync")?];

    let mut carried = Carried::new();
    let bytes_while_serving = {
        // ENV's lock: no delete merges what is read, no snapshot adds to it.
        let _lock = EnvLock::acquire(&run.ctx.config.controller.state_dir, env, "failback (carry home)")?;
        carry(run, active_ctx.host, standby, primary, &mut carried, false)?
    };
    snapshots.push(snapshot(run, active_ctx, env, &standby.name, "failback-final")?);
    Ok(Serving { snapshots, carried, bytes_while_serving })
}

/// An app-consistent snapshot of ENV on its active side (SB's domains),
/// labelled `label`; its own journal, under ENV's lock.
fn snapshot(
    run: &mut Run<'_, '_>,
    active_ctx: &OpContext<'_>,
    env: &str,
    standby: &str,
    label: &'static str,
) -> Result<String, FailoverError> {
    let request = SnapshotRequest {
        env: env.to_owned(),
        label: Some(label.to_owned()),
        memory: false,
        quiesce: None,
        schedule: None,
    };
    run.step(&format!("snapshot {label} of {env} on {standby}"), UndoAction::Nothing, |run| {
        crate::ops::snapshot::take(active_ctx, &request, run.tools.quiescer)
            .map(|taken| taken.name)
            .map_err(|e| FailoverError::FailbackSnapshot { env: env.to_owned(), label, source: Box::new(e) })
    })
}

/// Carries home every image of SB's chains not carried yet: the read-only
/// ones while SB serves (`stopped` false), all that is left once SB is
/// stopped. An image the home sync carried already, from a source that did
/// not change since, is taken as it is: not copied again, and with no undo
/// (a failback rolled back leaves the home sync's copies for the next).
/// Returns the bytes copied.
pub(super) fn carry(
    run: &mut Run<'_, '_>,
    sb: &dyn Host,
    standby: &StandbyRecord,
    primary: &Environment,
    carried: &mut Carried,
    stopped: bool,
) -> Result<u64, FailoverError> {
    let ctx = run.ctx;
    let sb_ctx = OpContext { host: sb, ..*ctx };
    let home_copies = match ctx.catalog.switch_in_force(&standby.primary)? {
        Some(switch) => crate::ops::failover::fence::switch_resources(&switch).home,
        None => Vec::new(),
    };
    let mut total = 0;
    for domain in &standby.resources.domains {
        for disk in standby.disks.iter().filter(|d| d.vm == domain.vm) {
            let top = live_top(&sb_ctx, &domain.domain, &disk.disk)?;
            let home_dir = primary.storage_dir(ctx.config, &standby.primary).join(&disk.vm);
            let plan = plan_disk(ctx, standby, disk, &top, &home_dir)?;
            let entry = carried.entry((disk.vm.clone(), disk.disk.clone())).or_default();
            entry.standby_top = top.clone();
            for image in plan {
                // The live overlay is still written while SB serves.
                if entry.images.iter().any(|c| c.id == image.id) || (!stopped && image.from == top) {
                    continue;
                }
                let home = run.ctx.host.storage();
                if let Some(copy) =
                    home_copies.iter().find(|c| c.image == image.id && c.still_valid(&image, home, sb.storage()))
                {
                    entry.home_before += copy.bytes;
                    entry.images.push(image);
                    continue;
                }
                let undo = UndoAction::DeleteFile { path: image.to.clone() };
                let bytes = run.step(&carry_step(&disk.vm, &disk.disk, &image), undo, |run| {
                    carry_image(run.ctx, sb, &disk.vm, &disk.disk, &image)
                })?;
                entry.images.push(image);
                entry.bytes += bytes;
                total += bytes;
            }
        }
    }
    Ok(total)
}
