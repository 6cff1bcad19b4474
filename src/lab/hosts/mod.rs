//! A lab with two hosts (`envclone lab up --hosts 2`): `a` runs `demo`,
//! `b` runs nothing yet. Both are remote to the controller, as on a
//! management host: each is a network namespace with its own libvirtd,
//! mount namespace and storage ([`machine`]), reached only over a veth
//! ([`link`]) through libvirt's SSH transport and SSH, with host keys
//! pinned in the lab's `keys/hosts_known_hosts`.
//!
//! ```text
//!   controller (root netns; the lab's own libvirtd in envclone-<lab>, empty)
//!     │ 10.253.N.1/30                 │ 10.253.N.5/30
//!     │ ssh, qemu+libssh2             │ ssh, qemu+libssh2
//!   ┌─┴──────────────────────┐      ┌─┴──────────────────────┐
//!   │ a  10.253.N.2          │      │ b  10.253.N.6          │
//!   │ envclone-<lab>-a       │ .9   │ envclone-<lab>-b       │
//!   │ libvirtd, dropbear     ├──────┤ libvirtd, dropbear     │
//!   │ /srv/envclone (ext4)   │  .10 │ /srv/envclone (ext4)   │
//!   │ demo-web, demo-db      │      │                        │
//!   └────────────────────────┘      └────────────────────────┘
//! ```
//!
//! Each host carries envclone's start gate ([`gate`]): its hook is in place
//! before its libvirtd starts, and `lab up` grants demo its lease on a.
//!
//! The lab itself is the hardware: it may reach into a host (`nsenter`,
//! `/proc/PID/root`) to build it; envclone's operations may not, and the
//! config it writes only names remote URIs and paths on the hosts.

pub mod addressing;
pub mod config;
mod demo;
mod gate;
mod link;
mod machine;

pub use addressing::HOST_NAMES;
pub use demo::Ingredients;
pub use link::{LinkRate, RateSetting};

use super::{host, keys, namespace, topology, Lab, LabError};
use crate::host::gate::Wanted;
use crate::hypervisor::{Hypervisor, LibvirtHypervisor};
use addressing::Addressing;
use machine::Machine;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

/// Where each host keeps its images: a directory only that host sees.
pub const STORAGE: &str = "/srv/envclone";

/// Tools a two-host lab needs beyond the one-host lab's.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("nsenter", "util-linux"),
    ("tc", "iproute2"),
    ("virsh", "libvirt-clients"),
    ("virt-ssh-helper", "libvirt-clients"),
];

/// How many hosts a lab has: one (the controller's own libvirtd runs
/// `demo`) or two (`a` runs `demo`, `b` is empty, both remote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HostCount {
    One,
    Two,
}

impl HostCount {
    pub fn from_arg(count: u8) -> Result<Self, LabError> {
        match count {
            1 => Ok(HostCount::One),
            2 => Ok(HostCount::Two),
            other => Err(LabError::BadHostCount { asked: other }),
        }
    }

    /// What a lab whose config is `config` was brought up with.
    pub fn of(config: &crate::config::Config) -> Self {
        if config.hosts.is_empty() {
            HostCount::One
        } else {
            HostCount::Two
        }
    }

    pub fn count(self) -> u8 {
        match self {
            HostCount::One => 1,
            HostCount::Two => 2,
        }
    }

    /// `--hosts`, else what the lab was brought up with, else one. A lab
    /// is never turned into the other kind in place.
    pub fn resolve(lab: &str, asked: Option<u8>, previous: Option<HostCount>) -> Result<Self, LabError> {
        let asked = asked.map(HostCount::from_arg).transpose()?;
        match (asked, previous) {
            (Some(asked), Some(has)) if asked != has => {
                Err(LabError::HostCountMismatch { lab: lab.to_string(), has: has.count(), asked: asked.count() })
            }
            (Some(count), _) | (None, Some(count)) => Ok(count),
            (None, None) => Ok(HostCount::One),
        }
    }
}

/// A host as `lab up` left it.
#[derive(Debug, Clone, Serialize)]
pub struct HostUpReport {
    pub name: String,
    pub netns: String,
    pub address: String,
    pub libvirt_uri: String,
    /// Seconds one `list` over the remote URI took (SSH login included).
    pub libvirt_over_ssh_seconds: f64,
}

/// A host as `lab status` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub netns: String,
    pub address: String,
    pub libvirtd_running: bool,
    pub ssh_up: bool,
    pub link_up: bool,
    /// The rate its link is shaped to (tc's spelling), if it is.
    pub rate: Option<String>,
    pub domains: Vec<HostDomain>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostDomain {
    pub name: String,
    pub state: String,
}

/// What `host-down` or `host-up` did, and the host afterwards.
#[derive(Debug, Clone, Serialize)]
pub struct HostPowerReport {
    /// Processes SIGKILLed (`host-down`; 0 when the host was down already).
    pub processes_killed: usize,
    pub host: HostStatus,
}

