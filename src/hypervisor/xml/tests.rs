//! The XML model against `virsh dumpxml` / `virsh net-dumpxml` samples.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::*;

const DOMAIN: &str = include_str!("../../../tests/fixtures/xml/domain_running_uefi.xml");
const NETWORK: &str = include_str!("../../../tests/fixtures/xml/network_nat.xml");

fn domain() -> DomainDef {
    DomainDef::parse(DOMAIN).expect("fixture parses")
}

/// Lines only in `before` and lines only in `after` (as multisets), of the
/// serialized documents: what an edit changed, and nothing else.
fn changed_lines(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
    let mut count: HashMap<&str, i64> = HashMap::new();
    for line in before.lines() {
        *count.entry(line.trim()).or_default() += 1;
    }
    for line in after.lines() {
        *count.entry(line.trim()).or_default() -= 1;
    }
    let mut removed: Vec<String> = Vec::new();
    let mut added: Vec<String> = Vec::new();
    for (line, n) in count {
        let list = if n > 0 { &mut removed } else { &mut added };
        for _ in 0..n.abs() {
            list.push(line.to_owned());
        }
    }
    removed.sort();
    added.sort();
    (removed, added)
}

#[test]
fn domain_fixture_round_trips_through_to_xml() {
    let def = domain();
    let again = DomainDef::parse(&def.to_xml()).unwrap();
    assert_eq!(again, def);
    assert_eq!(again.to_xml(), def.to_xml());
}

#[test]
fn domain_keeps_unknown_and_namespaced_elements() {
    let xml = domain().to_xml();
    for needle in ["qemu:commandline", "ICH9-LPC.disable_s3=1", "libosinfo:os", "seclabel", "<rng", "guest_agent"] {
        assert!(xml.contains(needle), "{needle} lost in:\n{xml}");
    }
    assert!(xml.contains("xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\""), "{xml}");
}

#[test]
fn domain_reads_identity_and_type() {
    let def = domain();
    assert_eq!(def.name(), "web01");
    assert_eq!(def.uuid().as_deref(), Some("5f1d7c3e-2b8a-4e6f-9c1d-0a7b3e5f9d21"));
    assert_eq!(def.domain_type(), "kvm");
    assert_eq!(def.nvram(), Some(PathBuf::from("/var/lib/libvirt/qemu/nvram/web01_VARS.fd")));
}

#[test]
fn domain_reads_disks_with_backing_chains() {
    let disks = domain().disks();
    let img = |f: &str| PathBuf::from(format!("/var/lib/libvirt/images/{f}"));
    assert_eq!(disks.len(), 3);
    assert_eq!(
        disks[0],
        Disk {
            target: "vda".into(),
            device: "disk".into(),
            source: Some(img("web01-snap2.qcow2")),
            format: Some("qcow2".into()),
            backing: vec![img("web01-snap1.qcow2"), img("web01.qcow2")],
            readonly: false,
        }
    );
    assert_eq!(disks[1].target, "vdb");
    assert_eq!(disks[1].backing, vec![img("web01-data.qcow2")]);
    assert_eq!(disks[2].device, "cdrom");
    assert_eq!(disks[2].format.as_deref(), Some("raw"));
    assert!(disks[2].readonly);
    assert!(disks[2].backing.is_empty());
}

#[test]
fn domain_reads_interfaces() {
    let ifaces = domain().interfaces();
    assert_eq!(
        ifaces,
        vec![
            Interface {
                mac: Some("52:54:00:3a:7c:11".into()),
                network: Some("envnet".into()),
                bridge: Some("virbr1".into()),
                model: Some("virtio".into()),
                link_up: true,
            },
            Interface {
                mac: Some("52:54:00:3a:7c:12".into()),
                network: None,
                bridge: Some("br-mgmt".into()),
                model: Some("e1000e".into()),
                link_up: false,
            },
        ]
    );
}

