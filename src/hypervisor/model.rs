//! Plain data exchanged through the [`Hypervisor`](super::Hypervisor) trait.

use std::path::PathBuf;

use super::xml::{DomainDef, NetworkDef};

/// A defined (or transient) domain as the hypervisor reports it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    /// The live definition when running (with backing chains and the
    /// current disk sources), the persistent one otherwise.
    pub def: DomainDef,
    /// Started by libvirt when its host boots.
    pub autostart: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    Crashed,
    /// Shutting down, suspended to RAM, or a state libvirt didn't name.
    Other,
}

impl DomainState {
    /// True while QEMU runs (running or paused).
    pub fn is_active(self) -> bool {
        matches!(self, DomainState::Running | DomainState::Paused)
    }

    /// As messages say it: "is running", "found shut off".
    pub fn name(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::Other => "in another state",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub uuid: String,
    pub active: bool,
    pub def: NetworkDef,
}

/// An external snapshot: each listed disk gets a new overlay the guest then
/// writes to; the current image becomes the overlay's read-only backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSnapshot {
    pub name: String,
    /// `(target dev, overlay path)`, e.g. `("vda", "/img/web-snap1.qcow2")`.
    /// Disks of the domain not listed here are left out of the snapshot.
    pub disks: Vec<(String, PathBuf)>,
    /// Also write the guest memory here (a running domain only); `None`
    /// makes a disk-only snapshot.
    pub memory_file: Option<PathBuf>,
    /// All disks or none (`VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC`).
    pub atomic: bool,
    /// Freeze guest filesystems through the guest agent first.
    pub quiesce: bool,
    /// Don't keep snapshot metadata in libvirt.
    pub no_metadata: bool,
    /// Keep the guest running while memory is written.
    pub live: bool,
}

/// Options of a block commit (`virDomainBlockCommit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockCommit {
    /// Commit the active layer (the image the guest writes to). The job then
    /// stays until pivoted or aborted.
    pub active: bool,
    /// The image to commit into; `None` means the top's backing file when
    /// `shallow`, else the bottom of the chain.
    pub base: Option<PathBuf>,
    /// The image to commit from; `None` means the active layer.
    pub top: Option<PathBuf>,
    /// Commit only into the top's immediate backing file.
    pub shallow: bool,
    /// Delete the committed files afterwards.
    pub delete: bool,
    /// Bandwidth limit in MiB/s; 0 is unlimited.
    pub bandwidth_mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockJobKind {
    Pull,
    Copy,
    Commit,
    ActiveCommit,
    Backup,
    Unknown,
}

/// Progress of a block job, in libvirt's units (bytes, roughly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJobInfo {
    pub kind: BlockJobKind,
    pub cur: u64,
    pub end: u64,
}

impl BlockJobInfo {
    /// For an active commit or a copy: all data mirrored, ready to pivot.
    /// libvirt reports `cur == end` only once QEMU said the job is ready.
    pub fn is_ready(&self) -> bool {
        self.end > 0 && self.cur == self.end
    }
}
