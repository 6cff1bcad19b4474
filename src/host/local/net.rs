//! [`IpCommand`]: the host's network namespaces and links through
//! iproute2's `ip`.

use std::process::Command;

use crate::host::net::{gateway_steps, link_gone};
use crate::host::{HostNet, HostNetError};

/// The real [`HostNet`]: iproute2.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpCommand;

fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), HostNetError> {
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    crate::host::tool::run(command.args(args)).map(|_| ())
}

impl HostNet for IpCommand {
    fn add_netns(&self, netns: &str) -> Result<(), HostNetError> {
        if std::path::Path::new("/run/netns").join(netns).exists() {
            return Ok(());
        }
        ip(None, &["netns", "add", netns])
    }

    fn delete_netns(&self, netns: &str) -> Result<(), HostNetError> {
        if !std::path::Path::new("/run/netns").join(netns).exists() {
            return Ok(());
        }
        ip(None, &["netns", "delete", netns])
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
            ip(netns, &args)?;
        }
        Ok(())
    }

    fn delete_link(&self, netns: Option<&str>, link: &str) -> Result<(), HostNetError> {
        match ip(netns, &["link", "delete", link]) {
            Err(e) if link_gone(&e) => Ok(()),
            other => other,
        }
    }
}
