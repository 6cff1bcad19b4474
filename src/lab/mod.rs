//! The lab: a sandbox of throwaway VMs to try envclone on, on any KVM host
//! or on a machine without one (TCG).
//!
//! A lab is a network namespace holding a private libvirtd (see
//! [`daemons`]) whose guests boot the host's Debian kernel from a tiny
//! cached root image ([`image`]); [`topology`] says what the `demo`
//! environment is. [`extra`] adds more environments next to it, as data
//! (VM count, RAM, a data disk), for [`bench`], which measures envclone on
//! them. Everything a lab makes sits under its root directory, in
//! its namespace, or in its private libvirtd, so `down` removes exactly that.

pub mod bench;
mod daemons;
mod error;
pub mod extra;
mod host;
pub mod hosts;
mod image;
mod keys;
mod namespace;
mod paths;
pub mod topology;

pub use error::LabError;
pub use paths::{LabPaths, DEFAULT_CACHE_DIR, DEFAULT_LABS_DIR};

use crate::config::DomainType;
use crate::guest::{AgentClient, GuestError, GuestSession};
use crate::hypervisor::{DomainState, HvError, Hypervisor, LibvirtHypervisor};
use crate::wait;
use hosts::{HostCount, HostDownReport, HostPowerReport, HostStatus, HostUpReport, LabHosts, LinkReport, RateSetting};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use topology::{KernelFiles, LabVm, VMS};

#[derive(Debug, Clone)]
pub struct Lab {
    name: String,
    paths: LabPaths,
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub domain_type: DomainType,
    pub agent_binary: PathBuf,
    /// How long a guest may take from start until its agent answers.
    pub boot_timeout: Duration,
    /// One: demo on the controller's libvirtd. Two: hosts a and b, demo on a.
    pub hosts: HostCount,
}

