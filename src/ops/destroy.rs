//! `envclone destroy NEW`: removes a clone and exactly what it made, as its
//! catalog record lists it: its domains (stopped first), its networks, its
//! gateway namespace (and with it the veths), its own images, then its
//! record and its pins on the source's images, and the clone's own
//! snapshots with every image they made (a clone is an environment like
//! any other: it can be snapshotted and cloned). Nothing else: an
//! environment that is not a clone is refused, an image is deleted only if
//! [`Catalog::remove_image`] agrees that nothing else needs it, and the
//! source's images are never touched. Destroying a clone that is gone is
//! a no-op.
//!
//! Every step is journaled (operation kind `delete-clone`) and idempotent,
//! so running `destroy` again finishes whatever an earlier run left.
//!
//! [`Catalog::remove_image`]: crate::catalog::Catalog::remove_image

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::clone::{self, undo, CloneError};
use super::context::OpContext;
use super::journal::{self, Removal};
use super::EnvLock;
use crate::catalog::{Catalog, CloneRecord, Dependent, DependentKind, Image, ImageKind, OperationKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestroyReport {
    pub name: String,
    /// False when there was no such clone (nothing done).
    pub existed: bool,
    pub source: Option<String>,
    pub domains: Vec<String>,
    pub networks: Vec<String>,
    pub gateway_netns: Option<String>,
    /// The clone's own images, deleted.
    pub deleted: Vec<PathBuf>,
    pub duration_ms: u64,
}

/// Destroys the clone `name`; see the module documentation.
pub fn destroy(ctx: &OpContext<'_>, name: &str) -> Result<DestroyReport, CloneError> {
    let started = Instant::now();
    if ctx.config.environments.contains_key(name) {
        return Err(CloneError::NotAClone { name: name.to_owned() });
    }
    let _lock = EnvLock::acquire(&ctx.config.controller.state_dir, name, "destroy")?;
    let Some(record) = ctx.catalog.clone_named(name)? else {
        return Ok(DestroyReport {
            name: name.to_owned(),
            existed: false,
            source: None,
            domains: Vec::new(),
            networks: Vec::new(),
            gateway_netns: None,
            deleted: Vec::new(),
            duration_ms: 0,
        });
    };
    // Checked before anything is removed: a clone of this clone (or a
    // standby) built on one of its snapshots keeps it alive.
    let own = own_snapshot_images(ctx.catalog, &record)?;
    let fail = |what, detail| CloneError::Remove { clone: name.to_owned(), what, detail };
    journal::remove(ctx, OperationKind::DeleteClone, name, fail, |removal| remove_all(ctx, &record, &own, removal))?;
    Ok(DestroyReport {
        name: name.to_owned(),
        existed: true,
        source: Some(record.source_env.clone()),
        domains: record.resources.domains.clone(),
        networks: record.resources.networks.iter().map(|n| n.name.clone()).collect(),
        gateway_netns: record.resources.gateway_netns.clone(),
        deleted: record.resources.disks.iter().map(|d| d.path.clone()).collect(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The images the clone's own snapshots made, newest first (the overlays
/// below its disks, and memory images), refusing when anything but the
/// clone and its own snapshots needs one of them or its disks.
fn own_snapshot_images(catalog: &Catalog, record: &CloneRecord) -> Result<Vec<Image>, CloneError> {
    let mut below = Vec::new();
    let mut roots = Vec::new();
    for disk in &record.resources.disks {
        if let Some(image) = catalog.image_by_path(&disk.path)? {
            roots.push(image);
        }
    }
    // Breadth first, so children come after their parents; reversed below.
    let mut queue = roots.clone();
    while let Some(image) = queue.pop() {
        for child in catalog.children_of(image.id)? {
            below.push(child.clone());
            queue.insert(0, child);
        }
    }
    for snapshot in catalog.snapshots(&record.name)? {
        for image in catalog.images_of_snapshot(snapshot.id)? {
            if image.kind == ImageKind::Memory {
                below.push(image);
            }
        }
    }
    let own_snapshot = format!("{}/", record.name);
    for image in roots.iter().chain(&below) {
        for dependent in catalog.dependents_of(image.id)? {
            let ours = dependent == Dependent::clone_named(&record.name)
                || (dependent.kind == DependentKind::Snapshot && dependent.name.starts_with(&own_snapshot));
            if !ours {
                return Err(CloneError::InUse {
                    clone: record.name.clone(),
                    image: image.path.clone(),
                    by: format!("{} {}", dependent.kind.as_str(), dependent.name),
                });
            }
        }
    }
    below.reverse();
    Ok(below)
}

fn remove_all(
    ctx: &OpContext<'_>,
    record: &CloneRecord,
    own: &[Image],
    removal: &mut Removal<'_, '_, CloneError>,
) -> Result<(), CloneError> {
    let name = &record.name;
    let resources = &record.resources;
    let (files, net) = (ctx.host.storage(), ctx.host.net());
    let mut step = |what, remove: &dyn Fn() -> Result<(), String>| removal.step(what, remove);
    for domain in &resources.domains {
        step(format!("remove domain {domain}"), &|| undo::remove_domain(ctx.host.hypervisor(), domain))?;
    }
    if let Some(netns) = &resources.gateway_netns {
        step(format!("remove the gateway namespace {netns}"), &|| {
            for network in &resources.networks {
                if let Some(veth) = &network.veth {
                    net.delete_link(ctx.config.controller.libvirt_netns.as_deref(), veth)
                        .map_err(|e| format!("cannot delete link {veth}: {}", crate::error::chain(&e)))?;
                }
            }
            net.delete_netns(netns).map_err(|e| crate::error::chain(&e))
        })?;
    }
    for network in &resources.networks {
        step(format!("remove network {}", network.name), &|| {
            undo::remove_network(ctx.host.hypervisor(), &network.name)
        })?;
    }
    if !resources.known_hosts.is_empty() {
        let known_hosts = &ctx.config.controller.known_hosts;
        step(format!("remove the clone's host keys from {}", known_hosts.display()), &|| {
            undo::distrust_host_keys(known_hosts, &resources.known_hosts)
        })?;
    }
    // The clone's own snapshots: their pins, their records, their images
    // (newest first, each record before its file).
    for snapshot in ctx.catalog.snapshots(name)? {
        step(format!("forget the clone's snapshot {}", snapshot.name), &|| {
            let fail = |e: crate::catalog::CatalogError| crate::error::chain(&e);
            let dependent = super::snapshot::snapshot_dependent(name, &snapshot.name);
            for image in ctx.catalog.images_needed_by(&dependent).map_err(fail)? {
                ctx.catalog.unpin(image.id, &dependent).map_err(fail)?;
            }
            if ctx.catalog.deleted_at(snapshot.id).map_err(fail)?.is_none() {
                ctx.catalog.mark_snapshot_deleted(snapshot.id, ctx.clock.now()).map_err(fail)?;
            }
            Ok(())
        })?;
    }
    for image in own {
        step(format!("delete {}", image.path.display()), &|| {
            if ctx.catalog.image_by_path(&image.path).map_err(|e| crate::error::chain(&e))?.is_some() {
                ctx.catalog.remove_image(image.id).map_err(|e| crate::error::chain(&e))?;
            }
            undo::remove_file(files, &image.path)
        })?;
    }
    // The record first (with the checks, in the catalog), then the files:
    // a crash in between leaves orphan files, never records of files gone.
    let overlays: Vec<PathBuf> = resources.disks.iter().map(|d| d.path.clone()).collect();
    step(format!("forget clone {name} and unpin the source's images"), &|| {
        undo::forget_clone(ctx.catalog, name, &overlays)
    })?;
    for disk in &resources.disks {
        step(format!("delete {}", disk.path.display()), &|| undo::remove_file(files, &disk.path))?;
    }
    for domain_dir in resources.disks.iter().filter_map(|d| d.path.parent()) {
        // A folder that cannot be listed holds nothing more to delete.
        for path in files.list_dir(domain_dir).unwrap_or_default() {
            // The NVRAM copies, console logs and memory image copies the clone made.
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            if [".nvram.fd", ".console.log", ".mem"].iter().any(|suffix| file == format!("{name}{suffix}")) {
                step(format!("delete {}", path.display()), &|| undo::remove_file(files, &path))?;
            }
        }
    }
    clone::remove_empty_dirs(ctx.host.storage(), &resources.storage);
    Ok(())
}
