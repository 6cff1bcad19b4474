//! `FakeHypervisor`: an in-memory, recording [`Hypervisor`] for unit tests.
//!
//! It behaves like libvirt's qemu driver where orchestration can tell the
//! difference: unknown names give `NoSuchDomain`/`NoSuchNetwork`, a define
//! that clashes on name or UUID fails, starting needs active networks, an
//! external snapshot switches disk sources to the overlays, save stops the
//! domain and restore refuses another name or UUID. Every call is recorded
//! in order ([`FakeHypervisor::calls`]) and any step can be made to fail
//! ([`FakeHypervisor::failing_at`]).

mod ops;
mod storage;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use ops::State;

use super::{
    BlockCommit, BlockJobInfo, DirectBootSpec, Domain, DomainDef, DomainState, ExternalSnapshot, HvError, Hypervisor,
    Network, NetworkDef, NetworkSpec, NicSpec,
};

/// One step of the [`Hypervisor`] trait: one per method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeStep {
    Domain,
    DomainNames,
    DefineDomain,
    StartDomain,
    DestroyDomain,
    UndefineDomain,
    SetAutostart,
    MoveInterface,
    Network,
    NetworkNames,
    DefineNetwork,
    StartNetwork,
    DestroyNetwork,
    UndefineNetwork,
    CreateSnapshot,
    SaveMemory,
    RestoreMemory,
    BlockCommit,
    BlockJob,
    BlockJobPivot,
    BlockJobAbort,
    Qmp,
}

/// A recorded call, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Domain { name: String },
    DomainNames,
    DefineDomain { def: DomainDef },
    StartDomain { name: String },
    DestroyDomain { name: String },
    UndefineDomain { name: String },
    SetAutostart { name: String, on: bool },
    MoveInterface { domain: String, mac: String, network: String },
    Network { name: String },
    NetworkNames,
    DefineNetwork { def: NetworkDef },
    StartNetwork { name: String },
    DestroyNetwork { name: String },
    UndefineNetwork { name: String },
    CreateSnapshot { domain: String, snapshot: ExternalSnapshot },
    SaveMemory { domain: String, path: PathBuf },
    RestoreMemory { path: PathBuf, def: Option<DomainDef> },
    BlockCommit { domain: String, disk: String, opts: BlockCommit },
    BlockJob { domain: String, disk: String },
    BlockJobPivot { domain: String, disk: String },
    BlockJobAbort { domain: String, disk: String },
    Qmp { domain: String, command: String },
}

impl Call {
    pub fn step(&self) -> FakeStep {
        match self {
            Call::Domain { .. } => FakeStep::Domain,
            Call::DomainNames => FakeStep::DomainNames,
            Call::DefineDomain { .. } => FakeStep::DefineDomain,
            Call::StartDomain { .. } => FakeStep::StartDomain,
            Call::DestroyDomain { .. } => FakeStep::DestroyDomain,
            Call::UndefineDomain { .. } => FakeStep::UndefineDomain,
            Call::SetAutostart { .. } => FakeStep::SetAutostart,
            Call::MoveInterface { .. } => FakeStep::MoveInterface,
            Call::Network { .. } => FakeStep::Network,
            Call::NetworkNames => FakeStep::NetworkNames,
            Call::DefineNetwork { .. } => FakeStep::DefineNetwork,
            Call::StartNetwork { .. } => FakeStep::StartNetwork,
            Call::DestroyNetwork { .. } => FakeStep::DestroyNetwork,
            Call::UndefineNetwork { .. } => FakeStep::UndefineNetwork,
            Call::CreateSnapshot { .. } => FakeStep::CreateSnapshot,
            Call::SaveMemory { .. } => FakeStep::SaveMemory,
            Call::RestoreMemory { .. } => FakeStep::RestoreMemory,
            Call::BlockCommit { .. } => FakeStep::BlockCommit,
            Call::BlockJob { .. } => FakeStep::BlockJob,
            Call::BlockJobPivot { .. } => FakeStep::BlockJobPivot,
            Call::BlockJobAbort { .. } => FakeStep::BlockJobAbort,
            Call::Qmp { .. } => FakeStep::Qmp,
        }
    }
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub struct FakeHypervisor {
    state: Mutex<State>,
}

impl FakeHypervisor {
    /// No domains, no networks, nothing fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call of `step` fails with [`HvError::Injected`].
    pub fn failing_at(step: FakeStep) -> Self {
        Self::new().fail_at(step)
    }

