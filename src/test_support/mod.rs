//! Test fakes shared by every module's unit tests: one of each port.
//!
//! - [`FakeHost`]: a [`crate::host::Host`] made of a `FakeHypervisor`, a
//!   [`FakeStorage`] and a [`FakeNet`] the test keeps and inspects.
//! - [`FakeStorage`]: image files in memory, recording each call.
//! - [`FakeNet`]: network namespaces and links in memory.
//! - The guest agents port's fakes ([`FakeQuiescer`], [`ReadyAgents`],
//!   [`FakeRestoreAgents`], [`FakeRecoveryAgents`]): scripted agents with
//!   named scenarios, logging what they were asked.

mod agents;
mod net;
mod storage;

pub(crate) use self::agents::{FakeQuiescer, FakeRecoveryAgents, FakeRestoreAgents, ReadyAgents};
pub(crate) use self::net::FakeNet;
pub(crate) use self::storage::{FakeStorage, Presume};

use crate::host::{Host, HostNet, Storage, LOCAL};
use crate::hypervisor::{FakeHypervisor, Hypervisor};

/// The controller's host, in memory; the parts stay the test's to inspect.
/// Its storage is any [`Storage`]: a [`FakeStorage`], or the real
/// `LocalStorage` on a temporary directory where a test wants real files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FakeHost<'t> {
    pub hv: &'t FakeHypervisor,
    pub storage: &'t dyn Storage,
    pub net: &'t FakeNet,
    name: &'static str,
}

impl<'t> FakeHost<'t> {
    /// The controller's own host, `local`.
    pub(crate) fn new(hv: &'t FakeHypervisor, storage: &'t dyn Storage, net: &'t FakeNet) -> Self {
        FakeHost { hv, storage, net, name: LOCAL }
    }

    /// The same host under another name: a host of `[hosts]`.
    pub(crate) fn named(self, name: &'static str) -> Self {
        FakeHost { name, ..self }
    }
}

impl Host for FakeHost<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn hypervisor(&self) -> &dyn Hypervisor {
        self.hv
    }

    fn storage(&self) -> &dyn Storage {
        self.storage
    }

    fn net(&self) -> &dyn HostNet {
        self.net
    }
}