#[test]
fn set_name_and_uuid_change_only_those() {
    let before = domain();
    let mut def = before.clone();
    def.set_name("web01-clone");
    def.set_uuid("11111111-2222-4333-8444-555555555555");
    assert_eq!(def.name(), "web01-clone");
    let (removed, added) = changed_lines(&before.to_xml(), &def.to_xml());
    assert_eq!(removed, ["<name>web01</name>", "<uuid>5f1d7c3e-2b8a-4e6f-9c1d-0a7b3e5f9d21</uuid>"]);
    assert_eq!(added, ["<name>web01-clone</name>", "<uuid>11111111-2222-4333-8444-555555555555</uuid>"]);
}

#[test]
fn set_disk_source_replaces_source_and_drops_chain() {
    let mut def = domain();
    let overlay = Path::new("/var/lib/envclone/clone1/web01-vda.qcow2");
    def.set_disk_source("vda", overlay, "qcow2").unwrap();
    let disks = def.disks();
    assert_eq!(disks[0].source.as_deref(), Some(overlay));
    assert!(disks[0].backing.is_empty());
    assert_eq!(disks[1], domain().disks()[1]);
    let (_, added) = changed_lines(&domain().to_xml(), &def.to_xml());
    assert_eq!(added, ["<source file=\"/var/lib/envclone/clone1/web01-vda.qcow2\" />"]);
}

#[test]
fn set_disk_source_refuses_unknown_target() {
    let err = domain().set_disk_source("vdz", Path::new("/x.qcow2"), "qcow2").unwrap_err();
    assert!(matches!(err, HvError::NoSuchDisk { ref disk, .. } if disk == "vdz"));
}

#[test]
fn interface_edits_change_only_that_interface() {
    let before = domain();
    let mut def = before.clone();
    def.set_interface_mac(0, "52:54:00:00:00:01").unwrap();
    def.set_interface_network(1, "envnet-clone").unwrap();
    def.set_interface_link(0, false).unwrap();
    def.set_interface_link(1, true).unwrap();
    let ifaces = def.interfaces();
    assert_eq!(ifaces[0].mac.as_deref(), Some("52:54:00:00:00:01"));
    assert!(!ifaces[0].link_up);
    assert_eq!(ifaces[0].network.as_deref(), Some("envnet"));
    assert_eq!(ifaces[1].network.as_deref(), Some("envnet-clone"));
    assert_eq!(ifaces[1].bridge, None);
    assert!(ifaces[1].link_up);
    assert_eq!(ifaces[1].mac.as_deref(), Some("52:54:00:3a:7c:12"));
    // iface 1's `link down` moved to iface 0: same line, other place.
    let (removed, _) = changed_lines(&before.to_xml(), &def.to_xml());
    assert_eq!(
        removed,
        ["<interface type=\"bridge\">", "<mac address=\"52:54:00:3a:7c:11\" />", "<source bridge=\"br-mgmt\" />"]
    );
}

#[test]
fn interface_edit_refuses_unknown_index() {
    let err = domain().set_interface_link(2, true).unwrap_err();
    assert!(matches!(err, HvError::NoSuchInterface { index: 2, .. }));
}

#[test]
fn set_nvram_keeps_template() {
    let mut def = domain();
    def.set_nvram(Path::new("/var/lib/envclone/clone1/web01_VARS.fd"));
    assert_eq!(def.nvram(), Some(PathBuf::from("/var/lib/envclone/clone1/web01_VARS.fd")));
    assert!(def.to_xml().contains("template=\"/usr/share/OVMF/OVMF_VARS_4M.fd\""));
}

#[test]
fn strip_for_new_identity_removes_uuid_and_macs_only() {
    let before = domain();
    let mut def = before.clone();
    def.strip_for_new_identity();
    assert_eq!(def.uuid(), None);
    assert!(def.interfaces().iter().all(|i| i.mac.is_none()));
    assert_eq!(def.name(), "web01");
    let (removed, added) = changed_lines(&before.to_xml(), &def.to_xml());
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(added.is_empty(), "{added:?}");
}

