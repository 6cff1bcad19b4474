//! [`Hypervisor`] over libvirt, through the `virt` crate.

mod raw;

use std::path::Path;
use std::time::Duration;

use virt::connect::Connect;
use virt::domain::{Domain as VirtDomain, DomainState as VirtState};
use virt::enumutil::Enum;
use virt::network::Network as VirtNetwork;
use virt::sys;

use super::xml::external_snapshot_xml;
use super::{
    BlockCommit, BlockJobInfo, BlockJobKind, Domain, DomainDef, DomainState, ExternalSnapshot, HvError, Hypervisor,
    LibvirtCode, LibvirtError, Network, NetworkDef,
};

/// How long `block_job_pivot` waits for libvirt to accept a ready job.
const PIVOT_DEADLINE: Duration = Duration::from_secs(10);
const PIVOT_RETRY: Duration = Duration::from_millis(50);

/// A libvirt connection. `virt::connect::Connect` is `Send + Sync` (libvirt
/// connections are thread-safe), so one adapter serves every thread.
#[derive(Debug)]
pub struct LibvirtHypervisor {
    conn: Connect,
    uri: String,
}

fn lv(e: virt::error::Error) -> LibvirtError {
    LibvirtError::from(e)
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn domain_state(state: virt::domain::DomainStateEnum) -> DomainState {
    match state {
        Enum::Known(VirtState::Running | VirtState::Blocked) => DomainState::Running,
        Enum::Known(VirtState::Paused) => DomainState::Paused,
        Enum::Known(VirtState::Shutoff) => DomainState::ShutOff,
        Enum::Known(VirtState::Crashed) => DomainState::Crashed,
        _ => DomainState::Other,
    }
}

fn job_kind(raw: i32) -> BlockJobKind {
    match raw as sys::virDomainBlockJobType {
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_PULL => BlockJobKind::Pull,
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_COPY => BlockJobKind::Copy,
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT => BlockJobKind::Commit,
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT => BlockJobKind::ActiveCommit,
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP => BlockJobKind::Backup,
        _ => BlockJobKind::Unknown,
    }
}

fn snapshot_flags(snap: &ExternalSnapshot) -> u32 {
    let mut flags = 0;
    let mut set = |on: bool, flag: u32| {
        if on {
            flags |= flag;
        }
    };
    set(snap.memory_file.is_none(), sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY);
    set(snap.atomic, sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC);
    set(snap.live, sys::VIR_DOMAIN_SNAPSHOT_CREATE_LIVE);
    set(snap.no_metadata, sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA);
    set(snap.quiesce, sys::VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
    flags
}

fn commit_flags(opts: &BlockCommit) -> u32 {
    let mut flags = 0;
    if opts.active {
        flags |= sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE;
    }
    if opts.shallow {
        flags |= sys::VIR_DOMAIN_BLOCK_COMMIT_SHALLOW;
    }
    if opts.delete {
        flags |= sys::VIR_DOMAIN_BLOCK_COMMIT_DELETE;
    }
    flags
}

impl LibvirtHypervisor {
    /// Opens `uri` (e.g. `qemu:///system`, `test:///default`).
    pub fn connect(uri: &str) -> Result<Self, HvError> {
        // libvirt's default error handler prints every error to stderr; we
        // return them instead.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| HvError::Connect { uri: uri.to_owned(), source: lv(e) })?;
        Ok(Self { conn, uri: uri.to_owned() })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn lookup(&self, name: &str) -> Result<VirtDomain, HvError> {
        self.conn.lookup_domain_by_name(name).map_err(|e| match lv(e) {
            e if e.code == LibvirtCode::NoDomain => HvError::NoSuchDomain { name: name.to_owned() },
            source => HvError::LookupDomain { name: name.to_owned(), source },
        })
    }

    fn lookup_network(&self, name: &str) -> Result<VirtNetwork, HvError> {
        self.conn.lookup_network_by_name(name).map_err(|e| match lv(e) {
            e if e.code == LibvirtCode::NoNetwork => HvError::NoSuchNetwork { name: name.to_owned() },
            source => HvError::LookupNetwork { name: name.to_owned(), source },
        })
    }

    fn read_domain(&self, name: &str, dom: &VirtDomain) -> Result<Domain, HvError> {
        let err = |source| HvError::LookupDomain { name: name.to_owned(), source };
        let (state, _reason) = dom.state().map_err(|e| err(lv(e)))?;
        let uuid = dom.uuid_string().map_err(|e| err(lv(e)))?;
        let xml = dom.xml_desc(0).map_err(|e| err(lv(e)))?;
        Ok(Domain {
            name: dom.name().map_err(|e| err(lv(e)))?,
            uuid,
            state: domain_state(state),
            def: DomainDef::parse(&xml)?,
            autostart: dom.autostart().map_err(|e| err(lv(e)))?,
        })
    }

    fn read_network(&self, name: &str, net: &VirtNetwork) -> Result<Network, HvError> {
        let err = |source| HvError::LookupNetwork { name: name.to_owned(), source };
        Ok(Network {
            name: net.name().map_err(|e| err(lv(e)))?,
            uuid: net.uuid_string().map_err(|e| err(lv(e)))?,
            active: net.is_active().map_err(|e| err(lv(e)))?,
            def: NetworkDef::parse(&net.xml_desc(0).map_err(|e| err(lv(e)))?)?,
        })
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn domain(&self, name: &str) -> Result<Domain, HvError> {
        self.read_domain(name, &self.lookup(name)?)
    }

    fn domain_names(&self) -> Result<Vec<String>, HvError> {
        let list = |e| HvError::ListDomains { source: lv(e) };
        let domains = self.conn.list_all_domains(0).map_err(list)?;
        domains.iter().map(|d| d.name().map_err(list)).collect()
    }

    fn define_domain(&self, def: &DomainDef) -> Result<Domain, HvError> {
        let name = def.name();
        let dom = self
            .conn
            .define_domain_xml(&def.to_xml())
            .map_err(|e| HvError::DefineDomain { name: name.clone(), source: lv(e) })?;
        self.read_domain(&name, &dom)
    }

    fn start_domain(&self, name: &str) -> Result<(), HvError> {
        let dom = self.lookup(name)?;
        dom.create().map_err(|e| HvError::StartDomain { name: name.to_owned(), source: lv(e) })?;
        Ok(())
    }

    fn destroy_domain(&self, name: &str) -> Result<(), HvError> {
        let dom = self.lookup(name)?;
        let err = |source| HvError::DestroyDomain { name: name.to_owned(), source };
        if !dom.is_active().map_err(|e| err(lv(e)))? {
            return Ok(());
        }
        match dom.destroy().map_err(lv) {
            // It stopped between the check and the call: the goal is met.
            Err(e) if e.code == LibvirtCode::OperationInvalid => Ok(()),
            other => other.map_err(err),
        }
    }

    fn undefine_domain(&self, name: &str) -> Result<(), HvError> {
        let dom = self.lookup(name)?;
        // Keep the NVRAM file: deleting data is the caller's explicit job.
        let basic = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        let full = basic | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM;
        let err = |source| HvError::UndefineDomain { name: name.to_owned(), source };
        match dom.undefine_flags(full).map_err(lv) {
            // Drivers without checkpoints or NVRAM (e.g. test://) refuse
            // those flags; for them the basic ones are the complete job.
            Err(e) if e.code == LibvirtCode::Unsupported => dom.undefine_flags(basic).map_err(|e| err(lv(e))),
            other => other.map_err(err),
        }
    }

    fn set_autostart(&self, name: &str, on: bool) -> Result<(), HvError> {
        let dom = self.lookup(name)?;
        dom.set_autostart(on).map_err(|e| HvError::SetAutostart { name: name.to_owned(), source: lv(e) })?;
        Ok(())
    }

    fn move_interface(&self, domain: &str, mac: &str, network: &str) -> Result<(), HvError> {
        let dom = self.lookup(domain)?;
        let err = |source| HvError::MoveInterface {
            domain: domain.to_owned(),
            mac: mac.to_owned(),
            network: network.to_owned(),
            source,
        };
        let active = dom.is_active().map_err(|e| err(lv(e)))?;
        // The running guest and the persistent definition each get the
        // interface as they hold it: the live one carries the tap's name and
        // alias, which a config update must not see.
        let mut targets = vec![(sys::VIR_DOMAIN_XML_INACTIVE, sys::VIR_DOMAIN_AFFECT_CONFIG)];
        if active {
            targets.insert(0, (0, sys::VIR_DOMAIN_AFFECT_LIVE));
        }
        for (xml_flags, affect) in targets {
            let def = DomainDef::parse(&dom.xml_desc(xml_flags).map_err(|e| err(lv(e)))?)?;
            let index = def.interface_index(mac).ok_or_else(|| {
                err(LibvirtError::new(LibvirtCode::OperationInvalid, format!("no interface with MAC {mac}")))
            })?;
            let mut moved = def.clone();
            moved.set_interface_network(index, network)?;
            moved.set_interface_link(index, true)?;
            dom.update_device_flags(&moved.interface_xml(index)?, affect).map_err(|e| err(lv(e)))?;
        }
        Ok(())
    }

    fn network(&self, name: &str) -> Result<Network, HvError> {
        self.read_network(name, &self.lookup_network(name)?)
    }

    fn network_names(&self) -> Result<Vec<String>, HvError> {
        let list = |e| HvError::ListNetworks { source: lv(e) };
        let networks = self.conn.list_all_networks(0).map_err(list)?;
        networks.iter().map(|n| n.name().map_err(list)).collect()
    }

    fn define_network(&self, def: &NetworkDef) -> Result<Network, HvError> {
        let name = def.name();
        let net = self
            .conn
            .define_network_xml(&def.to_xml())
            .map_err(|e| HvError::DefineNetwork { name: name.clone(), source: lv(e) })?;
        self.read_network(&name, &net)
    }

    fn start_network(&self, name: &str) -> Result<(), HvError> {
        let net = self.lookup_network(name)?;
        net.create().map_err(|e| HvError::StartNetwork { name: name.to_owned(), source: lv(e) })?;
        Ok(())
    }

    fn destroy_network(&self, name: &str) -> Result<(), HvError> {
        let net = self.lookup_network(name)?;
        let err = |e| HvError::DestroyNetwork { name: name.to_owned(), source: lv(e) };
        if net.is_active().map_err(err)? {
            net.destroy().map_err(err)?;
        }
        Ok(())
    }

    fn undefine_network(&self, name: &str) -> Result<(), HvError> {
        let net = self.lookup_network(name)?;
        net.undefine().map_err(|e| HvError::UndefineNetwork { name: name.to_owned(), source: lv(e) })?;
        Ok(())
    }

    fn create_external_snapshot(&self, domain: &str, snap: &ExternalSnapshot) -> Result<(), HvError> {
        let dom = self.lookup(domain)?;
        let disks = self.read_domain(domain, &dom)?.def.disks();
        if let Some((missing, _)) = snap.disks.iter().find(|(t, _)| !disks.iter().any(|d| d.target == *t)) {
            return Err(HvError::NoSuchDisk { domain: domain.to_owned(), disk: missing.clone() });
        }
        let xml = external_snapshot_xml(snap, &disks);
        tracing::debug!(domain, snapshot = %snap.name, %xml, "creating external snapshot");
        dom.create_snapshot_xml(&xml, snapshot_flags(snap)).map_err(|e| HvError::Snapshot {
            domain: domain.to_owned(),
            snapshot: snap.name.clone(),
            source: lv(e),
        })?;
        Ok(())
    }

    fn save_memory(&self, domain: &str, path: &Path) -> Result<(), HvError> {
        let dom = self.lookup(domain)?;
        raw::save(&dom, &path_str(path)).map_err(|e| HvError::SaveMemory {
            domain: domain.to_owned(),
            path: path.to_owned(),
            source: lv(e),
        })
    }

    fn restore_memory(&self, path: &Path, def: Option<&DomainDef>) -> Result<(), HvError> {
        let xml = def.map(DomainDef::to_xml);
        self.conn
            .restore_domain_flags(&path_str(path), xml.as_deref(), 0)
            .map_err(|e| HvError::RestoreMemory { path: path.to_owned(), source: lv(e) })
    }

    fn block_commit(&self, domain: &str, disk: &str, opts: &BlockCommit) -> Result<(), HvError> {
        let dom = self.lookup(domain)?;
        let base = opts.base.as_deref().map(path_str);
        let top = opts.top.as_deref().map(path_str);
        raw::block_commit(&dom, disk, base.as_deref(), top.as_deref(), opts.bandwidth_mib, commit_flags(opts))
            .map_err(|e| HvError::BlockCommit { domain: domain.to_owned(), disk: disk.to_owned(), source: lv(e) })
    }

    fn block_job(&self, domain: &str, disk: &str) -> Result<Option<BlockJobInfo>, HvError> {
        let dom = self.lookup(domain)?;
        let info = raw::block_job_info(&dom, disk).map_err(|e| HvError::BlockJob {
            domain: domain.to_owned(),
            disk: disk.to_owned(),
            source: lv(e),
        })?;
        Ok(info.map(|(kind, cur, end)| BlockJobInfo { kind: job_kind(kind), cur, end }))
    }

    fn block_job_pivot(&self, domain: &str, disk: &str) -> Result<(), HvError> {
        let dom = self.lookup(domain)?;
        let err = |source| HvError::BlockJobPivot { domain: domain.to_owned(), disk: disk.to_owned(), source };
        // QEMU may report a job ready (cur == end) a moment before libvirt
        // has handled its READY event and accepts the pivot: retry briefly.
        let pivot = || match raw::block_job_abort(&dom, disk, sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT).map_err(lv) {
            Err(e) if e.code == LibvirtCode::BlockJobNotReady => Err(e),
            done => Ok(Some(done)),
        };
        match crate::wait::until("block job ready to pivot", PIVOT_DEADLINE, PIVOT_RETRY, pivot) {
            Ok(done) => done.map_err(err),
            Err(crate::wait::WaitError::Timeout { last, .. }) => Err(err(last
                .unwrap_or_else(|| LibvirtError::new(LibvirtCode::BlockJobNotReady, "block job not ready for pivot")))),
        }
    }

    fn block_job_abort(&self, domain: &str, disk: &str) -> Result<(), HvError> {
        let dom = self.lookup(domain)?;
        raw::block_job_abort(&dom, disk, 0).map_err(|e| HvError::BlockJobAbort {
            domain: domain.to_owned(),
            disk: disk.to_owned(),
            source: lv(e),
        })
    }

    fn qmp_raw(&self, domain: &str, command_json: &str) -> Result<String, HvError> {
        let dom = self.lookup(domain)?;
        dom.qemu_monitor_command(command_json, 0)
            .map_err(|e| HvError::QmpTransport { domain: domain.to_owned(), source: lv(e) })
    }
}
