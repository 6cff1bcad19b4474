//! `readdress`: a clone that gets new addresses takes them here. The
//! interface is found by MAC (the one thing the controller knows from the
//! domain XML), its IPv4 addresses are replaced, the default route set, and
//! the hostname changed live, in /etc/hostname and in /etc/hosts.
//!
//! Addresses are changed with the `ip` command rather than netlink: busybox
//! and iproute2 both accept the few forms used here (`ip -o -f inet addr
//! show dev X`, `ip addr add|del A/P dev X`, `ip route replace default via G
//! dev X`), which keeps a netlink implementation and its dependencies out of
//! a static binary that must run in any guest, and `ip`'s own messages make
//! good error text.
//!
//! The session that asks usually arrives on the address being replaced:
//! removing it at once would cut the connection before the answer gets out.
//! Such an address is removed [`DEFERRED_REMOVAL_DELAY`] after answering, by
//! a detached child, and the answer lists it under `removal_deferred`.
//! Removing a primary address also removes its subnet's secondaries unless
//! `promote_secondaries` is set, which would take the new address with it:
//! the agent sets it on the interface before removing anything.
//!
//! Only the live configuration changes. The agent does not edit netplan,
//! ifupdown (/etc/network/interfaces), NetworkManager, systemd-networkd or
//! ifcfg files, so the answer says `persisted: false` and names what sets
//! the address at boot. The lab's guests take their address from the
//! kernel command line (`envclone.ip=`) at every boot. The hostname changes
//! do persist: /etc/hostname and /etc/hosts are rewritten atomically.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use envclone_agent::{HostnameChange, ReaddressReport};

use super::hosts::{self, HostsEdit};
use super::validate::{self, Ipv4Cidr, Mac};
use super::{system, IdentityError};

/// How long after answering the old address of the asking session goes.
pub const DEFERRED_REMOVAL_DELAY: Duration = Duration::from_secs(2);

const SYS_CLASS_NET: &str = "/sys/class/net";
const ETC_HOSTNAME: &str = "/etc/hostname";
const ETC_HOSTS: &str = "/etc/hosts";

#[derive(Debug, Args)]
pub struct ReaddressArgs {
    /// MAC of the interface to readdress, as in the domain XML (52:54:00:..).
    #[arg(long, value_name = "MAC")]
    pub mac: String,
    /// The new IPv4 address and prefix, e.g. 10.88.1.11/24.
    #[arg(long, value_name = "ADDRESS/PREFIX")]
    pub address: String,
    /// Default gateway; must be a host of the new address's subnet.
    #[arg(long, value_name = "ADDRESS")]
    pub gateway: Option<String>,
    /// New hostname (RFC 1123), set live and in /etc/hostname and /etc/hosts.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// The address being replaced. Without it, every global IPv4 address of
    /// the interface is.
    #[arg(long, value_name = "ADDRESS")]
    pub old_address: Option<String>,
}

/// The validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    mac: Mac,
    address: Ipv4Cidr,
    gateway: Option<Ipv4Addr>,
    hostname: Option<String>,
    old_address: Option<Ipv4Addr>,
}

fn validate(args: &ReaddressArgs) -> Result<Request, IdentityError> {
    let mac = args.mac.parse().map_err(|reason| IdentityError::bad("--mac", &args.mac, reason))?;
    let address =
        validate::interface_address(&args.address).map_err(|r| IdentityError::bad("--address", &args.address, r))?;
    let gateway = args
        .gateway
        .as_deref()
        .map(|g| validate::gateway(g, &address).map_err(|r| IdentityError::bad("--gateway", g, r)))
        .transpose()?;
    let hostname = args
        .hostname
        .as_deref()
        .map(|h| validate::hostname(h).map_err(|r| IdentityError::bad("--hostname", h, r)))
        .transpose()?;
    let old_address = args
        .old_address
        .as_deref()
        .map(|a| validate::old_address(a).map_err(|r| IdentityError::bad("--old-address", a, r)))
        .transpose()?;
    Ok(Request { mac, address, gateway, hostname, old_address })
}

