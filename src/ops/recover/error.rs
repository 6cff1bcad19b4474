//! What stops `envclone recover` as a whole. An undo or a check that fails
//! does not: it is recorded in the report (and the journal) and the rest
//! goes on; the command then exits 1 naming every failure.

use crate::catalog::CatalogError;
use crate::config::LookupError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::ops::shared::{OperationError, Shared};
use crate::ops::LockError;

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The environment named is held by another operation (busy), or its
    /// lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("catalog")]
    Catalog(#[from] CatalogError),
    /// The host an environment's (or a standby's) work is on cannot be used.
    #[error(transparent)]
    Host(Box<crate::host::HostError>),
}

impl From<crate::host::HostError> for RecoverError {
    fn from(error: crate::host::HostError) -> Self {
        RecoverError::Host(Box::new(error))
    }
}

impl Failure for RecoverError {
    fn exit_code(&self) -> ExitCode {
        match self {
            RecoverError::Lookup(_) => ExitCode::NotFound,
            RecoverError::Lock(LockError::Busy(_)) => ExitCode::Busy,
            RecoverError::Lock(_) | RecoverError::Catalog(_) => ExitCode::Failed,
            RecoverError::Host(_) => ExitCode::Unreachable,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            RecoverError::Lookup(e) => e.hint(),
            RecoverError::Lock(e) => e.hint(),
            RecoverError::Catalog(e) => e.hint(),
            RecoverError::Host(e) => e.hint(),
        }
    }
}

impl OperationError for RecoverError {
    const OPERATION: &'static str = "recover";

    fn into_shared(self) -> Result<Shared, Self> {
        match self {
            RecoverError::Lock(lock) => Ok(Shared::Lock(lock)),
            RecoverError::Lookup(lookup) => Ok(Shared::Lookup(lookup)),
            own => Err(own),
        }
    }
}
