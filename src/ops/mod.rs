//! Multi-step operations on whole environments (snapshot, restore, delete,
//! clone, destroy, recover), one folder or file per operation.
//!
//! Every operation owns its environment for its whole run through an
//! [`EnvLock`]: a second caller is refused with a typed [`Busy`] (exit code
//! 3) rather than queued. Its steps are journaled in the catalog
//! ([`crate::catalog`]) before they run, so `envclone recover` can finish or
//! roll back what a crash left behind.

pub mod clone;
pub mod context;
pub mod crashpoint;
pub mod delete;
pub mod destroy;
pub mod environments;
pub mod failover;
pub mod interrupt;
pub mod journal;
pub mod lock;
pub mod parallel;
pub mod prune;
pub mod recover;
pub mod restore;
pub mod shared;
pub mod snapshot;
pub mod standby;
pub mod transfer;

pub use self::lock::{Busy, EnvLock, LockError, LockHolder};