pub fn readdress(args: &ReaddressArgs) -> Result<ReaddressReport, IdentityError> {
    let request = validate(args)?;
    let interface = find_interface(Path::new(SYS_CLASS_NET), &request.mac)?;
    let ip = system::tool("ip")?;
    let ip_run = |args: &[&str]| system::run(&ip, args);

    let current = global_addresses(&ip_run(&["-o", "-f", "inet", "addr", "show", "dev", &interface])?);
    let plan = plan(&current, request.address, request.old_address);
    let session = std::env::var("SSH_CONNECTION").ok().and_then(|c| session_address(&c));
    let (deferred, now): (Vec<Ipv4Cidr>, Vec<Ipv4Cidr>) =
        plan.remove.iter().partition(|old| Some(old.address) == session && old.address != request.address.address);

    ip_run(&["link", "set", &interface, "up"])?;
    // The same address with another prefix goes first: the kernel keeps
    // both otherwise, and busybox's `del` cannot tell them apart.
    for old in now.iter().filter(|old| old.address == request.address.address) {
        ip_run(&["addr", "del", &old.to_string(), "dev", &interface])?;
    }
    if plan.add {
        ip_run(&["addr", "add", &request.address.to_string(), "dev", &interface])?;
    }
    if !plan.remove.is_empty() {
        promote_secondaries(&interface)?;
    }
    for old in now.iter().filter(|old| old.address != request.address.address) {
        ip_run(&["addr", "del", &old.to_string(), "dev", &interface])?;
    }
    let after = global_addresses(&ip_run(&["-o", "-f", "inet", "addr", "show", "dev", &interface])?);
    if !after.contains(&request.address) {
        return Err(IdentityError::AddressLost { interface, address: request.address.to_string() });
    }
    if let Some(gateway) = request.gateway {
        ip_run(&["route", "replace", "default", "via", &gateway.to_string(), "dev", &interface])?;
    }

    let previous_hostname = current_hostname()?;
    let hostname = request.hostname.as_deref().unwrap_or(&previous_hostname).to_string();
    if hostname != previous_hostname {
        nix::unistd::sethostname(&hostname)
            .map_err(|source| IdentityError::SetHostname { hostname: hostname.clone(), source })?;
    }
    if request.hostname.is_some() {
        let wanted = format!("{hostname}\n");
        if fs::read_to_string(ETC_HOSTNAME).ok().as_deref() != Some(wanted.as_str()) {
            system::write_atomic(Path::new(ETC_HOSTNAME), wanted.as_bytes(), 0o644)?;
        }
    }
    let mut old_addresses: Vec<Ipv4Addr> = plan.remove.iter().map(|c| c.address).collect();
    old_addresses.extend(request.old_address);
    let hosts_file_changed = update_hosts(&HostsEdit {
        old_addresses: &old_addresses,
        new_address: request.address.address,
        old_hostname: &previous_hostname,
        new_hostname: &hostname,
    })?;

    if !deferred.is_empty() {
        remove_later(&ip, &interface, &deferred)?;
    }
    Ok(ReaddressReport {
        interface,
        mac: request.mac.to_string(),
        address: request.address.to_string(),
        address_added: plan.add,
        removed: now.iter().map(ToString::to_string).collect(),
        removal_deferred: deferred.iter().map(ToString::to_string).collect(),
        removal_delay_ms: if deferred.is_empty() { 0 } else { DEFERRED_REMOVAL_DELAY.as_millis() as u64 },
        gateway: request.gateway.map(|g| g.to_string()),
        hostname: request.hostname.map(|new| HostnameChange { previous: previous_hostname, new }),
        hosts_file_changed,
        persisted: false,
        not_persisted_reason: Some(persistence_note(Path::new("/"))),
    })
}

/// The one interface that has `mac`. Interfaces enslaved to a bond or bridge
/// share their master's MAC; the address belongs on the master, so they are
/// left out.
fn find_interface(sys_class_net: &Path, mac: &Mac) -> Result<String, IdentityError> {
    let list_err = |source| IdentityError::ListInterfaces { dir: sys_class_net.to_path_buf(), source };
    let mut found = Vec::new();
    for entry in fs::read_dir(sys_class_net).map_err(list_err)? {
        let dir = entry.map_err(list_err)?.path();
        let Ok(address) = fs::read_to_string(dir.join("address")) else { continue };
        let enslaved = dir.join("master").exists();
        if !enslaved && address.trim().parse::<Mac>().is_ok_and(|m| m == *mac) {
            found.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
    }
    found.sort();
    match found.len() {
        0 => Err(IdentityError::NoSuchInterface { mac: mac.to_string() }),
        1 => Ok(found.remove(0)),
        _ => Err(IdentityError::AmbiguousMac { mac: mac.to_string(), interfaces: found }),
    }
}

/// The global-scope IPv4 addresses in `ip -o -f inet addr show` output
/// (same format from busybox and iproute2):
/// `2: eth0    inet 10.77.1.12/24 brd 10.77.1.255 scope global eth0\ ...`.
/// A point-to-point `inet A peer B/P` counts as A/32.
fn global_addresses(listing: &str) -> Vec<Ipv4Cidr> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "inet")?;
            let local = words.get(at + 1)?;
            let scope = words.iter().position(|w| *w == "scope").and_then(|i| words.get(i + 1));
            if scope.is_some_and(|s| *s != "global") {
                return None;
            }
            if local.contains('/') {
                Ipv4Cidr::parse(local).ok()
            } else {
                Some(Ipv4Cidr { address: local.parse().ok()?, prefix: 32 })
            }
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct AddressPlan {
    add: bool,
    remove: Vec<Ipv4Cidr>,
}

