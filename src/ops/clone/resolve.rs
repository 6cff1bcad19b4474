//! Resolve: the snapshot is complete and has an image of every disk of
//! every VM, NEW's domains are free names, and each VM's clone is planned
//! from its source domain (or, `--start resume`, from the definition its
//! memory image was saved with).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{names, CloneError, Run, StartMode};
use crate::catalog::{Image, ImageKind, Snapshot, SnapshotState};
use crate::hypervisor::{DomainDef, HvError};
use crate::ops::snapshot::save_image::SavePrefix;
use crate::ops::snapshot::snapshot_dependent;

/// One VM of the clone, as planned.
#[derive(Debug, Clone)]
pub(super) struct VmPlan {
    pub vm: String,
    pub source_domain: String,
    pub domain: String,
    pub def: DomainDef,
    /// Snapshot images by disk target.
    pub images: Vec<(String, Image)>,
    pub nvram: Option<(PathBuf, PathBuf)>,
    /// `--start resume`: the snapshot's memory image, and the clone's copy
    /// of it (its XML rewritten for the clone).
    pub memory: Option<(PathBuf, PathBuf)>,
}

impl Run<'_, '_> {
    /// The snapshot, its image of every disk, the source domains and networks.
    pub(super) fn resolve(&mut self) -> Result<Vec<VmPlan>, CloneError> {
        let ctx = self.ctx;
        let env = &self.request.source;
        let snapshot = self.complete_snapshot()?;
        let resume = self.request.start == StartMode::Resume;
        if resume && !snapshot.memory {
            return Err(CloneError::NoMemoryImage { snapshot: snapshot.name.clone(), vm: None });
        }
        let memory: BTreeMap<String, PathBuf> = ctx
            .catalog
            .images_of_snapshot(snapshot.id)?
            .into_iter()
            .filter(|image| image.kind == ImageKind::Memory)
            .map(|image| (image.vm, image.path))
            .collect();
        let mut pinned: BTreeMap<String, Vec<(String, Image)>> = BTreeMap::new();
        for image in ctx.catalog.images_needed_by(&snapshot_dependent(env, &snapshot.name))? {
            if let Some(disk) = image.disk.clone() {
                pinned.entry(image.vm.clone()).or_default().push((disk, image));
            }
        }
        let mut plans = Vec::new();
        for (vm, config) in &self.source.vms {
            let images = pinned.remove(vm).unwrap_or_default();
            if images.is_empty() {
                return Err(CloneError::SnapshotLacksVm { snapshot: snapshot.name.clone(), vm: vm.clone() });
            }
            for (disk, image) in &images {
                if !self.ctx.host.storage().exists(&image.path)? {
                    return Err(CloneError::ImageMissing {
                        vm: vm.clone(),
                        disk: disk.clone(),
                        path: image.path.clone(),
                    });
                }
            }
            let domain = self.free_domain(vm)?;
            let mut def = ctx
                .host
                .hypervisor()
                .domain(&config.domain)
                .map_err(|source| CloneError::InspectDomain {
                    vm: vm.clone(),
                    domain: config.domain.clone(),
                    source: Box::new(source),
                })?
                .def;
            let memory = if resume {
                let image = memory.get(vm).cloned().ok_or_else(|| CloneError::NoMemoryImage {
                    snapshot: snapshot.name.clone(),
                    vm: Some(vm.clone()),
                })?;
                // The definition QEMU's state was saved with: the clone's
                // is made from it, so that the memory restores onto it.
                let fail = |detail: String| CloneError::MemoryImage { vm: vm.clone(), path: image.clone(), detail };
                let prefix = SavePrefix::read(&image).map_err(|e| fail(crate::error::chain(&e)))?;
                def = DomainDef::parse(&prefix.xml).map_err(|e| fail(crate::error::chain(&e)))?;
                let copy = self.storage.join(vm).join(format!("{}.mem", self.request.name));
                Some((image, copy))
            } else {
                None
            };
            let nvram = def.nvram().map(|from| {
                let to = self.storage.join(vm).join(format!("{}.nvram.fd", self.request.name));
                (from, to)
            });
            plans.push(VmPlan {
                vm: vm.clone(),
                source_domain: config.domain.clone(),
                domain,
                def,
                images,
                nvram,
                memory,
            });
        }
        Ok(plans)
    }

    /// The snapshot to clone from, complete; else which ones are.
    fn complete_snapshot(&self) -> Result<Snapshot, CloneError> {
        let ctx = self.ctx;
        let env = &self.request.source;
        match ctx.catalog.snapshot_named(env, &self.snapshot)? {
            Some(s) if s.state == SnapshotState::Complete => Ok(s),
            other => {
                let known = ctx
                    .catalog
                    .snapshots(env)?
                    .into_iter()
                    .filter(|s| s.state == SnapshotState::Complete)
                    .map(|s| s.name)
                    .collect();
                Err(CloneError::UnknownSnapshot {
                    env: env.clone(),
                    name: self.snapshot.clone(),
                    state: other.map(|s| s.state),
                    known,
                })
            }
        }
    }

    /// The name of `vm`'s clone domain, refused when a domain has it.
    fn free_domain(&self, vm: &str) -> Result<String, CloneError> {
        let domain = names::domain(&self.request.name, vm);
        match self.ctx.host.hypervisor().domain(&domain) {
            Err(HvError::NoSuchDomain { .. }) => Ok(domain),
            Ok(_) => {
                Err(CloneError::BadName { name: self.request.name.clone(), reason: format!("domain {domain} exists") })
            }
            Err(source) => Err(CloneError::InspectDomain { vm: vm.to_owned(), domain, source: Box::new(source) }),
        }
    }
}
