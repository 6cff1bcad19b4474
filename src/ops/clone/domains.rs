//! Domains: each VM's definition made the clone's (new name, UUID and MACs,
//! its interfaces on the copied networks, its disks on the overlays),
//! defined, and for `--start resume` its memory image copied to name it.

use std::collections::BTreeMap;
use std::path::Path;

use super::networks::Networks;
use super::overlays::Overlays;
use super::resolve::VmPlan;
use super::{names, CloneError, Run, VmReport};
use crate::catalog::{ImageFormat, UndoAction};
use crate::config::Environment;
use crate::hypervisor::{random_mac, random_uuid, DomainDef, HvError};
use crate::ops::journal::Journaled;
use crate::ops::snapshot::save_image::SavePrefix;

/// The clone's domains, defined.
#[derive(Debug)]
pub(super) struct Domains {
    /// The clone as the config would describe it: its domains, reached
    /// through the gateway at the source's addresses.
    pub environment: Environment,
    pub vms: Vec<VmReport>,
}

/// One VM's definition made the clone's, before it is defined.
struct ClonedDef {
    def: DomainDef,
    uuid: String,
    macs: Vec<String>,
}

impl Run<'_, '_> {
    pub(super) fn domains(
        &mut self,
        plans: &[VmPlan],
        networks: &Networks<'_>,
        overlays: &Overlays,
    ) -> Result<Domains, CloneError> {
        let copies: BTreeMap<String, String> =
            networks.copies.iter().map(|n| (n.source.clone(), n.name.clone())).collect();
        let netns = names::gateway_netns(&self.request.name);
        let mut environment = self.source.clone();
        environment.description = Some(format!("clone of {} at snapshot {}", self.request.source, self.snapshot));
        environment.networks = networks.copies.iter().map(|n| n.name.clone()).collect();
        environment.storage = Some(self.storage.clone());
        environment.retention = None;
        let mut vms = Vec::new();
        for plan in plans {
            let ClonedDef { mut def, uuid, macs } = self.cloned_def(plan, &copies)?;
            if !def.chardev_files().is_empty() {
                // Its own console log: the source's is in use (and locked) by the source.
                let log = self.storage.join(&plan.vm).join(format!("{}.console.log", self.request.name));
                def.set_chardev_files(&log);
                let undo = UndoAction::DeleteFile { path: log.clone() };
                self.step(&format!("console log of {} in {}", plan.domain, log.display()), undo, |_| Ok(()))?;
            }
            let undo = UndoAction::UndefineDomain { name: plan.domain.clone() };
            self.step(&format!("define {} for {}", plan.domain, plan.vm), undo, |run| {
                run.ctx.host.hypervisor().define_domain(&def).map(drop).map_err(define_failed(plan))
            })?;
            if let Some((image, copy)) = &plan.memory {
                let undo = UndoAction::DeleteFile { path: copy.clone() };
                self.step(&format!("memory image of {} for {}", plan.vm, plan.domain), undo, |_| {
                    write_memory_copy(&plan.vm, image, copy, &def)
                })?;
            }
            // Cannot fail: the environment is a copy of the source, whose VMs the plans list.
            #[allow(clippy::expect_used)]
            let vm = environment.vms.get_mut(&plan.vm).expect("plans come from the environment's VMs");
            vm.domain = plan.domain.clone();
            vm.agent.netns = Some(netns.clone());
            vms.push(VmReport {
                vm: plan.vm.clone(),
                source_domain: plan.source_domain.clone(),
                domain: plan.domain.clone(),
                uuid,
                macs,
                address: vm.agent.address.clone(),
                disks: overlays.disks.iter().filter(|d| d.vm == plan.vm).cloned().collect(),
                machine_id: None,
                hostname: None,
                replacements: None,
            });
        }
        Ok(Domains { environment, vms })
    }

    /// `plan`'s definition with the clone's name, a new UUID, new MACs,
    /// its interfaces on the copies (`copies`: source network -> copy), its
    /// disks on the overlays and its NVRAM on the clone's copy.
    fn cloned_def(&self, plan: &VmPlan, copies: &BTreeMap<String, String>) -> Result<ClonedDef, CloneError> {
        let fail = define_failed(plan);
        let mut def = plan.def.clone();
        def.set_name(&plan.domain);
        def.strip_for_new_identity();
        let uuid = random_uuid();
        def.set_uuid(&uuid);
        let mut macs = Vec::new();
        for (index, iface) in plan.def.interfaces().iter().enumerate() {
            let mac = random_mac();
            def.set_interface_mac(index, &mac).map_err(&fail)?;
            if let Some(network) = iface.network.as_ref().and_then(|n| copies.get(n)) {
                def.set_interface_network(index, network).map_err(&fail)?;
            }
            macs.push(mac);
        }
        for (disk, _) in &plan.images {
            let overlay = names::overlay(&self.storage, &self.request.name, &plan.vm, disk);
            def.set_disk_source(disk, &overlay, ImageFormat::Qcow2.as_str()).map_err(&fail)?;
        }
        if let Some((_, to)) = &plan.nvram {
            def.set_nvram(to);
        }
        Ok(ClonedDef { def, uuid, macs })
    }
}

/// Maps a failure to make or define `plan`'s domain.
fn define_failed(plan: &VmPlan) -> impl Fn(HvError) -> CloneError + '_ {
    |e| CloneError::DefineDomain { vm: plan.vm.clone(), domain: plan.domain.clone(), source: Box::new(e) }
}

/// Writes `copy`: the save image `image` with `def` as its domain XML (same
/// room, so the QEMU stream that follows does not move), then the stream.
fn write_memory_copy(vm: &str, image: &Path, copy: &Path, def: &DomainDef) -> Result<(), CloneError> {
    use std::io::{Seek, SeekFrom, Write};
    let fail = |detail: String| CloneError::MemoryImage { vm: vm.to_owned(), path: copy.to_owned(), detail };
    let prefix = SavePrefix::read(image).map_err(|e| fail(crate::error::chain(&e)))?;
    let rewritten = prefix.with_xml(&def.to_xml()).map_err(|e| fail(e.to_string()))?;
    let bytes = rewritten.encode().map_err(|e| fail(e.to_string()))?;
    let mut from = std::fs::File::open(image).map_err(|e| fail(format!("cannot open {}: {e}", image.display())))?;
    from.seek(SeekFrom::Start(prefix.stream_offset())).map_err(|e| fail(e.to_string()))?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(copy)
        .map_err(|e| fail(format!("cannot create it: {e}")))?;
    to.write_all(&bytes).map_err(|e| fail(e.to_string()))?;
    std::io::copy(&mut from, &mut to).map_err(|e| fail(e.to_string()))?;
    to.sync_all().map_err(|e| fail(e.to_string()))
}
