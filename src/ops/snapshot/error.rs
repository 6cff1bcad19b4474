//! What taking a snapshot can fail with: one variant per step, with the VM,
//! disk or file concerned, and one hint per variant. Each picks its exit code
//! ([`Failure::exit_code`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::catalog::CatalogError;
use crate::config::LookupError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::GuestError;
use crate::hypervisor::{DomainState, HvError};
use crate::ops::shared::{OperationError, Shared};
use crate::ops::LockError;

use super::memory::MemoryError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// SIGTERM or SIGINT before a step: the operation rolled back.
    #[error(transparent)]
    Interrupted(#[from] crate::ops::interrupt::Interrupted),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Another operation holds the environment, or its lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("VM '{vm}': no domain named {domain}")]
    DomainMissing { vm: String, domain: String },
    #[error("VM '{vm}': cannot look up domain {domain}")]
    InspectDomain {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}': domain {domain} is {state:?}, not running")]
    DomainNotRunning { vm: String, domain: String, state: DomainState },
    #[error("VM '{vm}': domain {domain} has no disk an external snapshot can take")]
    NoDisks { vm: String, domain: String },
    #[error("VM '{vm}': disk {disk} of domain {domain} is not a file envclone can snapshot ({why})")]
    UnsupportedDisk { vm: String, domain: String, disk: String, why: String },
    #[error("VM '{vm}': the overlay for disk {disk} already exists: {}", path.display())]
    OverlayExists { vm: String, disk: String, path: PathBuf },
    /// QEMU streams the memory to a socket of the controller's: only a
    /// QEMU on the controller's own host can reach it.
    #[error("environment '{env}' runs on host {host}: its memory state cannot be saved from here yet")]
    MemoryOnRemoteHost { env: String, host: String },
    #[error("VM '{vm}': the memory size of domain {domain} cannot be read from its definition")]
    MemorySize { vm: String, domain: String },
    #[error("cannot create the snapshot storage directory {}", path.display())]
    StorageDir {
        path: PathBuf,
        #[source]
        source: Box<crate::host::StorageError>,
    },
    #[error("cannot look at {} (its free space, or whether it exists)", path.display())]
    StatStorage {
        path: PathBuf,
        #[source]
        source: Box<crate::host::StorageError>,
    },
    #[error("not enough free space in {}: {free} bytes free, {needed} needed", path.display())]
    NoSpace { path: PathBuf, free: u64, needed: u64 },
    #[error("no free snapshot name for {base} (tried up to -{tried})")]
    NoFreeName { base: String, tried: u32 },
    /// quiesce `required`: an agent did not answer (or refused) before anything was touched.
    #[error("VM '{vm}': its agent is not ready, and quiesce is `required`; nothing was changed")]
    AgentNotReady {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    /// quiesce `required`: a freeze failed (a pre-freeze hook, FIFREEZE...); every other guest was thawed.
    #[error("VM '{vm}': cannot freeze its filesystems, and quiesce is `required`; every guest was thawed")]
    Freeze {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error(
        "guests stayed frozen {} ms, beyond the hard limit of {} ms ({stage}); every guest was thawed",
        window.as_millis(),
        limit.as_millis()
    )]
    FreezeLimit { limit: Duration, window: Duration, stage: &'static str },
    #[error(
        "{} did not run their pre-freeze hooks and sync within {} ms; nothing was frozen",
        vms.join(", "),
        waited.as_millis()
    )]
    ArmTimeout { waited: Duration, vms: Vec<String> },
    #[error("VM '{vm}': the agent's lease timeout thawed it before the controller did")]
    LeaseExpired { vm: String },
    #[error("VM '{vm}': cannot take the external disk snapshot of domain {domain}")]
    DiskSnapshot {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    /// Loud and hard: the guest may still be frozen.
    #[error("VM '{vm}': THAW FAILED; the guest may still be frozen")]
    Thaw {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error("VM '{vm}': memory state")]
    Memory {
        vm: String,
        #[source]
        source: MemoryError,
    },
    #[error("catalog")]
    Catalog(#[from] CatalogError),
    /// The snapshot failed, and undoing what it did did not finish either.
    #[error("{}; AND cleaning up failed: {}", crate::error::chain(cause.as_ref()), failures.join("; "))]
    CleanupFailed { cause: Box<SnapshotError>, failures: Vec<String> },
}

impl SnapshotError {
    /// The VM a per-VM failure is about.
    pub fn vm(&self) -> Option<&str> {
        use SnapshotError::*;
        match self {
            DomainMissing { vm, .. }
            | InspectDomain { vm, .. }
            | DomainNotRunning { vm, .. }
            | NoDisks { vm, .. }
            | UnsupportedDisk { vm, .. }
            | OverlayExists { vm, .. }
            | MemorySize { vm, .. }
            | AgentNotReady { vm, .. }
            | Freeze { vm, .. }
            | LeaseExpired { vm }
            | DiskSnapshot { vm, .. }
            | Thaw { vm, .. }
            | Memory { vm, .. } => Some(vm),
            CleanupFailed { cause, .. } => cause.vm(),
            Interrupted(_)
            | Lookup(_)
            | Lock(_)
            | StorageDir { .. }
            | StatStorage { .. }
            | NoSpace { .. }
            | NoFreeName { .. }
            | FreezeLimit { .. }
            | ArmTimeout { .. }
            | MemoryOnRemoteHost { .. }
            | Catalog(_) => None,
        }
    }
}

impl Failure for SnapshotError {
    /// An unknown environment or a missing domain is "not found"; an agent
    /// or libvirt that cannot be reached is "unreachable".
    fn exit_code(&self) -> ExitCode {
        match self {
            SnapshotError::Lookup(_) | SnapshotError::DomainMissing { .. } => ExitCode::NotFound,
            SnapshotError::Lock(LockError::Busy(_)) => ExitCode::Busy,
            SnapshotError::MemoryOnRemoteHost { .. } => ExitCode::Usage,
            SnapshotError::AgentNotReady { source, .. } => source.exit_code(),
            SnapshotError::InspectDomain { source, .. } if matches!(**source, HvError::Connect { .. }) => {
                ExitCode::Unreachable
            }
            SnapshotError::CleanupFailed { cause, .. } => cause.exit_code(),
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        use SnapshotError::*;
        let hint = match self {
            Lookup(source) => return source.hint(),
            Interrupted(_) => crate::ops::interrupt::Interrupted::hint(),
            Lock(source) => return source.hint(),
            DomainMissing { .. } => "check `virsh list --all` and the VM's `domain` in the config".into(),
            InspectDomain { source, .. } | DiskSnapshot { source, .. } => return source.hint(),
            DomainNotRunning { .. } => "start the domain (`virsh start DOMAIN`); envclone snapshots running VMs".into(),
            NoDisks { .. } | UnsupportedDisk { .. } => {
                "envclone snapshots file-backed disks (`virsh domblklist DOMAIN --details`)".into()
            }
            OverlayExists { .. } => "a leftover of an earlier run: move it away, then run the command again".into(),
            MemorySize { .. } => "check `<memory>` in `virsh dumpxml DOMAIN`".into(),
            MemoryOnRemoteHost { .. } => {
                "take a disk-only snapshot (without --memory, or `memory = false` in its schedule); a clone or \
                 standby of it then boots cold"
                    .into()
            }
            StorageDir { source, .. } | StatStorage { source, .. } => {
                return source.hint().or_else(|| {
                    Some(
                    "check `environments.ENV.storage` (default images/ENV under its host's storage, <state_dir> for \
                     local), that envclone runs as root, and for a host of [hosts] that its SSH login works \
                     (`envclone check --live`)"
                        .into(),
                )
                })
            }
            NoSpace { .. } => {
                "free space there, point `environments.ENV.storage` elsewhere, or lower `controller.min_free_space`"
                    .into()
            }
            NoFreeName { .. } => "wait a second and run the command again".into(),
            AgentNotReady { source, .. } => {
                let base = "or take a crash-consistent snapshot with `--quiesce best-effort`";
                match source.hint() {
                    Some(inner) => format!("{inner}; {base}"),
                    None => format!("check the VM and its agent (`envclone check --live`); {base}"),
                }
            }
            Freeze { source, .. } => {
                let base = "or take a crash-consistent snapshot with `--quiesce best-effort`";
                match source.hint() {
                    Some(inner) => format!("{inner}; {base}"),
                    None => base.into(),
                }
            }
            ArmTimeout { .. } => {
                "check those guests' hooks (`envclone-agent freeze` runs them from /etc/envclone/hooks.d), or raise \
                 `environments.ENV.hook_timeout`"
                    .into()
            }
            FreezeLimit { .. } | LeaseExpired { .. } => {
                "raise `environments.ENV.freeze_timeout`, or find what was slow (hooks, a busy host) with -v".into()
            }
            Thaw { vm, .. } => format!(
                "check with `envclone ssh ENV {vm} -- envclone-agent status` and thaw with `envclone-agent thaw`"
            ),
            Memory { source, .. } => return source.hint(),
            Catalog(source) => return source.hint(),
            CleanupFailed { .. } => {
                "fix what failed, then `envclone recover` (or thaw by hand with `envclone-agent thaw`)".into()
            }
        };
        Some(hint)
    }
}

impl OperationError for SnapshotError {
    const OPERATION: &'static str = "snapshot";

    fn into_shared(self) -> Result<Shared, Self> {
        match self {
            SnapshotError::Lock(lock) => Ok(Shared::Lock(lock)),
            SnapshotError::Lookup(lookup) => Ok(Shared::Lookup(lookup)),
            own => Err(own),
        }
    }
}
