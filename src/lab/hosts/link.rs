//! The wires of a two-host lab: a veth per host between the controller's
//! (root) namespace and the host's, a veth between the hosts, and a token
//! bucket (`tc ... tbf`) on both ends of a host's link when it is shaped.
//! Nothing forwards between them: the root namespace's ip_forward stays as
//! it was, and each /30 is only reachable from its two ends.
//!
//! The root namespace also gets an `unreachable` route for the lab's whole
//! /24: while a host's link is down its /30 route is gone, and without it a
//! packet to the host would follow the default route out of the machine.
//! With it, a connection to a host that is down fails at once with "no
//! route to host" (what a dead host on the same LAN gives after ARP gives
//! up) and never leaves the machine.

use super::addressing::{Addressing, LINK_PREFIX, UPLINK};
use super::HOST_NAMES;
use crate::lab::{host, LabError};
use serde::Serialize;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

/// The token bucket's size and queue limit: lab.md's measured settings.
const TBF_BURST: &str = "32kbit";
const TBF_LATENCY: &str = "400ms";

/// Units `tc` reads a rate in (bit/s or byte/s multiples).
const RATE_UNITS: &[&str] = &["tbit", "gbit", "mbit", "kbit", "bit", "tbps", "gbps", "mbps", "kbps", "bps"];

/// A rate as `tc` writes it: a number and one of [`RATE_UNITS`]
/// (`100mbit`, `12.5mbps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct LinkRate(String);

/// `--rate`: a rate, or `none` to remove the shaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateSetting {
    Unshaped,
    Shaped(LinkRate),
}

impl FromStr for RateSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim().to_ascii_lowercase();
        if text == "none" {
            return Ok(RateSetting::Unshaped);
        }
        let unit = RATE_UNITS.iter().find(|unit| text.ends_with(*unit));
        let number = unit.map(|unit| &text[..text.len() - unit.len()]);
        let positive = number.and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n.is_finite() && n > 0.0);
        let digits_only = number.is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        if positive && digits_only {
            Ok(RateSetting::Shaped(LinkRate(text)))
        } else {
            Err(format!("{text:?} is not a rate: use e.g. 100mbit, 1gbit, 12.5mbps (bytes/s), or none"))
        }
    }
}

impl fmt::Display for LinkRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Creates what is missing of both hosts' links and the link between them,
/// and brings every end up (a host taken down keeps its link down until
/// `host-up` or `lab up`).
pub fn ensure(plan: &Addressing) -> Result<(), LabError> {
    ip(None, &["route", "replace", "unreachable", &lab_subnet(plan)])?;
    for host in HOST_NAMES {
        ensure_uplink(plan, host)?;
    }
    ensure_peer_link(plan)
}

fn ensure_uplink(plan: &Addressing, host: &str) -> Result<(), LabError> {
    let netns = plan.netns(host);
    let device = plan.controller_device(host);
    let (Some(controller), Some(far)) = (plan.controller_address(host), plan.host_address(host)) else {
        return Err(unknown_host(host));
    };
    if !device_exists(None, &device) {
        // The far end is made in the host's namespace at once: no name of
        // its can clash with one in the root namespace.
        host::run("ip", &["link", "add", &device, "type", "veth", "peer", "name", UPLINK, "netns", &netns])?;
    }
    set_address(None, &device, controller)?;
    set_address(Some(&netns), UPLINK, far)?;
    set_up(None, &device, true)?;
    set_up(Some(&netns), UPLINK, true)
}

fn ensure_peer_link(plan: &Addressing) -> Result<(), LabError> {
    let peer = plan.peer_link();
    let (a, b) = (plan.netns(HOST_NAMES[0]), plan.netns(HOST_NAMES[1]));
    if !device_exists(Some(&a), &peer.a_device) {
        host::run(
            "ip",
            &["-n", &a, "link", "add", &peer.a_device, "type", "veth", "peer", "name", &peer.b_device, "netns", &b],
        )?;
    }
    set_address(Some(&a), &peer.a_device, peer.a_address)?;
    set_address(Some(&b), &peer.b_device, peer.b_address)?;
    set_up(Some(&a), &peer.a_device, true)?;
    set_up(Some(&b), &peer.b_device, true)
}

