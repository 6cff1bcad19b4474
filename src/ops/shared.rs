//! What every operation's error may be besides a failure of its own steps:
//! its environment's lock could not be taken, or the environment named is
//! unknown. The top-level error shows these as they are, with their own
//! exit codes, rather than as "snapshot failed".

use crate::config::LookupError;
use crate::error::Failure;
use crate::ops::LockError;

/// A failure every operation shares.
#[derive(Debug)]
pub enum Shared {
    Lock(LockError),
    Lookup(LookupError),
}

/// An operation's error: its own steps' failures, and the [`Shared`] ones.
pub trait OperationError: Failure + Sized {
    /// The command it fails when none is named: "snapshot" in "snapshot failed".
    const OPERATION: &'static str;

    /// The shared failure it is, or itself when it is the operation's own.
    fn into_shared(self) -> Result<Shared, Self>;
}
