//! What a standby operation can fail with: one variant per step, with the
//! VM, disk, network or file concerned. Each picks its exit code
//! ([`Failure::exit_code`]).

use std::path::PathBuf;

use crate::catalog::CatalogError;
use crate::config::LookupError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::hypervisor::HvError;
use crate::ops::shared::{OperationError, Shared};
use crate::ops::LockError;

use crate::host::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// SIGTERM or SIGINT before a step: the operation rolled back.
    #[error(transparent)]
    Interrupted(#[from] crate::ops::interrupt::Interrupted),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Another operation holds the standby or its primary, or a lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cannot name a standby {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("no standby named {name:?}")]
    UnknownStandby { name: String, known: Vec<String> },
    #[error("environment '{env}' has no complete snapshot to bring standby {standby} to")]
    NoSnapshot { env: String, standby: String },
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// A standby is synced only while its domains are shut off.
    #[error("domain {domain} of standby {standby} runs")]
    StandbyRunning { standby: String, domain: String },
    /// The standby serves its primary (a role switch in force): its disks
    /// are the environment's live data, not a copy to overwrite or remove.
    #[error("standby {standby} serves environment '{env}' (epoch {epoch}): it is the active side")]
    ActiveSide { standby: String, env: String, epoch: i64 },
    /// An earlier sync stopped half way through its merge.
    #[error("standby {standby} is half way through a sync to snapshot {snapshot}")]
    MergePending { standby: String, snapshot: String },
    #[error("snapshot {snapshot} holds no image of VM '{vm}' disk {disk}")]
    SnapshotLacksDisk { snapshot: String, vm: String, disk: String },
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
    #[error("define network {network}")]
    DefineNetwork {
        network: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("define domain {domain} for VM '{vm}'")]
    DefineDomain {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    /// The host's storage could not be read.
    #[error(transparent)]
    Storage(Box<StorageError>),
    /// Copying, verifying or merging one disk's data.
    #[error("{step} of VM '{vm}' disk {disk}")]
    Transfer {
        vm: String,
        disk: String,
        step: &'static str,
        #[source]
        source: Box<StorageError>,
    },
    /// Copying one disk's data to the standby's host failed.
    #[error("{step} of VM '{vm}' disk {disk}")]
    Ship {
        vm: String,
        disk: String,
        step: &'static str,
        #[source]
        source: Box<crate::host::ship::ShipError>,
    },
    /// The primary's or the standby's host cannot be used.
    #[error(transparent)]
    Host(Box<crate::host::HostError>),
    /// What was written does not match what was read.
    #[error("verify VM '{vm}' disk {disk}: {} {detail}", path.display())]
    Verify { vm: String, disk: String, path: PathBuf, detail: String },
    #[error("remove {what} of standby {standby}: {detail}")]
    Remove { standby: String, what: String, detail: String },
    /// The step failed, and undoing the steps before it failed too. The
    /// cause is told whole (it has no `source` of its own here).
    #[error("{}; undoing it failed too: {}", crate::error::chain(cause.as_ref()), failures.join("; "))]
    CleanupFailed { cause: Box<StandbyError>, failures: Vec<String> },
}

impl Failure for StandbyError {
    /// An unknown standby, or a primary without a snapshot to bring it to,
    /// is "not found"; a bad name or an unsupported interface is a bad
    /// command line.
    fn exit_code(&self) -> ExitCode {
        match self {
            StandbyError::Lookup(_) | StandbyError::UnknownStandby { .. } | StandbyError::NoSnapshot { .. } => {
                ExitCode::NotFound
            }
            StandbyError::Lock(LockError::Busy(_)) => ExitCode::Busy,
            StandbyError::BadName { .. } | StandbyError::Unsupported { .. } | StandbyError::ActiveSide { .. } => {
                ExitCode::Usage
            }
            StandbyError::InspectDomain { source, .. } | StandbyError::InspectNetwork { source, .. }
                if matches!(**source, HvError::Connect { .. }) =>
            {
                ExitCode::Unreachable
            }
            StandbyError::Host(e) if matches!(**e, crate::host::HostError::Unknown(_)) => ExitCode::NotFound,
            StandbyError::Host(_) => ExitCode::Unreachable,
            StandbyError::CleanupFailed { cause, .. } => cause.exit_code(),
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            StandbyError::Lookup(e) => e.hint(),
            StandbyError::Interrupted(_) => Some(crate::ops::interrupt::Interrupted::hint()),
            StandbyError::Lock(e) => e.hint(),
            StandbyError::Storage(e) => {
                e.hint().or_else(|| Some("check the standby's --storage folder and free space".into()))
            }
            StandbyError::Catalog(e) => e.hint(),
            StandbyError::BadName { .. } => Some(
                "use lower-case letters, digits and '-', at most 24, not the name of an environment or clone".into(),
            ),
            StandbyError::UnknownStandby { known, .. } => Some(if known.is_empty() {
                "there is no standby; make one with `envclone standby create ENV --name SB`".into()
            } else {
                format!("standbys: {}", known.join(", "))
            }),
            StandbyError::NoSnapshot { env, .. } => {
                Some(format!("take one with `envclone snapshot {env}`, then run `envclone standby sync`"))
            }
            StandbyError::Unsupported { .. } => None,
            StandbyError::StandbyRunning { domain, .. } => {
                Some(format!("shut {domain} down (`virsh shutdown {domain}`), then sync again"))
            }
            StandbyError::ActiveSide { env, .. } => {
                Some(format!("`envclone status {env}` shows the switch; `envclone failback {env}` ends it"))
            }
            StandbyError::MergePending { .. } => {
                Some("run `envclone recover` to finish that sync, then sync again".into())
            }
            StandbyError::SnapshotLacksDisk { .. } | StandbyError::ImageMissing { .. } => {
                Some("check `envclone snapshots ENV`; a newer complete snapshot may hold every disk".into())
            }
            StandbyError::InspectDomain { source, .. }
            | StandbyError::InspectNetwork { source, .. }
            | StandbyError::DefineNetwork { source, .. }
            | StandbyError::DefineDomain { source, .. } => source.hint(),
            StandbyError::Ship { source, .. } => source.hint(),
            StandbyError::Host(e) => e.hint(),
            StandbyError::Transfer { .. } => {
                Some("check free space on the standby's storage; nothing of the standby changed, sync again".into())
            }
            StandbyError::Verify { .. } => Some(
                "the copy was removed and the standby left at its previous point; sync again (check the storage \
                 for errors if it repeats)"
                    .into(),
            ),
            StandbyError::Remove { .. } => Some("fix the cause, then run the command again".into()),
            StandbyError::CleanupFailed { .. } => {
                Some("run `envclone recover`: it finishes or rolls back what is left".into())
            }
        }
    }
}

impl OperationError for StandbyError {
    const OPERATION: &'static str = "standby";

    fn into_shared(self) -> Result<Shared, Self> {
        match self {
            StandbyError::Lock(lock) => Ok(Shared::Lock(lock)),
            StandbyError::Lookup(lookup) => Ok(Shared::Lookup(lookup)),
            own => Err(own),
        }
    }
}

impl From<StorageError> for StandbyError {
    fn from(error: StorageError) -> Self {
        StandbyError::Storage(Box::new(error))
    }
}

impl From<crate::host::HostError> for StandbyError {
    fn from(error: crate::host::HostError) -> Self {
        StandbyError::Host(Box::new(error))
    }
}
