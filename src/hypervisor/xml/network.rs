//! `NetworkDef`: a libvirt `<network>` document with typed accessors and edits.

use std::net::{IpAddr, Ipv4Addr};

use xmltree::Element;

use super::{attr, child_or_insert, child_text, element, push, remove_children, set_attr, set_text, text_element};
use crate::hypervisor::HvError;

/// A libvirt network definition. Unknown elements round-trip untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkDef {
    root: Element,
}

/// An isolated network: a bridge with no `<forward>` and no DHCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub bridge: String,
    /// The host's address on the bridge and the prefix length; `None` for a
    /// bridge the host has no address on.
    pub ip: Option<(Ipv4Addr, u8)>,
}

/// Prefix length of a dotted netmask such as `255.255.255.0`.
fn netmask_prefix(mask: &str) -> Option<u8> {
    let mask: Ipv4Addr = mask.parse().ok()?;
    let bits = u32::from(mask);
    (bits.leading_ones() + bits.trailing_zeros() == 32).then_some(bits.leading_ones() as u8)
}

impl NetworkDef {
    pub fn parse(xml: &str) -> Result<Self, HvError> {
        let root = super::parse_root(xml, "network", "network")?;
        let def = Self { root };
        if def.name().is_empty() {
            return Err(HvError::Xml { what: "network", detail: "no <name>".to_owned() });
        }
        Ok(def)
    }

    pub fn isolated(spec: &NetworkSpec) -> NetworkDef {
        let mut root = Element::new("network");
        push(&mut root, text_element("name", &spec.name));
        push(&mut root, element("bridge", &[("name", &spec.bridge), ("stp", "on"), ("delay", "0")]));
        if let Some((address, prefix)) = spec.ip {
            let address = address.to_string();
            let prefix = prefix.to_string();
            push(&mut root, element("ip", &[("address", &address), ("prefix", &prefix)]));
        }
        NetworkDef { root }
    }

    pub fn to_xml(&self) -> String {
        super::write(&self.root)
    }

    pub fn name(&self) -> String {
        child_text(&self.root, "name").unwrap_or_default()
    }

    pub fn set_name(&mut self, name: &str) {
        set_text(child_or_insert(&mut self.root, "name"), name);
    }

    pub fn uuid(&self) -> Option<String> {
        child_text(&self.root, "uuid").filter(|u| !u.is_empty())
    }

    pub fn set_uuid(&mut self, uuid: &str) {
        set_text(child_or_insert(&mut self.root, "uuid"), uuid);
    }

    pub fn clear_uuid(&mut self) {
        remove_children(&mut self.root, "uuid");
    }

    /// The bridge device name (`<bridge name>`), if set.
    pub fn bridge(&self) -> Option<String> {
        self.root.get_child("bridge").and_then(|b| attr(b, "name")).map(str::to_owned)
    }

    pub fn set_bridge(&mut self, bridge: &str) {
        set_attr(child_or_insert(&mut self.root, "bridge"), "name", bridge);
    }

    /// The host's first address on the network and its prefix length.
    pub fn ip(&self) -> Option<(IpAddr, u8)> {
        let ip = self.root.get_child("ip")?;
        let address: IpAddr = attr(ip, "address")?.parse().ok()?;
        let prefix = match (attr(ip, "prefix"), attr(ip, "netmask")) {
            (Some(prefix), _) => prefix.parse().ok()?,
            (None, Some(mask)) => netmask_prefix(mask)?,
            (None, None) if address.is_ipv4() => 24,
            (None, None) => 64,
        };
        Some((address, prefix))
    }

    /// Removes every `<ip>`: the host gets no address on the bridge.
    pub fn clear_ip(&mut self) {
        remove_children(&mut self.root, "ip");
    }

    /// Removes the bridge's `<mac>` so that libvirt generates a new one.
    pub fn clear_mac(&mut self) {
        remove_children(&mut self.root, "mac");
    }

    /// `None` for an isolated network; `nat`, `route`, `bridge`, ... otherwise
    /// (`<forward/>` without a mode means `nat`).
    pub fn forward_mode(&self) -> Option<String> {
        let forward = self.root.get_child("forward")?;
        Some(attr(forward, "mode").unwrap_or("nat").to_owned())
    }
}
