//! The fake behaves like libvirt where orchestration can tell, and records.

use std::path::{Path, PathBuf};

use super::*;
use crate::hypervisor::{qmp, BlockJobKind, LibvirtCode, LibvirtError};

fn env() -> FakeHypervisor {
    FakeHypervisor::running_env("envnet", &["web", "db"])
}

fn snap(name: &str, overlay: &str, memory: Option<&str>) -> ExternalSnapshot {
    ExternalSnapshot {
        name: name.to_owned(),
        disks: vec![("vda".to_owned(), PathBuf::from(overlay))],
        memory_file: memory.map(PathBuf::from),
        atomic: true,
        quiesce: false,
        no_metadata: false,
        live: memory.is_some(),
    }
}

fn vda(fake: &FakeHypervisor, domain: &str) -> crate::hypervisor::Disk {
    fake.peek_domain(domain).unwrap().def.disks().remove(0)
}

#[test]
fn running_env_has_running_domains_on_an_active_network() {
    let fake = env();
    assert_eq!(fake.domain_names().unwrap(), ["db", "web"]);
    let web = fake.domain("web").unwrap();
    assert_eq!(web.state, DomainState::Running);
    assert_eq!(web.uuid.len(), 36);
    assert!(web.def.interfaces()[0].mac.is_some());
    assert!(fake.network("envnet").unwrap().active);
}

#[test]
fn calls_are_recorded_in_order_with_arguments() {
    let fake = env();
    fake.destroy_domain("web").unwrap();
    let _ = fake.domain("nope");
    fake.set_autostart("db", true).unwrap();

    assert_eq!(
        fake.calls(),
        [
            Call::DestroyDomain { name: "web".into() },
            Call::Domain { name: "nope".into() },
            Call::SetAutostart { name: "db".into(), on: true },
        ]
    );
    assert_eq!(fake.autostart("db"), Some(true));
}

#[test]
fn failing_at_fails_every_call_of_that_step_and_records_it() {
    let fake = FakeHypervisor::failing_at(FakeStep::CreateSnapshot);
    let fake = fake.with_domain(env().peek_domain("web").unwrap().def, DomainState::Running);

    let first = fake.create_external_snapshot("web", &snap("s1", "/o/1.qcow2", None));
    let second = fake.create_external_snapshot("web", &snap("s2", "/o/2.qcow2", None));

    assert!(matches!(first, Err(HvError::Injected { step: FakeStep::CreateSnapshot })));
    assert!(matches!(second, Err(HvError::Injected { .. })));
    assert_eq!(fake.steps(), [FakeStep::CreateSnapshot, FakeStep::CreateSnapshot]);
    assert_eq!(vda(&fake, "web").source, Some(PathBuf::from("/images/web.qcow2")));
}

#[test]
fn fail_at_call_fails_only_the_nth_call() {
    let fake = env().fail_at_call(FakeStep::DestroyDomain, 2);

    let results: Vec<bool> = ["web", "db", "web"].iter().map(|d| fake.destroy_domain(d).is_ok()).collect();

    assert_eq!(results, [true, false, true]);
    assert_eq!(fake.peek_domain("db").unwrap().state, DomainState::Running);
}

#[test]
fn unknown_names_give_no_such_errors() {
    let fake = env();
    assert!(matches!(fake.domain("nope"), Err(HvError::NoSuchDomain { .. })));
    assert!(matches!(fake.start_domain("nope"), Err(HvError::NoSuchDomain { .. })));
    assert!(matches!(fake.network("nope"), Err(HvError::NoSuchNetwork { .. })));
    assert!(matches!(fake.undefine_network("nope"), Err(HvError::NoSuchNetwork { .. })));
}

#[test]
fn define_assigns_uuid_and_macs_like_libvirt() {
    let fake = env();
    let mut def = fake.peek_domain("web").unwrap().def;
    def.set_name("web-clone");
    def.strip_for_new_identity();

    let clone = fake.define_domain(&def).unwrap();

    assert_eq!(clone.state, DomainState::ShutOff);
    assert_ne!(clone.uuid, fake.peek_domain("web").unwrap().uuid);
    assert!(clone.def.interfaces()[0].mac.as_deref().is_some_and(|m| m.starts_with("52:54:00:")));
}

#[test]
fn define_refuses_existing_name_with_other_uuid() {
    let fake = env();
    let mut def = fake.peek_domain("web").unwrap().def;
    def.clear_uuid();

    let err = fake.define_domain(&def).unwrap_err();

    assert!(matches!(
        err,
        HvError::DefineDomain { source: LibvirtError { code: LibvirtCode::OperationFailed, .. }, .. }
    ));
}

#[test]
fn define_refuses_existing_uuid_under_other_name() {
    let fake = env();
    let mut def = fake.peek_domain("web").unwrap().def;
    def.set_name("web2");

    let err = fake.define_domain(&def).unwrap_err();

    assert!(matches!(err, HvError::DefineDomain { ref name, .. } if name == "web2"));
}

