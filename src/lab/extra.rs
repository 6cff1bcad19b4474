//! Extra environments in a lab, next to `demo`, described as data: any
//! number of VMs, each with its own RAM size and an optional data disk
//! written from the host. `envclone lab bench` and the scale end-to-end
//! test define them; `lab up`, the `demo` environment and the lab's own
//! config never change.
//!
//! They live in the lab's libvirtd and namespace (so `lab down` removes
//! their domains and networks with the rest) but keep their own directory,
//! `<lab>/extra/`: disks, host keys, a config (`envclone.toml`, which the
//! `envclone` binary is pointed at with `--config`), a known_hosts and a
//! catalog of their own. Removing them all is removing that directory, and
//! a bench never touches the catalog or the snapshots of `demo`.
//!
//! Each environment has its own isolated network, `10.78.<subnet>.0/24`
//! (gateway `.1`, VMs from `.11`), so a clone of one copies that network
//! only, and its gateway namespace holds that gateway address only.

use super::image::GuestFile;
use super::topology::{app_env, KernelFiles, Role, DB_RECORDS, PREFIX};
use super::{find_kernel, host, image, keys, Lab, LabError};
use crate::config::{AgentEndpoint, Config, Controller, DomainType, Environment, Vm};
use crate::guest::{AgentClient, GuestError, GuestSession};
use crate::hypervisor::{DirectBootSpec, DomainDef, HvError, Hypervisor, LibvirtHypervisor, NetworkDef, NetworkSpec};
use crate::hypervisor::{DomainState, NicSpec};
use crate::wait;
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// qemu-io writes at most this much per request (its limit is just under 2 GiB).
const WRITE_CHUNK: u64 = 1 << 30;
/// The byte data disks are filled with: not zero, so every cluster is
/// allocated and every copy has to move it.
pub const DATA_PATTERN: u8 = 0x5a;

/// One extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraEnv {
    /// Environment name; its domains are `<name>-<vm>`.
    pub name: String,
    /// Third octet of its network, `10.78.<subnet>.0/24`; unique among the
    /// extra environments of a lab.
    pub subnet: u8,
    pub vms: Vec<ExtraVm>,
}

/// One VM of an extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraVm {
    pub name: String,
    /// What it serves: `Db` answers TCP on 5432 with its records, `Web`
    /// answers HTTP on 80 with what it fetches from the environment's db.
    pub role: Role,
    pub memory_mib: u64,
    /// A third disk (`vdc`), filled from the host before the VM first boots.
    pub data: Option<DataDisk>,
}

/// A qcow2 data disk whose first `written_bytes` hold [`DATA_PATTERN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDisk {
    pub size_bytes: u64,
    pub written_bytes: u64,
}

impl DataDisk {
    /// A disk of exactly `bytes`, all of it written.
    pub fn filled(bytes: u64) -> Self {
        DataDisk { size_bytes: bytes, written_bytes: bytes }
    }
}

impl ExtraEnv {
    /// `count` db VMs named `n1`, `n2`... with `memory_mib` each.
    pub fn uniform(name: &str, subnet: u8, count: usize, memory_mib: u64) -> Self {
        let vms =
            (1..=count).map(|i| ExtraVm { name: format!("n{i}"), role: Role::Db, memory_mib, data: None }).collect();
        ExtraEnv { name: name.to_string(), subnet, vms }
    }

    pub fn network(&self) -> String {
        format!("{}-net", self.name)
    }

