//! Carrying what a standby wrote home, for failback: which images, where
//! to; the files are the host's storage ([`crate::host::Storage`]).
//!
//! While SB serves ENV, each disk of SB's domain runs on a chain whose
//! lower end is SB's synced copy (ENV's snapshot P, SB's restored point,
//! not in the catalog: a standby's copy is its own), then SB's epoch
//! overlay, then the overlays of ENV's snapshots taken meanwhile (on
//! `<SB storage>/active`). Every image of that chain on SB's storage but
//! SB's copy is **carried home**: copied byte for byte into ENV's storage
//! (`<ENV storage>/<vm>/<same file name>`), its backing file set with
//! `qemu-img rebase -u` to the home copy of the image below it, and for
//! the lowest (the epoch overlay) to ENV's own image of P. `-u` reads
//! nothing and is right because SB's copy holds exactly P's content (a
//! sync verifies that); `qemu-img compare` of the two chains checks it
//! before anything switches. The catalog then records the very same image
//! rows at home ([`crate::catalog::Catalog::move_images`]): their
//! snapshots (taken while SB served) come home with them, and the epoch
//! overlay, recorded as a `base` by the first snapshot that saw it, becomes
//! what it is, an overlay on ENV's image of P, which its backing link then
//! keeps (a parent is never deleted or merged away under a child).
//!
//! The home sync (`standby sync SB` while SB serves, see `home_sync.rs`)
//! carries the same images to the same places ahead of failback, one
//! [`carry_image`] each, and records each copy as a [`HomeCopy`]; failback
//! takes a copy whose source is unchanged ([`HomeCopy::still_valid`]) as
//! carried already.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::FailoverError;
use crate::catalog::{ImageFormat, ImageId, ImageKind, ImageMove, StandbyDisk, StandbyRecord};
use crate::host::{FileStamp, Host, Storage};
use crate::ops::context::OpContext;
use crate::ops::transfer::{self, At};

/// One image of SB's chain to carry home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarryImage {
    pub id: ImageId,
    /// Where it is, on SB's storage.
    pub from: PathBuf,
    /// Where its copy goes, in ENV's storage.
    pub to: PathBuf,
    /// The copy's backing image: the home copy of the image below, or
    /// ENV's image of P (or, below an image that is home already, that one).
    pub backing: ImageId,
    pub backing_path: PathBuf,
    pub backing_format: ImageFormat,
}

impl CarryImage {
    /// How the catalog records it once carried.
    pub fn moved(&self) -> ImageMove {
        ImageMove { id: self.id, path: self.to.clone(), kind: ImageKind::Overlay, backing: Some(self.backing) }
    }
}

/// One image carried home while SB serves, as the switch's row records it
/// (`resources.home`), with what its source was when it was copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeCopy {
    pub image: ImageId,
    /// The image on SB's storage.
    pub from: PathBuf,
    /// Its copy in ENV's storage.
    pub to: PathBuf,
    /// What the copy was rebased onto.
    pub backing_path: PathBuf,
    pub bytes: u64,
    pub source_len: u64,
    /// The source's modification time, nanoseconds since the Unix epoch.
    pub source_modified: i64,
    pub copied_at: DateTime<Utc>,
}

impl HomeCopy {
    /// Records `image` as carried from a source that looked like `source`.
    pub fn new(image: &CarryImage, source: FileStamp, bytes: u64, copied_at: DateTime<Utc>) -> Self {
        HomeCopy {
            image: image.id,
            from: image.from.clone(),
            to: image.to.clone(),
            backing_path: image.backing_path.clone(),
            bytes,
            source_len: source.len,
            source_modified: source.modified_ns,
            copied_at,
        }
    }

    /// Whether this copy is still `image` (as planned now) at home: its
    /// source unchanged in size and time, the copy there, and its backing
    /// the plan's. A delete that merged images on SB changes one of those.
    /// `standby` is the storage of SB's host, where the source is.
    pub fn still_valid(&self, image: &CarryImage, home: &dyn Storage, standby: &dyn Storage) -> bool {
        let planned = (self.image, &self.from, &self.to, &self.backing_path)
            == (image.id, &image.from, &image.to, &image.backing_path);
        // A copy that cannot be looked at is carried again: a second copy
        // costs time, a stale one would cost data.
        planned
            && home.exists(&self.to).unwrap_or(false)
            && standby
                .stamp(&image.from)
                .is_ok_and(|stamp| (stamp.len, stamp.modified_ns) == (self.source_len, self.source_modified))
    }
}

/// The progress line and journal step of carrying `image` of `vm`/`disk`.
pub(super) fn carry_step(vm: &str, disk: &str, image: &CarryImage) -> String {
    let name = image.from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("carry home {vm}/{disk} {name}")
}

