//! [`SshNet`]: a host's network namespaces and links through its own `ip`,
//! run in a shell on it.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use super::shell::SshShell;
use crate::host::net::{gateway_steps, link_gone};
use crate::host::{HostNet, HostNetError};

#[derive(Debug)]
pub struct SshNet {
    shell: Arc<SshShell>,
    timeout: Duration,
}

impl SshNet {
    pub fn new(shell: Arc<SshShell>, timeout: Duration) -> Self {
        SshNet { shell, timeout }
    }

    fn ip(&self, netns: Option<&str>, args: &[&str]) -> Result<(), HostNetError> {
        let mut argv: Vec<OsString> = vec!["ip".into()];
        if let Some(netns) = netns {
            argv.extend(["-n".into(), netns.into()]);
        }
        argv.extend(args.iter().map(OsString::from));
        self.shell.run(&argv, self.timeout).map(drop)
    }

    fn netns_exists(&self, netns: &str) -> Result<bool, HostNetError> {
        let argv: Vec<OsString> = vec!["test".into(), "-e".into(), format!("/run/netns/{netns}").into()];
        Ok(self.shell.output(&argv, self.timeout)?.status == 0)
    }
}

impl HostNet for SshNet {
    fn add_netns(&self, netns: &str) -> Result<(), HostNetError> {
        if self.netns_exists(netns)? {
            return Ok(());
        }
        self.ip(None, &["netns", "add", netns])
    }

    fn delete_netns(&self, netns: &str) -> Result<(), HostNetError> {
        if !self.netns_exists(netns)? {
            return Ok(());
        }
        self.ip(None, &["netns", "delete", netns])
    }

    fn add_gateway(
        &self,
        libvirt_netns: Option<&str>,
        bridge: &str,
        veth: &str,
        netns: &str,
        peer: &str,
        address: &str,
    ) -> Result<(), HostNetError> {
        for (netns, args) in gateway_steps(libvirt_netns, bridge, veth, netns, peer, address) {
            self.ip(netns, &args)?;
        }
        Ok(())
    }

    fn delete_link(&self, netns: Option<&str>, link: &str) -> Result<(), HostNetError> {
        match self.ip(netns, &["link", "delete", link]) {
            Err(e) if link_gone(&e) => Ok(()),
            other => other,
        }
    }
}