#[test]
fn domain_parse_refuses_other_documents() {
    assert!(matches!(DomainDef::parse(NETWORK), Err(HvError::Xml { what: "domain", .. })));
    assert!(matches!(DomainDef::parse("<domain"), Err(HvError::Xml { .. })));
    assert!(matches!(DomainDef::parse("<domain type='kvm'/>"), Err(HvError::Xml { .. })));
}

#[test]
fn direct_boot_builds_a_parsable_lab_guest() {
    let spec = DirectBootSpec {
        name: "lab-a".into(),
        domain_type: "qemu".into(),
        memory_mib: 256,
        vcpus: 1,
        kernel: "/boot/vmlinuz-6.1.0-56-amd64".into(),
        initrd: Some("/boot/initrd.img-6.1.0-56-amd64".into()),
        cmdline: "console=ttyS0 root=/dev/vda ip=10.10.0.11".into(),
        disks: vec!["/lab/a-root.qcow2".into(), "/lab/a-data.qcow2".into()],
        interfaces: vec![
            NicSpec { network: "labnet".into(), mac: Some("52:54:00:aa:00:01".into()) },
            NicSpec { network: "labnet2".into(), mac: None },
        ],
        serial_log: Some("/lab/a-console.log".into()),
    };
    let def = DomainDef::parse(&DomainDef::direct_boot(&spec).to_xml()).unwrap();
    assert_eq!(def.name(), "lab-a");
    assert_eq!(def.domain_type(), "qemu");
    assert_eq!(def.uuid(), None);
    let targets: Vec<_> = def.disks().into_iter().map(|d| (d.target, d.source, d.format)).collect();
    assert_eq!(
        targets,
        [
            ("vda".to_owned(), Some(PathBuf::from("/lab/a-root.qcow2")), Some("qcow2".to_owned())),
            ("vdb".to_owned(), Some(PathBuf::from("/lab/a-data.qcow2")), Some("qcow2".to_owned())),
        ]
    );
    let nets: Vec<_> = def.interfaces().into_iter().map(|i| (i.network, i.mac)).collect();
    assert_eq!(
        nets,
        [(Some("labnet".to_owned()), Some("52:54:00:aa:00:01".to_owned())), (Some("labnet2".to_owned()), None)]
    );
    let xml = def.to_xml();
    assert!(xml.contains("<kernel>/boot/vmlinuz-6.1.0-56-amd64</kernel>"), "{xml}");
    assert!(xml.contains("<serial type=\"file\">"), "{xml}");
    assert!(xml.contains("<source path=\"/lab/a-console.log\" append=\"on\" />"), "{xml}");
}

#[test]
fn network_fixture_reads_and_round_trips() {
    let net = NetworkDef::parse(NETWORK).unwrap();
    assert_eq!(net.name(), "envnet");
    assert_eq!(net.uuid().as_deref(), Some("0b6a2f4e-7c1d-4e9a-8f35-2d6c9b1a7e03"));
    assert_eq!(net.bridge().as_deref(), Some("virbr1"));
    assert_eq!(net.forward_mode().as_deref(), Some("nat"));
    assert_eq!(net.ip(), Some((IpAddr::V4(Ipv4Addr::new(192, 168, 122, 1)), 24)));
    assert_eq!(NetworkDef::parse(&net.to_xml()).unwrap(), net);
}

#[test]
fn network_copy_edits_change_only_those() {
    let before = NetworkDef::parse(NETWORK).unwrap();
    let mut net = before.clone();
    net.set_name("envnet-c1");
    net.set_bridge("br-c1");
    net.clear_uuid();
    net.clear_mac();
    net.clear_ip();
    assert_eq!((net.uuid(), net.ip()), (None, None));
    assert_eq!(net.bridge().as_deref(), Some("br-c1"));
    let xml = net.to_xml();
    assert!(xml.contains("<bridge name=\"br-c1\" stp=\"on\" delay=\"0\" />"), "{xml}");
    assert!(xml.contains("<domain name=\"envnet.lab\" localOnly=\"yes\" />"), "{xml}");
    assert!(!xml.contains("dhcp") && !xml.contains("<mac"), "{xml}");
    assert_eq!(net.forward_mode().as_deref(), Some("nat"));
}