    /// A running environment: network `network` (active, 192.168.50.0/24 on
    /// bridge `br-<network>`) and one running direct-boot domain per name,
    /// with disk `vda` at `/images/<name>.qcow2` and one NIC on `network`.
    pub fn running_env(network: &str, domains: &[&str]) -> Self {
        let net = NetworkDef::isolated(&NetworkSpec {
            name: network.to_owned(),
            bridge: format!("br-{network}"),
            ip: Some((std::net::Ipv4Addr::new(192, 168, 50, 1), 24)),
        });
        domains.iter().fold(Self::new().with_network(net, true), |fake, name| {
            let def = DomainDef::direct_boot(&DirectBootSpec {
                name: (*name).to_owned(),
                domain_type: "qemu".to_owned(),
                memory_mib: 256,
                vcpus: 1,
                kernel: PathBuf::from("/boot/vmlinuz"),
                initrd: Some(PathBuf::from("/boot/initrd.img")),
                cmdline: "console=ttyS0 root=/dev/vda".to_owned(),
                disks: vec![PathBuf::from(format!("/images/{name}.qcow2"))],
                interfaces: vec![NicSpec { network: network.to_owned(), mac: None }],
                serial_log: None,
            });
            fake.with_domain(def, DomainState::Running)
        })
    }

    /// Adds a persistent domain in `state`; a missing UUID or MAC is filled
    /// in as libvirt would.
    pub fn with_domain(self, def: DomainDef, state: DomainState) -> Self {
        self.lock().insert_domain(def, state, true);
        self
    }

    /// Adds a persistent network.
    pub fn with_network(self, def: NetworkDef, active: bool) -> Self {
        self.lock().insert_network(def, active);
        self
    }

    /// Adds a save image at `path` holding `def`, as `save_memory` would.
    pub fn with_saved_image(self, path: impl Into<PathBuf>, def: DomainDef) -> Self {
        self.lock().saved.insert(path.into(), def);
        self
    }

    /// Every call of `step` fails with [`HvError::Injected`].
    pub fn fail_at(self, step: FakeStep) -> Self {
        self.lock().failures.push((step, None));
        self
    }

    /// Only the `n`-th call (counting from 1) of `step` fails.
    pub fn fail_at_call(self, step: FakeStep, n: usize) -> Self {
        self.lock().failures.push((step, Some(n)));
        self
    }

    /// `qmp_raw` answers `reply` to every command named `command`.
    pub fn with_qmp_reply(self, command: &str, reply: &str) -> Self {
        self.lock().qmp_replies.insert(command.to_owned(), reply.to_owned());
        self
    }

    /// Block jobs report progress for `polls` calls of `block_job` before
    /// they are ready (active commit) or gone (commit). Default 0.
    pub fn with_block_job_polls(self, polls: u32) -> Self {
        self.lock().job_polls = polls;
        self
    }

