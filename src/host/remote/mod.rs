//! [`RemoteHost`]: a KVM host other than the controller's, reached the way
//! its operators already reach it: libvirt's remote protocol for the
//! hypervisor (`qemu+libssh2://`, `qemu+ssh://`, `qemu+tls://`) and one SSH
//! login for its storage and network tools. Nothing of envclone's runs there.
//!
//! The libvirt connection is made when the host is opened; the SSH login
//! when storage or network work first needs it, so a command that only
//! asks libvirt works while sshd is down, and says so when it is needed.

mod net;
mod shell;
mod storage;

use std::sync::Arc;
use std::time::Duration;

pub use self::net::SshNet;
pub use self::shell::{SshShell, LONG_WORK};
pub use self::storage::SshStorage;
use super::{Host, HostNet, Storage};
use crate::config::{Controller, HostSettings};
use crate::guest::{GuestError, SshOptions, SshTarget};
use crate::hypervisor::{HvError, Hypervisor, LibvirtHypervisor};

#[derive(Debug)]
pub struct RemoteHost {
    name: String,
    hv: LibvirtHypervisor,
    storage: SshStorage,
    net: SshNet,
}

impl RemoteHost {
    /// Connects to the host's libvirt; SSH waits until first used.
    pub fn open(name: &str, settings: &HostSettings, controller: &Controller) -> Result<RemoteHost, HvError> {
        let hv = LibvirtHypervisor::connect(&settings.libvirt_uri)?;
        Ok(RemoteHost::with_hypervisor(name, settings, controller, hv))
    }

    /// The host with `hv` as its libvirt connection.
    pub fn with_hypervisor(
        name: &str,
        settings: &HostSettings,
        controller: &Controller,
        hv: LibvirtHypervisor,
    ) -> RemoteHost {
        let short: Duration = controller.command_timeout.into();
        let shell = Arc::new(SshShell::new(name, ssh_target(settings), ssh_options(settings, controller)));
        RemoteHost {
            name: name.to_owned(),
            hv,
            storage: SshStorage::new(Arc::clone(&shell), short),
            net: SshNet::new(shell, short),
        }
    }

    /// Logs in over SSH now: what `check --live` asks.
    pub fn reach_ssh(&self) -> Result<(), GuestError> {
        self.storage.shell().reach()
    }
}

impl Host for RemoteHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn hypervisor(&self) -> &dyn Hypervisor {
        &self.hv
    }

    fn storage(&self) -> &dyn Storage {
        &self.storage
    }

    fn net(&self) -> &dyn HostNet {
        &self.net
    }
}

/// Where the host's sshd is.
pub fn ssh_target(settings: &HostSettings) -> SshTarget {
    SshTarget {
        host: settings.ssh.address.clone(),
        port: settings.ssh.port,
        user: settings.ssh.user.clone(),
        netns: None,
        host_key_alias: None,
    }
}

/// The host's key and known_hosts; the controller's time limits. Each
/// command sets its own bound (see [`LONG_WORK`]).
pub fn ssh_options(settings: &HostSettings, controller: &Controller) -> SshOptions {
    SshOptions {
        key: settings.ssh.key.clone(),
        known_hosts: settings.ssh.known_hosts.clone(),
        connect_timeout: controller.connect_timeout.into(),
        command_timeout: controller.command_timeout.into(),
    }
}
