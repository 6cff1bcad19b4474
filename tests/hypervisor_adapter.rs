//! `LibvirtHypervisor` against libvirt's in-process `test:///default` driver.
//!
//! The test driver keeps state in memory and needs no daemon. It can't do
//! block jobs, QMP, disk-only snapshots or restore with edited XML: for those
//! the tests assert the error the adapter reports.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use envclone::error::Failure;
use envclone::hypervisor::{
    qmp, BlockCommit, DirectBootSpec, DomainDef, DomainState, ExternalSnapshot, HvError, Hypervisor, LibvirtHypervisor,
    NetworkDef, NetworkSpec, NicSpec,
};

const URI: &str = "test:///default";

fn hv() -> LibvirtHypervisor {
    LibvirtHypervisor::connect(URI).expect("the test driver is in-process")
}

/// A test-driver guest on `network`, with two disks and two NICs (the
/// first with a fixed MAC, the second for libvirt to fill in).
fn guest(name: &str, network: &str) -> DomainDef {
    DomainDef::direct_boot(&DirectBootSpec {
        name: name.to_owned(),
        domain_type: "test".to_owned(),
        memory_mib: 64,
        vcpus: 1,
        kernel: PathBuf::from("/boot/vmlinuz"),
        initrd: Some(PathBuf::from("/boot/initrd.img")),
        cmdline: "console=ttyS0 root=/dev/vda".to_owned(),
        disks: vec![format!("/images/{name}-root.qcow2").into(), format!("/images/{name}-data.qcow2").into()],
        interfaces: vec![
            NicSpec { network: network.to_owned(), mac: Some("52:54:00:12:34:56".to_owned()) },
            NicSpec { network: network.to_owned(), mac: None },
        ],
        serial_log: Some(format!("/tmp/{name}-console.log").into()),
    })
}

/// A running guest named `name`, on the test driver's own `default` network.
fn running_guest(hv: &LibvirtHypervisor, name: &str) {
    hv.define_domain(&guest(name, "default")).unwrap();
    hv.start_domain(name).unwrap();
}

fn disk_only(name: &str) -> ExternalSnapshot {
    ExternalSnapshot {
        name: name.to_owned(),
        disks: vec![("vda".to_owned(), PathBuf::from("/images/overlay.qcow2"))],
        memory_file: None,
        atomic: true,
        quiesce: false,
        no_metadata: true,
        live: false,
    }
}

#[test]
fn adapter_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LibvirtHypervisor>();
}

#[test]
fn connect_refuses_missing_test_file() {
    let err = LibvirtHypervisor::connect("test:///nonexistent/envclone.xml").unwrap_err();
    assert!(matches!(err, HvError::Connect { ref uri, .. } if uri == "test:///nonexistent/envclone.xml"));
    assert!(err.hint().is_some());
}

