//! Before anything is touched: the snapshot exists and is complete; its
//! images per VM and disk come from the catalog (the ones its dependent
//! pins, see [`crate::ops::snapshot::snapshot_dependent`]) and exist on
//! disk; every domain exists and has those disks; with `--memory` every VM
//! has a memory image whose domain is this one. The result is one
//! [`VmPlan`] per VM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::RestoreError;
use crate::catalog::{Catalog, Image, ImageFormat, ImageKind, Snapshot, SnapshotState};
use crate::config::Environment;
use crate::host::Storage;
use crate::hypervisor::{DomainDef, HvError, Hypervisor};
use crate::ops::snapshot::save_image::SavePrefix;
use crate::ops::snapshot::snapshot_dependent;

/// Tried after the bare name: `-2`, `-3`... up to this.
const MAX_NAME_SUFFIX: u32 = 99;

/// One VM as the restore will put it back.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub vm: String,
    pub domain: String,
    /// Running or paused when the restore began: stopped, then started
    /// again (on the new overlays, or on the old ones by a rollback).
    pub was_active: bool,
    /// The definition as read before the stop (the live one if it ran).
    pub def: DomainDef,
    pub disks: Vec<DiskPlan>,
    /// With `--memory`: the snapshot's memory image of this VM.
    pub memory_image: Option<PathBuf>,
}

/// One disk: the snapshot's image, what the disk writes to now, and the
/// new overlay it will write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub target: String,
    /// The snapshot's image of this disk: the new overlay's backing file.
    pub image: Image,
    /// The image the disk writes to until the restore.
    pub previous: PathBuf,
    /// `qcow2` or `raw`.
    pub previous_format: String,
    /// `<storage>/<vm>/restore-<snapshot>-<time>.<disk>.qcow2`, once chosen.
    pub overlay: PathBuf,
}

/// The complete snapshot `name` of `env`, or why not, with the names of
/// the complete ones.
pub fn snapshot(catalog: &Catalog, env: &str, name: &str) -> Result<Snapshot, RestoreError> {
    let snapshot = catalog.snapshot_named(env, name)?;
    match snapshot {
        Some(snapshot) if snapshot.state == SnapshotState::Complete => Ok(snapshot),
        other => Err(RestoreError::UnknownSnapshot {
            env: env.to_owned(),
            name: name.to_owned(),
            state: other.map(|s| s.state),
            known: complete_snapshots(catalog, env, false)?,
        }),
    }
}

/// Names of `env`'s complete snapshots (with memory only, if asked), oldest first.
fn complete_snapshots(catalog: &Catalog, env: &str, memory_only: bool) -> Result<Vec<String>, RestoreError> {
    Ok(catalog
        .snapshots(env)?
        .into_iter()
        .filter(|s| s.state == SnapshotState::Complete && (s.memory || !memory_only))
        .map(|s| s.name)
        .collect())
}

/// Every VM of `env` as the snapshot has it; see the module documentation.
pub fn plan(
    catalog: &Catalog,
    hv: &dyn Hypervisor,
    files: &dyn Storage,
    env_name: &str,
    env: &Environment,
    snapshot: &Snapshot,
    memory: bool,
) -> Result<Vec<VmPlan>, RestoreError> {
    let mut pinned: BTreeMap<(String, String), Image> = BTreeMap::new();
    for image in catalog.images_needed_by(&snapshot_dependent(env_name, &snapshot.name))? {
        if let Some(disk) = image.disk.clone() {
            pinned.insert((image.vm.clone(), disk), image);
        }
    }
    let memory_images: BTreeMap<String, PathBuf> = if memory {
        let with_memory = || complete_snapshots(catalog, env_name, true);
        if !snapshot.memory {
            return Err(RestoreError::NoMemoryImage {
                snapshot: snapshot.name.clone(),
                vm: None,
                with_memory: with_memory()?,
            });
        }
        let images: BTreeMap<String, PathBuf> = catalog
            .images_of_snapshot(snapshot.id)?
            .into_iter()
            .filter(|image| image.kind == ImageKind::Memory)
            .map(|image| (image.vm, image.path))
            .collect();
        if let Some(vm) = env.vms.keys().find(|vm| !images.contains_key(*vm)) {
            return Err(RestoreError::NoMemoryImage {
                snapshot: snapshot.name.clone(),
                vm: Some(vm.clone()),
                with_memory: with_memory()?,
            });
        }
        images
    } else {
        BTreeMap::new()
    };

    let mut plans = Vec::new();
    for (vm, config) in &env.vms {
        let domain_name = &config.domain;
        let domain = hv.domain(domain_name).map_err(|source| match source {
            HvError::NoSuchDomain { .. } => RestoreError::DomainMissing { vm: vm.clone(), domain: domain_name.clone() },
            source => {
                RestoreError::InspectDomain { vm: vm.clone(), domain: domain_name.clone(), source: Box::new(source) }
            }
        })?;
        let current = domain.def.disks();
        let mut disks = Vec::new();
        for ((_, target), image) in pinned.range((vm.clone(), String::new())..).take_while(|((v, _), _)| v == vm) {
            let disk = current.iter().find(|d| d.target == *target).ok_or_else(|| RestoreError::NoSuchDisk {
                vm: vm.clone(),
                domain: domain_name.clone(),
                disk: target.clone(),
            })?;
            let previous = disk.source.clone().ok_or_else(|| RestoreError::DiskWithoutSource {
                vm: vm.clone(),
                domain: domain_name.clone(),
                disk: target.clone(),
            })?;
            if !files.exists(&image.path)? {
                return Err(RestoreError::ImageMissing {
                    vm: vm.clone(),
                    disk: target.clone(),
                    path: image.path.clone(),
                });
            }
            disks.push(DiskPlan {
                target: target.clone(),
                image: image.clone(),
                previous,
                previous_format: disk.format.clone().unwrap_or_else(|| "raw".to_owned()),
                overlay: PathBuf::new(),
            });
        }
        if disks.is_empty() {
            return Err(RestoreError::SnapshotLacksVm { snapshot: snapshot.name.clone(), vm: vm.clone() });
        }
        let memory_image = memory_images.get(vm).cloned();
        if let Some(path) = &memory_image {
            check_memory_image(files, vm, domain_name, &domain.uuid, path, &disks)?;
        }
        plans.push(VmPlan {
            vm: vm.clone(),
            domain: domain_name.clone(),
            was_active: domain.state.is_active(),
            def: domain.def,
            disks,
            memory_image,
        });
    }
    Ok(plans)
}

