//! `<disk>` and `<interface>` devices of a domain: reading and editing.

use std::path::PathBuf;

use xmltree::Element;

use super::{attr, child_or_insert, children, element, push, remove_children, set_attr};

/// One `<disk>` of a domain, as libvirt reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The guest device name (`<target dev>`), e.g. `vda`.
    pub target: String,
    /// `disk`, `cdrom`, `floppy` or `lun`.
    pub device: String,
    /// The image (file or block device) the guest writes to, if any.
    pub source: Option<PathBuf>,
    /// The image format from `<driver type>`, e.g. `qcow2`.
    pub format: Option<String>,
    /// The backing chain below `source`, top first, as libvirt reports it in
    /// `<backingStore>` (empty when libvirt didn't report one).
    pub backing: Vec<PathBuf>,
    pub readonly: bool,
}

/// One `<interface>` of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: Option<String>,
    /// The libvirt network (`<source network>`), for `type='network'`.
    pub network: Option<String>,
    /// The host bridge: `<source bridge>` (libvirt also reports it for a
    /// running `type='network'` interface).
    pub bridge: Option<String>,
    /// The NIC model, e.g. `virtio`.
    pub model: Option<String>,
    /// False when `<link state='down'/>`.
    pub link_up: bool,
}

/// The path a `<source>` (or a `<backingStore>`'s `<source>`) points at.
fn source_path(parent: &Element) -> Option<PathBuf> {
    let source = parent.get_child("source")?;
    attr(source, "file").or_else(|| attr(source, "dev")).or_else(|| attr(source, "name")).map(PathBuf::from)
}

fn backing_chain(disk: &Element) -> Vec<PathBuf> {
    let mut chain = Vec::new();
    let mut cursor = disk.get_child("backingStore");
    while let Some(store) = cursor {
        match source_path(store) {
            Some(path) => chain.push(path),
            None => break,
        }
        cursor = store.get_child("backingStore");
    }
    chain
}

pub(crate) fn disk_target(disk: &Element) -> Option<&str> {
    disk.get_child("target").and_then(|t| attr(t, "dev"))
}

pub(crate) fn read_disk(disk: &Element) -> Option<Disk> {
    Some(Disk {
        target: disk_target(disk)?.to_owned(),
        device: attr(disk, "device").unwrap_or("disk").to_owned(),
        source: source_path(disk),
        format: disk.get_child("driver").and_then(|d| attr(d, "type")).map(str::to_owned),
        backing: backing_chain(disk),
        readonly: disk.get_child("readonly").is_some(),
    })
}

/// Points `disk` at the file `path` in `format`, dropping the reported
/// backing chain (it described the old image; libvirt probes the new one).
pub(crate) fn set_disk_source(disk: &mut Element, path: &str, format: &str) {
    set_attr(disk, "type", "file");
    let source = child_or_insert(disk, "source");
    source.attributes.clear();
    source.children.clear();
    set_attr(source, "file", path);
    let driver = child_or_insert(disk, "driver");
    if attr(driver, "name").is_none() {
        set_attr(driver, "name", "qemu");
    }
    set_attr(driver, "type", format);
    remove_children(disk, "backingStore");
}

/// Replaces the reported backing chain of `disk` by `chain` (top first),
/// nested as libvirt reports it in live XML.
#[cfg(test)]
pub(crate) fn set_backing_chain(disk: &mut Element, chain: &[PathBuf]) {
    remove_children(disk, "backingStore");
    let mut store = Element::new("backingStore");
    for path in chain.iter().rev() {
        let mut outer = element("backingStore", &[("type", "file")]);
        push(&mut outer, element("format", &[("type", "qcow2")]));
        push(&mut outer, element("source", &[("file", &path.to_string_lossy())]));
        push(&mut outer, store);
        store = outer;
    }
    push(disk, store);
}

pub(crate) fn read_interface(iface: &Element) -> Interface {
    let source = iface.get_child("source");
    let source_attr = |key| source.and_then(|s| attr(s, key)).map(str::to_owned);
    Interface {
        mac: iface.get_child("mac").and_then(|m| attr(m, "address")).map(str::to_owned),
        network: source_attr("network"),
        bridge: source_attr("bridge"),
        model: iface.get_child("model").and_then(|m| attr(m, "type")).map(str::to_owned),
        link_up: iface.get_child("link").and_then(|l| attr(l, "state")) != Some("down"),
    }
}

pub(crate) fn set_interface_mac(iface: &mut Element, mac: &str) {
    set_attr(child_or_insert(iface, "mac"), "address", mac);
}

/// Attaches `iface` to the libvirt network `network`. The old source's
/// attributes (bridge, portid) belonged to the old attachment and go.
pub(crate) fn set_interface_network(iface: &mut Element, network: &str) {
    set_attr(iface, "type", "network");
    let source = child_or_insert(iface, "source");
    source.attributes.clear();
    set_attr(source, "network", network);
}

pub(crate) fn set_interface_link(iface: &mut Element, up: bool) {
    set_attr(child_or_insert(iface, "link"), "state", if up { "up" } else { "down" });
}

/// `<disk type='file' device='disk'>` for a virtio qcow2 image.
pub(crate) fn new_virtio_disk(path: &str, target: &str) -> Element {
    let mut disk = element("disk", &[("type", "file"), ("device", "disk")]);
    push(&mut disk, element("driver", &[("name", "qemu"), ("type", "qcow2")]));
    push(&mut disk, element("source", &[("file", path)]));
    push(&mut disk, element("target", &[("dev", target), ("bus", "virtio")]));
    disk
}

/// `<interface type='network'>` with a virtio NIC.
pub(crate) fn new_network_interface(network: &str, mac: Option<&str>) -> Element {
    let mut iface = element("interface", &[("type", "network")]);
    if let Some(mac) = mac {
        push(&mut iface, element("mac", &[("address", mac)]));
    }
    push(&mut iface, element("source", &[("network", network)]));
    push(&mut iface, element("model", &[("type", "virtio")]));
    iface
}

/// All `<disk>` elements of `<devices>`.
pub(crate) fn disk_elements(devices: &Element) -> impl Iterator<Item = &Element> {
    children(devices, "disk")
}
