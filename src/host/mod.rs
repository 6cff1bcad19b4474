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

pub mod gate;
mod local;
pub(crate) mod net;
mod qemu_img;
pub mod remote;
pub mod ship;
mod storage;
pub mod tool;

use std::collections::BTreeMap;
use std::sync::OnceLock;

pub use self::local::{IpCommand, LocalHost, LocalStorage};
pub use self::net::{HostNet, HostNetError};
pub use self::qemu_img::parse_chain;
pub use self::remote::RemoteHost;
pub use self::storage::{Copied, CopyProgress, Extent, FileStamp, RangeWriter, Storage, StorageError};
pub use self::tool::ToolError;
use crate::config::LookupError;
use crate::hypervisor::{HvError, Hypervisor};

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

/// Opens a host when first asked for: a command that works on one host
/// does not fail because another is down.
pub type OpenHost<'h> = Box<dyn Fn() -> Result<Box<dyn Host + 'h>, HvError> + Send + Sync + 'h>;

enum Entry<'h> {
    Ready(&'h dyn Host),
    Lazy { open: OpenHost<'h>, opened: OnceLock<Box<dyn Host + 'h>> },
}

/// A host could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Unknown(#[from] LookupError),
    #[error("cannot reach host {host}")]
    Unreachable {
        host: String,
        #[source]
        source: Box<HvError>,
    },
}

impl HostError {
    pub fn hint(&self) -> Option<String> {
        match self {
            HostError::Unknown(lookup) => crate::error::Failure::hint(lookup),
            HostError::Unreachable { host, .. } => Some(format!(
                "is host {host} up and its libvirtd answering? `envclone check --live` tries every host and says \
                 which part fails"
            )),
        }
    }
}

/// The hosts an operation may work on, by name: how an operation reaches
/// a host other than its environment's (a standby's, a clone's).
pub trait Hosts {
    /// The host `name`; an unknown name, or a host that cannot be opened,
    /// is an error.
    fn get(&self, name: &str) -> Result<&dyn Host, HostError>;
    /// Every host's name, `local` included.
    fn names(&self) -> Vec<String>;
}

/// The [`Hosts`] of a command: each opened when first asked for (and tried
/// again at the next call if it could not be).
#[derive(Default)]
pub struct HostRegistry<'h> {
    by_name: BTreeMap<String, Entry<'h>>,
}

impl std::fmt::Debug for HostRegistry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl<'h> HostRegistry<'h> {
    pub fn new() -> Self {
        HostRegistry::default()
    }

    /// Adds `host` under its own name (replacing one of that name).
    pub fn with(mut self, host: &'h dyn Host) -> Self {
        self.by_name.insert(host.name().to_owned(), Entry::Ready(host));
        self
    }

    /// Adds the host `name`, opened by `open` when first asked for.
    pub fn with_lazy(mut self, name: &str, open: OpenHost<'h>) -> Self {
        self.by_name.insert(name.to_owned(), Entry::Lazy { open, opened: OnceLock::new() });
        self
    }
}

impl Hosts for HostRegistry<'_> {
    fn get(&self, name: &str) -> Result<&dyn Host, HostError> {
        let entry = self.by_name.get(name).ok_or_else(|| LookupError::UnknownHost {
            name: name.to_owned(),
            known: self.by_name.keys().cloned().collect(),
        })?;
        match entry {
            Entry::Ready(host) => Ok(*host),
            Entry::Lazy { open, opened } => {
                if let Some(host) = opened.get() {
                    return Ok(host.as_ref());
                }
                let host = open()
                    .map_err(|source| HostError::Unreachable { host: name.to_owned(), source: Box::new(source) })?;
                Ok(opened.get_or_init(|| host).as_ref())
            }
        }
    }

    fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
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
        let hosts = HostRegistry::new().with(&local);

        assert_eq!(hosts.get(LOCAL).unwrap().name(), LOCAL);
        assert_eq!(hosts.names(), [LOCAL]);
        let error = hosts.get("b").unwrap_err();
        assert!(
            matches!(error, HostError::Unknown(LookupError::UnknownHost { ref name, ref known })
            if name == "b" && known == &[LOCAL]),
            "{error:?}"
        );
    }

    #[test]
    fn a_lazy_host_is_opened_once_when_first_asked_for_and_a_failure_is_tried_again() {
        let (hv, storage, net) = (FakeHypervisor::new(), FakeStorage::default(), FakeNet::default());
        let opened = std::sync::atomic::AtomicUsize::new(0);
        let up = std::sync::atomic::AtomicBool::new(false);
        let hosts = HostRegistry::new().with_lazy(
            "b",
            Box::new(|| {
                opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if !up.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(HvError::Connect {
                        uri: "qemu+libssh2://b/system".into(),
                        source: crate::hypervisor::LibvirtError::test("down"),
                    });
                }
                Ok(Box::new(FakeHost::new(&hv, &storage, &net).named("b")) as Box<dyn Host>)
            }),
        );

        let error = hosts.get("b").unwrap_err();
        assert!(matches!(error, HostError::Unreachable { ref host, .. } if host == "b"), "{error:?}");
        assert!(error.hint().unwrap().contains("check --live"));
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(hosts.get("b").unwrap().name(), "b");
        assert_eq!(hosts.get("b").unwrap().name(), "b");
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