/// Where `up` put `demo`, and the config that says so.
struct Placed {
    /// The VMs that run an older root image.
    stale: Vec<&'static str>,
    config: crate::config::Config,
    /// Each VM's boot log, in [`VMS`] order.
    console_logs: Vec<PathBuf>,
    hosts: Vec<HostUpReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub lab: String,
    pub netns: String,
    pub config: PathBuf,
    pub domain_type: String,
    pub root_image: PathBuf,
    pub vms: Vec<VmReport>,
    /// A two-host lab's hosts (empty for a one-host lab).
    pub hosts: Vec<HostUpReport>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub vm: String,
    pub domain: String,
    pub address: String,
    pub agent_hostname: String,
    pub agent_version: String,
    /// Seconds from `up` starting until this agent answered.
    pub ready_after: f64,
    /// The VM was made from an older root image (e.g. before the agent was
    /// rebuilt); `lab down` and `lab up` give it the current one.
    pub stale_image: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub lab: String,
    pub netns: String,
    pub netns_exists: bool,
    pub libvirtd_running: bool,
    pub config: Option<PathBuf>,
    pub domains: Vec<DomainStatus>,
    pub networks: Vec<String>,
    /// A two-host lab's hosts and their domains (empty for a one-host lab).
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainStatus {
    pub name: String,
    pub state: String,
    /// `None` when the domain is not running or no agent is configured for it.
    pub agent: Option<Result<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub lab: String,
    pub domains_removed: Vec<String>,
    pub networks_removed: Vec<String>,
    pub processes_killed: usize,
    pub netns_removed: bool,
    /// A two-host lab's hosts, each with what was removed of it.
    pub hosts_removed: Vec<HostDownReport>,
    pub dir_removed: Option<PathBuf>,
    pub cache_removed: Option<PathBuf>,
}

impl Lab {
    pub fn new(name: &str, labs_dir: &Path, cache_dir: &Path) -> Result<Lab, LabError> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(LabError::BadName { name: name.to_string() });
        }
        Ok(Lab { name: name.to_string(), paths: LabPaths::new(labs_dir, cache_dir, name) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> String {
        format!("envclone-{}", self.name)
    }

    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }

    /// Shell lines that point later commands at this lab.
    pub fn env_exports(&self) -> String {
        format!("export ENVCLONE_CONFIG={}\nexport ENVCLONE_LAB={}\n", self.paths.config().display(), self.name)
    }

    /// Only one `lab up` or `lab down` at a time changes the labs of one
    /// directory: a second caller is refused at once rather than racing the
    /// first (a `down` would kill the QEMU an `up` is starting). The lock is
    /// on the labs directory itself, so it leaves no file behind.
    fn lock(&self) -> Result<Flock<fs::File>, LabError> {
        let labs_dir = self.paths.root.parent().unwrap_or(Path::new("/")).to_path_buf();
        fs::create_dir_all(&labs_dir).map_err(|source| LabError::io("create", &labs_dir, source))?;
        let dir = fs::File::open(&labs_dir).map_err(|source| LabError::io("open", &labs_dir, source))?;
        Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
            Errno::EWOULDBLOCK => LabError::Busy { labs_dir: labs_dir.clone() },
            other => LabError::io("lock", &labs_dir, other.into()),
        })
    }

    /// Brings the lab up; each step is skipped when already done, so a
    /// second `up` only waits for the agents.
    pub fn up(&self, options: &UpOptions, progress: &dyn Fn(&str)) -> Result<UpReport, LabError> {
        let started = Instant::now();
        let _lock = self.lock()?;
        host::check_tools()?;
        if options.hosts == HostCount::Two {
            LabHosts::check_tools()?;
        }
        let kernel = find_kernel()?;
        for dir in [
            self.paths.root.clone(),
            self.paths.images(),
            self.paths.state(),
            self.paths.console_log("x").with_file_name(""),
        ] {
            fs::create_dir_all(&dir).map_err(|source| LabError::io("create", &dir, source))?;
        }
        let netns = self.netns();
        progress(&format!("namespace {netns}"));
        namespace::ensure(&netns)?;
        progress("private libvirtd");
        daemons::start(&self.paths.libvirt_instance(), &netns, "")?;
        let hv = self.connect()?;

        let client_key = keys::ensure_client_key(&self.paths.client_key())?;
        let guest_keys = self.guest_keys()?;

        progress("root image (cached by content)");
        let root_image = image::root_image(&self.paths.cache, &options.agent_binary)?;

        let one_host = topology::config(&self.paths, &netns, options.domain_type);
        let placed = match options.hosts {
            HostCount::One => {
                let stale =
                    self.place_demo_here(&hv, options, &kernel, &root_image, &guest_keys, &client_key, progress)?;
                let console_logs = VMS.iter().map(|vm| self.paths.console_log(&vm.domain())).collect();
                Placed { stale, config: one_host, console_logs, hosts: Vec::new() }
            }
            HostCount::Two => {
                let lab_hosts = LabHosts::new(self);
                let parts = hosts::Ingredients {
                    domain_type: options.domain_type,
                    kernel: &kernel,
                    root_image: &root_image,
                    guest_keys: &guest_keys,
                    authorized_key: &client_key.public_line,
                    staging: &self.paths.root,
                };
                let (stale, reports) = lab_hosts.up(&parts, progress)?;
                let console_logs = VMS.iter().map(|vm| lab_hosts.console_log(&vm.domain())).collect();
                Placed { stale, config: lab_hosts.config(one_host), console_logs, hosts: reports }
            }
        };
        for name in &placed.stale {
            progress(&format!(
                "VM {name} runs an older root image (agent rebuilt?): `envclone lab down` then `up` to renew it"
            ));
        }
        write(&self.paths.config(), crate::config::to_toml(&placed.config).as_bytes())?;

        progress("waiting for the agents to answer");
        let mut vms = self.wait_for_agents(&placed.config, &placed.console_logs, options.boot_timeout, started)?;
        for report in &mut vms {
            report.stale_image = placed.stale.contains(&report.vm.as_str());
        }
        Ok(UpReport {
            lab: self.name.clone(),
            netns,
            config: self.paths.config(),
            domain_type: options.domain_type.to_string(),
            root_image,
            vms,
            hosts: placed.hosts,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Each guest's SSH host key (made once), in [`VMS`] order, with the
    /// guests' known_hosts written from them.
    fn guest_keys(&self) -> Result<Vec<keys::KeyPair>, LabError> {
        let mut host_keys = Vec::new();
        for vm in &VMS {
            host_keys.push(keys::ensure_dropbear_key(
                &self.paths.keys().join("hosts").join(format!("{}.dropbear", vm.name)),
            )?);
        }
        let entries: Vec<(String, u16, &str)> = VMS
            .iter()
            .zip(&host_keys)
            .map(|(vm, key)| (vm.address.to_string(), 22, key.public_line.as_str()))
            .collect();
        let entries: Vec<(&str, u16, &str)> = entries.iter().map(|(a, p, k)| (a.as_str(), *p, *k)).collect();
        write(&self.paths.known_hosts(), keys::known_hosts(&entries).as_bytes())?;
        Ok(host_keys)
    }

    /// `demo` on the controller's own libvirtd (the one-host lab); the VMs
    /// that run an older root image.
    #[allow(clippy::too_many_arguments)]
    fn place_demo_here(
        &self,
        hv: &LibvirtHypervisor,
        options: &UpOptions,
        kernel: &KernelFiles,
        root_image: &Path,
        guest_keys: &[keys::KeyPair],
        client_key: &keys::KeyPair,
        progress: &dyn Fn(&str),
    ) -> Result<Vec<&'static str>, LabError> {
        ensure_network(hv)?;
        let mut stale = Vec::new();
        for (vm, host_key) in VMS.iter().zip(guest_keys) {
            progress(&format!("VM {} ({})", vm.name, vm.domain()));
            if self.ensure_vm(hv, vm, options.domain_type, kernel, root_image, host_key, &client_key.public_line)? {
                stale.push(vm.name);
            }
        }
        Ok(stale)
    }

    #[allow(clippy::too_many_arguments)]
    fn ensure_vm(
        &self,
        hv: &LibvirtHypervisor,
        vm: &LabVm,
        domain_type: DomainType,
        kernel: &KernelFiles,
        root_image: &Path,
        host_key: &keys::KeyPair,
        authorized_key: &str,
    ) -> Result<bool, LabError> {
        let domain = vm.domain();
        let mut stale = false;
        let state = match hv.domain(&domain) {
            Ok(existing) => {
                // The cached root image sits at the bottom of vda's chain.
                let vda = existing.def.disks().into_iter().next();
                stale = !vda.is_some_and(|disk| {
                    disk.source.as_deref() == Some(root_image) || disk.backing.iter().any(|b| b == root_image)
                });
                existing.state
            }
            Err(HvError::NoSuchDomain { .. }) => {
                let root = self.paths.images().join(format!("{}-root.qcow2", vm.name));
                let seed = self.paths.images().join(format!("{}-seed.qcow2", vm.name));
                image::overlay(root_image, &root)?;
                let host_key_bytes = fs::read(&host_key.private_dropbear)
                    .map_err(|source| LabError::io("read", &host_key.private_dropbear, source))?;
                image::seed_image(&seed, &vm.identity_files(&host_key_bytes, authorized_key))?;
                let def = vm.domain_def(domain_type, kernel, vec![root, seed], &self.paths.console_log(&domain));
                hv.define_domain(&def).map_err(LabError::hypervisor(format!("define {domain}")))?;
                DomainState::ShutOff
            }
            Err(e) => return Err(LabError::hypervisor(format!("look up {domain}"))(e)),
        };
        if !state.is_active() {
            hv.start_domain(&domain).map_err(LabError::hypervisor(format!("start {domain}")))?;
        }
        Ok(stale)
    }

    /// Polls every agent in parallel; each VM boots on its own clock.
    /// `console_logs`: where each VM's boot log is, in [`VMS`] order.
    fn wait_for_agents(
        &self,
        config: &crate::config::Config,
        console_logs: &[PathBuf],
        deadline: Duration,
        started: Instant,
    ) -> Result<Vec<VmReport>, LabError> {
        let options = crate::guest::endpoint::ssh_options(&config.controller);
        let environment = &config.environments[topology::ENVIRONMENT];
        std::thread::scope(|scope| {
            let waits: Vec<_> = VMS
                .iter()
                .zip(console_logs)
                .map(|(vm, console_log)| {
                    let options = &options;
                    let target = crate::guest::endpoint::ssh_target(&environment.vms[vm.name].agent);
                    let console_log = console_log.clone();
                    scope.spawn(move || {
                        let status = wait::until(
                            &format!("the agent in {}", vm.name),
                            deadline,
                            Duration::from_millis(500),
                            || -> Result<_, GuestError> {
                                let session = GuestSession::connect(&target, options)?;
                                let envelope_status = AgentClient::new(&session).status()?;
                                Ok(Some(envelope_status))
                            },
                        )
                        .map_err(|wait::WaitError::Timeout { waited, last, .. }| LabError::AgentTimeout {
                            vm: vm.name.to_string(),
                            waited,
                            console_log,
                            source: last.map(Box::new),
                        })?;
                        Ok(VmReport {
                            vm: vm.name.to_string(),
                            domain: vm.domain(),
                            address: vm.address.to_string(),
                            agent_hostname: status.hostname,
                            agent_version: envclone_agent::AGENT_VERSION.to_string(),
                            ready_after: started.elapsed().as_secs_f64(),
                            stale_image: false,
                        })
                    })
                })
                .collect();
            waits
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    }

    pub fn status(&self) -> Result<LabStatus, LabError> {
        let netns = self.netns();
        let config_path = self.paths.config();
        let config = crate::config::load(&config_path).ok();
        let mut status = LabStatus {
            lab: self.name.clone(),
            netns_exists: namespace::exists(&netns),
            netns,
            libvirtd_running: daemons::is_running(&self.paths.libvirt_instance()),
            config: config.as_ref().map(|_| config_path),
            domains: Vec::new(),
            networks: Vec::new(),
            hosts: LabHosts::new(self).status()?,
        };
        if !status.libvirtd_running {
            return Ok(status);
        }
        let hv = self.connect()?;
        status.networks = hv.network_names().map_err(LabError::hypervisor("list networks"))?;
        for name in hv.domain_names().map_err(LabError::hypervisor("list domains"))? {
            let state = hv.domain(&name).map_err(LabError::hypervisor(format!("look up {name}")))?.state;
            let agent = match (&config, state) {
                (Some(config), DomainState::Running) => probe_agent(config, &name),
                _ => None,
            };
            status.domains.push(DomainStatus { name, state: format!("{state:?}").to_lowercase(), agent });
        }
        Ok(status)
    }

    /// Removes every domain and network of the lab's libvirtd, the daemons,
    /// every process left in the namespace, the namespace and the lab's
    /// directory. Safe to run on a half-made or already removed lab.
    pub fn down(&self, purge_cache: bool) -> Result<DownReport, LabError> {
        let _lock = self.lock()?;
        let mut report = DownReport { lab: self.name.clone(), ..DownReport::default() };
        report.hosts_removed = LabHosts::new(self).down()?;
        if daemons::is_running(&self.paths.libvirt_instance()) {
            (report.domains_removed, report.networks_removed) = daemons::clear(&self.connect()?)?;
        }
        daemons::stop(&self.paths.libvirt_instance())?;
        // Whatever still lives in the namespace (a QEMU orphaned by a
        // crashed libvirtd, a stray shell) belongs to the lab.
        let netns = self.netns();
        for pid in namespace::pids(&netns)? {
            daemons::terminate(nix::unistd::Pid::from_raw(pid))?;
            report.processes_killed += 1;
        }
        if namespace::exists(&netns) {
            namespace::delete(&netns)?;
            report.netns_removed = true;
        }
        // Clones of the lab's environments left undestroyed: their gateway
        // namespaces live outside the lab's (their veths went with it).
        // (The extra environments' clones too: their catalog is their own.)
        let extra_gateways = extra::ExtraLab::new(self).clone_gateways();
        for clone_netns in self.clone_gateways().into_iter().chain(extra_gateways) {
            if namespace::exists(&clone_netns) {
                namespace::delete(&clone_netns)?;
            }
        }
        if self.paths.root.exists() {
            fs::remove_dir_all(&self.paths.root).map_err(|source| LabError::io("remove", &self.paths.root, source))?;
            report.dir_removed = Some(self.paths.root.clone());
        }
        if purge_cache && self.paths.cache.exists() {
            fs::remove_dir_all(&self.paths.cache)
                .map_err(|source| LabError::io("remove", &self.paths.cache, source))?;
            report.cache_removed = Some(self.paths.cache.clone());
        }
        Ok(report)
    }

    /// `lab host-down NAME`: a power loss of one of the lab's hosts.
    pub fn host_down(&self, host: &str) -> Result<HostPowerReport, LabError> {
        let _lock = self.lock()?;
        LabHosts::new(self).host_down(host)
    }

    /// `lab host-up NAME`: power that host back on.
    pub fn host_up(&self, host: &str) -> Result<HostPowerReport, LabError> {
        let _lock = self.lock()?;
        LabHosts::new(self).host_up(host)
    }

    /// `lab link NAME --rate RATE|none`: shape that host's link.
    pub fn link(&self, host: &str, rate: &RateSetting) -> Result<LinkReport, LabError> {
        let _lock = self.lock()?;
        LabHosts::new(self).link(host, rate)
    }

    /// The gateway namespaces of the clones in the lab's catalog.
    fn clone_gateways(&self) -> Vec<String> {
        let state = self.paths.state();
        if !state.join(crate::catalog::CATALOG_FILE).exists() {
            return Vec::new();
        }
        match crate::catalog::Catalog::open(&state).and_then(|catalog| catalog.clones()) {
            Ok(clones) => clones.into_iter().filter_map(|c| c.resources.gateway_netns).collect(),
            Err(e) => {
                tracing::warn!("lab down: cannot list the lab's clones: {e}");
                Vec::new()
            }
        }
    }

    fn connect(&self) -> Result<LibvirtHypervisor, LabError> {
        LibvirtHypervisor::connect(&self.paths.libvirt_uri())
            .map_err(LabError::hypervisor("connect to the lab's libvirtd"))
    }
}

pub(crate) fn ensure_network(hv: &LibvirtHypervisor) -> Result<(), LabError> {
    let network = match hv.network(topology::NETWORK) {
        Ok(network) => network,
        Err(HvError::NoSuchNetwork { .. }) => {
            hv.define_network(&topology::network_def()).map_err(LabError::hypervisor("define the lab network"))?
        }
        Err(e) => return Err(LabError::hypervisor("look up the lab network")(e)),
    };
    if !network.active {
        hv.start_network(topology::NETWORK).map_err(LabError::hypervisor("start the lab network"))?;
    }
    Ok(())
}

/// The agent's hostname, or why it did not answer.
fn probe_agent(config: &crate::config::Config, domain: &str) -> Option<Result<String, String>> {
    let vm = config.environments.values().flat_map(|env| env.vms.values()).find(|vm| vm.domain == domain)?;
    let options = crate::guest::endpoint::ssh_options(&config.controller);
    let answer = GuestSession::connect(&crate::guest::endpoint::ssh_target(&vm.agent), &options)
        .and_then(|session| AgentClient::new(&session).status())
        .map(|status| status.hostname)
        .map_err(|e| e.to_string());
    Some(answer)
}

/// The newest /boot/vmlinuz-* that has its initrd next to it.
fn find_kernel() -> Result<KernelFiles, LabError> {
    let boot = Path::new("/boot");
    let mut kernels: Vec<KernelFiles> = fs::read_dir(boot)
        .map_err(|source| LabError::io("read", boot, source))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?;
            let initrd = boot.join(format!("initrd.img-{version}"));
            initrd.exists().then(|| KernelFiles { kernel: entry.path(), initrd })
        })
        .collect();
    kernels.sort_by(|a, b| a.kernel.cmp(&b.kernel));
    kernels.pop().ok_or(LabError::NoKernel)
}

fn write(path: &Path, content: &[u8]) -> Result<(), LabError> {
    fs::write(path, content).map_err(|source| LabError::io("write", path, source))
}

/// Where to find the static agent for guest images: the explicit path, else
/// the build tree next to this binary, else the installed package's path.
pub fn find_agent_binary(explicit: Option<&Path>) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe().unwrap_or_default();
    find_agent_binary_near(explicit, &exe)
}