/// Cuts (or restores) every wire of `host`: the controller's end of its
/// link and its own end of the link to the other host. A host that lost
/// power answers neither the controller nor its peer.
pub fn set_host_links(plan: &Addressing, host: &str, up: bool) -> Result<(), LabError> {
    ip(None, &["route", "replace", "unreachable", &lab_subnet(plan)])?;
    let device = plan.controller_device(host);
    if device_exists(None, &device) {
        set_up(None, &device, up)?;
    }
    let peer = plan.peer_link();
    let own_end = if host == HOST_NAMES[0] { peer.a_device } else { peer.b_device };
    let netns = plan.netns(host);
    if device_exists(Some(&netns), &own_end) {
        set_up(Some(&netns), &own_end, up)?;
    }
    Ok(())
}

/// The lab's /24, e.g. `10.253.7.0/24`.
fn lab_subnet(plan: &Addressing) -> String {
    format!("{}/24", plan.subnet())
}

/// Removes the lab's `unreachable` route, last of all its links.
pub fn remove_guard_route(plan: &Addressing) -> Result<(), LabError> {
    let subnet = lab_subnet(plan);
    let listing = host::run("ip", &["route", "show", "type", "unreachable", &subnet])?;
    if !listing.trim().is_empty() {
        ip(None, &["route", "del", "unreachable", &subnet])?;
    }
    Ok(())
}

/// Deletes the host's links (a veth goes with either of its ends).
pub fn remove(plan: &Addressing, host: &str) -> Result<(), LabError> {
    let device = plan.controller_device(host);
    if device_exists(None, &device) {
        ip(None, &["link", "del", "dev", &device])?;
    }
    let peer = plan.peer_link();
    let own_end = if host == HOST_NAMES[0] { peer.a_device } else { peer.b_device };
    let netns = plan.netns(host);
    if device_exists(Some(&netns), &own_end) {
        ip(Some(&netns), &["link", "del", "dev", &own_end])?;
    }
    Ok(())
}

/// What a boot starts without: every device in the host's namespace but
/// loopback and its links (the bridges its libvirtd made before a power
/// loss would otherwise make its networks "already in use").
pub fn clear_host_devices(plan: &Addressing, host: &str) -> Result<(), LabError> {
    let netns = plan.netns(host);
    if !Path::new("/run/netns").join(&netns).exists() {
        return Ok(());
    }
    let peer = plan.peer_link();
    let keep = ["lo", UPLINK, peer.a_device.as_str(), peer.b_device.as_str()];
    let listing = host::run("ip", &["-n", &netns, "-o", "link", "show"])?;
    for device in device_names(&listing) {
        if !keep.contains(&device.as_str()) {
            ip(Some(&netns), &["link", "del", "dev", &device])?;
        }
    }
    Ok(())
}

/// Device names of an `ip -o link show` listing (`3: ecdemo0: <...` or
/// `5: uplink@if6: <...`).
fn device_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

/// Whether the controller's end of the host's link is up.
pub fn is_up(plan: &Addressing, host: &str) -> bool {
    let device = plan.controller_device(host);
    host::run("ip", &["-o", "link", "show", "dev", &device]).is_ok_and(|line| {
        line.split_once('<')
            .and_then(|(_, flags)| flags.split_once('>'))
            .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
    })
}

/// Shapes both directions of the host's link (the host's end for what it
/// sends, the controller's end for what it receives), or removes the
/// shaping.
pub fn shape(plan: &Addressing, host: &str, rate: &RateSetting) -> Result<(), LabError> {
    let netns = plan.netns(host);
    let controller_device = plan.controller_device(host);
    for (ns, device) in [(Some(netns.as_str()), UPLINK), (None, controller_device.as_str())] {
        match rate {
            RateSetting::Shaped(rate) => {
                let rate = rate.to_string();
                tc(
                    ns,
                    &[
                        "qdisc",
                        "replace",
                        "dev",
                        device,
                        "root",
                        "tbf",
                        "rate",
                        &rate,
                        "burst",
                        TBF_BURST,
                        "latency",
                        TBF_LATENCY,
                    ],
                )?;
            }
            RateSetting::Unshaped => {
                if shaped_rate(ns, device).is_some() {
                    tc(ns, &["qdisc", "del", "dev", device, "root"])?;
                }
            }
        }
    }
    Ok(())
}

/// The rate the host's link is shaped to (as tc reports it, e.g.
/// `100Mbit`), read from the host's end.
pub fn rate(plan: &Addressing, host: &str) -> Option<String> {
    shaped_rate(Some(&plan.netns(host)), UPLINK)
}

