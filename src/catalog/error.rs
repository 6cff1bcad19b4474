//! What can go wrong in the catalog, one variant per step, and the typed
//! refusal to delete an image that something still needs.

use std::fmt;
use std::path::PathBuf;

use super::model::{Dependent, ImageId, SnapshotId};
use crate::error::Failure;
use crate::exit::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot create the state directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the catalog {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot set {setting} on the catalog")]
    Configure {
        setting: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog migration to schema version {version} ({description}) failed")]
    Migrate {
        version: u32,
        description: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the catalog {} has schema version {found}, newer than the {supported} this envclone knows", path.display())]
    NewerSchema { path: PathBuf, found: u32, supported: u32 },
    #[error("cannot {what} in the catalog")]
    Query {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{what} is not in the catalog")]
    NotFound { what: String },
    #[error("{what} is already in the catalog")]
    AlreadyExists { what: String },
    #[error("cannot {what}: the catalog holds {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("path {} is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("{what} cannot go from {from} to {to}")]
    InvalidTransition { what: String, from: &'static str, to: &'static str },
    #[error("operation {operation} is {state}; it takes no more steps")]
    OperationNotRunning { operation: i64, state: &'static str },
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A new operation on an environment that an interrupted one (its
    /// owner died mid-run) left half done: refused, nothing was done.
    #[error(
        "environment '{env}' has an interrupted {kind} (operation {operation}, started {started_at}, \
         last step {last_step}): it must be finished or rolled back first"
    )]
    Interrupted { env: String, operation: i64, kind: &'static str, started_at: String, last_step: String },
}

impl CatalogError {
    /// A `map_err` adapter for a failed statement.
    /// Values that do not convert (an unknown state, a bad time) mean the
    /// catalog holds something this build did not write: corrupt.
    pub(crate) fn query(what: &'static str) -> impl FnOnce(rusqlite::Error) -> CatalogError {
        move |source| match source {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => {
                CatalogError::Corrupt { what, detail: source.to_string() }
            }
            source => CatalogError::Query { what, source },
        }
    }

    /// Like [`CatalogError::query`], but a UNIQUE violation becomes
    /// [`CatalogError::AlreadyExists`] naming `thing`.
    pub(crate) fn insert(what: &'static str, thing: String) -> impl FnOnce(rusqlite::Error) -> CatalogError {
        use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
        move |source| match source.sqlite_error().map(|error| error.extended_code) {
            Some(SQLITE_CONSTRAINT_UNIQUE | SQLITE_CONSTRAINT_PRIMARYKEY) => {
                CatalogError::AlreadyExists { what: thing }
            }
            _ => CatalogError::query(what)(source),
        }
    }
}

impl Failure for CatalogError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CatalogError::NotFound { .. } => ExitCode::NotFound,
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            CatalogError::CreateDir { .. } | CatalogError::Open { .. } => {
                Some("check `controller.state_dir` in the config and that envclone runs as root".into())
            }
            CatalogError::NewerSchema { .. } => Some(
                "a newer envclone wrote this catalog: run that version, or restore the catalog from a backup".into(),
            ),
            CatalogError::Migrate { .. } => {
                Some("the catalog was left at its previous version; fix the cause and run the command again".into())
            }
            CatalogError::Query { source, .. }
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
            {
                Some("another envclone process holds the catalog; try again".into())
            }
            CatalogError::NotFound { .. } => Some("`envclone snapshots ENV` lists what the catalog holds".into()),
            CatalogError::Corrupt { .. } => {
                Some("the catalog was changed by hand or by a newer envclone; restore it from a backup".into())
            }
            CatalogError::InvalidTransition { .. } | CatalogError::OperationNotRunning { .. } => {
                Some("this is a bug in envclone; `envclone recover` finishes or rolls back the operation".into())
            }
            CatalogError::Interrupted { env, .. } => Some(format!(
                "run `envclone recover {env}` (it finishes or rolls back the interrupted operation), then this \
                 command again"
            )),
            CatalogError::Refused(_) => Some(
                "remove what still needs it first (clone, standby or later snapshot); until then it is kept".into(),
            ),
            CatalogError::Query { .. }
            | CatalogError::Configure { .. }
            | CatalogError::AlreadyExists { .. }
            | CatalogError::NonUtf8Path { .. } => None,
        }
    }
}

/// Why an image may not be deleted (or changed) now. Deleting it is not an
/// error of the catalog but a decision the caller defers and reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    pub image: ImageId,
    pub path: PathBuf,
    /// Never empty.
    pub reasons: Vec<RefusalReason>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// A clone, standby or snapshot registered that it needs the image.
    NeededBy(Dependent),
    /// Another image uses it as its backing file: envclone never deletes a
    /// parent image.
    BacksImage { child: ImageId, path: PathBuf },
    /// It belongs to a snapshot that still exists (or is being taken).
    PartOfSnapshot { snapshot: SnapshotId, name: String },
    /// A VM's original disk: envclone never deletes those.
    BaseImage,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is still needed: ", self.path.display())?;
        for (index, reason) in self.reasons.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::NeededBy(dependent) => write!(f, "{} '{}' uses it", dependent.kind, dependent.name),
            RefusalReason::BacksImage { path, .. } => write!(f, "it is the backing file of {}", path.display()),
            RefusalReason::PartOfSnapshot { name, .. } => write!(f, "it belongs to snapshot '{name}'"),
            RefusalReason::BaseImage => f.write_str("it is a VM's base image"),
        }
    }
}
