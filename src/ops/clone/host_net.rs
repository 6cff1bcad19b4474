//! The clone's gateway on the controller's side: a named network namespace
//! (`envclone-c-<clone>`) holding, for each cloned network, one end of a
//! veth pair with the source gateway's address; the other end is a port of
//! the clone's bridge. The bridge lives where libvirtd runs: in the
//! namespace `controller.libvirt_netns` names (the lab's), or in the
//! controller's own when unset. The veth is created there, and its peer
//! moved into the gateway namespace in the same `ip link add`.
//!
//! Behind a trait so the clone's state machine is unit tested without root.
//! [`IpCommand`] is the real one: iproute2's `ip`, which every host running
//! libvirt has. Each removal is idempotent (gone already is done).

use std::process::Command;

/// What a failed `ip` command said.
pub type HostNetError = crate::host_tool::ToolError;

pub trait HostNet: Sync + std::fmt::Debug {
    fn add_netns(&self, netns: &str) -> Result<(), HostNetError>;
    fn delete_netns(&self, netns: &str) -> Result<(), HostNetError>;
    /// A veth pair: `veth` in `libvirt_netns`, a port of `bridge`, up;
    /// `peer` in `netns` with `address` (`a.b.c.d/p`), up, and `lo` up.
    fn add_gateway(
        &self,
        libvirt_netns: Option<&str>,
        bridge: &str,
        veth: &str,
        netns: &str,
        peer: &str,
        address: &str,
    ) -> Result<(), HostNetError>;
    fn delete_link(&self, netns: Option<&str>, link: &str) -> Result<(), HostNetError>;
}

/// The real [`HostNet`]: iproute2.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpCommand;

fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), HostNetError> {
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    crate::host_tool::run(command.args(args)).map(|_| ())
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
