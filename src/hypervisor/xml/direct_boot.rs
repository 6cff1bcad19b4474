//! `DomainDef::direct_boot`: the small direct-kernel-boot guests of the lab.

use std::path::PathBuf;

use xmltree::Element;

use super::devices::{new_network_interface, new_virtio_disk};
use super::{element, push, text_element, DomainDef};

/// A guest that boots a kernel and initrd directly, with qcow2 virtio disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBootSpec {
    pub name: String,
    /// `qemu` (TCG), `kvm`, or `test` for libvirt's test driver.
    pub domain_type: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// qcow2 images, attached as `vda`, `vdb`, ... in this order.
    pub disks: Vec<PathBuf>,
    pub interfaces: Vec<NicSpec>,
    /// When set, the first serial port (and the console) write to this file.
    pub serial_log: Option<PathBuf>,
}

/// A virtio NIC on a libvirt network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub network: String,
    /// `None` lets libvirt pick one.
    pub mac: Option<String>,
}

/// `vda`, `vdb`, ..., `vdz`, `vdaa`, ...: libvirt's disk naming.
fn virtio_target(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

fn os(spec: &DirectBootSpec) -> Element {
    let mut os = Element::new("os");
    push(&mut os, text_element("type", "hvm"));
    push(&mut os, text_element("kernel", &spec.kernel.to_string_lossy()));
    if let Some(initrd) = &spec.initrd {
        push(&mut os, text_element("initrd", &initrd.to_string_lossy()));
    }
    push(&mut os, text_element("cmdline", &spec.cmdline));
    os
}

fn serial_and_console(devices: &mut Element, log: &str) {
    // `append`: a restored or restarted guest adds to the log, not wipes it.
    let mut serial = element("serial", &[("type", "file")]);
    push(&mut serial, element("source", &[("path", log), ("append", "on")]));
    push(&mut serial, element("target", &[("port", "0")]));
    push(devices, serial);
    let mut console = element("console", &[("type", "file")]);
    push(&mut console, element("source", &[("path", log), ("append", "on")]));
    push(&mut console, element("target", &[("type", "serial"), ("port", "0")]));
    push(devices, console);
}

impl DomainDef {
    /// A minimal guest for the lab: direct kernel boot, virtio disks and
    /// NICs, no graphics, and optionally the boot log in a file.
    pub fn direct_boot(spec: &DirectBootSpec) -> DomainDef {
        let mut root = element("domain", &[("type", &spec.domain_type)]);
        push(&mut root, text_element("name", &spec.name));
        let mut memory = text_element("memory", &spec.memory_mib.to_string());
        memory.attributes.insert("unit".to_owned(), "MiB".to_owned());
        push(&mut root, memory);
        push(&mut root, text_element("vcpu", &spec.vcpus.to_string()));
        push(&mut root, os(spec));
        let mut features = Element::new("features");
        push(&mut features, Element::new("acpi"));
        push(&mut root, features);
        push(&mut root, text_element("on_poweroff", "destroy"));
        push(&mut root, text_element("on_reboot", "restart"));
        push(&mut root, text_element("on_crash", "destroy"));

        let mut devices = Element::new("devices");
        for (index, disk) in spec.disks.iter().enumerate() {
            push(&mut devices, new_virtio_disk(&disk.to_string_lossy(), &virtio_target(index)));
        }
        for nic in &spec.interfaces {
            push(&mut devices, new_network_interface(&nic.network, nic.mac.as_deref()));
        }
        if let Some(log) = &spec.serial_log {
            serial_and_console(&mut devices, &log.to_string_lossy());
        }
        push(&mut devices, element("memballoon", &[("model", "none")]));
        push(&mut root, devices);
        DomainDef { root }
    }
}

#[cfg(test)]
mod tests {
    use super::virtio_target;

    #[test]
    fn virtio_targets_follow_libvirt_naming() {
        let names: Vec<String> = [0, 1, 25, 26, 27].into_iter().map(virtio_target).collect();
        assert_eq!(names, ["vda", "vdb", "vdz", "vdaa", "vdab"]);
    }
}