    /// Bridges live in the lab's namespace: unique there is enough.
    pub fn bridge(&self) -> String {
        format!("ecx{}", self.subnet)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 1)
    }

    pub fn address(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 11 + index as u8)
    }

    pub fn domain(&self, vm: &str) -> String {
        format!("{}-{vm}", self.name)
    }

    /// Where the VM's service answers: (address, port, role).
    pub fn services(&self) -> Vec<(String, Ipv4Addr, Role)> {
        self.vms.iter().enumerate().map(|(i, vm)| (self.domain(&vm.name), self.address(i), vm.role)).collect()
    }

    fn hosts_file(&self) -> String {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (i, vm) in self.vms.iter().enumerate() {
            text.push_str(&format!("{} {}\n", self.address(i), vm.name));
        }
        text
    }

    fn identity_files(&self, index: usize, host_key: &[u8], authorized_key: &str) -> Vec<GuestFile> {
        let vm = &self.vms[index];
        let mut files = vec![
            GuestFile::new("/etc/hostname", format!("{}\n", vm.name), 0o644),
            GuestFile::new("/etc/hosts", self.hosts_file(), 0o644),
            GuestFile::new("/etc/dropbear/dropbear_ed25519_host_key", host_key.to_vec(), 0o600),
            GuestFile::new("/root/.ssh/authorized_keys", format!("{authorized_key}\n"), 0o600),
            GuestFile::new(
                "/etc/machine-id",
                format!("{}\n", crate::hypervisor::random_uuid().replace('-', "")),
                0o444,
            ),
        ];
        match vm.role {
            Role::Web => {
                // The environment's first db, else itself (a web alone answers 502).
                let db = self.vms.iter().position(|v| v.role == Role::Db).unwrap_or(index);
                files.push(GuestFile::new("/etc/demo/role", "web\n", 0o644));
                files.push(GuestFile::new("/etc/demo/app.env", app_env(self.address(db)), 0o644));
            }
            Role::Db => {
                files.push(GuestFile::new("/etc/demo/role", "db\n", 0o644));
                files.push(GuestFile::new("/srv/db/records", DB_RECORDS, 0o644));
            }
        }
        files
    }

    fn domain_def(
        &self,
        index: usize,
        domain_type: DomainType,
        boot: &KernelFiles,
        disks: Vec<PathBuf>,
        console_log: &Path,
    ) -> DomainDef {
        let vm = &self.vms[index];
        DomainDef::direct_boot(&DirectBootSpec {
            name: self.domain(&vm.name),
            domain_type: domain_type.to_string(),
            memory_mib: vm.memory_mib,
            vcpus: 1,
            kernel: boot.kernel.clone(),
            initrd: Some(boot.initrd.clone()),
            cmdline: format!(
                "console=ttyS0 root=/dev/vda rw init=/sbin/init envclone.ip={}/{PREFIX} envclone.gw={}",
                self.address(index),
                self.gateway()
            ),
            disks,
            interfaces: vec![NicSpec { network: self.network(), mac: None }],
            serial_log: Some(console_log.to_path_buf()),
        })
    }
}

/// How to make the VMs.
#[derive(Debug, Clone)]
pub struct ExtraOptions {
    /// The static agent the root image carries (the same one as `lab up`
    /// used, so the cached root image is shared).
    pub agent_binary: PathBuf,
    pub domain_type: DomainType,
    /// How long a guest may take from start until its agent answers.
    pub boot_timeout: Duration,
}

/// The extra environments of one lab.
#[derive(Debug)]
pub struct ExtraLab<'l> {
    lab: &'l Lab,
    dir: PathBuf,
}

impl<'l> ExtraLab<'l> {
    pub fn new(lab: &'l Lab) -> Self {
        ExtraLab { lab, dir: lab.paths().root.join("extra") }
    }

