//! Argument validation for the identity subcommands. Every value is checked
//! here before anything in the guest changes; a refusal is a usage error
//! whose reason names the rule that was broken.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A unicast Ethernet address, shown lowercase with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    /// Six two-digit hex octets separated by `:` (libvirt's and sysfs'
    /// form), any case. Multicast and all-zero addresses are refused: no
    /// interface has one.
    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err("expected six hex octets separated by colons, e.g. 52:54:00:12:34:56".into());
        }
        let mut octets = [0u8; 6];
        for (octet, part) in octets.iter_mut().zip(&parts) {
            *octet = u8::from_str_radix(part, 16).map_err(|e| e.to_string())?;
        }
        if octets == [0; 6] {
            return Err("the all-zero MAC belongs to no interface".into());
        }
        if octets[0] & 1 == 1 {
            return Err("a multicast MAC belongs to no interface".into());
        }
        Ok(Mac(octets))
    }
}

/// An IPv4 address with its prefix length, as `ip addr` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Ipv4Cidr {
    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) | !self.mask())
    }

    pub fn contains(&self, other: Ipv4Addr) -> bool {
        u32::from(other) & self.mask() == u32::from(self.network())
    }

    /// Whether `host` may be a host of this subnet: inside it, and neither
    /// its network nor its broadcast address where those exist (/31 and /32
    /// have none, RFC 3021).
    fn usable_host(&self, host: Ipv4Addr) -> bool {
        self.contains(host) && (self.prefix >= 31 || (host != self.network() && host != self.broadcast()))
    }

    /// Parses `A.B.C.D/P` without judging whether it suits an interface.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.split_once('/').ok_or("expected ADDRESS/PREFIX, e.g. 10.88.1.11/24")?;
        let address: Ipv4Addr = address.parse().map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix = match prefix.parse::<u8>() {
            Ok(p @ 1..=32) if !prefix.starts_with('+') && (prefix == "0" || !prefix.starts_with('0')) => p,
            _ => return Err(format!("prefix {prefix:?} is not a number from 1 to 32")),
        };
        Ok(Ipv4Cidr { address, prefix })
    }
}

/// Refuses addresses no interface should be given: unspecified, loopback,
/// multicast, reserved (240/4) and limited broadcast.
fn check_unicast(address: Ipv4Addr) -> Result<(), String> {
    let why = if address.is_unspecified() {
        "the unspecified address"
    } else if address.is_loopback() {
        "a loopback address"
    } else if address.is_multicast() {
        "a multicast address"
    } else if address.is_broadcast() {
        "the broadcast address"
    } else if address.octets()[0] >= 240 {
        "a reserved address (240.0.0.0/4)"
    } else {
        return Ok(());
    };
    Err(format!("{address} is {why}"))
}

/// `--address`: a unicast host address of its own subnet.
pub fn interface_address(text: &str) -> Result<Ipv4Cidr, String> {
    let cidr = Ipv4Cidr::parse(text)?;
    check_unicast(cidr.address)?;
    if !cidr.usable_host(cidr.address) {
        let which = if cidr.address == cidr.network() { "network" } else { "broadcast" };
        return Err(format!("{} is the {which} address of {}/{}", cidr.address, cidr.network(), cidr.prefix));
    }
    Ok(cidr)
}

/// `--gateway`: another host of the new address's subnet.
pub fn gateway(text: &str, subnet: &Ipv4Cidr) -> Result<Ipv4Addr, String> {
    let gateway: Ipv4Addr = text.parse().map_err(|_| "not an IPv4 address".to_string())?;
    check_unicast(gateway)?;
    if gateway == subnet.address {
        return Err("the gateway cannot be the interface's own address".into());
    }
    if !subnet.usable_host(gateway) {
        return Err(format!("not a host of {}/{}, the new address's subnet", subnet.network(), subnet.prefix));
    }
    Ok(gateway)
}

/// `--old-address`: an IPv4 address, with or without its prefix.
pub fn old_address(text: &str) -> Result<Ipv4Addr, String> {
    let address = text.split_once('/').map_or(text, |(a, _)| a);
    if text.contains('/') {
        Ipv4Cidr::parse(text)?;
    }
    address.parse().map_err(|_| format!("{address:?} is not an IPv4 address"))
}

/// The kernel's limit for a hostname (`__NEW_UTS_LEN`).
const HOSTNAME_MAX: usize = 64;

