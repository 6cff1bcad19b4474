//! Deciding what deleting a snapshot does to each of its images, before
//! anything changes: the catalog says who needs what, libvirt says which
//! chain a running domain uses, qemu-img says what is on disk. Any image
//! that would change and that something else needs makes a blocker; a
//! plan with blockers is deferred whole. See the module documentation of
//! [`super`] for the rules.

use std::path::PathBuf;

use super::DeleteError;
use crate::catalog::{Dependent, DependentKind, Image, ImageKind, Snapshot};
use crate::config::Environment;
use crate::host::Storage;
use crate::hypervisor::{Domain, HvError};
use crate::ops::context::OpContext;
use crate::ops::snapshot::snapshot_dependent;

/// What deleting one snapshot does; see [`plan`].
#[derive(Debug)]
pub(super) struct Plan {
    pub snapshot: Snapshot,
    /// The snapshot's pin on its disk images.
    pub pin: Dependent,
    pub disks: Vec<DiskStep>,
    /// The snapshot's memory images: removed.
    pub memory: Vec<Image>,
    /// Why the delete must wait, one line each; nothing runs while any.
    pub blockers: Vec<String>,
}

#[derive(Debug)]
pub(super) enum DiskStep {
    /// A base image (or a full copy): the pin goes, the image stays as it is.
    Release { image: Image },
    /// An image nothing backs onto and nothing else needs: it goes.
    RemoveOrphan { image: Image },
    /// Live: the child `top` is committed into the snapshot's image `into`.
    Commit(CommitStep),
    /// Offline: the snapshot's image `removed` is pulled into its child `top`.
    Pull(PullStep),
}

#[derive(Debug)]
pub(super) struct CommitStep {
    pub vm: String,
    pub disk: String,
    pub domain: String,
    /// The snapshot's image's only child: the active image or the next
    /// snapshot's image. Merged away.
    pub top: Image,
    /// The snapshot's image: it takes `top`'s data and place.
    pub into: Image,
    /// `top` is what the guest writes to: an active commit with a pivot.
    pub active: bool,
    /// An interrupted delete already committed (the live chain has no `top`).
    pub done: bool,
    /// The domain's chain after the commit as the catalog knows it, top first.
    pub after: Vec<PathBuf>,
    /// Memory images of the snapshots that pin `top`: they will name `into`.
    pub memory: Vec<PathBuf>,
}

#[derive(Debug)]
pub(super) struct PullStep {
    pub vm: String,
    pub disk: String,
    /// The snapshot's image's only child: it takes the data and keeps its path.
    pub top: Image,
    /// The snapshot's image: merged away.
    pub removed: Image,
    /// `removed`'s backing image, `top`'s afterwards.
    pub backing: Option<Image>,
    /// An interrupted delete already pulled (`top` backs onto `backing`).
    pub done: bool,
}

/// Plans deleting `snapshot` of environment `env_name`.
pub(super) fn plan(
    ctx: &OpContext<'_>,
    files: &dyn Storage,
    env_name: &str,
    env: &Environment,
    snapshot: Snapshot,
) -> Result<Plan, DeleteError> {
    let catalog = ctx.catalog;
    let pin = snapshot_dependent(env_name, &snapshot.name);
    let mut blockers = Vec::new();
    let memory: Vec<Image> =
        catalog.images_of_snapshot(snapshot.id)?.into_iter().filter(|i| i.kind == ImageKind::Memory).collect();
    for image in &memory {
        for dependent in catalog.dependents_of(image.id)? {
            blockers.push(format!("memory image {} is needed by {}", image.path.display(), who(&dependent)));
        }
    }
    let mut planner = Planner { ctx, files, env_name, env, pin: &pin, blockers };
    let mut disks = Vec::new();
    for image in catalog.images_needed_by(&pin)? {
        if image.kind == ImageKind::Memory {
            continue;
        }
        if let Some(step) = planner.disk(image)? {
            disks.push(step);
        }
    }
    let blockers = planner.blockers;
    Ok(Plan { snapshot, pin, disks, memory, blockers })
}

/// "clone 'x'", "snapshot 'demo/s3'".
pub(super) fn who(dependent: &Dependent) -> String {
    format!("{} '{}'", dependent.kind, dependent.name)
}

struct Planner<'p, 'c> {
    ctx: &'p OpContext<'c>,
    files: &'p dyn Storage,
    env_name: &'p str,
    env: &'p Environment,
    pin: &'p Dependent,
    blockers: Vec<String>,
}

