//! The clone's gateway on the controller's side: a named network namespace
//! (`envclone-c-<clone>`) holding, for each cloned network, one end of a
//! veth pair with the source gateway's address; the other end is a port of
//! the clone's bridge. The bridge lives where libvirtd runs: in the
//! namespace `controller.libvirt_netns` names (the lab's), or in the
//! controller's own when unset. The veth is created there, and its peer
//! moved into the gateway namespace in the same `ip link add`.
//!
//! Behind a trait so the clone's state machine is unit tested without root.
//! [`super::IpCommand`] is the local one: iproute2's `ip`, which every host
//! running libvirt has. Each removal is idempotent (gone already is done).

/// What a failed `ip` command said.
pub type HostNetError = crate::host::tool::ToolError;

pub trait HostNet: Send + Sync + std::fmt::Debug {
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

/// The `ip` commands that make a gateway (see [`HostNet::add_gateway`]),
/// in order: each is the namespace to run in and the arguments.
pub(crate) fn gateway_steps<'a>(
    libvirt_netns: Option<&'a str>,
    bridge: &'a str,
    veth: &'a str,
    netns: &'a str,
    peer: &'a str,
    address: &'a str,
) -> [(Option<&'a str>, Vec<&'a str>); 5] {
    [
        (libvirt_netns, vec!["link", "add", veth, "type", "veth", "peer", "name", peer, "netns", netns]),
        (libvirt_netns, vec!["link", "set", veth, "master", bridge, "up"]),
        (Some(netns), vec!["addr", "add", address, "dev", peer]),
        (Some(netns), vec!["link", "set", peer, "up"]),
        (Some(netns), vec!["link", "set", "lo", "up"]),
    ]
}

/// Whether `ip` said the thing is not there.
pub(crate) fn link_gone(error: &HostNetError) -> bool {
    matches!(error, HostNetError::Failed { stderr, .. }
        if stderr.contains("No such file") || stderr.contains("Cannot find device") || stderr.contains("does not exist"))
}