    pub fn lab(&self) -> &Lab {
        self.lab
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config naming the extra environments (and nothing of `demo`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("envclone.toml")
    }

    /// Scratch space for files made next to the environments (copies,
    /// memory images of raw virsh snapshots); removed with them.
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    fn images(&self, env: &str) -> PathBuf {
        self.dir.join("images").join(env)
    }

    fn host_key(&self, env: &str, vm: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{env}-{vm}.dropbear"))
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    pub fn config(&self) -> Result<Config, LabError> {
        let path = self.config_path();
        if !path.exists() {
            return Ok(self.empty_config());
        }
        crate::config::load(&path).map_err(|e| LabError::ExtraConfig { path, detail: crate::error::chain(&e) })
    }

    fn empty_config(&self) -> Config {
        let paths = self.lab.paths();
        let mut controller = Controller::new(paths.client_key(), self.known_hosts());
        controller.libvirt_uri = paths.libvirt_uri();
        controller.state_dir = self.dir.join("state");
        controller.libvirt_netns = Some(self.lab.netns());
        Config {
            controller,
            environments: BTreeMap::new(),
            schedules: BTreeMap::new(),
            standbys: BTreeMap::new(),
            hosts: BTreeMap::new(),
            lab: None,
        }
    }

    /// Defines and boots the environments (their networks, disks and
    /// domains), adds them to the extra config and waits until every agent
    /// answers. An environment already defined is refused: remove it first.
    pub fn add(
        &self,
        envs: &[ExtraEnv],
        options: &ExtraOptions,
        progress: &dyn Fn(&str),
    ) -> Result<Duration, LabError> {
        let started = Instant::now();
        let hv = self.lab.connect()?;
        let mut config = self.config()?;
        for env in envs {
            if config.environments.contains_key(&env.name) {
                return Err(LabError::ExtraExists { env: env.name.clone() });
            }
        }
        let kernel = find_kernel()?;
        let client_key = keys::ensure_client_key(&self.lab.paths().client_key())?;
        progress("root image (cached by content)");
        let root_image = image::root_image(&self.lab.paths().cache, &options.agent_binary)?;
        for env in envs {
            progress(&format!("environment {} ({} VMs)", env.name, env.vms.len()));
            self.define(&hv, env, options.domain_type, &kernel, &root_image, &client_key.public_line, progress)?;
            config.environments.insert(env.name.clone(), self.environment(env));
        }
        self.write_config(&config)?;
        for env in envs {
            for vm in &env.vms {
                let domain = env.domain(&vm.name);
                hv.start_domain(&domain).map_err(LabError::hypervisor(format!("start {domain}")))?;
            }
        }
        progress("waiting for the agents to answer");
        self.wait_for_agents(&config, envs, options.boot_timeout)?;
        Ok(started.elapsed())
    }

    #[allow(clippy::too_many_arguments)]
    fn define(
        &self,
        hv: &LibvirtHypervisor,
        env: &ExtraEnv,
        domain_type: DomainType,
        kernel: &KernelFiles,
        root_image: &Path,
        authorized_key: &str,
        progress: &dyn Fn(&str),
    ) -> Result<(), LabError> {
        let network = NetworkDef::isolated(&NetworkSpec {
            name: env.network(),
            bridge: env.bridge(),
            ip: Some((env.gateway(), PREFIX)),
        });
        hv.define_network(&network).map_err(LabError::hypervisor(format!("define network {}", env.network())))?;
        hv.start_network(&env.network()).map_err(LabError::hypervisor(format!("start network {}", env.network())))?;
        let images = self.images(&env.name);
        fs::create_dir_all(&images).map_err(|source| LabError::io("create", &images, source))?;
        for (index, vm) in env.vms.iter().enumerate() {
            let key = keys::ensure_dropbear_key(&self.host_key(&env.name, &vm.name))?;
            let root = images.join(format!("{}-root.qcow2", vm.name));
            let seed = images.join(format!("{}-seed.qcow2", vm.name));
            image::overlay(root_image, &root)?;
            let host_key = fs::read(&key.private_dropbear)
                .map_err(|source| LabError::io("read", &key.private_dropbear, source))?;
            image::seed_image(&seed, &env.identity_files(index, &host_key, authorized_key))?;
            let mut disks = vec![root, seed];
            if let Some(data) = vm.data {
                let path = images.join(format!("{}-data.qcow2", vm.name));
                progress(&format!(
                    "{}: data disk, {} written from the host (qemu-io)",
                    env.domain(&vm.name),
                    bytesize::ByteSize(data.written_bytes).display().iec()
                ));
                write_data_disk(&path, data)?;
                disks.push(path);
            }
            let domain = env.domain(&vm.name);
            let console = self.lab.paths().console_log(&domain);
            if let Some(dir) = console.parent() {
                fs::create_dir_all(dir).map_err(|source| LabError::io("create", dir, source))?;
            }
            let def = env.domain_def(index, domain_type, kernel, disks, &console);
            hv.define_domain(&def).map_err(LabError::hypervisor(format!("define {domain}")))?;
        }
        Ok(())
    }

    fn environment(&self, env: &ExtraEnv) -> Environment {
        let vms = env
            .vms
            .iter()
            .enumerate()
            .map(|(index, vm)| {
                let mut agent = AgentEndpoint::new(env.address(index).to_string());
                agent.netns = Some(self.lab.netns());
                (vm.name.clone(), Vm { domain: env.domain(&vm.name), agent })
            })
            .collect();
        Environment {
            description: Some(format!("extra lab environment ({} VMs)", env.vms.len())),
            networks: vec![env.network()],
            vms,
            ..Environment::default()
        }
    }

    /// Writes the config and the known_hosts of every environment in it.
    fn write_config(&self, config: &Config) -> Result<(), LabError> {
        fs::create_dir_all(&self.dir).map_err(|source| LabError::io("create", &self.dir, source))?;
        let mut lines = Vec::new();
        for (name, env) in &config.environments {
            for (vm, vm_config) in &env.vms {
                let key = keys::ensure_dropbear_key(&self.host_key(name, vm))?;
                lines.push((vm_config.agent.address.clone(), key.public_line));
            }
        }
        let entries: Vec<(&str, u16, &str)> = lines.iter().map(|(a, k)| (a.as_str(), 22, k.as_str())).collect();
        write(&self.known_hosts(), keys::known_hosts(&entries).as_bytes())?;
        write(&self.config_path(), crate::config::to_toml(config).as_bytes())
    }

    fn wait_for_agents(&self, config: &Config, envs: &[ExtraEnv], deadline: Duration) -> Result<(), LabError> {
        let options = crate::guest::endpoint::ssh_options(&config.controller);
        std::thread::scope(|scope| {
            let waits: Vec<_> = envs
                .iter()
                .flat_map(|env| env.vms.iter().map(move |vm| (env, vm)))
                .map(|(env, vm)| {
                    let options = &options;
                    let target =
                        crate::guest::endpoint::ssh_target(&config.environments[&env.name].vms[&vm.name].agent);
                    let domain = env.domain(&vm.name);
                    let console_log = self.lab.paths().console_log(&domain);
                    scope.spawn(move || {
                        wait::until(&format!("the agent in {domain}"), deadline, Duration::from_millis(500), || {
                            let session = GuestSession::connect(&target, options)?;
                            AgentClient::new(&session).status().map(Some)
                        })
                        .map(|_| ())
                        .map_err(
                            |wait::WaitError::Timeout { waited, last, .. }: wait::WaitError<GuestError>| {
                                LabError::AgentTimeout { vm: domain, waited, console_log, source: last.map(Box::new) }
                            },
                        )
                    })
                })
                .collect();
            waits
                .into_iter()
                .try_for_each(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    }

    /// Removes one environment: every domain named `<env>-...` (its VMs
    /// and anything made from them under that prefix), its network, its
    /// disks and its entry in the config. Its clones must be destroyed
    /// first; images in its snapshot storage go too.
    pub fn remove(&self, env: &str) -> Result<(), LabError> {
        let hv = self.lab.connect()?;
        let mut config = self.config()?;
        let prefix = format!("{env}-");
        for name in hv.domain_names().map_err(LabError::hypervisor("list domains"))? {
            if name.starts_with(&prefix) {
                remove_domain(&hv, &name)?;
            }
        }
        for name in hv.network_names().map_err(LabError::hypervisor("list networks"))? {
            if name.starts_with(&prefix) {
                hv.destroy_network(&name).map_err(LabError::hypervisor(format!("stop network {name}")))?;
                hv.undefine_network(&name).map_err(LabError::hypervisor(format!("undefine network {name}")))?;
            }
        }
        if let Some(environment) = config.environments.remove(env) {
            remove_dir(&environment.storage_dir(&config, env))?;
        }
        remove_dir(&self.images(env))?;
        for entry in fs::read_dir(self.dir.join("keys")).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
        self.write_config(&config)
    }

    /// Removes every extra environment, the clones the extra catalog knows
    /// (their gateway namespaces live outside the lab's), and the whole
    /// extra directory. Safe when there is nothing to remove.
    pub fn remove_all(&self) -> Result<(), LabError> {
        if !self.dir.exists() {
            return Ok(());
        }
        if super::daemons::is_running(&self.lab.paths().libvirt_instance()) {
            let config = self.config()?;
            for clone in self.clone_gateways() {
                super::namespace::delete(&clone)?;
            }
            for env in config.environments.keys() {
                self.remove(env)?;
            }
        }
        remove_dir(&self.dir)
    }

    /// The gateway namespaces of the clones in the extra catalog.
    pub(super) fn clone_gateways(&self) -> Vec<String> {
        let state = self.dir.join("state");
        if !state.join(crate::catalog::CATALOG_FILE).exists() {
            return Vec::new();
        }
        match crate::catalog::Catalog::open(&state).and_then(|catalog| catalog.clones()) {
            Ok(clones) => clones.into_iter().filter_map(|c| c.resources.gateway_netns).collect(),
            Err(e) => {
                tracing::warn!("cannot list the extra environments' clones: {e}");
                Vec::new()
            }
        }
    }
}

/// Stops (hard) and undefines a domain; a domain already gone is fine.
pub fn remove_domain(hv: &LibvirtHypervisor, name: &str) -> Result<(), LabError> {
    match hv.domain(name) {
        Ok(domain) => {
            if domain.state != DomainState::ShutOff {
                hv.destroy_domain(name).map_err(LabError::hypervisor(format!("stop {name}")))?;
            }
            hv.undefine_domain(name).map_err(LabError::hypervisor(format!("undefine {name}")))
        }
        Err(HvError::NoSuchDomain { .. }) => Ok(()),
        Err(e) => Err(LabError::hypervisor(format!("look up {name}"))(e)),
    }
}

/// A qcow2 disk of `size_bytes`, its first `written_bytes` filled with
/// [`DATA_PATTERN`] by qemu-io, in requests qemu-io accepts. Direct I/O
/// (`-t none`) where the filesystem has it: far faster than buffered writes
/// on a loaded host, and it leaves no gigabytes of dirty page cache behind
/// to slow what is measured next.
pub fn write_data_disk(path: &Path, data: DataDisk) -> Result<(), LabError> {
    let target = path.to_string_lossy();
    host::run("qemu-img", &["create", "-q", "-f", "qcow2", &target, &data.size_bytes.to_string()])?;
    let mut commands = Vec::new();
    let mut offset = 0;
    while offset < data.written_bytes {
        let length = WRITE_CHUNK.min(data.written_bytes - offset);
        commands.push("-c".to_string());
        commands.push(format!("write -q -P {DATA_PATTERN} {offset} {length}"));
        offset += length;
    }
    let run = |cache: &str| {
        let mut args = vec!["-f", "qcow2", "-t", cache];
        args.extend(commands.iter().map(String::as_str));
        args.push(&target);
        host::run("qemu-io", &args)
    };
    match run("none") {
        Ok(_) => Ok(()),
        // A filesystem without O_DIRECT (tmpfs): buffered writes then.
        Err(LabError::Tool(crate::host::tool::ToolError::Failed { .. })) => run("writeback").map(|_| ()),
        Err(e) => Err(e),
    }
}

fn remove_dir(dir: &Path) -> Result<(), LabError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::io("remove", dir, source)),
    }
}

fn write(path: &Path, content: &[u8]) -> Result<(), LabError> {
    fs::write(path, content).map_err(|source| LabError::io("write", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> ExtraEnv {
        ExtraEnv {
            name: "bsvc".into(),
            subnet: 3,
            vms: vec![
                ExtraVm { name: "web".into(), role: Role::Web, memory_mib: 256, data: None },
                ExtraVm { name: "db".into(), role: Role::Db, memory_mib: 1024, data: Some(DataDisk::filled(1 << 20)) },
            ],
        }
    }

    #[test]
    fn each_environment_has_its_own_subnet_network_and_bridge() {
        let env = env();
        assert_eq!(env.network(), "bsvc-net");
        assert_eq!(env.bridge(), "ecx3");
        assert_eq!(env.gateway(), Ipv4Addr::new(10, 78, 3, 1));
        assert_eq!(env.address(1), Ipv4Addr::new(10, 78, 3, 12));
        assert!(ExtraEnv { subnet: 255, ..env }.bridge().len() <= 15);
    }

    #[test]
    fn web_points_at_the_environments_db_and_hosts_lists_every_vm() {
        let env = env();
        let files = env.identity_files(0, b"key", "ssh-ed25519 AAAA");
        let app = files.iter().find(|f| f.path == Path::new("/etc/demo/app.env")).unwrap();
        assert!(String::from_utf8_lossy(&app.content).contains("postgres://demo@10.78.3.12:5432/demo"));
        let hosts = files.iter().find(|f| f.path == Path::new("/etc/hosts")).unwrap();
        assert_eq!(String::from_utf8_lossy(&hosts.content), "127.0.0.1 localhost\n10.78.3.11 web\n10.78.3.12 db\n");
    }

    #[test]
    fn domains_get_their_ram_disks_and_address() {
        let env = env();
        let boot = KernelFiles { kernel: "/boot/vmlinuz".into(), initrd: "/boot/initrd.img".into() };
        let disks = vec!["/x/r.qcow2".into(), "/x/s.qcow2".into(), "/x/d.qcow2".into()];
        let def = env.domain_def(1, DomainType::Qemu, &boot, disks, Path::new("/x/db.log"));
        assert_eq!(def.name(), "bsvc-db");
        assert_eq!(def.disks().len(), 3);
        let xml = def.to_xml();
        assert!(xml.contains("envclone.ip=10.78.3.12/24 envclone.gw=10.78.3.1"), "{xml}");
        assert!(xml.contains(">1024<"), "{xml}");
        assert_eq!(def.interfaces()[0].network.as_deref(), Some("bsvc-net"));
    }

    #[test]
    fn a_data_disk_is_allocated_with_the_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.qcow2");

        write_data_disk(&path, DataDisk { size_bytes: 4 << 20, written_bytes: 3 << 20 }).unwrap();

        let map = host::run("qemu-img", &["map", "--output=json", &path.to_string_lossy()]).unwrap();
        let map: serde_json::Value = serde_json::from_str(&map).unwrap();
        let allocated: u64 =
            map.as_array().unwrap().iter().filter(|e| e["data"] == true).map(|e| e["length"].as_u64().unwrap()).sum();
        assert_eq!(allocated, 3 << 20);
        let read = host::run(
            "qemu-io",
            &["-f", "qcow2", "-c", &format!("read -P {DATA_PATTERN} 0 3M"), &path.to_string_lossy()],
        )
        .unwrap();
        assert!(read.contains("read 3145728/3145728"), "{read}");
    }
}