/// `--hostname`: an RFC 1123 host name short enough for sethostname(2):
/// dot-separated labels of 1 to 63 letters, digits and hyphens, none
/// starting or ending with a hyphen. A dotted quad is refused so that a
/// name can never be mistaken for an address.
pub fn hostname(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > HOSTNAME_MAX {
        return Err(format!("a hostname has 1 to {HOSTNAME_MAX} characters"));
    }
    for label in text.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("every dot-separated label has 1 to 63 characters".into());
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("only letters, digits, hyphens and dots are allowed (RFC 1123)".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with a hyphen".into());
        }
    }
    if text.parse::<Ipv4Addr>().is_ok() || text.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("a hostname cannot be all digits and dots".into());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn macs_by_table() {
        let good = [("52:54:00:12:34:56", "52:54:00:12:34:56"), ("52:54:00:AB:cd:EF", "52:54:00:ab:cd:ef")];
        for (text, shown) in good {
            assert_eq!(text.parse::<Mac>().map(|m| m.to_string()).as_deref(), Ok(shown), "{text}");
        }
        let bad = [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "525400123456",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52:54:00:12:34:zz",
            "52:54:00:12:34:+5",
            " 52:54:00:12:34:56",
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
        ];
        for text in bad {
            assert!(text.parse::<Mac>().is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn interface_addresses_by_table() {
        let good = [
            ("10.88.1.11/24", "10.88.1.11/24"),
            ("10.77.1.42/24", "10.77.1.42/24"),
            ("192.168.0.1/32", "192.168.0.1/32"),
            ("10.0.0.0/31", "10.0.0.0/31"),
            ("10.0.0.1/31", "10.0.0.1/31"),
            ("172.16.5.4/12", "172.16.5.4/12"),
            ("169.254.3.4/16", "169.254.3.4/16"),
        ];
        for (text, shown) in good {
            assert_eq!(interface_address(text).map(|c| c.to_string()).as_deref(), Ok(shown), "{text}");
        }
        let bad = [
            "10.88.1.11",
            "10.88.1.11/",
            "10.88.1.11/0",
            "10.88.1.11/33",
            "10.88.1.11/024",
            "10.88.1.11/+24",
            "10.88.1.11/24/1",
            "10.88.1/24",
            "10.88.1.256/24",
            "010.88.1.11/24",
            "fd00::1/64",
            "10.88.1.0/24",
            "10.88.1.255/24",
            "0.0.0.0/8",
            "127.0.0.5/8",
            "224.0.0.1/4",
            "240.0.0.1/8",
            "255.255.255.255/32",
            "web/24",
        ];
        for text in bad {
            assert!(interface_address(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn gateways_must_be_other_hosts_of_the_subnet() {
        let subnet = interface_address("10.88.1.11/24").unwrap();
        assert_eq!(gateway("10.88.1.1", &subnet), Ok(Ipv4Addr::new(10, 88, 1, 1)));
        assert_eq!(gateway("10.88.1.254", &subnet), Ok(Ipv4Addr::new(10, 88, 1, 254)));
        for text in ["10.88.2.1", "10.88.1.11", "10.88.1.0", "10.88.1.255", "10.88.1", "gw", "255.255.255.255", ""] {
            assert!(gateway(text, &subnet).is_err(), "{text:?} was accepted");
        }
        let point_to_point = interface_address("10.0.0.0/31").unwrap();
        assert_eq!(gateway("10.0.0.1", &point_to_point), Ok(Ipv4Addr::new(10, 0, 0, 1)));
        let host_route = interface_address("10.0.0.5/32").unwrap();
        assert!(gateway("10.0.0.1", &host_route).is_err());
    }

    #[test]
    fn old_addresses_take_an_optional_prefix() {
        assert_eq!(old_address("10.77.1.12"), Ok(Ipv4Addr::new(10, 77, 1, 12)));
        assert_eq!(old_address("10.77.1.12/24"), Ok(Ipv4Addr::new(10, 77, 1, 12)));
        for text in ["", "10.77.1", "10.77.1.12/40", "db"] {
            assert!(old_address(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn hostnames_by_table() {
        let long_label = "a".repeat(63);
        let good = ["db2", "web-clone", "WEB1", "a", "db2.lab.example", "0db", long_label.as_str()];
        for text in good {
            assert_eq!(hostname(text).as_deref(), Ok(text));
        }
        let too_long = format!("{long_label}.b");
        let bad = [
            "",
            "-web",
            "web-",
            "web_clone",
            "web clone",
            "web..lab",
            ".web",
            "web.",
            "wéb",
            "web;id",
            "$(id)",
            "10.0.0.1",
            "1234",
            &too_long,
        ];
        for text in bad {
            assert!(hostname(text).is_err(), "{text:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,40}") {
            let _ = text.parse::<Mac>();
            let _ = interface_address(&text);
            let _ = old_address(&text);
            let _ = hostname(&text);
            let _ = gateway(&text, &Ipv4Cidr { address: Ipv4Addr::new(10, 0, 0, 5), prefix: 24 });
        }

        #[test]
        fn macs_read_back_as_shown(octets in any::<[u8; 6]>(), upper in any::<bool>()) {
            let text = octets.iter().map(|o| format!("{o:02x}")).collect::<Vec<_>>().join(":");
            let given = if upper { text.to_uppercase() } else { text.clone() };
            match given.parse::<Mac>() {
                Ok(mac) => prop_assert_eq!(mac.to_string(), text),
                Err(_) => prop_assert!(octets[0] & 1 == 1 || octets == [0; 6]),
            }
        }

        #[test]
        fn accepted_addresses_are_usable_hosts_shown_as_given(raw in any::<u32>(), prefix in 1u8..=32) {
            let text = format!("{}/{prefix}", Ipv4Addr::from(raw));
            if let Ok(cidr) = interface_address(&text) {
                prop_assert_eq!(cidr.to_string(), text);
                prop_assert!(cidr.contains(cidr.address) && cidr.contains(cidr.network()) && cidr.contains(cidr.broadcast()));
                prop_assert!(prefix >= 31 || (cidr.address != cidr.network() && cidr.address != cidr.broadcast()));
            }
        }

        #[test]
        fn accepted_hostnames_follow_rfc1123(name in "[a-zA-Z0-9.-]{0,70}") {
            if hostname(&name).is_ok() {
                prop_assert!(!name.is_empty() && name.len() <= HOSTNAME_MAX);
                prop_assert!(name.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-')));
            }
        }
    }
}
