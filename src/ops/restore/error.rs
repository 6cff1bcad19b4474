//! What a restore can fail with: one variant per step, with the VM, disk or
//! file concerned, and one hint per variant. Each picks its exit code
//! ([`Failure::exit_code`]).

use std::path::PathBuf;

use crate::catalog::{CatalogError, SnapshotState};
use crate::config::LookupError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::GuestError;
use crate::hypervisor::HvError;
use crate::ops::shared::{OperationError, Shared};
use crate::ops::snapshot::save_image::ReadSaveImageError;
use crate::ops::LockError;

use crate::host::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// SIGTERM or SIGINT before a step: the operation rolled back.
    #[error(transparent)]
    Interrupted(#[from] crate::ops::interrupt::Interrupted),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Another operation holds the environment, or its lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// No such snapshot, or one that is not complete (failed, in progress, deleted).
    #[error("{}", unknown_snapshot(env, name, *state))]
    UnknownSnapshot { env: String, name: String, state: Option<SnapshotState>, known: Vec<String> },
    /// `--memory` for a snapshot without memory images (or without one for a VM).
    #[error("{}", no_memory(snapshot, vm.as_deref()))]
    NoMemoryImage { snapshot: String, vm: Option<String>, with_memory: Vec<String> },
    #[error("snapshot {snapshot} holds no disk image of VM '{vm}'")]
    SnapshotLacksVm { snapshot: String, vm: String },
    #[error("VM '{vm}': the snapshot's image of disk {disk} is missing: {}", path.display())]
    ImageMissing { vm: String, disk: String, path: PathBuf },
    #[error("VM '{vm}': no domain named {domain}")]
    DomainMissing { vm: String, domain: String },
    #[error("VM '{vm}': cannot look up domain {domain}")]
    InspectDomain {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}': domain {domain} has no disk {disk}, which the snapshot holds")]
    NoSuchDisk { vm: String, domain: String, disk: String },
    #[error("VM '{vm}': disk {disk} of domain {domain} has no source file")]
    DiskWithoutSource { vm: String, domain: String, disk: String },
    #[error("VM '{vm}': cannot read the memory image")]
    ReadMemoryImage {
        vm: String,
        #[source]
        source: Box<ReadSaveImageError>,
    },
    #[error("VM '{vm}': the memory image {} does not fit domain {domain}: {detail}", path.display())]
    MemoryImageMismatch { vm: String, domain: String, path: PathBuf, detail: String },
    #[error("no free name for the undo snapshot {base} (tried up to -{tried})")]
    NoFreeName { base: String, tried: u32 },
    #[error("VM '{vm}': cannot stop domain {domain}")]
    Stop {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}': cannot create the new overlay of disk {disk}")]
    CreateOverlay {
        vm: String,
        disk: String,
        #[source]
        source: Box<StorageError>,
    },
    /// The host's storage could not be read.
    #[error(transparent)]
    Storage(Box<StorageError>),
    #[error("VM '{vm}': cannot redefine domain {domain} on its new overlays")]
    Redefine {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}': cannot start domain {domain}")]
    Start {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}': cannot restore domain {domain} from its memory image")]
    RestoreMemory {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}': its agent did not answer after the start")]
    AgentNotReady {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    /// Loud and hard: the restored guest may still be frozen.
    #[error("VM '{vm}': THAW FAILED after the memory restore; the guest may still be frozen")]
    Thaw {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error("VM '{vm}': cannot set the guest clock after the memory restore")]
    SetClock {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error("catalog")]
    Catalog(#[from] CatalogError),
    #[error("a worker thread of the restore panicked")]
    Panicked,
    /// Steps run in parallel failed for more than one VM.
    #[error("{}; also: {}", crate::error::chain(first.as_ref()), others.join("; "))]
    Several { first: Box<RestoreError>, others: Vec<String> },
    /// The restore failed, and undoing what it did did not finish either.
    #[error("{}; AND cleaning up failed: {}", crate::error::chain(cause.as_ref()), failures.join("; "))]
    CleanupFailed { cause: Box<RestoreError>, failures: Vec<String> },
}

fn unknown_snapshot(env: &str, name: &str, state: Option<SnapshotState>) -> String {
    match state {
        None => format!("environment '{env}' has no snapshot named {name:?}"),
        Some(state) => format!("snapshot {name} of environment '{env}' is {state}, not complete"),
    }
}

fn no_memory(snapshot: &str, vm: Option<&str>) -> String {
    match vm {
        None => format!("snapshot {snapshot} was taken without memory; nothing was changed"),
        Some(vm) => format!("snapshot {snapshot} has no memory image of VM '{vm}'; nothing was changed"),
    }
}

/// `a, b, c`, or `none` for an empty list.
fn names(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

impl RestoreError {
    /// The VM a per-VM failure is about.
    pub fn vm(&self) -> Option<&str> {
        use RestoreError::*;
        match self {
            NoMemoryImage { vm, .. } => vm.as_deref(),
            SnapshotLacksVm { vm, .. }
            | ImageMissing { vm, .. }
            | DomainMissing { vm, .. }
            | InspectDomain { vm, .. }
            | NoSuchDisk { vm, .. }
            | DiskWithoutSource { vm, .. }
            | ReadMemoryImage { vm, .. }
            | MemoryImageMismatch { vm, .. }
            | Stop { vm, .. }
            | CreateOverlay { vm, .. }
            | Redefine { vm, .. }
            | Start { vm, .. }
            | RestoreMemory { vm, .. }
            | AgentNotReady { vm, .. }
            | Thaw { vm, .. }
            | SetClock { vm, .. } => Some(vm),
            Interrupted(_) => None,
            CleanupFailed { cause, .. } => cause.vm(),
            Several { first, .. } => first.vm(),
            Lookup(_) | Lock(_) | Storage(_) | UnknownSnapshot { .. } | NoFreeName { .. } | Catalog(_) | Panicked => {
                None
            }
        }
    }
}

impl Failure for RestoreError {
    /// An unknown or incomplete snapshot is "not found"; `--memory` for a
    /// snapshot without memory is a bad command line (nothing was done).
    fn exit_code(&self) -> ExitCode {
        match self {
            RestoreError::Lookup(_) | RestoreError::UnknownSnapshot { .. } | RestoreError::DomainMissing { .. } => {
                ExitCode::NotFound
            }
            RestoreError::Lock(LockError::Busy(_)) => ExitCode::Busy,
            RestoreError::NoMemoryImage { .. } => ExitCode::Usage,
            RestoreError::AgentNotReady { source, .. } => source.exit_code(),
            RestoreError::InspectDomain { source, .. } if matches!(**source, HvError::Connect { .. }) => {
                ExitCode::Unreachable
            }
            RestoreError::CleanupFailed { cause, .. } => cause.exit_code(),
            RestoreError::Several { first, .. } => first.exit_code(),
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        use RestoreError::*;
        let hint = match self {
            Lookup(source) => return source.hint(),
            Interrupted(_) => crate::ops::interrupt::Interrupted::hint(),
            Lock(source) => return source.hint(),
            Storage(source) if source.hint().is_some() => return source.hint(),
            UnknownSnapshot { env, known, .. } => {
                format!("complete snapshots of '{env}': {} (`envclone snapshots {env}` lists them all)", names(known))
            }
            NoMemoryImage { with_memory, .. } => format!(
                "restore without --memory (the VMs boot from the snapshot's disks), or pick a snapshot taken \
                 with --memory: {}",
                names(with_memory)
            ),
            SnapshotLacksVm { .. } => {
                "the VM was added to the environment after the snapshot; pick a later snapshot".into()
            }
            ImageMissing { .. } => {
                "the snapshot's files were moved or deleted outside envclone; pick another snapshot".into()
            }
            DomainMissing { .. } => "check `virsh list --all` and the VM's `domain` in the config".into(),
            InspectDomain { source, .. }
            | Stop { source, .. }
            | Redefine { source, .. }
            | Start { source, .. }
            | RestoreMemory { source, .. } => return source.hint(),
            NoSuchDisk { .. } | DiskWithoutSource { .. } => {
                "the domain's disks changed since the snapshot (`virsh domblklist DOMAIN --details`)".into()
            }
            ReadMemoryImage { .. } | MemoryImageMismatch { .. } => {
                "restore without --memory: the VMs then boot from the snapshot's disks".into()
            }
            NoFreeName { .. } => "wait a second and run the command again".into(),
            Storage(_) | CreateOverlay { .. } => {
                "check `environments.ENV.storage` (default <state_dir>/images/ENV): space, permissions".into()
            }
            AgentNotReady { source, .. } => match source.hint() {
                Some(inner) => inner,
                None => "check the guest's console log; the VMs were put back on their previous disks".into(),
            },
            Thaw { vm, .. } => format!(
                "check with `envclone ssh ENV {vm} -- envclone-agent status` and thaw with `envclone-agent thaw`"
            ),
            SetClock { source, .. } => return source.hint(),
            Catalog(source) => return source.hint(),
            Panicked => "this is a bug in envclone; the restore was rolled back".into(),
            Several { first, .. } => return first.hint(),
            CleanupFailed { .. } => "fix what failed, then `envclone recover`".into(),
        };
        Some(hint)
    }
}

impl OperationError for RestoreError {
    const OPERATION: &'static str = "restore";

    fn into_shared(self) -> Result<Shared, Self> {
        match self {
            RestoreError::Lock(lock) => Ok(Shared::Lock(lock)),
            RestoreError::Lookup(lookup) => Ok(Shared::Lookup(lookup)),
            own => Err(own),
        }
    }
}

impl From<StorageError> for RestoreError {
    fn from(error: StorageError) -> Self {
        RestoreError::Storage(Box::new(error))
    }
}
