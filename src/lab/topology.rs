//! The lab's `demo` environment as data: two VMs on one isolated libvirt
//! network. `web` serves HTTP and answers with what it fetches from `db`,
//! whose address it reads from a connection string in /etc/demo/app.env.

use super::image::GuestFile;
use super::paths::LabPaths;
use crate::config::{AgentEndpoint, Config, Controller, DomainType, Environment, LabSettings, Readdress, Rewrite, Vm};
use crate::hypervisor::{DirectBootSpec, DomainDef, NetworkDef, NetworkSpec, NicSpec};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

pub const ENVIRONMENT: &str = "demo";
pub const NETWORK: &str = "demo-net";
/// Lives inside the lab's namespace, so the name cannot clash with the host's.
pub const BRIDGE: &str = "ecdemo0";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const PREFIX: u8 = 24;
/// Where `--network readdress` clones get their subnets; a const, so a bad prefix fails the build.
const READDRESS_POOL: ipnet::Ipv4Net = ipnet::Ipv4Net::new_assert(Ipv4Addr::new(10, 90, 0, 0), 16);
pub const GUEST_MEMORY_MIB: u64 = 256;
pub const DB_PORT: u16 = 5432;
pub const WEB_PORT: u16 = 80;

/// The first records of the demo database; tests look for them in web's answer.
pub const DB_RECORDS: &str = "1|alice|created 2026-01-01\n2|bob|created 2026-01-02\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Web,
    Db,
}

#[derive(Debug, Clone, Copy)]
pub struct LabVm {
    pub name: &'static str,
    pub role: Role,
    pub address: Ipv4Addr,
}

pub const VMS: [LabVm; 2] = [
    LabVm { name: "web", role: Role::Web, address: Ipv4Addr::new(10, 77, 1, 11) },
    LabVm { name: "db", role: Role::Db, address: Ipv4Addr::new(10, 77, 1, 12) },
];

impl LabVm {
    pub fn domain(&self) -> String {
        format!("{ENVIRONMENT}-{}", self.name)
    }

    fn db() -> &'static LabVm {
        &VMS[1]
    }

    /// The files that make this VM itself, copied in from its seed disk.
    pub fn identity_files(&self, host_key: &[u8], authorized_key: &str) -> Vec<GuestFile> {
        let mut files = vec![
            GuestFile::new("/etc/hostname", format!("{}\n", self.name), 0o644),
            GuestFile::new("/etc/hosts", hosts_file(), 0o644),
            GuestFile::new("/etc/dropbear/dropbear_ed25519_host_key", host_key.to_vec(), 0o600),
            GuestFile::new("/root/.ssh/authorized_keys", format!("{authorized_key}\n"), 0o600),
            GuestFile::new(
                "/etc/machine-id",
                format!("{}\n", crate::hypervisor::random_uuid().replace('-', "")),
                0o444,
            ),
        ];
        match self.role {
            Role::Web => {
                files.push(GuestFile::new("/etc/demo/role", "web\n", 0o644));
                files.push(GuestFile::new("/etc/demo/app.env", app_env(Self::db().address), 0o644));
            }
            Role::Db => {
                files.push(GuestFile::new("/etc/demo/role", "db\n", 0o644));
                files.push(GuestFile::new("/srv/db/records", DB_RECORDS, 0o644));
            }
        }
        files
    }

    pub fn domain_def(
        &self,
        domain_type: DomainType,
        boot: &KernelFiles,
        disks: Vec<std::path::PathBuf>,
        console_log: &Path,
    ) -> DomainDef {
        DomainDef::direct_boot(&DirectBootSpec {
            name: self.domain(),
            domain_type: domain_type.to_string(),
            memory_mib: GUEST_MEMORY_MIB,
            vcpus: 1,
            kernel: boot.kernel.clone(),
            initrd: Some(boot.initrd.clone()),
            cmdline: format!(
                "console=ttyS0 root=/dev/vda rw init=/sbin/init envclone.ip={}/{PREFIX} envclone.gw={GATEWAY}",
                self.address
            ),
            disks,
            interfaces: vec![NicSpec { network: NETWORK.to_string(), mac: None }],
            serial_log: Some(console_log.to_path_buf()),
        })
    }
}