#[test]
fn domain_defines_reads_back_starts_stops_and_undefines() {
    let hv = hv();
    let def = guest("adapter-life", "default");

    let defined = hv.define_domain(&def).unwrap();
    let read = hv.domain("adapter-life").unwrap();
    assert_eq!(defined, read);
    assert_eq!(read.state, DomainState::ShutOff);
    assert_eq!(read.uuid.len(), 36);
    assert_eq!(read.def.uuid().as_deref(), Some(read.uuid.as_str()));
    let disks: Vec<_> = read.def.disks().into_iter().map(|d| (d.target, d.source, d.format)).collect();
    assert_eq!(
        disks,
        [
            ("vda".into(), Some("/images/adapter-life-root.qcow2".into()), Some("qcow2".into())),
            ("vdb".into(), Some("/images/adapter-life-data.qcow2".into()), Some("qcow2".into())),
        ]
    );
    let ifaces = read.def.interfaces();
    assert_eq!(ifaces.len(), 2);
    assert!(ifaces.iter().all(|i| i.network.as_deref() == Some("default") && i.link_up));
    assert_eq!(ifaces[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    assert!(ifaces[1].mac.as_deref().is_some_and(|m| m.starts_with("52:54:00:")));
    assert!(hv.domain_names().unwrap().contains(&"adapter-life".to_owned()));

    hv.set_autostart("adapter-life", true).unwrap();
    hv.start_domain("adapter-life").unwrap();
    assert_eq!(hv.domain("adapter-life").unwrap().state, DomainState::Running);
    hv.destroy_domain("adapter-life").unwrap();
    hv.destroy_domain("adapter-life").unwrap();
    assert_eq!(hv.domain("adapter-life").unwrap().state, DomainState::ShutOff);
    hv.undefine_domain("adapter-life").unwrap();
    assert!(matches!(hv.domain("adapter-life"), Err(HvError::NoSuchDomain { .. })));
}

#[test]
fn undefine_of_running_domain_leaves_it_transient_until_destroyed() {
    let hv = hv();
    running_guest(&hv, "adapter-transient");

    hv.undefine_domain("adapter-transient").unwrap();
    assert_eq!(hv.domain("adapter-transient").unwrap().state, DomainState::Running);
    hv.destroy_domain("adapter-transient").unwrap();

    assert!(matches!(hv.domain("adapter-transient"), Err(HvError::NoSuchDomain { .. })));
}

#[test]
fn define_refuses_existing_name_with_other_uuid() {
    let hv = hv();
    hv.define_domain(&guest("adapter-clash", "default")).unwrap();
    let mut other = guest("adapter-clash", "default");
    other.set_uuid(&envclone::hypervisor::random_uuid());

    let err = hv.define_domain(&other).unwrap_err();

    assert!(matches!(err, HvError::DefineDomain { ref name, .. } if name == "adapter-clash"));
    hv.undefine_domain("adapter-clash").unwrap();
}

#[test]
fn unknown_names_give_no_such_errors() {
    let hv = hv();
    assert!(matches!(hv.domain("adapter-nope"), Err(HvError::NoSuchDomain { .. })));
    assert!(matches!(hv.start_domain("adapter-nope"), Err(HvError::NoSuchDomain { .. })));
    assert!(matches!(hv.network("adapter-nope"), Err(HvError::NoSuchNetwork { .. })));
    assert!(matches!(hv.start_network("adapter-nope"), Err(HvError::NoSuchNetwork { .. })));
}

#[test]
fn isolated_network_defines_starts_stops_and_undefines() {
    let hv = hv();
    let spec = NetworkSpec {
        name: "adapter-net".to_owned(),
        bridge: "br-adapter".to_owned(),
        ip: Some((Ipv4Addr::new(10, 77, 0, 1), 24)),
    };

    let defined = hv.define_network(&NetworkDef::isolated(&spec)).unwrap();
    assert!(!defined.active);
    assert_eq!(defined.def.bridge().as_deref(), Some("br-adapter"));
    assert_eq!(defined.def.ip(), Some((IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)), 24)));
    assert_eq!(defined.def.forward_mode(), None);
    assert!(hv.network_names().unwrap().contains(&"adapter-net".to_owned()));

    hv.start_network("adapter-net").unwrap();
    assert!(hv.network("adapter-net").unwrap().active);
    hv.destroy_network("adapter-net").unwrap();
    hv.destroy_network("adapter-net").unwrap();
    assert!(!hv.network("adapter-net").unwrap().active);
    hv.undefine_network("adapter-net").unwrap();
    assert!(matches!(hv.network("adapter-net"), Err(HvError::NoSuchNetwork { .. })));
}

#[test]
fn guest_on_own_isolated_network_starts() {
    let hv = hv();
    let spec = NetworkSpec { name: "adapter-own".to_owned(), bridge: "br-own".to_owned(), ip: None };
    hv.define_network(&NetworkDef::isolated(&spec)).unwrap();
    hv.start_network("adapter-own").unwrap();
    hv.define_domain(&guest("adapter-own-guest", "adapter-own")).unwrap();

    hv.start_domain("adapter-own-guest").unwrap();

    assert_eq!(hv.domain("adapter-own-guest").unwrap().state, DomainState::Running);
    hv.destroy_domain("adapter-own-guest").unwrap();
    hv.undefine_domain("adapter-own-guest").unwrap();
    hv.destroy_network("adapter-own").unwrap();
    hv.undefine_network("adapter-own").unwrap();
}

#[test]
fn disk_only_snapshot_is_unsupported_by_test_driver() {
    let hv = hv();
    running_guest(&hv, "adapter-snap-disk");

    let err = hv.create_external_snapshot("adapter-snap-disk", &disk_only("s1")).unwrap_err();

    assert!(matches!(err, HvError::Snapshot { ref snapshot, .. } if snapshot == "s1"), "{err:?}");
    assert!(err.is_unsupported(), "{err:?}");
}

#[test]
fn snapshot_refuses_unknown_disk() {
    let hv = hv();
    running_guest(&hv, "adapter-snap-nodisk");
    let mut snap = disk_only("s1");
    snap.disks = vec![("vdz".to_owned(), PathBuf::from("/images/o.qcow2"))];

    let err = hv.create_external_snapshot("adapter-snap-nodisk", &snap).unwrap_err();

    assert!(matches!(err, HvError::NoSuchDisk { ref disk, .. } if disk == "vdz"));
}

