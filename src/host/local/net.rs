//! [`IpCommand`]: the host's network namespaces and links through
//! iproute2's `ip`.

use std::process::Command;

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

/// Whether `ip` said the thing is not there.
fn gone(error: &HostNetError) -> bool {
    matches!(error, HostNetError::Failed { stderr, .. }
        if stderr.contains("No such file") || stderr.contains("Cannot find device") || stderr.contains("does not exist"))
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
        ip(libvirt_netns, &["link", "add", veth, "type", "veth", "peer", "name", peer, "netns", netns])?;
        ip(libvirt_netns, &["link", "set", veth, "master", bridge, "up"])?;
        ip(Some(netns), &["addr", "add", address, "dev", peer])?;
        ip(Some(netns), &["link", "set", peer, "up"])?;
        ip(Some(netns), &["link", "set", "lo", "up"])
    }

    fn delete_link(&self, netns: Option<&str>, link: &str) -> Result<(), HostNetError> {
        match ip(netns, &["link", "delete", link]) {
            Err(e) if gone(&e) => Ok(()),
            other => other,
        }
    }
}
