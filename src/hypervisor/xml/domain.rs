//! `DomainDef`: a libvirt `<domain>` document with typed accessors and edits.

use std::path::{Path, PathBuf};

use xmltree::Element;

use super::devices::{self, Disk, Interface};
use super::{attr, child_or_insert, child_text, children, children_mut, remove_children, set_text};
use crate::hypervisor::HvError;

/// The `<devices>` children that are character devices.
const CHARDEVS: [&str; 4] = ["serial", "console", "parallel", "channel"];

/// A libvirt domain definition. Unknown elements round-trip untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainDef {
    pub(super) root: Element,
}

impl DomainDef {
    pub fn parse(xml: &str) -> Result<Self, HvError> {
        let root = super::parse_root(xml, "domain", "domain")?;
        let def = Self { root };
        if def.name().is_empty() {
            return Err(HvError::Xml { what: "domain", detail: "no <name>".to_owned() });
        }
        Ok(def)
    }

    pub fn to_xml(&self) -> String {
        super::write(&self.root)
    }

    pub fn name(&self) -> String {
        child_text(&self.root, "name").unwrap_or_default()
    }

    pub fn set_name(&mut self, name: &str) {
        set_text(child_or_insert(&mut self.root, "name"), name);
    }

    pub fn uuid(&self) -> Option<String> {
        child_text(&self.root, "uuid").filter(|u| !u.is_empty())
    }

    pub fn set_uuid(&mut self, uuid: &str) {
        set_text(child_or_insert(&mut self.root, "uuid"), uuid);
    }

    /// Drops `<uuid>` so that libvirt assigns a new one on define.
    pub fn clear_uuid(&mut self) {
        remove_children(&mut self.root, "uuid");
    }

    /// The `<domain type>`: `kvm`, `qemu`, or `test` on the test driver.
    pub fn domain_type(&self) -> String {
        attr(&self.root, "type").unwrap_or_default().to_owned()
    }

    pub fn disks(&self) -> Vec<Disk> {
        self.devices().map(|d| devices::disk_elements(d).filter_map(devices::read_disk).collect()).unwrap_or_default()
    }

    /// Points the disk with guest target `target` (e.g. `vda`) at `path`.
    /// Drops the reported backing chain: it described the old image.
    pub fn set_disk_source(&mut self, target: &str, path: &Path, format: &str) -> Result<(), HvError> {
        devices::set_disk_source(self.disk_mut(target)?, &path.to_string_lossy(), format);
        Ok(())
    }

    /// Records `chain` (top first) as the disk's reported backing chain, as
    /// libvirt's live XML would show it (used by the fake).
    #[cfg(test)]
    pub(crate) fn set_disk_backing(&mut self, target: &str, chain: &[PathBuf]) -> Result<(), HvError> {
        devices::set_backing_chain(self.disk_mut(target)?, chain);
        Ok(())
    }

    pub fn interfaces(&self) -> Vec<Interface> {
        self.devices().map(|d| children(d, "interface").map(devices::read_interface).collect()).unwrap_or_default()
    }

    pub fn set_interface_mac(&mut self, index: usize, mac: &str) -> Result<(), HvError> {
        devices::set_interface_mac(self.interface_mut(index)?, mac);
        Ok(())
    }

    pub fn set_interface_network(&mut self, index: usize, network: &str) -> Result<(), HvError> {
        devices::set_interface_network(self.interface_mut(index)?, network);
        Ok(())
    }

