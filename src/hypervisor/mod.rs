//! The hypervisor adapter: the one narrow door to libvirt/QEMU.
//!
//! Orchestration speaks in environment terms through [`Hypervisor`] and the
//! typed definitions [`DomainDef`] and [`NetworkDef`]; it never handles XML
//! strings. [`LibvirtHypervisor`] implements the trait with the `virt` crate,
//! [`FakeHypervisor`] in memory for unit tests, and [`qmp()`] runs typed QMP
//! commands through either.
//!
//! Every method blocks: async callers run them on `spawn_blocking`.

mod error;
#[cfg(test)]
#[cfg(test)]
pub mod fake;
mod ids;
mod libvirt;
mod model;
mod qmp;
pub mod xml;

pub use error::{HvError, LibvirtCode, LibvirtError};
#[cfg(test)]
#[cfg(test)]
pub use fake::{Call, FakeHypervisor, FakeStep};
pub use ids::{random_mac, random_uuid};
pub use libvirt::LibvirtHypervisor;
pub use model::{BlockCommit, BlockJobInfo, BlockJobKind, Domain, DomainState, ExternalSnapshot, Network};
pub use qmp::qmp;
pub use xml::{DirectBootSpec, Disk, DomainDef, FenceStamp, Interface, NetworkDef, NetworkSpec, NicSpec};

use std::path::Path;

/// What orchestration needs from a hypervisor, and nothing more.
///
/// Names are libvirt names; `disk` is a guest target such as `vda`. Errors
/// name the step that failed ([`HvError`]). No method has a default body:
/// an implementation that can't do something returns
/// [`HvError::Unsupported`].
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    // --- domains ---
    /// The domain and its current (live if running) definition.
    fn domain(&self, name: &str) -> Result<Domain, HvError>;
    /// Names of all domains, defined or transient, running or not.
    fn domain_names(&self) -> Result<Vec<String>, HvError>;
    /// Defines (or redefines, same name and UUID) a persistent domain and
    /// returns it as libvirt now reports it, with any UUID or MACs it chose.
    fn define_domain(&self, def: &DomainDef) -> Result<Domain, HvError>;
    fn start_domain(&self, name: &str) -> Result<(), HvError>;
    /// Hard stop; succeeds when the domain is already off.
    fn destroy_domain(&self, name: &str) -> Result<(), HvError>;
    /// Removes the persistent definition together with its snapshot and
    /// checkpoint metadata, managed save image and NVRAM file. A running
    /// domain keeps running as a transient one.
    fn undefine_domain(&self, name: &str) -> Result<(), HvError>;
    fn set_autostart(&self, name: &str, on: bool) -> Result<(), HvError>;
    /// Moves the domain's interface with MAC `mac` onto the libvirt network
    /// `network` with its link up: in the running guest (the NIC stays, only
    /// its tap moves to the other bridge) and in the persistent definition.
    fn move_interface(&self, domain: &str, mac: &str, network: &str) -> Result<(), HvError>;

    // --- networks ---
    fn network(&self, name: &str) -> Result<Network, HvError>;
    /// Names of all networks, active or not.
    fn network_names(&self) -> Result<Vec<String>, HvError>;
    /// Defines a persistent network and returns it as libvirt reports it.
    fn define_network(&self, def: &NetworkDef) -> Result<Network, HvError>;
    fn start_network(&self, name: &str) -> Result<(), HvError>;
    fn destroy_network(&self, name: &str) -> Result<(), HvError>;
    fn undefine_network(&self, name: &str) -> Result<(), HvError>;

    // --- snapshots and memory ---
    /// Takes an external snapshot; afterwards the listed disks write to
    /// their overlays. Disks not listed are left out.
    fn create_external_snapshot(&self, domain: &str, snap: &ExternalSnapshot) -> Result<(), HvError>;
    /// Saves memory and device state to `path` and stops the domain.
    fn save_memory(&self, domain: &str, path: &Path) -> Result<(), HvError>;
    /// Starts a domain from a save image, optionally with an edited
    /// definition (libvirt requires the same name and UUID as the image's).
    fn restore_memory(&self, path: &Path, def: Option<&DomainDef>) -> Result<(), HvError>;

    // --- block jobs ---
    /// Starts a commit job on `disk`; see [`BlockCommit`].
    fn block_commit(&self, domain: &str, disk: &str, opts: &BlockCommit) -> Result<(), HvError>;
    /// The block job running on `disk`, if any.
    fn block_job(&self, domain: &str, disk: &str) -> Result<Option<BlockJobInfo>, HvError>;
    /// Ends a ready active commit (or copy) by switching the disk to the
    /// job's destination.
    fn block_job_pivot(&self, domain: &str, disk: &str) -> Result<(), HvError>;
    /// Cancels the job; the disk stays on its current image.
    fn block_job_abort(&self, domain: &str, disk: &str) -> Result<(), HvError>;

    // --- QMP ---
    /// Sends one QMP command (JSON text) to the domain's QEMU and returns
    /// QEMU's reply (JSON text, a `return` or an `error`). See [`qmp()`].
    fn qmp_raw(&self, domain: &str, command_json: &str) -> Result<String, HvError>;
}