/// What `lab link` left on the host's link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    pub host: String,
    /// Both ends: the controller's, then the host's.
    pub devices: [String; 2],
    pub rate: Option<String>,
}

/// What `lab down` removed of one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostDownReport {
    pub name: String,
    pub domains_removed: Vec<String>,
    pub networks_removed: Vec<String>,
    pub processes_killed: usize,
    pub netns_removed: bool,
}

/// The hosts of one lab.
#[derive(Debug)]
pub struct LabHosts<'l> {
    lab: &'l Lab,
    plan: Addressing,
}

impl<'l> LabHosts<'l> {
    pub fn new(lab: &'l Lab) -> Self {
        LabHosts { lab, plan: Addressing::new(lab.name()) }
    }

    /// Whether this lab has (or had, half made) hosts.
    pub fn present(&self) -> bool {
        self.lab.paths().hosts().exists() || HOST_NAMES.iter().any(|h| namespace::exists(&self.plan.netns(h)))
    }

    fn machine(&self, name: &str) -> Result<Machine, LabError> {
        let address = self.plan.host_address(name).ok_or_else(|| LabError::UnknownHost {
            host: name.to_string(),
            known: if self.present() { HOST_NAMES.iter().map(|h| h.to_string()).collect() } else { Vec::new() },
        })?;
        Ok(Machine::new(name, self.plan.netns(name), address, &self.lab.paths().hosts()))
    }

    fn machines(&self) -> Result<Vec<Machine>, LabError> {
        HOST_NAMES.iter().map(|name| self.machine(name)).collect()
    }

    /// A named host of a lab that has hosts (else [`LabError::UnknownHost`]).
    fn existing(&self, name: &str) -> Result<Machine, LabError> {
        if !self.present() {
            return Err(LabError::UnknownHost { host: name.to_string(), known: Vec::new() });
        }
        self.machine(name)
    }

    pub fn check_tools() -> Result<(), LabError> {
        host::check(HOST_TOOLS)
    }

    /// Brings both hosts and their links up and `demo` onto host a (each
    /// step skipped when done). The VMs that run an older root image.
    pub fn up(
        &self,
        parts: &Ingredients<'_>,
        progress: &dyn Fn(&str),
    ) -> Result<(Vec<&'static str>, Vec<HostUpReport>), LabError> {
        if let Some((device, address)) = link::subnet_taken(&self.plan)? {
            return Err(LabError::SubnetInUse { subnet: format!("{}/24", self.plan.subnet()), device, address });
        }
        let machines = self.machines()?;
        for machine in &machines {
            namespace::ensure(&machine.netns)?;
        }
        progress("links: controller to each host, a to b");
        link::ensure(&self.plan)?;
        let mut known_hosts = Vec::new();
        for machine in &machines {
            progress(&format!("host {}: storage, libvirtd, dropbear at {}", machine.name, machine.address));
            let key = self.power_on(machine, parts.authorized_key)?;
            known_hosts.push((machine.address.to_string(), key.public_line));
        }
        let entries: Vec<(&str, u16, &str)> = known_hosts.iter().map(|(a, k)| (a.as_str(), 22, k.as_str())).collect();
        let file = self.lab.paths().hosts_known_hosts();
        fs::write(&file, keys::known_hosts(&entries)).map_err(|source| LabError::io("write", &file, source))?;
        progress("start gate: protected domains and leases");
        self.grant_leases(&machines, parts, progress)?;
        progress("demo on host a");
        let stale = demo::place(&machines[0], parts)?;
        let mut reports = Vec::new();
        for machine in &machines {
            reports.push(self.check_remote(machine)?);
        }
        Ok((stale, reports))
    }

    /// Each host's protected list and a fresh lease for every environment
    /// on it that is not failed over (so demo starts on a; one a standby
    /// serves does not, and the gate says why).
    fn grant_leases(
        &self,
        machines: &[Machine],
        parts: &Ingredients<'_>,
        progress: &dyn Fn(&str),
    ) -> Result<(), LabError> {
        let config = self.config(topology::config(self.lab.paths(), &self.lab.netns(), parts.domain_type));
        let failed_over = match failed_over(&config) {
            Ok(envs) => envs,
            Err(e) => {
                progress(&format!("cannot read the lab's catalog ({e}): no environment gets a lease"));
                config.environments.keys().cloned().collect()
            }
        };
        for machine in machines {
            gate::grant(&machine.libvirt(), &Wanted::for_host(&config, &machine.name, &failed_over))?;
        }
        Ok(())
    }