#[test]
fn redefine_with_same_uuid_updates_definition() {
    let fake = env();
    let mut def = fake.peek_domain("web").unwrap().def;
    def.set_interface_link(0, false).unwrap();

    fake.define_domain(&def).unwrap();

    assert!(!fake.peek_domain("web").unwrap().def.interfaces()[0].link_up);
}

#[test]
fn start_refuses_inactive_network() {
    let fake = env();
    fake.destroy_domain("web").unwrap();
    fake.destroy_network("envnet").unwrap();

    let err = fake.start_domain("web").unwrap_err();

    assert!(matches!(
        err,
        HvError::StartDomain { source: LibvirtError { code: LibvirtCode::OperationInvalid, .. }, .. }
    ));
}

#[test]
fn start_network_refuses_subnet_in_use() {
    let fake = env();
    let mut copy = fake.peek_network("envnet").unwrap().def;
    copy.set_name("envnet-copy");
    copy.set_bridge("br-copy");
    copy.clear_uuid();
    fake.define_network(&copy).unwrap();

    let err = fake.start_network("envnet-copy").unwrap_err();

    assert!(matches!(err, HvError::StartNetwork { .. }));
}

#[test]
fn bubble_network_without_ip_starts_next_to_its_source() {
    let fake = env();
    let mut copy = fake.peek_network("envnet").unwrap().def;
    copy.set_name("envnet-bubble");
    copy.set_bridge("br-bubble");
    copy.clear_uuid();
    copy.clear_ip();
    fake.define_network(&copy).unwrap();

    fake.start_network("envnet-bubble").unwrap();

    assert!(fake.peek_network("envnet-bubble").unwrap().active);
}

#[test]
fn define_network_refuses_bridge_in_use() {
    let fake = env();
    let mut copy = fake.peek_network("envnet").unwrap().def;
    copy.set_name("envnet-copy");
    copy.clear_uuid();

    let err = fake.define_network(&copy).unwrap_err();

    assert!(matches!(err, HvError::DefineNetwork { .. }));
}

#[test]
fn undefine_running_domain_leaves_it_transient_until_destroyed() {
    let fake = env();
    fake.undefine_domain("web").unwrap();
    assert_eq!(fake.peek_domain("web").unwrap().state, DomainState::Running);
    assert!(matches!(fake.set_autostart("web", true), Err(HvError::SetAutostart { .. })));

    fake.destroy_domain("web").unwrap();

    assert!(fake.peek_domain("web").is_none());
}

#[test]
fn external_snapshot_switches_disks_to_overlays() {
    let fake = env();

    fake.create_external_snapshot("web", &snap("s1", "/o/web-1.qcow2", None)).unwrap();
    fake.create_external_snapshot("web", &snap("s2", "/o/web-2.qcow2", None)).unwrap();

    let disk = vda(&fake, "web");
    assert_eq!(disk.source, Some(PathBuf::from("/o/web-2.qcow2")));
    assert_eq!(disk.backing, [PathBuf::from("/o/web-1.qcow2"), PathBuf::from("/images/web.qcow2")]);
    assert_eq!(fake.snapshot_names("web"), ["s1", "s2"]);
    assert_eq!(vda(&fake, "db").source, Some(PathBuf::from("/images/db.qcow2")));
}

#[test]
fn external_snapshot_refuses_live_without_memory() {
    let fake = env();
    let mut s = snap("s1", "/o/web-1.qcow2", None);
    s.live = true;

    let err = fake.create_external_snapshot("web", &s).unwrap_err();

    assert!(matches!(err, HvError::Snapshot { .. }) && err.is_unsupported());
}

#[test]
fn external_snapshot_refuses_unknown_disk() {
    let fake = env();
    let mut s = snap("s1", "/o/x.qcow2", None);
    s.disks[0].0 = "vdz".into();
    assert!(matches!(fake.create_external_snapshot("web", &s), Err(HvError::NoSuchDisk { .. })));
}

#[test]
fn memory_snapshot_image_holds_the_pre_snapshot_definition() {
    let fake = env();
    fake.create_external_snapshot("web", &snap("s1", "/o/web-1.qcow2", Some("/o/web.mem"))).unwrap();
    fake.destroy_domain("web").unwrap();
    let mut clone = fake.peek_domain("web").unwrap().def;
    clone.set_name("web-clone");

    let refused = fake.restore_memory(Path::new("/o/web.mem"), Some(&clone));
    fake.restore_memory(Path::new("/o/web.mem"), None).unwrap();

    assert!(matches!(
        refused,
        Err(HvError::RestoreMemory { source: LibvirtError { code: LibvirtCode::InvalidArg, .. }, .. })
    ));
    assert_eq!(vda(&fake, "web").source, Some(PathBuf::from("/images/web.qcow2")));
    assert_eq!(fake.peek_domain("web").unwrap().state, DomainState::Running);
}

