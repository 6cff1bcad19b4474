//! What a clone (and a destroy) can fail with: one variant per step, with
//! the VM, network or file concerned. Each picks its exit code
//! ([`Failure::exit_code`]).

use std::path::PathBuf;

use crate::catalog::{CatalogError, SnapshotState};
use crate::config::LookupError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::GuestError;
use crate::host::StorageError;
use crate::hypervisor::HvError;
use crate::ops::shared::{OperationError, Shared};
use crate::ops::snapshot::SnapshotError;
use crate::ops::LockError;

use crate::host::HostNetError;

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// SIGTERM or SIGINT before a step: the operation rolled back.
    #[error(transparent)]
    Interrupted(#[from] crate::ops::interrupt::Interrupted),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Another operation holds the source or the clone, or a lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The clone's name cannot be used (syntax, or taken).
    #[error("cannot name a clone {name:?}: {reason}")]
    BadName { name: String, reason: String },
    /// `--network readdress`, or an interface not on a libvirt network.
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// The fresh snapshot a clone without `--from` starts from.
    #[error("snapshot of {env} to clone from")]
    Snapshot {
        env: String,
        #[source]
        source: Box<SnapshotError>,
    },
    #[error("{}", unknown_snapshot(env, name, *state))]
    UnknownSnapshot { env: String, name: String, state: Option<SnapshotState>, known: Vec<String> },
    #[error("snapshot {snapshot} holds no disk image of VM '{vm}'")]
    SnapshotLacksVm { snapshot: String, vm: String },
    #[error("image {} of VM '{vm}' disk {disk} is missing", path.display())]
    ImageMissing { vm: String, disk: String, path: PathBuf },
    #[error("inspect domain {domain} of VM '{vm}'")]
    InspectDomain {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("inspect network {network}")]
    InspectNetwork {
        network: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("create overlay for VM '{vm}' disk {disk}")]
    CreateOverlay {
        vm: String,
        disk: String,
        #[source]
        source: Box<StorageError>,
    },
    /// The host's storage could not be read.
    #[error(transparent)]
    Storage(Box<StorageError>),
    #[error("define network {network}")]
    DefineNetwork {
        network: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("set up the gateway namespace {netns}")]
    Gateway {
        netns: String,
        #[source]
        source: Box<HostNetError>,
    },
    #[error("define domain {domain} for VM '{vm}'")]
    DefineDomain {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("start domain {domain} of VM '{vm}'")]
    Start {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("the agent of VM '{vm}' did not answer after the boot")]
    AgentNotReady {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    /// `--start resume` from a snapshot without a memory image of every VM.
    #[error("snapshot {snapshot} has no memory image{}", vm.as_ref().map(|vm| format!(" of VM '{vm}'")).unwrap_or_default())]
    NoMemoryImage { snapshot: String, vm: Option<String> },
    /// Reading the snapshot's memory image or writing the clone's copy of it.
    #[error("memory image {} for VM '{vm}': {detail}", path.display())]
    MemoryImage { vm: String, path: PathBuf, detail: String },
    #[error("restore domain {domain} of VM '{vm}' from memory")]
    RestoreMemory {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    /// A clone restored from memory resumes frozen if its source was
    /// captured frozen: a thaw that fails is a hard error.
    #[error("THAW FAILED: VM '{vm}' of the clone may still be frozen")]
    Thaw {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error("set the clock of VM '{vm}'")]
    SetClock {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    /// `--network readdress` without the config it needs.
    #[error("environment {env} has no [environments.{env}.{missing}] section, which --network readdress needs")]
    ReaddressNotConfigured { env: String, missing: &'static str },
    /// The clone's addresses cannot be planned.
    #[error("cannot plan the clone's addresses: {detail}")]
    AddressPlan { detail: String },
    /// An agent call of the readdress or identity steps.
    #[error("{step} in VM '{vm}'")]
    Agent {
        vm: String,
        step: &'static str,
        #[source]
        source: Box<GuestError>,
    },
    /// After the rewrite, a configured file still names a source address:
    /// the clone would talk to production, so its link never goes up.
    #[error("{}", remaining(vm, findings, "still names source addresses after the rewrite; its link stays down"))]
    SourceAddressesRemain { vm: String, findings: Vec<envclone_agent::Finding> },
    #[error("move the interface {mac} of {domain} (VM '{vm}') onto its network")]
    MoveInterface {
        vm: String,
        domain: String,
        mac: String,
        #[source]
        source: Box<HvError>,
    },
    /// `destroy` of a clone whose snapshot another clone or standby uses.
    #[error("clone {clone} cannot go: {by} uses its image {}", image.display())]
    InUse { clone: String, image: PathBuf, by: String },
    #[error("VM '{vm}' made new host keys but does not serve them: {detail}")]
    HostKeysNotServed { vm: String, detail: String },
    #[error("update {}", path.display())]
    KnownHosts {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `destroy` of an environment that is not a clone.
    #[error("{name} is not a clone; `envclone destroy` only removes clones")]
    NotAClone { name: String },
    #[error("remove {what} of clone {clone}: {detail}")]
    Remove { clone: String, what: String, detail: String },
    #[error("a worker thread panicked")]
    Panicked,
    /// The operation failed and its rollback left something behind.
    #[error("{}; the rollback left: {}", crate::error::chain(cause.as_ref()), failures.join("; "))]
    CleanupFailed { cause: Box<CloneError>, failures: Vec<String> },
}

/// What the scan found in `vm` after a rewrite, the first 20 findings listed.
pub(crate) fn remaining(vm: &str, findings: &[envclone_agent::Finding], what: &str) -> String {
    let mut text = format!("VM '{vm}' {what}:");
    for finding in findings.iter().take(20) {
        text.push_str(&format!("\n  {}:{}: {} ({})", finding.path, finding.line, finding.text, finding.needle));
    }
    if findings.len() > 20 {
        text.push_str(&format!("\n  ... and {} more", findings.len() - 20));
    }
    text
}

fn unknown_snapshot(env: &str, name: &str, state: Option<SnapshotState>) -> String {
    match state {
        None => format!("environment {env} has no snapshot {name}"),
        Some(state) => format!("snapshot {env}/{name} is {state}, not complete"),
    }
}

impl Failure for CloneError {
    /// An unknown snapshot is "not found"; a bad name, an option not
    /// supported yet or a destroy of a non-clone is a bad command line.
    fn exit_code(&self) -> ExitCode {
        match self {
            CloneError::Lookup(_) | CloneError::UnknownSnapshot { .. } => ExitCode::NotFound,
            CloneError::Lock(LockError::Busy(_)) => ExitCode::Busy,
            CloneError::BadName { .. }
            | CloneError::Unsupported { .. }
            | CloneError::NotAClone { .. }
            | CloneError::InUse { .. }
            | CloneError::NoMemoryImage { .. }
            | CloneError::ReaddressNotConfigured { .. }
            | CloneError::AddressPlan { .. } => ExitCode::Usage,
            CloneError::Snapshot { source, .. } => source.exit_code(),
            CloneError::AgentNotReady { source, .. } | CloneError::Agent { source, .. } => source.exit_code(),
            CloneError::CleanupFailed { cause, .. } => cause.exit_code(),
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            CloneError::Lookup(e) => e.hint(),
            CloneError::Interrupted(_) => Some(crate::ops::interrupt::Interrupted::hint()),
            CloneError::Lock(e) => e.hint(),
            CloneError::Catalog(e) => e.hint(),
            CloneError::BadName { .. } => {
                Some("use lower-case letters, digits and '-', at most 24, not the name of an environment".into())
            }
            CloneError::Unsupported { .. } => Some("clone with `--network isolated`, which needs none of this".into()),
            CloneError::ReaddressNotConfigured { env, missing: "readdress" } => Some(format!(
                "add [environments.{env}.readdress] with `pool = \"10.90.0.0/16\"` (a block no production network uses)"
            )),
            CloneError::ReaddressNotConfigured { env, .. } => Some(format!(
                "add [environments.{env}.rewrite] with the `files` that hold connection strings (e.g. /etc/app/*.env)"
            )),
            CloneError::AddressPlan { .. } => {
                Some("give [readdress] pool a larger block, or clone with --network isolated".into())
            }
            CloneError::SourceAddressesRemain { .. } => Some(
                "map each listed value in [rewrite] map, or add its file to [rewrite] files; nothing of the clone was kept"
                    .into(),
            ),
            CloneError::Agent { source, .. } => source.hint(),
            CloneError::MoveInterface { source, .. } => source.hint(),
            CloneError::Snapshot { source, .. } => source.hint(),
            CloneError::UnknownSnapshot { known, .. } => Some(if known.is_empty() {
                "the environment has no complete snapshot; omit --from to take one".into()
            } else {
                format!("complete snapshots: {}", known.join(", "))
            }),
            CloneError::NoMemoryImage { .. } => {
                Some("take a snapshot with `envclone snapshot ENV --memory`, or clone with --start boot".into())
            }
            CloneError::Thaw { vm, .. } => Some(format!("run `envclone ssh CLONE {vm} -- envclone-agent thaw`")),
            CloneError::NotAClone { .. } => Some("`envclone clones` lists the clones".into()),
            CloneError::InUse { .. } => Some("destroy the clone (or standby) built on it first; nothing was removed".into()),
            CloneError::CleanupFailed { .. } => {
                Some("remove what is listed by hand, or `envclone destroy` the clone if it was recorded".into())
            }
            CloneError::InspectDomain { source, .. }
            | CloneError::InspectNetwork { source, .. }
            | CloneError::DefineNetwork { source, .. }
            | CloneError::DefineDomain { source, .. }
            | CloneError::Start { source, .. } => source.hint(),
            CloneError::AgentNotReady { source, .. } => source.hint(),
            _ => None,
        }
    }
}

impl OperationError for CloneError {
    const OPERATION: &'static str = "clone";

    fn into_shared(self) -> Result<Shared, Self> {
        match self {
            CloneError::Lock(lock) => Ok(Shared::Lock(lock)),
            CloneError::Lookup(lookup) => Ok(Shared::Lookup(lookup)),
            own => Err(own),
        }
    }
}

impl From<StorageError> for CloneError {
    fn from(error: StorageError) -> Self {
        CloneError::Storage(Box::new(error))
    }
}