    /// [`Machine::start`], from a clean slate when the host is off: a boot
    /// finds none of the devices its libvirtd made before.
    fn power_on(&self, machine: &Machine, authorized_key: &str) -> Result<keys::KeyPair, LabError> {
        if !machine.libvirtd_running() {
            link::clear_host_devices(&self.plan, &machine.name)?;
        }
        machine.start(authorized_key)
    }

    /// One `list` through the URI the config names: proves dropbear, the
    /// pinned host key, the login key and virt-ssh-helper work together.
    fn check_remote(&self, machine: &Machine) -> Result<HostUpReport, LabError> {
        let settings = config::host_settings(self.lab.paths(), &self.plan, &machine.name);
        let started = Instant::now();
        LibvirtHypervisor::connect(&settings.libvirt_uri)
            .and_then(|hv| hv.domain_names())
            .map_err(LabError::hypervisor(format!("reach host {}'s libvirt over SSH", machine.name)))?;
        Ok(HostUpReport {
            name: machine.name.clone(),
            netns: machine.netns.clone(),
            address: machine.address.to_string(),
            libvirt_uri: settings.libvirt_uri,
            libvirt_over_ssh_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The config of this lab with its hosts (see [`config::with_hosts`]).
    pub fn config(&self, one_host: crate::config::Config) -> crate::config::Config {
        config::with_hosts(one_host, self.lab.paths(), &self.plan)
    }

    /// Where host a keeps a demo VM's console log, as the controller can
    /// read it while a runs.
    pub fn console_log(&self, domain: &str) -> PathBuf {
        let on_host = demo::console_log(domain);
        self.machine(HOST_NAMES[0]).and_then(|a| a.inside(&on_host)).unwrap_or(on_host)
    }

    /// Every host (none for a one-host lab).
    pub fn status(&self) -> Result<Vec<HostStatus>, LabError> {
        if !self.present() {
            return Ok(Vec::new());
        }
        self.machines()?.iter().map(|machine| self.host_status(machine)).collect()
    }

    fn host_status(&self, machine: &Machine) -> Result<HostStatus, LabError> {
        let libvirtd_running = machine.libvirtd_running();
        let domains = if libvirtd_running { domains(machine)? } else { Vec::new() };
        Ok(HostStatus {
            name: machine.name.clone(),
            netns: machine.netns.clone(),
            address: machine.address.to_string(),
            libvirtd_running,
            ssh_up: machine.ssh_up(),
            link_up: link::is_up(&self.plan, &machine.name),
            rate: link::rate(&self.plan, &machine.name),
            domains,
        })
    }

    /// A power loss of `name`: every process of the host SIGKILLed, its
    /// links cut. Definitions, autostart flags and disks stay as they were.
    pub fn host_down(&self, name: &str) -> Result<HostPowerReport, LabError> {
        let machine = self.existing(name)?;
        let processes_killed = machine.kill()?;
        link::set_host_links(&self.plan, name, false)?;
        Ok(HostPowerReport { processes_killed, host: self.host_status(&machine)? })
    }

    /// Power back on: links up, disk mounted, daemons and dropbear started.
    /// libvirtd starts the domains whose autostart is on, as at a boot.
    pub fn host_up(&self, name: &str) -> Result<HostPowerReport, LabError> {
        let machine = self.existing(name)?;
        if !namespace::exists(&machine.netns) {
            return Err(LabError::HostMissing { host: name.to_string(), lab: self.lab.name().to_string() });
        }
        link::set_host_links(&self.plan, name, true)?;
        let client = keys::ensure_client_key(&self.lab.paths().client_key())?;
        self.power_on(&machine, &client.public_line)?;
        Ok(HostPowerReport { processes_killed: 0, host: self.host_status(&machine)? })
    }

    /// Shapes (or unshapes) both directions of the host's link.
    pub fn link(&self, name: &str, rate: &RateSetting) -> Result<LinkReport, LabError> {
        let machine = self.existing(name)?;
        if !namespace::exists(&machine.netns) {
            return Err(LabError::HostMissing { host: name.to_string(), lab: self.lab.name().to_string() });
        }
        link::shape(&self.plan, name, rate)?;
        Ok(LinkReport {
            host: name.to_string(),
            devices: [self.plan.controller_device(name), addressing::UPLINK.to_string()],
            rate: link::rate(&self.plan, name),
        })
    }

    /// Removes both hosts: their domains and networks, daemons, every
    /// process left in their namespaces, their links and namespaces (the
    /// storage mounts go with the last process of each mount namespace).
    pub fn down(&self) -> Result<Vec<HostDownReport>, LabError> {
        if !self.present() {
            return Ok(Vec::new());
        }
        let removed = self.machines()?.iter().map(|machine| self.remove(machine)).collect::<Result<_, _>>()?;
        link::remove_guard_route(&self.plan)?;
        Ok(removed)
    }

    fn remove(&self, machine: &Machine) -> Result<HostDownReport, LabError> {
        let mut report = HostDownReport { name: machine.name.clone(), ..HostDownReport::default() };
        if machine.libvirtd_running() {
            (report.domains_removed, report.networks_removed) = super::daemons::clear(&connect(machine)?)?;
        }
        super::daemons::stop(&machine.libvirt())?;
        for pid in namespace::pids(&machine.netns)? {
            super::daemons::terminate(nix::unistd::Pid::from_raw(pid))?;
            report.processes_killed += 1;
        }
        // Deleting one end of a veth deletes both; the namespace would take
        // them too, but only once the kernel gets round to freeing it.
        link::remove(&self.plan, &machine.name)?;
        if namespace::exists(&machine.netns) {
            namespace::delete(&machine.netns)?;
            report.netns_removed = true;
        }
        Ok(report)
    }
}

/// The environments of `config` whose role switch is in force, from the
/// lab's catalog (none before it exists).
fn failed_over(config: &crate::config::Config) -> Result<BTreeSet<String>, crate::catalog::CatalogError> {
    let state = &config.controller.state_dir;
    if !state.join(crate::catalog::CATALOG_FILE).exists() {
        return Ok(BTreeSet::new());
    }
    let catalog = crate::catalog::Catalog::open(state)?;
    let mut envs = BTreeSet::new();
    for env in config.environments.keys() {
        if catalog.switch_in_force(env)?.is_some() {
            envs.insert(env.clone());
        }
    }
    Ok(envs)
}

fn connect(machine: &Machine) -> Result<LibvirtHypervisor, LabError> {
    LibvirtHypervisor::connect(&machine.libvirt().uri())
        .map_err(LabError::hypervisor(format!("connect to host {}'s libvirtd", machine.name)))
}

fn domains(machine: &Machine) -> Result<Vec<HostDomain>, LabError> {
    let hv = connect(machine)?;
    let mut domains = Vec::new();
    for name in hv.domain_names().map_err(LabError::hypervisor("list domains"))? {
        let state = hv.domain(&name).map_err(LabError::hypervisor(format!("look up {name}")))?.state;
        domains.push(HostDomain { name, state: format!("{state:?}").to_lowercase() });
    }
    Ok(domains)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_count_is_one_or_two() {
        assert_eq!(HostCount::from_arg(1).unwrap(), HostCount::One);
        assert_eq!(HostCount::from_arg(2).unwrap(), HostCount::Two);
        for bad in [0, 3, 255] {
            assert!(matches!(HostCount::from_arg(bad), Err(LabError::BadHostCount { asked }) if asked == bad));
        }
    }

    #[test]
    fn host_count_defaults_to_what_the_lab_has_else_one() {
        assert_eq!(HostCount::resolve("l", None, None).unwrap(), HostCount::One);
        assert_eq!(HostCount::resolve("l", None, Some(HostCount::Two)).unwrap(), HostCount::Two);
        assert_eq!(HostCount::resolve("l", Some(2), None).unwrap(), HostCount::Two);
        assert_eq!(HostCount::resolve("l", Some(2), Some(HostCount::Two)).unwrap(), HostCount::Two);
    }

    #[test]
    fn host_count_refuses_to_change_a_lab_in_place() {
        let refused = HostCount::resolve("l", Some(2), Some(HostCount::One));
        assert!(matches!(refused, Err(LabError::HostCountMismatch { has: 1, asked: 2, .. })));
    }

    #[test]
    fn host_down_of_an_unknown_host_names_the_known_ones() {
        let labs = tempfile::tempdir().unwrap();
        let lab = Lab::new("t", labs.path(), labs.path()).unwrap();
        fs::create_dir_all(lab.paths().hosts()).unwrap();

        let refused = LabHosts::new(&lab).host_down("c");

        assert!(
            matches!(refused, Err(LabError::UnknownHost { ref host, ref known }) if host == "c" && known == &["a", "b"])
        );
    }

    #[test]
    fn bad_host_counts_are_usage_errors_and_unknown_hosts_not_found() {
        use crate::error::Failure;
        use crate::exit::ExitCode;
        assert_eq!(LabError::BadHostCount { asked: 3 }.exit_code(), ExitCode::Usage);
        let mismatch = LabError::HostCountMismatch { lab: "l".into(), has: 1, asked: 2 };
        assert_eq!(mismatch.exit_code(), ExitCode::Usage);
        assert_eq!(LabError::UnknownHost { host: "c".into(), known: vec![] }.exit_code(), ExitCode::NotFound);
    }

    #[test]
    fn host_commands_on_a_one_host_lab_are_refused() {
        let labs = tempfile::tempdir().unwrap();
        let lab = Lab::new("t", labs.path(), labs.path()).unwrap();

        let refused = LabHosts::new(&lab).host_up("a");

        assert!(matches!(refused, Err(LabError::UnknownHost { ref known, .. }) if known.is_empty()));
    }
}