impl Planner<'_, '_> {
    fn block(&mut self, image: &Image, why: String) {
        let place = format!("{}/{}", image.vm, image.disk.as_deref().unwrap_or("?"));
        self.blockers.push(format!("{place}: {why}"));
    }

    /// Blocks on every dependent of `image` that is not a snapshot.
    fn block_outsiders(&mut self, image: &Image, role: &str) -> Result<Vec<Dependent>, DeleteError> {
        let dependents = self.ctx.catalog.dependents_of(image.id)?;
        for dependent in dependents.iter().filter(|d| d.kind != DependentKind::Snapshot) {
            self.block(image, format!("{} ({role}) is needed by {}", image.path.display(), who(dependent)));
        }
        Ok(dependents)
    }

    fn disk(&mut self, image: Image) -> Result<Option<DiskStep>, DeleteError> {
        let catalog = self.ctx.catalog;
        let start = self.blockers.len();
        if matches!(image.kind, ImageKind::Base | ImageKind::FullCopy) {
            return Ok(Some(DiskStep::Release { image }));
        }
        let others: Vec<Dependent> = catalog.dependents_of(image.id)?.into_iter().filter(|d| d != self.pin).collect();
        for dependent in &others {
            self.block(&image, format!("{} is also needed by {}", image.path.display(), who(dependent)));
        }
        let children = catalog.children_of(image.id)?;
        if children.len() > 1 {
            let list: Vec<String> = children.iter().map(|c| c.path.display().to_string()).collect();
            self.block(
                &image,
                format!(
                    "{} backs {} images ({}): merging it would change a branch",
                    image.path.display(),
                    children.len(),
                    list.join(", ")
                ),
            );
        }
        if !others.is_empty() || children.len() > 1 {
            return Ok(None);
        }
        if !self.env.vms.contains_key(&image.vm) {
            // Without its domain's name envclone cannot tell whether a QEMU
            // has the chain open: merge nothing.
            self.block(
                &image,
                format!(
                    "VM '{}' is no longer in the environment's config: envclone cannot tell what runs on {}",
                    image.vm,
                    image.path.display()
                ),
            );
            return Ok(None);
        }
        let domain = self.domain(&image)?;
        let Some(top) = children.into_iter().next() else {
            // Nothing backs onto it: unless a domain uses it (the catalog
            // would be wrong), it simply goes.
            if let Some((_, domain)) = &domain {
                let chain = disk_chain(domain, &image);
                let uses = if domain.state.is_active() {
                    chain.contains(&image.path)
                } else {
                    chain.first() == Some(&image.path)
                };
                if uses {
                    return Err(self.mismatch(&image, "libvirt", vec![], chain));
                }
            }
            return Ok(Some(DiskStep::RemoveOrphan { image }));
        };
        let top_dependents = self.block_outsiders(&top, "it would be merged away")?;
        match domain {
            Some((name, domain)) if domain.state.is_active() => {
                let chain = disk_chain(&domain, &image);
                if chain.contains(&top.path) || chain.contains(&image.path) {
                    return self.commit(start, name, &domain, image, top, &top_dependents);
                }
            }
            // A defined domain that does not run: its definition must not
            // name the image that goes as the disk's source.
            Some((_, domain)) => {
                let chain = disk_chain(&domain, &image);
                if chain.first() == Some(&image.path) {
                    return Err(self.mismatch(&image, "libvirt", vec![top.path.clone(), image.path.clone()], chain));
                }
            }
            None => {}
        }
        self.pull(start, image, top)
    }

    /// The VM's domain with its definition (live when it runs), if defined.
    fn domain(&self, image: &Image) -> Result<Option<(String, Domain)>, DeleteError> {
        let Some(vm) = self.env.vms.get(&image.vm) else { return Ok(None) };
        match self.ctx.host.hypervisor().domain(&vm.domain) {
            Ok(domain) => Ok(Some((vm.domain.clone(), domain))),
            Err(HvError::NoSuchDomain { .. }) => Ok(None),
            Err(source) => Err(DeleteError::InspectDomain {
                vm: image.vm.clone(),
                domain: vm.domain.clone(),
                source: Box::new(source),
            }),
        }
    }