    /// Every call so far, in order, failed ones included.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The steps of [`calls`](Self::calls), for terse assertions.
    pub fn steps(&self) -> Vec<FakeStep> {
        self.lock().calls.iter().map(Call::step).collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The domain as `domain()` would return it, without recording a call.
    pub fn peek_domain(&self, name: &str) -> Option<Domain> {
        self.lock().domain(name).ok()
    }

    /// The network as `network()` would return it, without recording a call.
    pub fn peek_network(&self, name: &str) -> Option<Network> {
        self.lock().network(name).ok()
    }

    /// Names of the snapshots kept in metadata for `domain`.
    pub fn snapshot_names(&self, domain: &str) -> Vec<String> {
        self.lock().domains.get(domain).map(|d| d.snapshots.clone()).unwrap_or_default()
    }

    /// Paths of the save images written so far (or given).
    pub fn saved_images(&self) -> Vec<PathBuf> {
        self.lock().saved.keys().cloned().collect()
    }

    pub fn autostart(&self, domain: &str) -> Option<bool> {
        self.lock().domains.get(domain).map(|d| d.autostart)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; the
        // state is still worth reading.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `call`, applies injected failures, then runs `op`.
    fn run<T>(&self, call: Call, op: impl FnOnce(&mut State) -> Result<T, HvError>) -> Result<T, HvError> {
        let mut state = self.lock();
        state.record(call)?;
        op(&mut state)
    }
}

impl Hypervisor for FakeHypervisor {
    fn domain(&self, name: &str) -> Result<Domain, HvError> {
        self.run(Call::Domain { name: name.to_owned() }, |s| s.domain(name))
    }

    fn domain_names(&self) -> Result<Vec<String>, HvError> {
        self.run(Call::DomainNames, |s| Ok(s.domains.keys().cloned().collect()))
    }

    fn define_domain(&self, def: &DomainDef) -> Result<Domain, HvError> {
        self.run(Call::DefineDomain { def: def.clone() }, |s| s.define_domain(def))
    }

    fn start_domain(&self, name: &str) -> Result<(), HvError> {
        self.run(Call::StartDomain { name: name.to_owned() }, |s| s.start_domain(name))
    }

    fn destroy_domain(&self, name: &str) -> Result<(), HvError> {
        self.run(Call::DestroyDomain { name: name.to_owned() }, |s| s.destroy_domain(name))
    }

    fn undefine_domain(&self, name: &str) -> Result<(), HvError> {
        self.run(Call::UndefineDomain { name: name.to_owned() }, |s| s.undefine_domain(name))
    }

    fn set_autostart(&self, name: &str, on: bool) -> Result<(), HvError> {
        self.run(Call::SetAutostart { name: name.to_owned(), on }, |s| s.set_autostart(name, on))
    }

    fn move_interface(&self, domain: &str, mac: &str, network: &str) -> Result<(), HvError> {
        let call = Call::MoveInterface { domain: domain.to_owned(), mac: mac.to_owned(), network: network.to_owned() };
        self.run(call, |s| s.move_interface(domain, mac, network))
    }

    fn network(&self, name: &str) -> Result<Network, HvError> {
        self.run(Call::Network { name: name.to_owned() }, |s| s.network(name))
    }

    fn network_names(&self) -> Result<Vec<String>, HvError> {
        self.run(Call::NetworkNames, |s| Ok(s.networks.keys().cloned().collect()))
    }

    fn define_network(&self, def: &NetworkDef) -> Result<Network, HvError> {
        self.run(Call::DefineNetwork { def: def.clone() }, |s| s.define_network(def))
    }

    fn start_network(&self, name: &str) -> Result<(), HvError> {
        self.run(Call::StartNetwork { name: name.to_owned() }, |s| s.start_network(name))
    }

    fn destroy_network(&self, name: &str) -> Result<(), HvError> {
        self.run(Call::DestroyNetwork { name: name.to_owned() }, |s| s.destroy_network(name))
    }

    fn undefine_network(&self, name: &str) -> Result<(), HvError> {
        self.run(Call::UndefineNetwork { name: name.to_owned() }, |s| s.undefine_network(name))
    }

    fn create_external_snapshot(&self, domain: &str, snap: &ExternalSnapshot) -> Result<(), HvError> {
        let call = Call::CreateSnapshot { domain: domain.to_owned(), snapshot: snap.clone() };
        self.run(call, |s| s.create_external_snapshot(domain, snap))
    }

    fn save_memory(&self, domain: &str, path: &Path) -> Result<(), HvError> {
        let call = Call::SaveMemory { domain: domain.to_owned(), path: path.to_owned() };
        self.run(call, |s| s.save_memory(domain, path))
    }

    fn restore_memory(&self, path: &Path, def: Option<&DomainDef>) -> Result<(), HvError> {
        let call = Call::RestoreMemory { path: path.to_owned(), def: def.cloned() };
        self.run(call, |s| s.restore_memory(path, def))
    }

    fn block_commit(&self, domain: &str, disk: &str, opts: &BlockCommit) -> Result<(), HvError> {
        let call = Call::BlockCommit { domain: domain.to_owned(), disk: disk.to_owned(), opts: opts.clone() };
        self.run(call, |s| s.block_commit(domain, disk, opts))
    }

    fn block_job(&self, domain: &str, disk: &str) -> Result<Option<BlockJobInfo>, HvError> {
        let call = Call::BlockJob { domain: domain.to_owned(), disk: disk.to_owned() };
        self.run(call, |s| s.block_job(domain, disk))
    }

    fn block_job_pivot(&self, domain: &str, disk: &str) -> Result<(), HvError> {
        let call = Call::BlockJobPivot { domain: domain.to_owned(), disk: disk.to_owned() };
        self.run(call, |s| s.block_job_end(domain, disk, true))
    }

    fn block_job_abort(&self, domain: &str, disk: &str) -> Result<(), HvError> {
        let call = Call::BlockJobAbort { domain: domain.to_owned(), disk: disk.to_owned() };
        self.run(call, |s| s.block_job_end(domain, disk, false))
    }

    fn qmp_raw(&self, domain: &str, command_json: &str) -> Result<String, HvError> {
        let call = Call::Qmp { domain: domain.to_owned(), command: command_json.to_owned() };
        self.run(call, |s| s.qmp(domain, command_json))
    }
}