    /// The index of the interface with MAC `mac` (compared ignoring case).
    pub fn interface_index(&self, mac: &str) -> Option<usize> {
        self.interfaces().iter().position(|i| i.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(mac)))
    }

    /// The `<interface>` element alone, as libvirt's device calls take it.
    pub fn interface_xml(&self, index: usize) -> Result<String, HvError> {
        let name = self.name();
        self.devices()
            .and_then(|d| children(d, "interface").nth(index))
            .map(super::write)
            .ok_or(HvError::NoSuchInterface { domain: name, index })
    }

    pub fn set_interface_link(&mut self, index: usize, up: bool) -> Result<(), HvError> {
        devices::set_interface_link(self.interface_mut(index)?, up);
        Ok(())
    }

    /// The UEFI variable store (`<os><nvram>`), if the domain has one.
    pub fn nvram(&self) -> Option<PathBuf> {
        let nvram = self.root.get_child("os")?.get_child("nvram")?;
        let text = nvram.get_text().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        text.or_else(|| nvram.get_child("source").and_then(|s| attr(s, "file")).map(str::to_owned)).map(PathBuf::from)
    }

    /// Sets the UEFI variable store path, keeping the `template` attribute.
    pub fn set_nvram(&mut self, path: &Path) {
        let nvram = child_or_insert(child_or_insert(&mut self.root, "os"), "nvram");
        nvram.attributes.shift_remove("type");
        set_text(nvram, &path.to_string_lossy());
    }

    /// Files the domain's character devices (serial, console, parallel,
    /// channel) write to: `<source path>` of a `type='file'` device and any
    /// `<log file>`.
    pub fn chardev_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(devices) = self.devices() {
            for kind in CHARDEVS {
                for dev in children(devices, kind) {
                    if attr(dev, "type") == Some("file") {
                        files.extend(dev.get_child("source").and_then(|s| attr(s, "path")).map(PathBuf::from));
                    }
                    files.extend(dev.get_child("log").and_then(|l| attr(l, "file")).map(PathBuf::from));
                }
            }
        }
        files
    }

    /// Points every file a character device writes to at `path`: a copy
    /// of a domain must not write into (or lock) the original's log files.
    pub fn set_chardev_files(&mut self, path: &Path) {
        let path = path.to_string_lossy();
        if let Some(devices) = self.devices_mut() {
            for kind in CHARDEVS {
                for dev in children_mut(devices, kind) {
                    if attr(dev, "type") == Some("file") {
                        if let Some(source) = dev.get_mut_child("source") {
                            super::set_attr(source, "path", &path);
                        }
                    }
                    if let Some(log) = dev.get_mut_child("log") {
                        super::set_attr(log, "file", &path);
                    }
                }
            }
        }
    }

    /// Removes the UUID and every interface MAC so that libvirt assigns new
    /// ones on define: the first step to define a copy next to the original.
    pub fn strip_for_new_identity(&mut self) {
        self.clear_uuid();
        if let Some(devices) = self.devices_mut() {
            for iface in children_mut(devices, "interface") {
                remove_children(iface, "mac");
            }
        }
    }

    fn devices(&self) -> Option<&Element> {
        self.root.get_child("devices")
    }

    fn devices_mut(&mut self) -> Option<&mut Element> {
        self.root.get_mut_child("devices")
    }

    fn disk_mut(&mut self, target: &str) -> Result<&mut Element, HvError> {
        let name = self.name();
        self.devices_mut()
            .and_then(|d| children_mut(d, "disk").find(|disk| devices::disk_target(disk) == Some(target)))
            .ok_or_else(|| HvError::NoSuchDisk { domain: name, disk: target.to_owned() })
    }

    fn interface_mut(&mut self, index: usize) -> Result<&mut Element, HvError> {
        let name = self.name();
        self.devices_mut()
            .and_then(|d| children_mut(d, "interface").nth(index))
            .ok_or(HvError::NoSuchInterface { domain: name, index })
    }
}

/// The namespace of envclone's own `<metadata>` element in a domain.
pub const ENVCLONE_XMLNS: &str = "https://envclone.dev/xmlns/fence/1";

/// A failover's fence, stamped into a fenced primary domain's `<metadata>`
/// (`<envclone:fence epoch='N' fenced-at='RFC 3339' autostart='yes'/>`):
/// whoever looks at the domain with `virsh dumpxml` sees that a newer
/// epoch serves elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceStamp {
    pub epoch: i64,
    pub fenced_at: String,
    /// The domain's autostart before the fence turned it off, which the
    /// way back (failback, an undone failover) gives it again; none in a
    /// stamp from before envclone kept it.
    pub autostart: Option<bool>,
}

impl DomainDef {
    /// The fence stamp in `<metadata>`, if the domain carries one.
    pub fn fence_stamp(&self) -> Option<FenceStamp> {
        let fence = self.fence_element()?;
        Some(FenceStamp {
            epoch: attr(fence, "epoch")?.parse().ok()?,
            fenced_at: attr(fence, "fenced-at").unwrap_or_default().to_owned(),
            autostart: attr(fence, "autostart").map(|a| a == "yes"),
        })
    }

    /// Stamps (or restamps) the fence into `<metadata>`, leaving other
    /// applications' metadata as it is.
    pub fn set_fence_stamp(&mut self, stamp: &FenceStamp) {
        self.clear_fence_stamp();
        let epoch = stamp.epoch.to_string();
        let mut attributes = vec![("epoch", epoch.as_str()), ("fenced-at", stamp.fenced_at.as_str())];
        if let Some(on) = stamp.autostart {
            attributes.push(("autostart", if on { "yes" } else { "no" }));
        }
        let mut fence = super::element("fence", &attributes);
        fence.prefix = Some("envclone".to_owned());
        fence.namespace = Some(ENVCLONE_XMLNS.to_owned());
        let mut namespaces = xmltree::Namespace::empty();
        namespaces.put("envclone", ENVCLONE_XMLNS);
        fence.namespaces = Some(namespaces);
        super::push(child_or_insert(&mut self.root, "metadata"), fence);
    }

    /// Removes the fence stamp (an unfenced domain serves again).
    pub fn clear_fence_stamp(&mut self) {
        if let Some(metadata) = self.root.get_mut_child("metadata") {
            metadata.children.retain(|c| c.as_element().map_or(true, |e| !is_fence(e)));
        }
    }

    fn fence_element(&self) -> Option<&Element> {
        self.root.get_child("metadata")?.children.iter().filter_map(xmltree::XMLNode::as_element).find(|e| is_fence(e))
    }
}

fn is_fence(el: &Element) -> bool {
    el.name == "fence" && el.namespace.as_deref() == Some(ENVCLONE_XMLNS)
}
