//! What a snapshot leaves in the catalog, and how `snapshots` reads it back.
//!
//! When snapshot S switches a disk to a new overlay, the image the disk
//! wrote to until then becomes S's image: read-only from now on, pinned by
//! S ([`snapshot_dependent`]). A disk image envclone has never seen is
//! recorded first as kind `base` (a VM's original disk, never deleted by
//! envclone). The new overlay is recorded as the disk's active image, with
//! the old one as its backing and no snapshot yet: the next snapshot makes
//! it its own. Memory images belong to S (`snapshot` = S, kind `memory`).
//!
//! Chains are recorded for every VM whose disks switched even when S fails
//! (without the pin): the catalog must always say what backs what.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::memory::MemoryImage;
use super::preflight::VmPlan;
use crate::catalog::{
    Catalog, CatalogError, Consistency, Dependent, Image, ImageFormat, ImageKind, NewImage, Snapshot, SnapshotId,
    SnapshotState,
};

/// What pins a snapshot's images: `snapshot` `<env>/<name>` (snapshot
/// names are unique per environment only). Delete and restore use this too.
pub fn snapshot_dependent(env: &str, snapshot: &str) -> Dependent {
    Dependent::snapshot_named(format!("{env}/{snapshot}"))
}

/// Records `plan`'s disks as switched to their overlays; pins the old
/// images with `pin` (the snapshot's dependent) when given.
pub fn record_chain(
    catalog: &Catalog,
    storage: &dyn crate::host::Storage,
    plan: &VmPlan,
    pin: Option<&Dependent>,
    now: DateTime<Utc>,
) -> Result<(), CatalogError> {
    for disk in &plan.disks {
        let image = match catalog.image_by_path(&disk.image)? {
            Some(image) => {
                // Read-only from now on: its size is what a standby's sync ships.
                if let Some(size) = storage.size(&disk.image) {
                    catalog.set_image_size(image.id, size)?;
                }
                image.id
            }
            None => catalog.add_image(&NewImage {
                path: disk.image.clone(),
                vm: plan.vm.clone(),
                disk: Some(disk.target.clone()),
                kind: ImageKind::Base,
                format: disk.format,
                size_bytes: storage.size(&disk.image).unwrap_or(0),
                backing: None,
                snapshot: None,
                created_at: now,
            })?,
        };
        if let Some(dependent) = pin {
            catalog.pin(image, dependent)?;
        }
        if catalog.image_by_path(&disk.overlay)?.is_none() {
            catalog.add_image(&NewImage {
                path: disk.overlay.clone(),
                vm: plan.vm.clone(),
                disk: Some(disk.target.clone()),
                kind: ImageKind::Overlay,
                format: ImageFormat::Qcow2,
                size_bytes: storage.size(&disk.overlay).unwrap_or(0),
                backing: Some(image),
                snapshot: None,
                created_at: now,
            })?;
        }
    }
    Ok(())
}

/// Records `vm`'s memory image as snapshot `snapshot`'s.
pub fn record_memory(
    catalog: &Catalog,
    snapshot: SnapshotId,
    vm: &str,
    image: &MemoryImage,
    now: DateTime<Utc>,
) -> Result<(), CatalogError> {
    catalog.add_image(&NewImage {
        path: image.path.clone(),
        vm: vm.to_owned(),
        disk: None,
        kind: ImageKind::Memory,
        format: ImageFormat::LibvirtSave,
        size_bytes: image.size_bytes,
        backing: None,
        snapshot: Some(snapshot),
        created_at: now,
    })?;
    Ok(())
}

/// Marks the snapshot failed unless it already is (or is gone further).
pub fn fail_snapshot(catalog: &Catalog, snapshot: SnapshotId) -> Result<(), CatalogError> {
    if catalog.snapshot(snapshot)?.state == SnapshotState::InProgress {
        catalog.set_snapshot_state(snapshot, SnapshotState::Failed)?;
    }
    Ok(())
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// One snapshot as `envclone snapshots` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotSummary {
    pub name: String,
    pub label: Option<String>,
    pub state: SnapshotState,
    pub created_at: DateTime<Utc>,
    pub age_seconds: i64,
    /// The snapshot's own files: its images (not the VMs' original disks,
    /// which exist anyway) and its memory images, as they are on disk now.
    pub size_bytes: u64,
    pub memory: bool,
    #[serde(rename = "freeze_window_ms")]
    pub freeze_window_ms: Option<u64>,
    pub vms: Vec<VmSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmSummary {
    pub vm: String,
    pub consistency: Consistency,
    pub reason: Option<String>,
    /// Its memory image, if the snapshot has one for it.
    pub memory: bool,
}

/// Every snapshot of `env`, oldest first.
pub fn list(catalog: &Catalog, env: &str, now: DateTime<Utc>) -> Result<Vec<SnapshotSummary>, CatalogError> {
    catalog.snapshots(env)?.into_iter().map(|snapshot| summarize(catalog, snapshot, now)).collect()
}

fn summarize(catalog: &Catalog, snapshot: Snapshot, now: DateTime<Utc>) -> Result<SnapshotSummary, CatalogError> {
    let mut images: Vec<Image> = catalog.images_needed_by(&snapshot_dependent(&snapshot.env, &snapshot.name))?;
    let own = catalog.images_of_snapshot(snapshot.id)?;
    let with_memory: Vec<String> = own.iter().filter(|i| i.kind == ImageKind::Memory).map(|i| i.vm.clone()).collect();
    images.extend(own);
    images.sort_by_key(|image| image.id);
    images.dedup_by_key(|image| image.id);
    let size_bytes = images
        .iter()
        .filter(|image| image.kind != ImageKind::Base)
        .map(|image| file_size(&image.path).unwrap_or(image.size_bytes))
        .sum();
    Ok(SnapshotSummary {
        age_seconds: (now - snapshot.created_at).num_seconds(),
        name: snapshot.name,
        label: snapshot.label,
        state: snapshot.state,
        created_at: snapshot.created_at,
        size_bytes,
        memory: snapshot.memory,
        freeze_window_ms: snapshot.freeze_window.map(millis),
        vms: snapshot
            .vms
            .into_iter()
            .map(|vm| VmSummary {
                memory: with_memory.contains(&vm.vm),
                vm: vm.vm,
                consistency: vm.consistency,
                reason: vm.reason,
            })
            .collect(),
    })
}

pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