/// The memory image exists, is a save image of this very domain (libvirt
/// restores only onto the same name and UUID) and has every disk the
/// snapshot has.
fn check_memory_image(
    files: &dyn Storage,
    vm: &str,
    domain: &str,
    uuid: &str,
    path: &Path,
    disks: &[DiskPlan],
) -> Result<(), RestoreError> {
    if !files.exists(path)? {
        return Err(RestoreError::ImageMissing { vm: vm.to_owned(), disk: "memory".into(), path: path.to_owned() });
    }
    let saved = saved_definition(vm, path)?;
    let mismatch = |detail: String| RestoreError::MemoryImageMismatch {
        vm: vm.to_owned(),
        domain: domain.to_owned(),
        path: path.to_owned(),
        detail,
    };
    if saved.name() != domain {
        return Err(mismatch(format!("it holds domain {}", saved.name())));
    }
    let saved_uuid = saved.uuid().unwrap_or_default();
    if !uuid.is_empty() && saved_uuid != uuid {
        return Err(mismatch(format!("it holds UUID {saved_uuid}, the domain has {uuid}")));
    }
    let targets: Vec<String> = saved.disks().into_iter().map(|d| d.target).collect();
    if let Some(disk) = disks.iter().find(|d| !targets.contains(&d.target)) {
        return Err(mismatch(format!("it has no disk {}", disk.target)));
    }
    Ok(())
}

/// The domain definition a memory image carries.
pub fn saved_definition(vm: &str, path: &Path) -> Result<DomainDef, RestoreError> {
    let prefix = SavePrefix::read(path)
        .map_err(|source| RestoreError::ReadMemoryImage { vm: vm.to_owned(), source: Box::new(source) })?;
    DomainDef::parse(&prefix.xml).map_err(|e| RestoreError::MemoryImageMismatch {
        vm: vm.to_owned(),
        domain: String::new(),
        path: path.to_owned(),
        detail: format!("its domain XML does not parse: {}", crate::error::chain(&e)),
    })
}

/// Fills in each disk's new overlay: `<storage>/<vm>/restore-<snapshot>-<time>.<disk>.qcow2`,
/// with `-2`, `-3`... after the time when a file or the catalog already
/// has one of those paths (the same snapshot restored twice in a second).
pub fn assign_overlays(
    catalog: &Catalog,
    files: &dyn Storage,
    plans: &mut [VmPlan],
    storage: &Path,
    snapshot: &str,
    now: DateTime<Utc>,
) -> Result<(), RestoreError> {
    let time = now.format("%Y%m%dT%H%M%SZ").to_string();
    for n in 1..=MAX_NAME_SUFFIX {
        let stamp = if n == 1 { time.clone() } else { format!("{time}-{n}") };
        let mut free = true;
        for plan in plans.iter_mut() {
            for disk in &mut plan.disks {
                disk.overlay = storage.join(&plan.vm).join(format!("restore-{snapshot}-{stamp}.{}.qcow2", disk.target));
                free &= !files.exists(&disk.overlay)? && catalog.image_by_path(&disk.overlay)?.is_none();
            }
        }
        if free {
            return Ok(());
        }
    }
    Err(RestoreError::NoFreeName { base: format!("restore-{snapshot}-{time}"), tried: MAX_NAME_SUFFIX })
}

/// A free snapshot name for the undo snapshot: the UTC time, as every
/// snapshot's, with `-2`, `-3`... when taken.
pub fn undo_snapshot_name(catalog: &Catalog, env: &str, now: DateTime<Utc>) -> Result<String, RestoreError> {
    let base = now.format("%Y%m%dT%H%M%SZ").to_string();
    for n in 1..=MAX_NAME_SUFFIX {
        let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        if catalog.snapshot_named(env, &name)?.is_none() {
            return Ok(name);
        }
    }
    Err(RestoreError::NoFreeName { base, tried: MAX_NAME_SUFFIX })
}

/// The catalog's format of a disk's `<driver type>`.
pub fn image_format(format: &str) -> ImageFormat {
    if format == "raw" {
        ImageFormat::Raw
    } else {
        ImageFormat::Qcow2
    }
}
