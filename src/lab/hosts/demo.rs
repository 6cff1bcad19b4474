//! The `demo` environment on host a: the same two VMs as the one-host lab,
//! defined on a's libvirtd, their disks in a's storage under
//! `/srv/envclone/lab/`. The lab puts the images there from outside (it is
//! the hardware: `/proc/PID/root` and `nsenter` into a's mount namespace);
//! the domains only name paths on a, as a real host's would.

use super::machine::Machine;
use super::STORAGE;
use crate::config::DomainType;
use crate::hypervisor::{DomainState, HvError, Hypervisor, LibvirtHypervisor};
use crate::lab::topology::{self, KernelFiles, LabVm, VMS};
use crate::lab::{ensure_network, host, image, keys, LabError};
use std::fs;
use std::path::{Path, PathBuf};

/// What the lab made on the controller that demo's VMs are built from.
#[derive(Debug)]
pub struct Ingredients<'a> {
    pub domain_type: DomainType,
    pub kernel: &'a KernelFiles,
    /// The cached root image (a path on the controller).
    pub root_image: &'a Path,
    /// Each VM's SSH host key, in [`VMS`] order.
    pub guest_keys: &'a [keys::KeyPair],
    /// The controller's login key, for the guests' authorized_keys.
    pub authorized_key: &'a str,
    /// A directory on the controller for building seed images.
    pub staging: &'a Path,
}

/// The directory on host a holding demo's images.
pub fn image_dir() -> PathBuf {
    Path::new(STORAGE).join("lab")
}

/// A VM's serial console log, as a path on the host.
pub fn console_log(domain: &str) -> PathBuf {
    image_dir().join("console").join(format!("{domain}.log"))
}

/// Defines and starts whatever of demo is missing on `machine`; the VMs
/// that run an older root image than `root_image` (names, as the one-host
/// lab reports them).
pub fn place(machine: &Machine, parts: &Ingredients<'_>) -> Result<Vec<&'static str>, LabError> {
    let hv = LibvirtHypervisor::connect(&machine.libvirt().uri())
        .map_err(LabError::hypervisor(format!("connect to host {}'s libvirtd", machine.name)))?;
    let console_dir = machine.inside(&image_dir().join("console"))?;
    fs::create_dir_all(&console_dir).map_err(|source| LabError::io("create", &console_dir, source))?;
    let base = copy_base(machine, parts.root_image)?;
    ensure_network(&hv)?;
    // A host's own networks come back with it (`host-up`), as on a real
    // host; then libvirt's autostart decides which domains start.
    let uri = machine.libvirt().uri();
    host::run("virsh", &["-q", "-c", &uri, "net-autostart", topology::NETWORK])?;
    let mut stale = Vec::new();
    for (vm, key) in VMS.iter().zip(parts.guest_keys) {
        if ensure_vm(machine, &hv, vm, &base, key, parts)? {
            stale.push(vm.name);
        }
    }
    Ok(stale)
}

/// The cached root image copied into the host's storage under its cache
/// name (the name carries its content hash): the base of every overlay.
fn copy_base(machine: &Machine, root_image: &Path) -> Result<PathBuf, LabError> {
    let name = root_image.file_name().ok_or_else(|| LabError::BadPath { path: root_image.to_path_buf() })?;
    let on_host = image_dir().join(name);
    let target = machine.inside(&on_host)?;
    if !target.exists() {
        let partial = target.with_extension("partial");
        fs::copy(root_image, &partial).map_err(|source| LabError::io("copy", root_image, source))?;
        fs::rename(&partial, &target).map_err(|source| LabError::io("rename", &partial, source))?;
    }
    Ok(on_host)
}

/// Whether the VM's root disk sits on another base than `base` (stale).
fn ensure_vm(
    machine: &Machine,
    hv: &LibvirtHypervisor,
    vm: &LabVm,
    base: &Path,
    host_key: &keys::KeyPair,
    parts: &Ingredients<'_>,
) -> Result<bool, LabError> {
    let domain = vm.domain();
    let mut stale = false;
    let state = match hv.domain(&domain) {
        Ok(existing) => {
            let vda = existing.def.disks().into_iter().next();
            stale = !vda.is_some_and(|disk| disk.backing.iter().any(|b| b == base));
            existing.state
        }
        Err(HvError::NoSuchDomain { .. }) => {
            let root = image_dir().join(format!("{}-root.qcow2", vm.name));
            let seed = image_dir().join(format!("{}-seed.qcow2", vm.name));
            let (base_text, root_text) = (base.to_string_lossy(), root.to_string_lossy());
            machine.run("qemu-img", &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base_text, &root_text])?;
            copy_seed(machine, vm, &seed, host_key, parts)?;
            let def = vm.domain_def(parts.domain_type, parts.kernel, vec![root, seed], &console_log(&domain));
            hv.define_domain(&def).map_err(LabError::hypervisor(format!("define {domain} on {}", machine.name)))?;
            DomainState::ShutOff
        }
        Err(e) => return Err(LabError::hypervisor(format!("look up {domain} on {}", machine.name))(e)),
    };
    if !state.is_active() {
        hv.start_domain(&domain).map_err(LabError::hypervisor(format!("start {domain} on {}", machine.name)))?;
    }
    Ok(stale)
}

/// The VM's seed disk, built on the controller and copied into the host.
fn copy_seed(
    machine: &Machine,
    vm: &LabVm,
    on_host: &Path,
    host_key: &keys::KeyPair,
    parts: &Ingredients<'_>,
) -> Result<(), LabError> {
    let key = &host_key.private_dropbear;
    let key_bytes = fs::read(key).map_err(|source| LabError::io("read", key, source))?;
    let built = parts.staging.join(format!("{}-seed.qcow2", vm.name));
    image::seed_image(&built, &vm.identity_files(&key_bytes, parts.authorized_key))?;
    let target = machine.inside(on_host)?;
    fs::copy(&built, &target).map_err(|source| LabError::io("copy", &built, source))?;
    fs::remove_file(&built).map_err(|source| LabError::io("remove", &built, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_images_and_logs_sit_in_the_host_storage() {
        assert_eq!(image_dir(), Path::new("/srv/envclone/lab"));
        assert_eq!(console_log("demo-web"), Path::new("/srv/envclone/lab/console/demo-web.log"));
    }
}