/// The connection string web's app reads: a DSN naming db by address, the
/// kind of line envclone rewrites in clones that get new addresses.
pub fn app_env(db: Ipv4Addr) -> String {
    format!("# demo app settings\nDATABASE_URL=postgres://demo@{db}:{DB_PORT}/demo\n")
}

fn hosts_file() -> String {
    let mut text = String::from("127.0.0.1 localhost\n");
    for vm in &VMS {
        text.push_str(&format!("{} {}\n", vm.address, vm.name));
    }
    text
}

pub fn network_def() -> NetworkDef {
    NetworkDef::isolated(&NetworkSpec {
        name: NETWORK.to_string(),
        bridge: BRIDGE.to_string(),
        ip: Some((GATEWAY, PREFIX)),
    })
}

/// The host's Debian kernel and initrd, which every lab guest boots.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub kernel: std::path::PathBuf,
    pub initrd: std::path::PathBuf,
}

/// The config `lab env` points ENVCLONE_CONFIG at.
pub fn config(paths: &LabPaths, netns: &str, domain_type: DomainType) -> Config {
    let mut controller = Controller::new(paths.client_key(), paths.known_hosts());
    controller.libvirt_uri = paths.libvirt_uri();
    controller.state_dir = paths.state();
    // The lab's libvirtd runs in the lab's namespace: its bridges live there.
    controller.libvirt_netns = Some(netns.to_string());
    let vms = VMS
        .iter()
        .map(|vm| {
            let mut agent = AgentEndpoint::new(vm.address.to_string());
            agent.netns = Some(netns.to_string());
            (vm.name.to_string(), Vm { domain: vm.domain(), agent })
        })
        .collect();
    let environment = Environment {
        description: Some("envclone lab: web answers with records it fetches from db".to_string()),
        networks: vec![NETWORK.to_string()],
        vms,
        rewrite: Some(Rewrite {
            files: vec!["/etc/demo/*.env".to_string(), "/etc/hosts".to_string()],
            roots: vec!["/etc".to_string(), "/srv".to_string()],
            map: BTreeMap::new(),
        }),
        // Clones made with `--network readdress` get subnets from here.
        readdress: Some(Readdress::new(READDRESS_POOL)),
        ..Environment::default()
    };
    Config {
        controller,
        environments: BTreeMap::from([(ENVIRONMENT.to_string(), environment)]),
        schedules: BTreeMap::new(),
        standbys: BTreeMap::new(),
        hosts: BTreeMap::new(),
        lab: Some(LabSettings { domain_type }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_config_round_trips_and_validates() {
        let paths = LabPaths::new(Path::new("/tmp/labs"), Path::new("/tmp/cache"), "t");
        let config = config(&paths, "envclone-t", DomainType::Qemu);
        let text = crate::config::to_toml(&config);
        let options = crate::config::ValidateOptions { check_files: false };
        let parsed = crate::config::parse_with(&text, Path::new("lab.toml"), &options).unwrap();
        assert_eq!(crate::config::to_toml(&parsed), text);
        assert_eq!(parsed.environments["demo"].vms["db"].agent.netns.as_deref(), Some("envclone-t"));
    }

    #[test]
    fn web_connection_string_names_db_address() {
        let web = &VMS[0];
        let files = web.identity_files(b"key", "ssh-ed25519 AAAA");
        let env = files.iter().find(|f| f.path == Path::new("/etc/demo/app.env")).unwrap();
        assert!(String::from_utf8_lossy(&env.content).contains("postgres://demo@10.77.1.12:5432/demo"));
    }

    #[test]
    fn domains_boot_from_the_lab_network_with_the_vm_address() {
        let boot = KernelFiles { kernel: "/boot/vmlinuz".into(), initrd: "/boot/initrd.img".into() };
        let def = VMS[1].domain_def(DomainType::Qemu, &boot, vec!["/l/db.qcow2".into()], Path::new("/l/db.log"));
        assert_eq!(def.name(), "demo-db");
        assert_eq!(def.domain_type(), "qemu");
        assert_eq!(def.interfaces()[0].network.as_deref(), Some(NETWORK));
        assert!(def.to_xml().contains("envclone.ip=10.77.1.12/24"));
    }
}
