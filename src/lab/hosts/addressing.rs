//! Names and addresses of a two-host lab, derived from the lab's name alone
//! so that two labs side by side never pick the same ones (and a second
//! `lab up` finds the ones the first made).
//!
//! ```text
//!   controller (root netns)                      hosts
//!   ec<hex>-a  10.253.N.1/30 ──veth── uplink 10.253.N.2/30   envclone-<lab>-a
//!   ec<hex>-b  10.253.N.5/30 ──veth── uplink 10.253.N.6/30   envclone-<lab>-b
//!                            a: to-b 10.253.N.9/30 ──veth── b: to-a 10.253.N.10/30
//! ```
//!
//! `N` and `<hex>` come from a SHA-256 of the lab name. Interface names in
//! the root namespace stay within the kernel's 15 characters; the ones
//! inside a host's namespace only need to be unique there.

use sha2::{Digest, Sha256};
use std::net::Ipv4Addr;

/// The hosts of a two-host lab, in order: the first runs `demo`.
pub const HOST_NAMES: [&str; 2] = ["a", "b"];

/// A host's end of its link to the controller, inside the host's namespace.
pub const UPLINK: &str = "uplink";

/// Every lab's links live in 10.253.0.0/16, one /24 per lab.
const FIRST_OCTETS: (u8, u8) = (10, 253);
/// /30 links: the controller's end, the host's end.
pub const LINK_PREFIX: u8 = 30;

/// The names and addresses of one lab's hosts and links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    lab: String,
    /// Third octet of the lab's 10.253.N.0/24.
    subnet: u8,
    /// Six hex digits naming the lab's devices in the root namespace.
    tag: String,
}

impl Addressing {
    pub fn new(lab: &str) -> Self {
        let digest = Sha256::digest(lab.as_bytes());
        Addressing { lab: lab.to_string(), subnet: digest[0], tag: hex::encode(&digest[..3]) }
    }

    /// The lab's /24: `10.253.N.0`.
    pub fn subnet(&self) -> Ipv4Addr {
        Ipv4Addr::new(FIRST_OCTETS.0, FIRST_OCTETS.1, self.subnet, 0)
    }

    /// The start of every device name of this lab in the root namespace.
    pub fn device_prefix(&self) -> String {
        format!("ec{}-", self.tag)
    }

    /// The host's network namespace, `envclone-<lab>-<host>`.
    pub fn netns(&self, host: &str) -> String {
        format!("envclone-{}-{host}", self.lab)
    }

    /// The controller's end of the host's link, in the root namespace.
    pub fn controller_device(&self, host: &str) -> String {
        format!("{}{host}", self.device_prefix())
    }

    /// The controller's address on the host's link.
    pub fn controller_address(&self, host: &str) -> Option<Ipv4Addr> {
        Some(self.address(4 * host_index(host)? + 1))
    }

    /// The host's address on its link: where its libvirt and SSH answer.
    pub fn host_address(&self, host: &str) -> Option<Ipv4Addr> {
        Some(self.address(4 * host_index(host)? + 2))
    }

    /// The ends of the direct link between the two hosts: (device in a,
    /// address of a, device in b, address of b).
    pub fn peer_link(&self) -> PeerLink {
        PeerLink {
            a_device: format!("to-{}", HOST_NAMES[1]),
            a_address: self.address(9),
            b_device: format!("to-{}", HOST_NAMES[0]),
            b_address: self.address(10),
        }
    }

    fn address(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(FIRST_OCTETS.0, FIRST_OCTETS.1, self.subnet, last)
    }
}

/// The direct veth between hosts a and b.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    pub a_device: String,
    pub a_address: Ipv4Addr,
    pub b_device: String,
    pub b_address: Ipv4Addr,
}

/// 0 for `a`, 1 for `b`; `None` for a name the lab does not have.
pub fn host_index(host: &str) -> Option<u8> {
    HOST_NAMES.iter().position(|name| *name == host).and_then(|i| u8::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_link_plan() {
        let plan = Addressing::new("lab");
        let n = plan.subnet().octets()[2];
        assert_eq!(plan.subnet().octets()[..2], [10, 253]);
        assert_eq!(plan.controller_address("a"), Some(Ipv4Addr::new(10, 253, n, 1)));
        assert_eq!(plan.host_address("a"), Some(Ipv4Addr::new(10, 253, n, 2)));
        assert_eq!(plan.controller_address("b"), Some(Ipv4Addr::new(10, 253, n, 5)));
        assert_eq!(plan.host_address("b"), Some(Ipv4Addr::new(10, 253, n, 6)));
        let peer = plan.peer_link();
        assert_eq!((peer.a_address.octets()[3], peer.b_address.octets()[3]), (9, 10));
        assert_eq!((peer.a_device.as_str(), peer.b_device.as_str()), ("to-b", "to-a"));
    }

    #[test]
    fn an_unknown_host_has_no_address() {
        assert_eq!(Addressing::new("lab").host_address("c"), None);
    }

    #[test]
    fn two_labs_get_different_subnets_and_devices() {
        let (one, other) = (Addressing::new("lab"), Addressing::new("e2e-hosts-1234"));
        assert_ne!(one.subnet(), other.subnet());
        assert_ne!(one.controller_device("a"), other.controller_device("a"));
        assert_eq!(one, Addressing::new("lab"), "derived from the name alone");
    }

    #[test]
    fn device_names_fit_the_kernel_limit() {
        // The longest lab name Lab::new accepts does not change the length.
        let plan = Addressing::new(&"x".repeat(32));
        for host in HOST_NAMES {
            let device = plan.controller_device(host);
            assert!(device.len() <= 15, "{device}");
            assert!(device.starts_with("ec") && device.ends_with(&format!("-{host}")), "{device}");
        }
        assert_eq!(plan.netns("a"), format!("envclone-{}-a", "x".repeat(32)));
    }
}
