//! How each step of a restore is undone: used by the restore's own
//! rollback and by `envclone recover` for a restore that was interrupted.
//! Every action is idempotent: it may run for a step that never acted, or
//! twice.
//!
//! A restore whose `record the restore` step is done is finished: the
//! catalog says the VMs run on their new overlays, and so they do. Such an
//! operation must be rolled forward (completed), never back.

use std::path::Path;

use crate::catalog::{Catalog, SnapshotId, SnapshotState, UndoAction};
use crate::error::chain as error_chain;
use crate::hypervisor::Hypervisor;
use crate::ops::snapshot::UNDO_FAIL_SNAPSHOT_NAMED;

use super::steps::{DiskSources, DomainRef, UNDO_REDEFINE_DISKS, UNDO_START_DOMAIN, UNDO_STOP_DOMAIN};
use crate::host::Host;

/// The step a restore journaled last before its catalog commit; see the
/// module documentation.
pub const RECORD_STEP: &str = "record the restore";

/// Runs one undo action of a restore. `ThawAgent` (the best-effort freeze
/// before the stop) needs no work: that freeze is a lease that ended when
/// its VM stopped, when the restore thawed it, or when the controller died
/// (the agent thaws on EOF and at the lease timeout).
pub fn undo_action(host: &dyn Host, catalog: &Catalog, action: &UndoAction) -> Result<(), String> {
    let hv = host.hypervisor();
    match action {
        UndoAction::Nothing | UndoAction::ThawAgent { .. } => Ok(()),
        UndoAction::DeleteFile { path } => host.storage().remove(path).map_err(|e| crate::error::chain(&e)),
        UndoAction::FailSnapshot { snapshot } => fail_snapshot(catalog, *snapshot),
        UndoAction::Custom { kind, data } => match kind.as_str() {
            UNDO_FAIL_SNAPSHOT_NAMED => {
                let env = data["env"].as_str().unwrap_or_default();
                let name = data["snapshot"].as_str().unwrap_or_default();
                match catalog.snapshot_named(env, name) {
                    Ok(Some(snapshot)) => fail_snapshot(catalog, snapshot.id),
                    Ok(None) => Ok(()),
                    Err(e) => Err(format!("cannot look up snapshot {name}: {}", error_chain(&e))),
                }
            }
            UNDO_START_DOMAIN => start_domain(hv, &domain_ref(kind, data)?.domain),
            UNDO_STOP_DOMAIN => stop_domain(hv, &domain_ref(kind, data)?.domain),
            UNDO_REDEFINE_DISKS => {
                let sources: DiskSources =
                    serde_json::from_value(data.clone()).map_err(|e| format!("bad {kind} data {data}: {e}"))?;
                redefine_disks(hv, &sources)
            }
            other => Err(format!("no undo for a {other:?} step in a restore")),
        },
        other => Err(format!("no undo for {other:?} in a restore")),
    }
}

fn domain_ref(kind: &str, data: &serde_json::Value) -> Result<DomainRef, String> {
    serde_json::from_value(data.clone()).map_err(|e| format!("bad {kind} data {data}: {e}"))
}

fn fail_snapshot(catalog: &Catalog, snapshot: SnapshotId) -> Result<(), String> {
    let result = catalog.snapshot(snapshot).and_then(|s| {
        if s.state == SnapshotState::InProgress {
            catalog.set_snapshot_state(snapshot, SnapshotState::Failed)
        } else {
            Ok(())
        }
    });
    result.map_err(|e| format!("cannot mark snapshot {snapshot} failed: {}", error_chain(&e)))
}

/// Starts `domain` unless it is running (or paused) already.
fn start_domain(hv: &dyn Hypervisor, domain: &str) -> Result<(), String> {
    let state = hv.domain(domain).map_err(|e| format!("cannot look up domain {domain}: {}", error_chain(&e)))?.state;
    if state.is_active() {
        return Ok(());
    }
    hv.start_domain(domain).map_err(|e| format!("domain {domain} stays SHUT OFF: {}", error_chain(&e)))
}

/// Stops `domain` if it runs.
fn stop_domain(hv: &dyn Hypervisor, domain: &str) -> Result<(), String> {
    let state = hv.domain(domain).map_err(|e| format!("cannot look up domain {domain}: {}", error_chain(&e)))?.state;
    if !state.is_active() {
        return Ok(());
    }
    hv.destroy_domain(domain).map_err(|e| format!("cannot stop domain {domain}: {}", error_chain(&e)))
}

/// Points the (shut off) domain's disks back at `sources`.
fn redefine_disks(hv: &dyn Hypervisor, sources: &DiskSources) -> Result<(), String> {
    let domain = &sources.domain;
    let current = hv.domain(domain).map_err(|e| format!("cannot look up domain {domain}: {}", error_chain(&e)))?;
    let mut def = current.def;
    let mut changed = false;
    for disk in &sources.disks {
        let now = def.disks().into_iter().find(|d| d.target == disk.target).and_then(|d| d.source);
        if now.as_deref() != Some(Path::new(&disk.path)) {
            def.set_disk_source(&disk.target, &disk.path, &disk.format).map_err(|e| error_chain(&e))?;
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    if current.state.is_active() {
        return Err(format!("domain {domain} runs on other disks; stop it, then run `envclone recover` again"));
    }
    hv.define_domain(&def)
        .map(|_| ())
        .map_err(|e| format!("cannot point domain {domain} back at its previous disks: {}", error_chain(&e)))
}