#[test]
fn isolated_network_has_no_forward_and_no_dhcp() {
    let spec =
        NetworkSpec { name: "labnet".into(), bridge: "br-lab".into(), ip: Some((Ipv4Addr::new(10, 10, 0, 1), 24)) };
    let net = NetworkDef::parse(&NetworkDef::isolated(&spec).to_xml()).unwrap();
    assert_eq!(net.forward_mode(), None);
    assert_eq!(net.ip(), Some((IpAddr::V4(Ipv4Addr::new(10, 10, 0, 1)), 24)));
    assert_eq!(net.bridge().as_deref(), Some("br-lab"));
    assert!(!net.to_xml().contains("dhcp"));
    let bare = NetworkDef::isolated(&NetworkSpec { ip: None, ..spec });
    assert_eq!(bare.ip(), None);
}

#[test]
fn snapshot_xml_names_every_disk() {
    let snap = crate::hypervisor::ExternalSnapshot {
        name: "s1".into(),
        disks: vec![("vda".into(), "/o/vda.qcow2".into())],
        memory_file: Some("/o/mem".into()),
        atomic: true,
        quiesce: false,
        no_metadata: true,
        live: true,
    };
    let xml = external_snapshot_xml(&snap, &domain().disks());
    assert!(xml.contains("<memory snapshot=\"external\" file=\"/o/mem\" />"), "{xml}");
    assert!(xml.contains("<disk name=\"vda\" snapshot=\"external\" type=\"file\">"), "{xml}");
    assert!(xml.contains("<source file=\"/o/vda.qcow2\" />"), "{xml}");
    assert!(xml.contains("<disk name=\"vdb\" snapshot=\"no\" />"), "{xml}");
    assert!(xml.contains("<disk name=\"sda\" snapshot=\"no\" />"), "{xml}");
}

#[test]
fn set_chardev_files_moves_the_serial_and_console_logs() {
    let spec = DirectBootSpec {
        name: "lab-a".into(),
        domain_type: "qemu".into(),
        memory_mib: 256,
        vcpus: 1,
        kernel: "/boot/vmlinuz".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        disks: vec!["/lab/a-root.qcow2".into()],
        interfaces: vec![],
        serial_log: Some("/lab/a-console.log".into()),
    };
    let mut def = DomainDef::parse(&DomainDef::direct_boot(&spec).to_xml()).unwrap();
    assert_eq!(def.chardev_files(), [PathBuf::from("/lab/a-console.log"), PathBuf::from("/lab/a-console.log")]);

    def.set_chardev_files(Path::new("/clone/a-console.log"));

    let def = DomainDef::parse(&def.to_xml()).unwrap();
    assert_eq!(def.chardev_files(), [PathBuf::from("/clone/a-console.log"), PathBuf::from("/clone/a-console.log")]);
}

#[test]
fn a_fence_stamp_round_trips_and_keeps_other_metadata() {
    let mut def = domain();
    assert_eq!(def.fence_stamp(), None);
    let stamp =
        crate::hypervisor::FenceStamp { epoch: 3, fenced_at: "2026-12-06T22:00:00Z".into(), autostart: Some(true) };

    def.set_fence_stamp(&stamp);
    def.set_fence_stamp(&stamp);
    let again = DomainDef::parse(&def.to_xml()).unwrap();

    assert_eq!(again.fence_stamp(), Some(stamp));
    let xml = again.to_xml();
    assert_eq!(xml.matches("<envclone:fence ").count(), 1, "stamped once, not twice: {xml}");
    assert!(xml.contains("libosinfo:os"), "{xml}");
    assert!(xml.contains(&format!("xmlns:envclone=\"{}\"", super::ENVCLONE_XMLNS)), "{xml}");
    let mut cleared = again.clone();
    cleared.clear_fence_stamp();
    assert_eq!(cleared.fence_stamp(), None);
    assert!(cleared.to_xml().contains("libosinfo:os"));
}