fn shaped_rate(netns: Option<&str>, device: &str) -> Option<String> {
    let listing = tc(netns, &["qdisc", "show", "dev", device, "root"]).ok()?;
    parse_tbf_rate(&listing)
}

/// The rate of a `tc qdisc show` line of a tbf qdisc:
/// `qdisc tbf 8001: root refcnt 2 rate 100Mbit burst 4Kb lat 400ms`.
fn parse_tbf_rate(listing: &str) -> Option<String> {
    let line = listing.lines().find(|line| line.starts_with("qdisc tbf "))?;
    let mut words = line.split_whitespace();
    words.find(|word| *word == "rate")?;
    words.next().map(str::to_string)
}

/// Devices of other labs (or anything else) holding an address in this
/// lab's /24: the first found, as (device, address).
pub fn subnet_taken(plan: &Addressing) -> Result<Option<(String, String)>, LabError> {
    let listing = host::run("ip", &["-o", "-4", "addr", "show"])?;
    let prefix = plan.subnet().octets();
    Ok(listing.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let device = words.nth(1)?.trim_end_matches(':').split('@').next()?.to_string();
        let address = words.skip_while(|w| *w != "inet").nth(1)?;
        let ip: Ipv4Addr = address.split('/').next()?.parse().ok()?;
        let ours = device.starts_with(&plan.device_prefix());
        (ip.octets()[..3] == prefix[..3] && !ours).then(|| (device, address.to_string()))
    }))
}

fn device_exists(netns: Option<&str>, device: &str) -> bool {
    match netns {
        Some(ns) if !Path::new("/run/netns").join(ns).exists() => false,
        Some(ns) => host::run("ip", &["-n", ns, "link", "show", "dev", device]).is_ok(),
        None => host::run("ip", &["link", "show", "dev", device]).is_ok(),
    }
}

fn set_address(netns: Option<&str>, device: &str, address: Ipv4Addr) -> Result<(), LabError> {
    let cidr = format!("{address}/{LINK_PREFIX}");
    ip(netns, &["addr", "replace", &cidr, "dev", device])
}

fn set_up(netns: Option<&str>, device: &str, up: bool) -> Result<(), LabError> {
    ip(netns, &["link", "set", "dev", device, if up { "up" } else { "down" }])
}

fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), LabError> {
    let mut full = Vec::new();
    if let Some(ns) = netns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    host::run("ip", &full).map(drop)
}

fn tc(netns: Option<&str>, args: &[&str]) -> Result<String, LabError> {
    match netns {
        Some(ns) => {
            let mut full = vec!["netns", "exec", ns, "tc"];
            full.extend_from_slice(args);
            host::run("ip", &full)
        }
        None => host::run("tc", args),
    }
}

fn unknown_host(host: &str) -> LabError {
    LabError::UnknownHost { host: host.to_string(), known: HOST_NAMES.iter().map(|h| h.to_string()).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_numbers_with_a_tc_unit() {
        assert_eq!("100mbit".parse(), Ok(RateSetting::Shaped(LinkRate("100mbit".into()))));
        assert_eq!("12.5MBps".parse(), Ok(RateSetting::Shaped(LinkRate("12.5mbps".into()))));
        assert_eq!("none".parse::<RateSetting>(), Ok(RateSetting::Unshaped));
    }

    #[test]
    fn rate_parse_refuses_what_tc_would_not_read() {
        for bad in ["", "100", "mbit", "0mbit", "-5mbit", "1e3mbit", "fast", "100 mbit", "100mb"] {
            assert!(bad.parse::<RateSetting>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_names_drop_the_peer_suffix() {
        let listing = "1: lo: <LOOPBACK,UP> mtu 65536\n5: uplink@if6: <BROADCAST> mtu 1500\n7: ecdemo0: <NO-CARRIER>\n";
        assert_eq!(device_names(listing), ["lo", "uplink", "ecdemo0"]);
    }

    #[test]
    fn tbf_rate_is_read_from_tc_listing() {
        let listing = "qdisc tbf 8001: root refcnt 2 rate 100Mbit burst 4Kb lat 400ms \n";
        assert_eq!(parse_tbf_rate(listing).as_deref(), Some("100Mbit"));
        assert_eq!(parse_tbf_rate("qdisc noqueue 0: root refcnt 2 \n"), None);
    }
}