/// What to add and remove: `--old-address` alone (with whatever prefix it
/// has), or every other global address; the new one is added unless it is
/// there already, so a second run changes nothing.
fn plan(current: &[Ipv4Cidr], new: Ipv4Cidr, old: Option<Ipv4Addr>) -> AddressPlan {
    let remove = current
        .iter()
        .filter(|c| **c != new && old.map_or(true, |o| c.address == o || c.address == new.address))
        .copied()
        .collect();
    AddressPlan { add: !current.contains(&new), remove }
}

/// The guest-side address of the SSH connection that runs us, from
/// `SSH_CONNECTION` (`client port server port`).
fn session_address(ssh_connection: &str) -> Option<Ipv4Addr> {
    ssh_connection.split_whitespace().nth(2)?.parse().ok()
}

fn promote_secondaries(interface: &str) -> Result<(), IdentityError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/promote_secondaries"));
    fs::write(&path, b"1\n").map_err(|source| IdentityError::SetSysctl { path, source })
}

fn current_hostname() -> Result<String, IdentityError> {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .map_err(|source| IdentityError::GetHostname { source })
}

/// Rewrites /etc/hosts when the edit changes it; whether it did. A missing
/// file is created with just this host's line.
fn update_hosts(edit: &HostsEdit) -> Result<bool, IdentityError> {
    let path = Path::new(ETC_HOSTS);
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(IdentityError::ReadFile { path: path.to_path_buf(), source }),
    };
    let edited = hosts::edit(&text, edit);
    if edited == text {
        return Ok(false);
    }
    system::write_atomic(path, edited.as_bytes(), 0o644)?;
    Ok(true)
}

/// Removes `addresses` from `interface` after [`DEFERRED_REMOVAL_DELAY`], in
/// a child detached from the SSH session (own session, stdio on /dev/null)
/// so that the session can deliver this answer and close first. The child's
/// outcome goes to the kernel log (`dmesg`, the console).
fn remove_later(ip: &Path, interface: &str, addresses: &[Ipv4Cidr]) -> Result<(), IdentityError> {
    use nix::unistd::{fork, ForkResult};
    let threads = fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    if threads != 1 {
        return Err(IdentityError::NotSingleThreaded { threads });
    }
    // SAFETY: the process has one thread (checked just above), so the child
    // is a full copy with no lock held by a thread that does not exist in it.
    match unsafe { fork() }.map_err(|source| IdentityError::Detach { source })? {
        ForkResult::Parent { .. } => Ok(()),
        ForkResult::Child => {
            detach_stdio();
            std::thread::sleep(DEFERRED_REMOVAL_DELAY);
            for address in addresses {
                let outcome = match system::run(ip, &["addr", "del", &address.to_string(), "dev", interface]) {
                    Ok(_) => format!("removed {address} from {interface}"),
                    Err(e) => format!("could not remove {address} from {interface}: {}", e.into_answer().1.message),
                };
                let _ = fs::write("/dev/kmsg", format!("envclone-agent readdress: {outcome}\n"));
            }
            std::process::exit(0);
        }
    }
}

