//! `envclone standby destroy SB`: removes exactly what SB made, as its
//! record lists it: its domains (stopped first if someone started one),
//! its networks, its disk images and any copy a sync left, its console
//! logs and NVRAM copies, then its record and its pins (the primary's
//! snapshots it held are free to be deleted again). The primary is never
//! touched. Every step is journaled (operation `standby-destroy` on SB) and
//! idempotent: running `destroy` again finishes one that was interrupted,
//! and destroying a standby that is gone is a no-op.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::StandbyError;
use crate::catalog::{OperationKind, UndoAction};
use crate::ops::clone::undo as clone_undo;
use crate::ops::context::OpContext;
use crate::ops::journal;
use crate::ops::EnvLock;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestroyReport {
    pub standby: String,
    /// False when there was no such standby (nothing done).
    pub existed: bool,
    pub primary: Option<String>,
    pub domains: Vec<String>,
    pub networks: Vec<String>,
    /// Files deleted.
    pub deleted: Vec<PathBuf>,
    pub duration_ms: u64,
}

/// Destroys the standby `name`; see the module documentation.
pub fn destroy(ctx: &OpContext<'_>, name: &str) -> Result<DestroyReport, StandbyError> {
    let started = Instant::now();
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, name, "standby destroy")?;
    let mut report = DestroyReport {
        standby: name.to_owned(),
        existed: false,
        primary: None,
        domains: Vec::new(),
        networks: Vec::new(),
        deleted: Vec::new(),
        duration_ms: 0,
    };
    let Some(record) = ctx.catalog.standby_named(name)? else {
        ctx.note(format!("no standby named {name}: nothing to destroy"));
        return Ok(report);
    };
    let sb_ctx = super::on_its_host(ctx, &record)?;
    let ctx = &sb_ctx;
    let transfer = ctx.host.storage();
    super::sync::refuse_active_side(ctx, &record)?;
    report.existed = true;
    report.primary = Some(record.primary.clone());
    let fail = |what, detail| StandbyError::Remove { standby: name.to_owned(), what, detail };
    journal::remove(ctx, OperationKind::StandbyDestroy, name, fail, |removal| {
        let mut step = |what, remove: &dyn Fn() -> Result<(), String>| removal.step(what, remove);
        for domain in &record.resources.domains {
            step(format!("remove domain {}", domain.domain), &|| {
                clone_undo::remove_domain(ctx.host.hypervisor(), &domain.domain)
            })?;
            report.domains.push(domain.domain.clone());
        }
        for network in &record.resources.networks {
            step(format!("remove network {}", network.name), &|| {
                clone_undo::remove_network(ctx.host.hypervisor(), &network.name)
            })?;
            report.networks.push(network.name.clone());
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for disk in &record.disks {
            files.push(disk.path.clone());
            files.push(super::staged_path(&disk.path));
        }
        files.extend(record.resources.files.iter().cloned());
        // Copies an interrupted sync may have left next to the images.
        for dir in record.disks.iter().filter_map(|d| d.path.parent()) {
            // A folder that cannot be listed holds no copies we know of.
            for path in transfer.list_dir(dir).unwrap_or_default() {
                let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                if file.starts_with(&format!("{name}.")) && file.contains(".from-") && !files.contains(&path) {
                    files.push(path);
                }
            }
        }
        for file in files {
            if !transfer.exists(&file)? {
                continue;
            }
            step(format!("delete {}", file.display()), &|| {
                transfer.remove(&file).map_err(|e| crate::error::chain(&e))
            })?;
            report.deleted.push(file);
        }
        step("forget the standby".into(), &|| {
            ctx.catalog.remove_standby(name).map(drop).map_err(|e| crate::error::chain(&e))
        })?;
        Ok(())
    })?;
    crate::ops::clone::remove_empty_dirs(ctx.host.storage(), &record.storage);
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// Undoes one step of `standby create`.
pub(super) fn undo_create_step(ctx: &OpContext<'_>, action: &UndoAction) -> Result<(), String> {
    match action {
        UndoAction::Nothing => Ok(()),
        UndoAction::DeleteFile { path } => clone_undo::remove_file(ctx.host.storage(), path),
        UndoAction::UndefineDomain { name } => clone_undo::remove_domain(ctx.host.hypervisor(), name),
        UndoAction::Custom { kind, data } if kind == clone_undo::UNDO_REMOVE_NETWORK => {
            clone_undo::remove_network(ctx.host.hypervisor(), data["network"].as_str().unwrap_or_default())
        }
        UndoAction::Custom { kind, .. } if super::undo::KINDS.contains(&kind.as_str()) => {
            super::undo::undo_action(ctx, action).map(drop)
        }
        other => Err(format!("no undo for {other:?} in a standby")),
    }
}
