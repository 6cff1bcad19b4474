//! The controller's top-level error: one variant per module, each keeping
//! the module's typed error as its source so the binary can print the whole
//! chain once and map it to an exit code ([`crate::exit`]).

use crate::catalog::CatalogError;
use crate::config::{ConfigError, LookupError};
use crate::daemon::DaemonError;
use crate::guest::GuestError;
use crate::hypervisor::HvError;
use crate::lab::LabError;
use crate::ops::clone::CloneError;
use crate::ops::delete::DeleteError;
use crate::ops::failover::FailoverError;
use crate::ops::recover::RecoverError;
use crate::ops::restore::RestoreError;
use crate::ops::snapshot::SnapshotError;
use crate::ops::standby::StandbyError;
use crate::ops::{Busy, LockError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{context}")]
    Hypervisor {
        context: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("VM '{vm}'")]
    Guest {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error(transparent)]
    Lab(#[from] Box<LabError>),
    #[error(transparent)]
    Catalog(#[from] Box<CatalogError>),
    /// Another operation holds the environment (exit code 3).
    #[error(transparent)]
    Busy(#[from] Box<Busy>),
    /// The environment's lock could not be taken for a reason other than
    /// another holder; a busy lock becomes [`Error::Busy`].
    #[error(transparent)]
    Lock(Box<LockError>),
    /// `envclone snapshot` failed at a step; the variant names it.
    #[error("snapshot failed")]
    Snapshot(#[source] Box<SnapshotError>),
    #[error("{failed} of {total} live checks failed")]
    CheckFailed { failed: usize, total: usize },
    /// `envclone prune`: the other deletes ran, these did not.
    #[error("prune of '{env}': {failed} of {total} deletes failed (the first: snapshot {first})")]
    PruneIncomplete { env: String, failed: usize, total: usize, first: String },
    #[error("{0}")]
    Usage(String),
    /// `envclone daemon` and `envclone schedule run`.
    #[error(transparent)]
    Daemon(Box<DaemonError>),
    /// `envclone recover` could not run (its report was not made).
    #[error("recover failed")]
    Recover(#[source] Box<RecoverError>),
    /// `envclone recover` ran, and some undo, refusal or check failed
    /// (its report lists each).
    #[error("recovery incomplete, {} failure(s): {}", failures.len(), failures.join("; "))]
    RecoverIncomplete { failures: Vec<String> },
    /// `envclone restore` failed at a step; the variant names it.
    #[error("restore failed")]
    Restore(#[source] Box<RestoreError>),
    /// `envclone delete-snapshot` or `envclone prune` failed at a step; the
    /// variant names it. A deferred delete is not an error.
    #[error("delete failed")]
    Delete(#[source] Box<DeleteError>),
    /// `envclone clone` or `envclone destroy` failed at a step; the variant names it.
    #[error("{operation} failed")]
    Clone {
        operation: &'static str,
        #[source]
        source: Box<CloneError>,
    },
    /// `envclone standby ...` failed at a step; the variant names it.
    #[error("{operation} failed")]
    Standby {
        operation: &'static str,
        #[source]
        source: Box<StandbyError>,
    },
    /// `envclone failover ...` failed at a step; the variant names it.
    #[error("{operation} failed")]
    Failover {
        operation: &'static str,
        #[source]
        source: Box<FailoverError>,
    },
}

impl Error {
    /// A clone or destroy error: a busy lock and an unknown environment
    /// keep their own variants (and exit codes).
    pub fn clone_op(operation: &'static str) -> impl FnOnce(CloneError) -> Error {
        move |error| match error {
            CloneError::Lock(lock) => Error::from(lock),
            CloneError::Lookup(lookup) => Error::Lookup(lookup),
            other => Error::Clone { operation, source: Box::new(other) },
        }
    }
}

impl Error {
    /// A standby error: a busy lock and an unknown environment keep their
    /// own variants (and exit codes).
    pub fn standby_op(operation: &'static str) -> impl FnOnce(StandbyError) -> Error {
        move |error| match error {
            StandbyError::Lock(lock) => Error::from(lock),
            StandbyError::Lookup(lookup) => Error::Lookup(lookup),
            other => Error::Standby { operation, source: Box::new(other) },
        }
    }
}

impl Error {
    /// A failover error: a busy lock and an unknown environment keep their
    /// own variants (and exit codes).
    pub fn failover_op(operation: &'static str) -> impl FnOnce(FailoverError) -> Error {
        move |error| match error {
            FailoverError::Lock(lock) => Error::from(lock),
            FailoverError::Lookup(lookup) => Error::Lookup(lookup),
            other => Error::Failover { operation, source: Box::new(other) },
        }
    }
}

impl From<RecoverError> for Error {
    /// A busy lock and an unknown environment keep their own variants
    /// (and exit codes); everything else is a recover failure.
    fn from(error: RecoverError) -> Self {
        match error {
            RecoverError::Lock(lock) => Error::from(lock),
            RecoverError::Lookup(lookup) => Error::Lookup(lookup),
            other => Error::Recover(Box::new(other)),
        }
    }
}

impl From<RestoreError> for Error {
    /// A busy lock and an unknown environment keep their own variants
    /// (and exit codes); everything else is a restore failure.
    fn from(error: RestoreError) -> Self {
        match error {
            RestoreError::Lock(lock) => Error::from(lock),
            RestoreError::Lookup(lookup) => Error::Lookup(lookup),
            other => Error::Restore(Box::new(other)),
        }
    }
}

impl From<DeleteError> for Error {
    /// A busy lock and an unknown environment keep their own variants
    /// (and exit codes); everything else is a delete failure.
    fn from(error: DeleteError) -> Self {
        match error {
            DeleteError::Lock(lock) => Error::from(lock),
            DeleteError::Lookup(lookup) => Error::Lookup(lookup),
            other => Error::Delete(Box::new(other)),
        }
    }
}

impl From<DaemonError> for Error {
    fn from(error: DaemonError) -> Self {
        Error::Daemon(Box::new(error))
    }
}

impl From<LabError> for Error {
    fn from(error: LabError) -> Self {
        Error::Lab(Box::new(error))
    }
}

impl From<CatalogError> for Error {
    fn from(error: CatalogError) -> Self {
        Error::Catalog(Box::new(error))
    }
}

impl From<Busy> for Error {
    fn from(busy: Busy) -> Self {
        Error::Busy(Box::new(busy))
    }
}

impl From<LockError> for Error {
    fn from(error: LockError) -> Self {
        match error {
            LockError::Busy(busy) => Error::from(busy),
            other => Error::Lock(Box::new(other)),
        }
    }
}

impl From<SnapshotError> for Error {
    /// A busy lock and an unknown environment keep their own variants
    /// (and exit codes); everything else is a snapshot failure.
    fn from(error: SnapshotError) -> Self {
        match error {
            SnapshotError::Lock(lock) => Error::from(lock),
            SnapshotError::Lookup(lookup) => Error::Lookup(lookup),
            other => Error::Snapshot(Box::new(other)),
        }
    }
}

impl Error {
    pub fn hypervisor(context: impl Into<String>) -> impl FnOnce(HvError) -> Error {
        let context = context.into();
        move |source| Error::Hypervisor { context, source: Box::new(source) }
    }

    pub fn guest(vm: impl Into<String>) -> impl FnOnce(GuestError) -> Error {
        let vm = vm.into();
        move |source| Error::Guest { vm, source: Box::new(source) }
    }

    /// How to fix it, from the innermost error that knows.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Config(e) => e.hint(),
            Error::Lookup(e) => e.hint(),
            Error::Hypervisor { source, .. } => source.hint(),
            Error::Guest { source, .. } => source.hint(),
            Error::Lab(e) => e.hint(),
            Error::Catalog(e) => e.hint(),
            Error::Busy(busy) => busy.hint(),
            Error::Lock(e) => e.hint(),
            Error::Snapshot(e) => e.hint(),
            Error::CheckFailed { .. } => Some("each failed check above says what to fix".into()),
            Error::PruneIncomplete { env, .. } => Some(format!(
                "each failed delete above says why; `envclone recover {env}` finishes or rolls back an interrupted \
                 one, then `envclone prune {env}` again retries what is left"
            )),
            Error::Usage(_) => Some("see `envclone --help`".into()),
            Error::Daemon(e) => e.hint(),
            Error::Delete(e) => e.hint(),
            Error::Recover(e) => e.hint(),
            Error::RecoverIncomplete { .. } => Some(
                "each failure says what to fix; then run `envclone recover` again (it retries what is left)".into(),
            ),
            Error::Restore(e) => e.hint(),
            Error::Clone { source, .. } => source.hint(),
            Error::Standby { source, .. } => source.hint(),
            Error::Failover { source, .. } => source.hint(),
        }
    }
}

/// "outer: inner: innermost": the one place an error chain is flattened
/// into a line (messages, JSON reports, journal entries).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