#[test]
fn save_stops_domain_and_restore_runs_it_again() {
    let fake = env();
    let image = Path::new("/o/db.save");

    fake.save_memory("db", image).unwrap();
    assert_eq!(fake.peek_domain("db").unwrap().state, DomainState::ShutOff);
    assert!(matches!(fake.save_memory("db", image), Err(HvError::SaveMemory { .. })));
    fake.restore_memory(image, None).unwrap();

    assert_eq!(fake.peek_domain("db").unwrap().state, DomainState::Running);
    assert!(matches!(fake.restore_memory(image, None), Err(HvError::RestoreMemory { .. })));
    assert!(matches!(fake.restore_memory(Path::new("/o/none"), None), Err(HvError::RestoreMemory { .. })));
}

#[test]
fn restore_of_undefined_domain_is_transient() {
    let web = env().peek_domain("web").unwrap().def;
    let fake = FakeHypervisor::new().with_saved_image("/o/web.save", web);

    fake.restore_memory(Path::new("/o/web.save"), None).unwrap();
    fake.destroy_domain("web").unwrap();

    assert!(fake.peek_domain("web").is_none());
}

#[test]
fn active_commit_then_pivot_returns_disk_to_base() {
    let fake = env().with_block_job_polls(1);
    fake.create_external_snapshot("web", &snap("s1", "/o/web-1.qcow2", None)).unwrap();
    let commit = BlockCommit { active: true, ..BlockCommit::default() };

    fake.block_commit("web", "vda", &commit).unwrap();
    let early_pivot = fake.block_job_pivot("web", "vda");
    let early = fake.block_job("web", "vda").unwrap().unwrap();
    let ready = fake.block_job("web", "vda").unwrap().unwrap();
    fake.block_job_pivot("web", "vda").unwrap();

    assert_eq!(early.kind, BlockJobKind::ActiveCommit);
    assert!(!early.is_ready());
    assert!(matches!(early_pivot, Err(HvError::BlockJobPivot { .. })));
    assert!(ready.is_ready());
    assert_eq!(fake.block_job("web", "vda").unwrap(), None);
    let disk = vda(&fake, "web");
    assert_eq!(disk.source, Some(PathBuf::from("/images/web.qcow2")));
    assert!(disk.backing.is_empty());
}

#[test]
fn abort_of_active_commit_keeps_the_overlay() {
    let fake = env();
    fake.create_external_snapshot("web", &snap("s1", "/o/web-1.qcow2", None)).unwrap();
    fake.block_commit("web", "vda", &BlockCommit { active: true, ..BlockCommit::default() }).unwrap();

    fake.block_job_abort("web", "vda").unwrap();

    assert_eq!(vda(&fake, "web").source, Some(PathBuf::from("/o/web-1.qcow2")));
    assert!(matches!(fake.block_job_abort("web", "vda"), Err(HvError::BlockJobAbort { .. })));
}

#[test]
fn block_commit_refuses_disk_without_backing_file() {
    let fake = env();
    let err = fake.block_commit("web", "vda", &BlockCommit { active: true, ..BlockCommit::default() });
    assert!(matches!(err, Err(HvError::BlockCommit { .. })));
}

#[test]
fn inner_commit_merges_a_middle_layer() {
    let fake = env();
    fake.create_external_snapshot("web", &snap("s1", "/o/web-1.qcow2", None)).unwrap();
    fake.create_external_snapshot("web", &snap("s2", "/o/web-2.qcow2", None)).unwrap();
    let commit = BlockCommit { top: Some("/o/web-1.qcow2".into()), shallow: true, ..BlockCommit::default() };

    fake.block_commit("web", "vda", &commit).unwrap();

    assert_eq!(fake.block_job("web", "vda").unwrap(), None);
    let disk = vda(&fake, "web");
    assert_eq!(disk.source, Some(PathBuf::from("/o/web-2.qcow2")));
    assert_eq!(disk.backing, [PathBuf::from("/images/web.qcow2")]);
}

#[test]
fn qmp_helper_runs_typed_commands_on_the_fake() {
    let fake = env();

    let status = qmp(&fake, "web", qapi::qmp::query_status {}).unwrap();
    qmp(&fake, "web", qapi::qmp::stop {}).unwrap();
    let paused = qmp(&fake, "web", qapi::qmp::query_status {}).unwrap();
    let unknown = qmp(&fake, "web", qapi::qmp::query_migrate {}).unwrap_err();

    assert!(status.running);
    assert!(!paused.running);
    assert_eq!(fake.peek_domain("web").unwrap().state, DomainState::Paused);
    assert!(matches!(unknown, HvError::Qmp { ref class, .. } if class == "CommandNotFound"));
}

#[test]
fn qmp_scripted_reply_and_stopped_domain() {
    let fake = env().with_qmp_reply("query-migrate", r#"{"return": {"status": "completed"}}"#);
    let info = qmp(&fake, "web", qapi::qmp::query_migrate {}).unwrap();
    fake.destroy_domain("db").unwrap();

    let stopped = fake.qmp_raw("db", r#"{"execute":"query-status"}"#).unwrap_err();

    assert!(matches!(info.status, Some(qapi::qmp::MigrationStatus::completed)));
    assert!(matches!(stopped, HvError::QmpTransport { .. }));
}