/// Copies `image` of `vm`/`disk` byte for byte from SB's host `sb` to its
/// place at home (`ctx`'s host; shipped when they differ) and rebases the
/// copy onto `image.backing_path` (reading nothing); returns the bytes
/// copied. A file found there is stale (a rolled back failback left it, or
/// the home sync's copy of a source that changed since) and is replaced.
pub(super) fn carry_image(
    ctx: &OpContext<'_>,
    sb: &dyn Host,
    vm: &str,
    disk: &str,
    image: &CarryImage,
) -> Result<u64, FailoverError> {
    let home = ctx.host.storage();
    let fail = |step: &'static str, path: &Path| {
        let (vm, disk, path) = (vm.to_owned(), disk.to_owned(), path.to_owned());
        move |source| FailoverError::Carry { vm, disk, step, path, source: Box::new(source) }
    };
    home.remove(&image.to).map_err(fail("remove a stale copy", &image.to))?;
    let (from, to) = (At::new(sb, &image.from), At::new(ctx.host, &image.to));
    let bytes = transfer::copy_file(ctx.config, from, to, &ctx.progress_of(&carry_step(vm, disk, image)))
        .map_err(|source| FailoverError::Ship { vm: vm.to_owned(), disk: disk.to_owned(), source: Box::new(source) })?
        .bytes;
    home.set_backing(&image.to, &image.backing_path, image.backing_format).map_err(fail("rebase", &image.to))?;
    Ok(bytes)
}

/// The image `domain` writes `disk` to, as libvirt says.
pub(super) fn live_top(ctx: &OpContext<'_>, domain: &str, disk: &str) -> Result<PathBuf, FailoverError> {
    let found = super::inspect(ctx, domain)?;
    found.def.disks().into_iter().find(|d| d.target == disk).and_then(|d| d.source).ok_or_else(|| {
        FailoverError::Redefine {
            domain: domain.to_owned(),
            source: Box::new(crate::hypervisor::HvError::NoSuchDisk {
                domain: domain.to_owned(),
                disk: disk.to_owned(),
            }),
        }
    })
}

/// The images of `top`'s chain on SB's storage, lowest first, and where
/// each goes in `home_dir`.
pub(super) fn plan_disk(
    ctx: &OpContext<'_>,
    standby: &StandbyRecord,
    disk: &StandbyDisk,
    top: &Path,
    home_dir: &Path,
) -> Result<Vec<CarryImage>, FailoverError> {
    let catalog = ctx.catalog;
    let unsupported = |what: String| FailoverError::Unsupported { what };
    let top_image = catalog.image_by_path(top)?.ok_or_else(|| FailoverError::NotRecorded {
        vm: disk.vm.clone(),
        disk: disk.disk.clone(),
        path: top.to_owned(),
    })?;
    let chain = catalog.chain(top_image.id)?;
    let on_standby = chain.iter().take_while(|image| image.path.starts_with(&standby.storage)).count();
    if on_standby == 0 {
        return Err(unsupported(format!(
            "failback of VM '{}' disk {}: the standby runs it on {}, not on its storage",
            disk.vm,
            disk.disk,
            top.display()
        )));
    }
    if let Some(own) = chain[..on_standby].iter().find(|image| image.path == disk.path) {
        // A switch an older envclone made ran SB on its own copy.
        return Err(unsupported(format!(
            "failback of VM '{}' disk {} running on the standby's own copy {} (no epoch overlay)",
            disk.vm,
            disk.disk,
            own.path.display()
        )));
    }
    let (mut backing, mut backing_path, mut backing_format) = match chain.get(on_standby) {
        // Restored, while SB served, to a snapshot from before the switch.
        Some(home) => (home.id, home.path.clone(), home.format),
        None => {
            let point = disk.source_image.ok_or_else(|| FailoverError::NotSynced { standby: standby.name.clone() })?;
            let point = catalog.image(point)?;
            (point.id, point.path, point.format)
        }
    };
    let mut plan = Vec::with_capacity(on_standby);
    for image in chain[..on_standby].iter().rev() {
        let name = image.path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(image.id.to_string()));
        let to = home_dir.join(name);
        if let Some(other) = catalog.image_by_path(&to)? {
            if other.id != image.id {
                return Err(unsupported(format!(
                    "failback of VM '{}' disk {}: {} is another image already",
                    disk.vm,
                    disk.disk,
                    to.display()
                )));
            }
        }
        plan.push(CarryImage {
            id: image.id,
            from: image.path.clone(),
            to: to.clone(),
            backing,
            backing_path: backing_path.clone(),
            backing_format,
        });
        (backing, backing_path, backing_format) = (image.id, to, ImageFormat::Qcow2);
    }
    Ok(plan)
}

/// Whether the chain of `top` at home has no problem `qemu-img check` finds
/// and ends on `point` (ENV's image of SB's restored point).
pub(super) fn chain_sound(
    home: &dyn Storage,
    top: &std::path::Path,
    point: &std::path::Path,
) -> Result<bool, crate::host::StorageError> {
    let chain = home.backing_chain(top)?;
    if !chain.iter().any(|image| image == point) {
        return Ok(false);
    }
    for image in chain.iter().take_while(|image| *image != point) {
        if !home.check(image)?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}