/// [`find_agent_binary`] for a controller binary at `controller`.
pub fn find_agent_binary_near(explicit: Option<&Path>, controller: &Path) -> Result<PathBuf, LabError> {
    let mut candidates = Vec::new();
    if let Some(path) = explicit {
        candidates.push(path.to_path_buf());
    } else {
        if let Some(dir) = controller.parent() {
            // target/<profile>/envclone -> target/x86_64-unknown-linux-gnu/<profile>/envclone-agent
            if let (Some(target), Some(profile)) = (dir.parent(), dir.file_name()) {
                candidates.push(target.join("x86_64-unknown-linux-gnu").join(profile).join("envclone-agent"));
                candidates.push(target.join("x86_64-unknown-linux-gnu/release/envclone-agent"));
            }
            candidates.push(dir.join("envclone-agent"));
        }
        candidates.push(PathBuf::from("/usr/lib/envclone/envclone-agent"));
    }
    candidates.iter().find(|path| path.is_file()).cloned().ok_or(LabError::AgentBinaryNotFound { searched: candidates })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_are_short_lowercase_words() {
        let dirs = (Path::new("/l"), Path::new("/c"));
        assert!(Lab::new("e2e-1", dirs.0, dirs.1).is_ok());
        for bad in ["", "UPPER", "has space", "a/b", "much-too-long-for-a-lab-and-its-netns-name"] {
            assert!(matches!(Lab::new(bad, dirs.0, dirs.1), Err(LabError::BadName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn a_second_lab_command_is_refused_while_one_runs() {
        let labs = tempfile::tempdir().unwrap();
        let lab = Lab::new("t", labs.path(), Path::new("/c")).unwrap();
        let held = lab.lock().unwrap();

        let refused = lab.lock();

        assert!(matches!(refused, Err(LabError::Busy { .. })));
        drop(held);
        assert!(lab.lock().is_ok());
    }

    #[test]
    fn env_exports_point_at_the_lab_config() {
        let lab = Lab::new("t", Path::new("/l"), Path::new("/c")).unwrap();
        assert_eq!(lab.env_exports(), "export ENVCLONE_CONFIG=/l/t/envclone.toml\nexport ENVCLONE_LAB=t\n");
        assert_eq!(lab.netns(), "envclone-t");
    }

    #[test]
    fn agent_binary_not_found_lists_where_it_looked() {
        let err = find_agent_binary(Some(Path::new("/nonexistent/agent"))).unwrap_err();
        assert!(
            matches!(err, LabError::AgentBinaryNotFound { ref searched } if searched == &[PathBuf::from("/nonexistent/agent")])
        );
    }
}
