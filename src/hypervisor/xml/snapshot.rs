//! The `<domainsnapshot>` document of an external snapshot.

use xmltree::Element;

use super::devices::Disk;
use super::{element, push, text_element};
use crate::hypervisor::ExternalSnapshot;

/// Builds the snapshot XML. Every disk of the domain is named: the listed
/// ones get an external qcow2 overlay, the others `snapshot='no'`, so that
/// libvirt's defaults never pick a disk (or an overlay path) for us.
pub(crate) fn external_snapshot_xml(snap: &ExternalSnapshot, domain_disks: &[Disk]) -> String {
    let mut root = Element::new("domainsnapshot");
    push(&mut root, text_element("name", &snap.name));
    let memory = match &snap.memory_file {
        Some(file) => element("memory", &[("snapshot", "external"), ("file", &file.to_string_lossy())]),
        None => element("memory", &[("snapshot", "no")]),
    };
    push(&mut root, memory);
    let mut disks = Element::new("disks");
    for disk in domain_disks {
        let overlay = snap.disks.iter().find(|(target, _)| *target == disk.target);
        let el = match overlay {
            Some((target, path)) => {
                let mut el = element("disk", &[("name", target), ("snapshot", "external"), ("type", "file")]);
                push(&mut el, element("driver", &[("type", "qcow2")]));
                push(&mut el, element("source", &[("file", &path.to_string_lossy())]));
                el
            }
            None => element("disk", &[("name", &disk.target), ("snapshot", "no")]),
        };
        push(&mut disks, el);
    }
    push(&mut root, disks);
    super::write(&root)
}