    fn commit(
        &mut self,
        start: usize,
        domain_name: String,
        domain: &Domain,
        into: Image,
        top: Image,
        top_dependents: &[Dependent],
    ) -> Result<Option<DiskStep>, DeleteError> {
        let catalog = self.ctx.catalog;
        let grandchildren = catalog.children_of(top.id)?;
        if grandchildren.len() > 1 {
            self.block(
                &top,
                format!(
                    "{} backs {} images: committing it would change a branch",
                    top.path.display(),
                    grandchildren.len()
                ),
            );
        }
        for child in &grandchildren {
            self.block_outsiders(child, "its backing file would change")?;
        }
        if self.blockers.len() > start {
            return Ok(None);
        }
        let found = disk_chain(domain, &into);
        let Some(active) = found.first().and_then(|source| catalog.image_by_path(source).transpose()).transpose()?
        else {
            return Err(self.mismatch(&into, "libvirt", vec![top.path.clone(), into.path.clone()], found));
        };
        let expected: Vec<PathBuf> = catalog.chain(active.id)?.into_iter().map(|i| i.path).collect();
        let after: Vec<PathBuf> = expected.iter().filter(|p| **p != top.path).cloned().collect();
        let reported_backing = found.len() > 1;
        let agrees = |chain: &[PathBuf]| {
            if reported_backing {
                found.starts_with(chain)
            } else {
                found.first() == chain.first()
            }
        };
        let done = if expected.contains(&top.path) && agrees(&expected) {
            false
        } else if !found.contains(&top.path) && found.contains(&into.path) && agrees(&after) {
            true
        } else {
            return Err(self.mismatch(&into, "libvirt", expected, found));
        };
        let mut memory = Vec::new();
        let prefix = format!("{}/", self.env_name);
        for dependent in top_dependents.iter().filter(|d| d.kind == DependentKind::Snapshot) {
            let Some(name) = dependent.name.strip_prefix(&prefix) else { continue };
            let Some(snapshot) = catalog.snapshot_named(self.env_name, name)? else { continue };
            memory.extend(
                catalog
                    .images_of_snapshot(snapshot.id)?
                    .into_iter()
                    .filter(|i| i.kind == ImageKind::Memory && i.vm == into.vm)
                    .map(|i| i.path),
            );
        }
        Ok(Some(DiskStep::Commit(CommitStep {
            vm: into.vm.clone(),
            disk: into.disk.clone().unwrap_or_default(),
            domain: domain_name,
            active: found.first() == Some(&top.path) || (done && found.first() == Some(&into.path)),
            top,
            into,
            done,
            after,
            memory,
        })))
    }

    fn pull(&mut self, start: usize, removed: Image, top: Image) -> Result<Option<DiskStep>, DeleteError> {
        if self.blockers.len() > start {
            return Ok(None);
        }
        let catalog = self.ctx.catalog;
        let backing = removed.backing.map(|id| catalog.image(id)).transpose()?;
        let found = self.files.backing_chain(&top.path).map_err(|source| DeleteError::ReadChain {
            vm: removed.vm.clone(),
            disk: removed.disk.clone().unwrap_or_default(),
            path: top.path.clone(),
            source: Box::new(source),
        })?;
        let before = [top.path.clone(), removed.path.clone()];
        let after: Vec<PathBuf> =
            std::iter::once(top.path.clone()).chain(backing.iter().map(|b| b.path.clone())).collect();
        let done = if found.starts_with(&before) {
            false
        } else if found.starts_with(&after) && (backing.is_some() || found.len() == 1) {
            true
        } else {
            return Err(self.mismatch(&removed, "qemu-img", before.to_vec(), found));
        };
        Ok(Some(DiskStep::Pull(PullStep {
            vm: removed.vm.clone(),
            disk: removed.disk.clone().unwrap_or_default(),
            top,
            removed,
            backing,
            done,
        })))
    }

    fn mismatch(
        &self,
        image: &Image,
        seen_by: &'static str,
        expected: Vec<PathBuf>,
        found: Vec<PathBuf>,
    ) -> DeleteError {
        DeleteError::ChainMismatch {
            vm: image.vm.clone(),
            disk: image.disk.clone().unwrap_or_default(),
            seen_by,
            expected,
            found,
        }
    }
}

/// The chain (source first) of the domain's disk that `image` is of, as
/// the domain's definition reports it (a running domain's live definition
/// has the whole chain; an inactive one is trusted for its source only).
fn disk_chain(domain: &Domain, image: &Image) -> Vec<PathBuf> {
    domain
        .def
        .disks()
        .into_iter()
        .find(|d| Some(&d.target) == image.disk.as_ref())
        .map(|d| d.source.into_iter().chain(d.backing).collect())
        .unwrap_or_default()
}
