//! envclone: live-clone, snapshot and fail over whole multi-VM environments
//! on libvirt/QEMU hosts.
//!
//! Where things live:
//! - [`config`]: the TOML configuration, its types and its validation.
//! - [`hypervisor`]: the narrow trait through which everything talks to
//!   libvirt/QEMU, its `virt` implementation and a fake for unit tests.
//! - [`guest`]: reaching a VM over SSH (through a network namespace when
//!   needed) and calling `envclone-agent` in it.
//! - [`lab`]: the throwaway test lab (namespace, private libvirtd, tiny guests).
//! - [`commands`]: one file per CLI subcommand; the binary stays thin.

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod exit;
pub mod guest;
pub mod hypervisor;
pub mod lab;
pub mod wait;

pub use error::{Error, Result};
