//! The `Host` port: a KVM host envclone works on.
//!
//! A host is three things an operation needs, each behind its own narrow
//! trait: its [`Hypervisor`] (libvirt there), its [`Storage`] (the disk and
//! memory images in its file systems, and `qemu-img` run there) and its
//! [`HostNet`] (network namespaces and links for clone gateways). An
//! operation reaches a host only through this port, never through a local
//! path or a local tool, so the same operation runs against the
//! controller's own host ([`LocalHost`]) or another one.
//!
//! Hosts are found by name in one registry, [`Hosts`]; the controller's own
//! is [`LOCAL`]. Test fakes live in `crate::test_support`.
//!
//! ```text
//!   commands ──> Hosts::get(name) ──> &dyn Host ──┬─> hypervisor()  libvirt
//!                                                 ├─> storage()     files, qemu-img
//!                                                 └─> net()         ip netns, veth
//! ```

mod local;
pub mod remote;
pub(crate) mod net;
mod qemu_img;
pub mod ship;
mod storage;
pub mod tool;

use std::collections::BTreeMap;

pub use self::local::{IpCommand, LocalHost, LocalStorage};
pub use self::remote::RemoteHost;
pub use self::qemu_img::parse_chain;
pub use self::net::{HostNet, HostNetError};
pub use self::storage::{Copied, CopyProgress, Extent, FileStamp, RangeWriter, Storage, StorageError};
pub use self::tool::ToolError;
use crate::config::LookupError;
use crate::hypervisor::Hypervisor;

/// The name of the controller's own host.
pub const LOCAL: &str = "local";

/// See the [module documentation](self).
pub trait Host: Send + Sync + std::fmt::Debug {
    /// The host's name in the configuration (`local` for the controller's).
    fn name(&self) -> &str;
    fn hypervisor(&self) -> &dyn Hypervisor;
    fn storage(&self) -> &dyn Storage;
    fn net(&self) -> &dyn HostNet;
}

/// The hosts a command may work on, by name.
#[derive(Debug, Default)]
pub struct Hosts<'h> {
    by_name: BTreeMap<String, &'h dyn Host>,
}

impl<'h> Hosts<'h> {
    pub fn new() -> Self {
        Hosts::default()
    }

    /// Adds `host` under its own name (replacing one of that name).
    pub fn with(mut self, host: &'h dyn Host) -> Self {
        self.by_name.insert(host.name().to_owned(), host);
        self
    }

    pub fn get(&self, name: &str) -> Result<&'h dyn Host, LookupError> {
        self.by_name.get(name).copied().ok_or_else(|| LookupError::UnknownHost {
            name: name.to_owned(),
            known: self.by_name.keys().cloned().collect(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::FakeHypervisor;
    use crate::test_support::{FakeHost, FakeNet, FakeStorage};

    #[test]
    fn a_host_is_found_by_name_and_an_unknown_one_is_refused_naming_the_known() {
        let (hv, storage, net) = (FakeHypervisor::new(), FakeStorage::default(), FakeNet::default());
        let local = FakeHost::new(&hv, &storage, &net);
        let hosts = Hosts::new().with(&local);

        assert_eq!(hosts.get(LOCAL).unwrap().name(), LOCAL);
        assert_eq!(hosts.names().collect::<Vec<_>>(), [LOCAL]);
        let error = hosts.get("b").unwrap_err();
        assert_eq!(error, LookupError::UnknownHost { name: "b".into(), known: vec![LOCAL.into()] });
    }
}