#[test]
fn memory_snapshot_is_accepted_by_test_driver() {
    let hv = hv();
    running_guest(&hv, "adapter-snap-mem");
    let dir = tempfile::tempdir().unwrap();
    let snap = ExternalSnapshot {
        memory_file: Some(dir.path().join("mem")),
        live: true,
        no_metadata: false,
        ..disk_only("s1")
    };

    hv.create_external_snapshot("adapter-snap-mem", &snap).unwrap();

    assert_eq!(hv.domain("adapter-snap-mem").unwrap().state, DomainState::Running);
}

#[test]
fn save_and_restore_memory_round_trip() {
    let hv = hv();
    running_guest(&hv, "adapter-save");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("adapter-save.img");

    hv.save_memory("adapter-save", &image).unwrap();
    assert_eq!(hv.domain("adapter-save").unwrap().state, DomainState::ShutOff);
    assert!(image.exists());
    hv.restore_memory(&image, None).unwrap();

    assert_eq!(hv.domain("adapter-save").unwrap().state, DomainState::Running);
}

#[test]
fn restore_with_edited_definition_is_unsupported_by_test_driver() {
    let hv = hv();
    running_guest(&hv, "adapter-restore-xml");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("adapter-restore-xml.img");
    let def = hv.domain("adapter-restore-xml").unwrap().def;
    hv.save_memory("adapter-restore-xml", &image).unwrap();

    let err = hv.restore_memory(&image, Some(&def)).unwrap_err();

    assert!(matches!(err, HvError::RestoreMemory { .. }), "{err:?}");
    assert!(err.is_unsupported(), "{err:?}");
}

#[test]
fn save_refuses_unknown_domain() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    let err = hv.save_memory("adapter-nope", &dir.path().join("x")).unwrap_err();
    assert!(matches!(err, HvError::NoSuchDomain { .. }));
}

#[test]
fn block_jobs_are_unsupported_by_test_driver() {
    let hv = hv();
    running_guest(&hv, "adapter-blockjob");
    let commit = BlockCommit { active: true, ..BlockCommit::default() };
    let d = "adapter-blockjob";

    let errors = [
        hv.block_commit(d, "vda", &commit).unwrap_err(),
        hv.block_job(d, "vda").unwrap_err(),
        hv.block_job_pivot(d, "vda").unwrap_err(),
        hv.block_job_abort(d, "vda").unwrap_err(),
    ];

    assert!(matches!(errors[0], HvError::BlockCommit { .. }), "{:?}", errors[0]);
    assert!(matches!(errors[1], HvError::BlockJob { .. }), "{:?}", errors[1]);
    assert!(matches!(errors[2], HvError::BlockJobPivot { .. }), "{:?}", errors[2]);
    assert!(matches!(errors[3], HvError::BlockJobAbort { .. }), "{:?}", errors[3]);
    assert!(errors.iter().all(HvError::is_unsupported), "{errors:?}");
}

