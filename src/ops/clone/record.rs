//! Record: the clone in the catalog, its overlays as images on the
//! snapshot's images, and a pin `clone:NEW` on each of those.

use super::identity::Identified;
use super::overlays::Overlays;
use super::resolve::VmPlan;
use super::{names, readdress, undo, CloneError, DiskMode, FullCopyReport, NetworkMode, Run, VmReport};
use crate::catalog::{
    CatalogError, CloneRecord, CloneResources, ClonedNetwork, Dependent, ImageFormat, ImageKind, NewImage, UndoAction,
};

/// What the report says of the clone made.
#[derive(Debug)]
pub(super) struct Made {
    pub vms: Vec<VmReport>,
    pub networks: Vec<ClonedNetwork>,
    pub gateway_netns: Option<String>,
    pub addresses: Option<readdress::AddressPlan>,
    pub full_copies: Vec<FullCopyReport>,
}

/// The record step's undo: the clone forgotten, its overlays' images
/// with it.
pub(super) fn forget_undo(clone: &str, overlays: &Overlays) -> UndoAction {
    let forget = undo::ForgetClone {
        clone: clone.to_owned(),
        overlays: overlays.disks.iter().map(|d| d.path.clone()).collect(),
    };
    UndoAction::Custom {
        kind: undo::UNDO_FORGET_CLONE.to_owned(),
        data: serde_json::to_value(&forget).unwrap_or_default(),
    }
}

impl Run<'_, '_> {
    /// The catalog: overlays, pins, the clone.
    pub(super) fn record(
        &mut self,
        plans: &[VmPlan],
        overlays: Overlays,
        clone: Identified,
    ) -> Result<Made, CloneError> {
        let ctx = self.ctx;
        let now = ctx.clock.now();
        let dependent = Dependent::clone_named(&self.request.name);
        for plan in plans {
            for (disk, image) in &plan.images {
                let overlay = names::overlay(&self.storage, &self.request.name, &plan.vm, disk);
                let linked = self.request.disks == DiskMode::Linked;
                ctx.catalog.add_image(&NewImage {
                    path: overlay.clone(),
                    vm: plan.vm.clone(),
                    disk: Some(disk.clone()),
                    kind: if linked { ImageKind::Overlay } else { ImageKind::FullCopy },
                    format: ImageFormat::Qcow2,
                    size_bytes: self.ctx.host.storage().size(&overlay).unwrap_or(0),
                    backing: linked.then_some(image.id),
                    snapshot: None,
                    created_at: now,
                })?;
                // A full copy needs nothing of the source's.
                if linked {
                    ctx.catalog.pin(image.id, &dependent)?;
                }
            }
        }
        ctx.catalog.add_clone(&CloneRecord {
            name: self.request.name.clone(),
            source_env: self.request.source.clone(),
            snapshot: self.snapshot.clone(),
            created_at: now,
            disks: match self.request.disks {
                DiskMode::Linked => "linked".into(),
                DiskMode::Full => "full".into(),
            },
            network: match self.request.network {
                NetworkMode::Isolated => "isolated".into(),
                NetworkMode::Readdress => "readdress".into(),
            },
            environment: serde_json::to_value(&clone.environment).map_err(|e| {
                CloneError::Catalog(CatalogError::Corrupt {
                    what: "record a clone's environment",
                    detail: e.to_string(),
                })
            })?,
            resources: CloneResources {
                domains: plans.iter().map(|p| p.domain.clone()).collect(),
                networks: clone.networks.clone(),
                gateway_netns: clone.gateway_netns.clone(),
                disks: overlays.disks,
                storage: self.storage.clone(),
                known_hosts: clone.known_hosts,
            },
        })?;
        Ok(Made {
            vms: clone.vms,
            networks: clone.networks,
            gateway_netns: clone.gateway_netns,
            addresses: clone.addresses,
            full_copies: overlays.full_copies,
        })
    }
}
