//! [`LocalHost`]: the host the controller runs on, through its own libvirt
//! connection, file system and tools.

mod convert;
mod net;
mod storage;

pub use self::net::IpCommand;
pub use self::storage::LocalStorage;
use super::{Host, HostNet, Storage, LOCAL};
use crate::hypervisor::Hypervisor;

#[derive(Debug)]
pub struct LocalHost<H> {
    hv: H,
}

impl<H: Hypervisor> LocalHost<H> {
    /// The controller's host, its libvirt reached through `hv`.
    pub fn new(hv: H) -> Self {
        LocalHost { hv }
    }
}

impl<H: Hypervisor> Host for LocalHost<H> {
    fn name(&self) -> &str {
        LOCAL
    }

    fn hypervisor(&self) -> &dyn Hypervisor {
        &self.hv
    }

    fn storage(&self) -> &dyn Storage {
        &LocalStorage
    }

    fn net(&self) -> &dyn HostNet {
        &IpCommand
    }
}