#[test]
fn qmp_is_unsupported_by_test_driver() {
    let hv = hv();
    running_guest(&hv, "adapter-qmp");

    let raw = hv.qmp_raw("adapter-qmp", r#"{"execute":"query-status"}"#).unwrap_err();
    let typed = qmp(&hv, "adapter-qmp", qapi::qmp::query_status {}).unwrap_err();

    assert!(matches!(raw, HvError::QmpTransport { .. }) && raw.is_unsupported(), "{raw:?}");
    assert!(matches!(typed, HvError::QmpTransport { .. }) && typed.is_unsupported(), "{typed:?}");
}

/// Real QEMU through libvirt's in-process embedded driver
/// (`qemu:///embed`): no daemon, no NIC, everything under a temp dir. The
/// guest boots the host kernel without a root disk and idles; that is
/// enough for QMP, snapshots, block commit and save/restore.
mod qemu_embed {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Once;
    use std::time::Duration;

    use super::*;

    /// Destroys the domain even when an assertion fails halfway.
    struct Running<'a>(&'a LibvirtHypervisor, &'a str);

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            match self.0.destroy_domain(self.1) {
                Ok(()) | Err(HvError::NoSuchDomain { .. }) => {}
                Err(e) => eprintln!("cleanup: cannot destroy {}: {e}", self.1),
            }
        }
    }

    fn event_loop() {
        static START: Once = Once::new();
        START.call_once(|| {
            virt::event::event_register_default_impl().expect("register libvirt event loop");
            std::thread::spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    eprintln!("libvirt event loop: {e}");
                }
            });
        });
    }

    fn host_kernel() -> PathBuf {
        let boot = std::fs::read_dir("/boot").expect("/boot");
        boot.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .expect("a kernel in /boot (linux-image-amd64)")
    }

    fn qcow2(path: &Path) {
        let ok = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(path).arg("64M").status();
        assert!(ok.expect("qemu-img runs").success());
    }

    fn vda(hv: &LibvirtHypervisor, name: &str) -> envclone::hypervisor::Disk {
        hv.domain(name).unwrap().def.disks().remove(0)
    }

    #[test]
    fn snapshot_commit_qmp_save_restore_on_real_qemu() {
        event_loop();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        qcow2(&base);
        let root = dir.path().join("libvirt");
        // No virtlogd: QEMU writes its log and the console file itself.
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/qemu.conf"), "stdio_handler = \"file\"\n").unwrap();
        let uri = format!("qemu:///embed?root={}", root.display());
        let hv = LibvirtHypervisor::connect(&uri).unwrap();
        let log = dir.path().join("console.log");
        let def = DomainDef::direct_boot(&DirectBootSpec {
            name: "smoke".to_owned(),
            domain_type: "qemu".to_owned(),
            memory_mib: 128,
            vcpus: 1,
            kernel: host_kernel(),
            initrd: None,
            cmdline: "console=ttyS0".to_owned(),
            disks: vec![base.clone()],
            interfaces: vec![],
            serial_log: Some(log.clone()),
        });
        hv.define_domain(&def).unwrap();
        hv.start_domain("smoke").unwrap();
        let _guard = Running(&hv, "smoke");

        envclone::wait::until::<_, std::io::Error, _>(
            "boot log",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || Ok((std::fs::metadata(&log)?.len() > 0).then_some(())),
        )
        .unwrap();

        let status = qmp(&hv, "smoke", qapi::qmp::query_status {}).unwrap();
        assert!(status.running);
        let no_job = qapi::qmp::block_job_cancel { device: "no-such-job".to_owned(), force: None };
        let refused = qmp(&hv, "smoke", no_job).unwrap_err();
        assert!(matches!(refused, HvError::Qmp { .. }), "{refused:?}");

        let overlay = dir.path().join("overlay.qcow2");
        let memory = dir.path().join("memory.img");
        let snap = ExternalSnapshot {
            name: "s1".to_owned(),
            disks: vec![("vda".to_owned(), overlay.clone())],
            memory_file: Some(memory.clone()),
            atomic: true,
            quiesce: false,
            no_metadata: true,
            live: true,
        };
        hv.create_external_snapshot("smoke", &snap).unwrap();
        let disk = vda(&hv, "smoke");
        assert_eq!(disk.source.as_deref(), Some(overlay.as_path()));
        assert_eq!(disk.backing, std::slice::from_ref(&base));
        assert!(memory.exists());

        let overlay2 = dir.path().join("overlay2.qcow2");
        let disk_only = ExternalSnapshot {
            name: "s2".to_owned(),
            disks: vec![("vda".to_owned(), overlay2.clone())],
            memory_file: None,
            live: false,
            ..snap
        };
        hv.create_external_snapshot("smoke", &disk_only).unwrap();
        assert_eq!(vda(&hv, "smoke").backing, [overlay.clone(), base.clone()]);

        let commit = BlockCommit { active: true, base: Some(base.clone()), ..BlockCommit::default() };
        hv.block_commit("smoke", "vda", &commit).unwrap();
        let info =
            envclone::wait::until("active commit ready", Duration::from_secs(30), Duration::from_millis(50), || {
                hv.block_job("smoke", "vda").map(|j| j.filter(|j| j.is_ready()))
            })
            .unwrap();
        assert_eq!(info.kind, envclone::hypervisor::BlockJobKind::ActiveCommit);
        hv.block_job_pivot("smoke", "vda").unwrap();
        assert_eq!(hv.block_job("smoke", "vda").unwrap(), None);
        let disk = vda(&hv, "smoke");
        assert_eq!(disk.source.as_deref(), Some(base.as_path()));
        assert!(disk.backing.is_empty(), "{disk:?}");

        let saved = dir.path().join("saved.img");
        hv.save_memory("smoke", &saved).unwrap();
        assert_eq!(hv.domain("smoke").unwrap().state, DomainState::ShutOff);
        // Restore onto a copy of the disk: an edit libvirt accepts in dxml.
        let copy = dir.path().join("copy.qcow2");
        std::fs::copy(&base, &copy).unwrap();
        let mut edited = hv.domain("smoke").unwrap().def;
        edited.set_disk_source("vda", &copy, "qcow2").unwrap();
        hv.restore_memory(&saved, Some(&edited)).unwrap();
        assert_eq!(hv.domain("smoke").unwrap().state, DomainState::Running);
        assert_eq!(vda(&hv, "smoke").source.as_deref(), Some(copy.as_path()));

        hv.destroy_domain("smoke").unwrap();
        hv.undefine_domain("smoke").unwrap();
        assert!(std::fs::read_to_string(&log).unwrap().contains("Linux version"));
    }
}
