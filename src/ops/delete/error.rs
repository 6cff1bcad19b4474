//! What deleting a snapshot (and pruning) can fail with: one variant per
//! step, naming the VM, disk or file concerned. A delete that pins forbid
//! is not an error: it is deferred and reported (`DeleteReport::deferred`).
//! Each variant picks its exit code ([`Failure::exit_code`]).

use std::path::PathBuf;

use crate::catalog::CatalogError;
use crate::config::LookupError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::host::StorageError as FileError;
use crate::hypervisor::HvError;
use crate::ops::shared::{OperationError, Shared};
use crate::ops::snapshot::save_image::ReadSaveImageError;
use crate::ops::LockError;

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// SIGTERM or SIGINT before a step: the operation rolled back.
    #[error(transparent)]
    Interrupted(#[from] crate::ops::interrupt::Interrupted),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Another operation holds the environment, or its lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("environment '{env}' has no snapshot named {snapshot:?}")]
    UnknownSnapshot { env: String, snapshot: String },
    #[error("snapshot '{snapshot}' of environment '{env}' is still being taken")]
    InProgress { env: String, snapshot: String },
    #[error("VM '{vm}': cannot read the live definition of domain {domain}")]
    InspectDomain {
        vm: String,
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    /// The catalog and the chain libvirt or qemu-img reports disagree:
    /// nothing is merged on a chain envclone does not understand.
    #[error(
        "VM '{vm}' disk {disk}: the catalog says the chain is {} but {seen_by} says {}",
        show(expected),
        show(found)
    )]
    ChainMismatch { vm: String, disk: String, seen_by: &'static str, expected: Vec<PathBuf>, found: Vec<PathBuf> },
    #[error("VM '{vm}' disk {disk}: a block job already runs on it")]
    BlockJobRunning { vm: String, disk: String },
    #[error("VM '{vm}' disk {disk}: cannot commit {} into {}", top.display(), base.display())]
    Commit {
        vm: String,
        disk: String,
        top: PathBuf,
        base: PathBuf,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}' disk {disk}: the commit job of {} ended without merging it", top.display())]
    CommitVanished { vm: String, disk: String, top: PathBuf },
    #[error("VM '{vm}' disk {disk}: the commit job of {} did not finish within {} s", top.display(), waited_s)]
    CommitTimeout { vm: String, disk: String, top: PathBuf, waited_s: u64 },
    #[error("VM '{vm}' disk {disk}: cannot pull {} into {}", removed.display(), into.display())]
    Pull {
        vm: String,
        disk: String,
        removed: PathBuf,
        into: PathBuf,
        #[source]
        source: Box<FileError>,
    },
    #[error("VM '{vm}' disk {disk}: cannot read the chain of {}", path.display())]
    ReadChain {
        vm: String,
        disk: String,
        path: PathBuf,
        #[source]
        source: Box<FileError>,
    },
    #[error("cannot rewrite the memory image {} to name {}", path.display(), to.display())]
    RewriteMemory { path: PathBuf, to: PathBuf, detail: String },
    #[error("cannot read the memory image {}", path.display())]
    ReadMemory {
        path: PathBuf,
        #[source]
        source: ReadSaveImageError,
    },
    #[error("cannot remove a merged image")]
    RemoveFile(#[source] Box<FileError>),
    #[error("catalog")]
    Catalog(#[from] CatalogError),
    /// The delete failed after the snapshot was marked deleted, and undoing
    /// its last step failed too.
    #[error("{}; AND cleaning up failed: {}", crate::error::chain(cause.as_ref()), failures.join("; "))]
    CleanupFailed { cause: Box<DeleteError>, failures: Vec<String> },
}

fn show(chain: &[PathBuf]) -> String {
    let parts: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
    format!("[{}]", parts.join(" <- "))
}

impl DeleteError {
    /// Whether the failure is a lookup of something that does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            DeleteError::UnknownSnapshot { .. } | DeleteError::Lookup(_) => true,
            DeleteError::CleanupFailed { cause, .. } => cause.is_not_found(),
            _ => false,
        }
    }
}

impl Failure for DeleteError {
    /// An unknown snapshot is "not found"; a deferred delete is no error at all.
    fn exit_code(&self) -> ExitCode {
        match self {
            DeleteError::Lookup(_) | DeleteError::UnknownSnapshot { .. } => ExitCode::NotFound,
            DeleteError::Lock(LockError::Busy(_)) => ExitCode::Busy,
            DeleteError::InspectDomain { source, .. } if matches!(**source, HvError::Connect { .. }) => {
                ExitCode::Unreachable
            }
            DeleteError::CleanupFailed { cause, .. } => cause.exit_code(),
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        use DeleteError::*;
        let hint = match self {
            Lookup(source) => return source.hint(),
            Interrupted(_) => crate::ops::interrupt::Interrupted::hint(),
            Lock(source) => return source.hint(),
            UnknownSnapshot { env, .. } => format!("`envclone snapshots {env}` lists its snapshots"),
            InProgress { .. } => {
                "wait for the snapshot to finish; if its process died, `envclone recover` finishes it".into()
            }
            InspectDomain { source, .. } => return source.hint(),
            ChainMismatch { .. } => {
                "nothing was merged; if an operation was interrupted run `envclone recover`, else check the \
                 domain with `virsh domblklist DOMAIN` and `qemu-img info --backing-chain`"
                    .into()
            }
            BlockJobRunning { .. } => {
                "wait for it (`virsh blockjob DOMAIN DISK --info`) or abort it (`--abort`), then run the command again"
                    .into()
            }
            Commit { .. } | CommitVanished { .. } | CommitTimeout { .. } | Pull { .. } | ReadChain { .. } => {
                "the chain is left valid and the snapshot is marked deleted; run `envclone delete-snapshot ENV \
                 SNAPSHOT` or `envclone prune ENV` again to finish merging its images"
                    .into()
            }
            RewriteMemory { .. } | ReadMemory { .. } | RemoveFile(_) => {
                "the merge itself is done; fix the file's problem, then run the delete again to finish".into()
            }
            Catalog(source) => return source.hint(),
            CleanupFailed { .. } => "fix what failed, then `envclone recover`".into(),
        };
        Some(hint)
    }
}

impl OperationError for DeleteError {
    const OPERATION: &'static str = "delete";

    fn into_shared(self) -> Result<Shared, Self> {
        match self {
            DeleteError::Lock(lock) => Ok(Shared::Lock(lock)),
            DeleteError::Lookup(lookup) => Ok(Shared::Lookup(lookup)),
            own => Err(own),
        }
    }
}
