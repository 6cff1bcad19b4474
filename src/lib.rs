//! envclone: live-clone, snapshot and fail over whole multi-VM environments
//! on libvirt/QEMU hosts.
//!
//! Where things live:
//! - [`config`]: the TOML configuration, its types and its validation.
//! - [`hypervisor`]: the narrow trait through which everything talks to
//!   libvirt/QEMU, its `virt` implementation and a fake for unit tests.
//! - [`guest`]: reaching a VM over SSH (through a network namespace when
//!   needed) and calling `envclone-agent` in it.
//! - [`host`]: the `Host` port, a KVM host envclone works on: its
//!   hypervisor, its image storage and its tools, found by name.
//! - [`lab`]: the throwaway test lab (namespace, private libvirtd, tiny guests).
//! - [`catalog`]: the SQLite catalog of snapshots, images and what needs
//!   them, and the journal of multi-step operations.
//! - [`ops`]: multi-step operations on environments and the per-environment
//!   lock that makes them exclusive.
//! - [`retention`] and [`schedule`]: which snapshots to keep and when
//!   schedules fire (pure functions for the daemon and `prune`).
//! - [`daemon`]: `envclone daemon` runs the schedules (tokio), records each
//!   run in the catalog and applies retention; `envclone status` reports.
//! - [`commands`]: one file per CLI subcommand; the binary stays thin.
//! - [`error`] and [`exit`]: leaves every module's error builds on (each
//!   says its own exit code and hint); [`app_error`]: the top-level
//!   [`Error`] the commands and the daemon return.

pub mod app_error;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod error;
pub mod exit;
pub mod guest;
pub mod host;
pub mod hypervisor;
pub mod lab;
pub mod ops;
pub mod retention;
pub mod schedule;
#[cfg(test)]
pub(crate) mod test_support;
pub mod wait;

pub use app_error::{Error, Result};