/// New session, stdin/stdout/stderr on /dev/null: the SSH server sees its
/// pipes close when the parent exits.
fn detach_stdio() {
    use std::os::fd::AsRawFd;
    let _ = nix::unistd::setsid();
    if let Ok(null) = fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Why the new address does not survive a reboot: which persistent network
/// configuration under `root` was left alone.
fn persistence_note(root: &Path) -> String {
    let has = |dir: &str, pred: &dyn Fn(&str) -> bool| {
        fs::read_dir(root.join(dir))
            .map(|entries| entries.filter_map(Result::ok).any(|e| pred(&e.file_name().to_string_lossy())))
            .unwrap_or(false)
    };
    let mut managers = Vec::new();
    if has("etc/netplan", &|n| n.ends_with(".yaml") || n.ends_with(".yml")) {
        managers.push("netplan (/etc/netplan)");
    }
    let interfaces = fs::read_to_string(root.join("etc/network/interfaces")).unwrap_or_default();
    if interfaces.lines().any(|l| l.trim_start().starts_with("iface ") && !l.contains(" loopback")) {
        managers.push("ifupdown (/etc/network/interfaces)");
    }
    if has("etc/NetworkManager/system-connections", &|_| true) {
        managers.push("NetworkManager (/etc/NetworkManager/system-connections)");
    }
    if has("etc/systemd/network", &|n| n.ends_with(".network")) {
        managers.push("systemd-networkd (/etc/systemd/network)");
    }
    if has("etc/sysconfig/network-scripts", &|n| n.starts_with("ifcfg-") && n != "ifcfg-lo") {
        managers.push("ifcfg (/etc/sysconfig/network-scripts)");
    }
    let cmdline = fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    let mut note = String::from("the address was changed live only");
    if cmdline.split_whitespace().any(|w| w.starts_with("envclone.ip=")) {
        note.push_str(
            "; the guest's init sets it from the kernel command line (envclone.ip=) at every boot, \
             so the domain's command line must change for it to last",
        );
    }
    if !managers.is_empty() {
        note.push_str(&format!("; not edited: {}", managers.join(", ")));
    } else if !note.contains("envclone.ip=") {
        note.push_str("; no persistent network configuration was recognised");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mac: &str, address: &str) -> ReaddressArgs {
        ReaddressArgs { mac: mac.into(), address: address.into(), gateway: None, hostname: None, old_address: None }
    }

    fn cidr(text: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(text).unwrap()
    }

    #[test]
    fn validate_accepts_a_full_request() {
        let mut full = args("52:54:00:AA:bb:01", "10.88.1.11/24");
        full.gateway = Some("10.88.1.1".into());
        full.hostname = Some("web-clone".into());
        full.old_address = Some("10.77.1.11".into());
        let request = validate(&full).unwrap();
        assert_eq!(request.mac.to_string(), "52:54:00:aa:bb:01");
        assert_eq!(request.gateway, Some(Ipv4Addr::new(10, 88, 1, 1)));
        assert_eq!(request.old_address, Some(Ipv4Addr::new(10, 77, 1, 11)));
    }

    #[test]
    fn validate_refuses_each_bad_argument_by_name() {
        type Spoil = fn(&mut ReaddressArgs);
        let table: [(&str, Spoil); 6] = [
            ("--mac", |a| a.mac = "52:54:00:aa:bb".into()),
            ("--address", |a| a.address = "10.88.1.0/24".into()),
            ("--gateway", |a| a.gateway = Some("10.99.1.1".into())),
            ("--gateway", |a| a.gateway = Some("10.88.1.11".into())),
            ("--hostname", |a| a.hostname = Some("web_clone".into())),
            ("--old-address", |a| a.old_address = Some("10.77.1".into())),
        ];
        for (option, spoil) in table {
            let mut bad = args("52:54:00:aa:bb:01", "10.88.1.11/24");
            spoil(&mut bad);
            let err = validate(&bad).unwrap_err();
            assert!(matches!(err, IdentityError::BadArgument { option: o, .. } if o == option), "{option}: {err:?}");
        }
    }

    #[test]
    fn addresses_are_read_from_busybox_and_iproute2_listings() {
        let listing = "3: d0    inet 10.77.1.12/24 scope global d0\\       valid_lft forever preferred_lft forever\n\
                       3: d0    inet 10.77.1.42/24 brd 10.77.1.255 scope global secondary d0\\       valid_lft forever\n\
                       3: d0    inet 169.254.1.1/16 scope link d0\n\
                       4: tun0    inet 10.8.0.1 peer 10.8.0.2/32 scope global tun0\n\
                       1: lo    inet 127.0.0.1/8 scope host lo\n";
        assert_eq!(global_addresses(listing), [cidr("10.77.1.12/24"), cidr("10.77.1.42/24"), cidr("10.8.0.1/32")]);
        assert!(global_addresses("").is_empty());
    }

    #[test]
    fn plan_replaces_all_or_only_the_old_address_and_is_idempotent() {
        let current = [cidr("10.77.1.12/24"), cidr("192.168.5.5/24")];
        let new = cidr("10.77.1.42/24");
        assert_eq!(plan(&current, new, None), AddressPlan { add: true, remove: current.to_vec() });
        assert_eq!(
            plan(&current, new, Some(Ipv4Addr::new(10, 77, 1, 12))),
            AddressPlan { add: true, remove: vec![cidr("10.77.1.12/24")] }
        );
        assert_eq!(plan(&[new], new, Some(Ipv4Addr::new(10, 77, 1, 12))), AddressPlan { add: false, remove: vec![] });
        // Same address, other prefix: replaced even when it is not --old-address.
        assert_eq!(
            plan(&[cidr("10.77.1.42/16")], new, Some(Ipv4Addr::new(10, 77, 1, 12))),
            AddressPlan { add: true, remove: vec![cidr("10.77.1.42/16")] }
        );
    }

    #[test]
    fn session_address_is_the_third_word_of_ssh_connection() {
        assert_eq!(session_address("10.77.1.1 40022 10.77.1.12 22"), Some(Ipv4Addr::new(10, 77, 1, 12)));
        assert_eq!(session_address("fd00::1 40022 fd00::12 22"), None);
        assert_eq!(session_address(""), None);
    }

    fn sys_tree(interfaces: &[(&str, &str, bool)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("envclone-agent-net-{}-{}", std::process::id(), interfaces.len()));
        let _ = fs::remove_dir_all(&root);
        for (name, mac, enslaved) in interfaces {
            let dir = root.join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
            if *enslaved {
                fs::write(dir.join("master"), "").unwrap();
            }
        }
        root
    }

    #[test]
    fn interface_is_found_by_mac_skipping_enslaved_ones() {
        let root = sys_tree(&[
            ("lo", "00:00:00:00:00:00", false),
            ("enp1s0", "52:54:00:aa:bb:01", false),
            ("enp2s0", "52:54:00:aa:bb:02", true),
            ("br0", "52:54:00:aa:bb:02", false),
        ]);
        assert_eq!(find_interface(&root, &"52:54:00:AA:BB:01".parse().unwrap()).unwrap(), "enp1s0");
        assert_eq!(find_interface(&root, &"52:54:00:aa:bb:02".parse().unwrap()).unwrap(), "br0");
        let err = find_interface(&root, &"52:54:00:aa:bb:03".parse().unwrap()).unwrap_err();
        assert!(matches!(err, IdentityError::NoSuchInterface { .. }), "{err:?}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn two_interfaces_with_one_mac_are_refused() {
        let root = sys_tree(&[("eth0", "52:54:00:aa:bb:01", false), ("eth0.10", "52:54:00:aa:bb:01", false)]);
        let err = find_interface(&root, &"52:54:00:aa:bb:01".parse().unwrap()).unwrap_err();
        assert!(
            matches!(err, IdentityError::AmbiguousMac { ref interfaces, .. } if interfaces == &["eth0", "eth0.10"])
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn persistence_note_names_what_was_left_alone() {
        let root = std::env::temp_dir().join(format!("envclone-agent-persist-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(root.join("proc/cmdline"), "console=ttyS0 envclone.ip=10.77.1.12/24\n").unwrap();
        let lab = persistence_note(&root);
        assert!(lab.contains("kernel command line (envclone.ip=)"), "{lab}");
        assert!(!lab.contains("not edited"), "{lab}");

        fs::write(root.join("proc/cmdline"), "console=ttyS0\n").unwrap();
        assert!(persistence_note(&root).contains("no persistent network configuration"));

        fs::create_dir_all(root.join("etc/netplan")).unwrap();
        fs::write(root.join("etc/netplan/50-cloud-init.yaml"), "network: {}\n").unwrap();
        fs::create_dir_all(root.join("etc/network")).unwrap();
        fs::write(root.join("etc/network/interfaces"), "iface lo inet loopback\niface ens3 inet static\n").unwrap();
        let distro = persistence_note(&root);
        assert!(distro.contains("not edited: netplan (/etc/netplan), ifupdown (/etc/network/interfaces)"), "{distro}");
        fs::remove_dir_all(&root).unwrap();
    }
}
