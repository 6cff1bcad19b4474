//! What a two-host lab adds to the config `lab env` points at: `[hosts.a]`
//! and `[hosts.b]`, each reached only through libvirt's SSH transport and
//! SSH (host keys pinned in the lab's `hosts_known_hosts`), and `demo` on
//! host a. The controller's own libvirt stays in the config (as `local`),
//! but holds none of demo's domains.

use super::addressing::Addressing;
use super::{HOST_NAMES, STORAGE};
use crate::config::{Config, HostSettings, HostSsh};
use crate::lab::paths::LabPaths;
use crate::lab::topology;
use std::path::Path;

/// libvirt on the far side is root's: the lab's dropbear logs in as root.
const USER: &str = "root";
const SSH_PORT: u16 = 22;
/// The start gate's directory on each lab host (see `docs/start-gate.md`).
pub const GATE_DIR: &str = "/var/lib/libvirt/envclone-gate";

/// The one-host lab's config with `demo` moved to host a and both hosts
/// added. `config` is what [`topology::config`] made for the same lab.
pub fn with_hosts(mut config: Config, paths: &LabPaths, plan: &Addressing) -> Config {
    for host in HOST_NAMES {
        config.hosts.insert(host.to_string(), host_settings(paths, plan, host));
    }
    if let Some(demo) = config.environments.get_mut(topology::ENVIRONMENT) {
        demo.host = Some(HOST_NAMES[0].to_string());
        // Entering a's namespace stands for "the management host routes
        // to the guest network": the controller has no address on it.
        for vm in demo.vms.values_mut() {
            vm.agent.netns = Some(plan.netns(HOST_NAMES[0]));
        }
    }
    config
}

pub(super) fn host_settings(paths: &LabPaths, plan: &Addressing, host: &str) -> HostSettings {
    let address = plan.host_address(host).map(|a| a.to_string()).unwrap_or_default();
    let key = paths.client_key();
    let known_hosts = paths.hosts_known_hosts();
    HostSettings {
        libvirt_uri: libssh2_uri(&address, &key, &known_hosts),
        ssh: HostSsh { address, port: SSH_PORT, user: USER.to_string(), key, known_hosts },
        storage: STORAGE.into(),
        // Each host's libvirtd runs in what is, for that host, its own namespace.
        libvirt_netns: None,
        bandwidth: None,
        // Its guests are reached by entering its namespace (see `with_hosts`).
        guest_netns: Some(plan.netns(host)),
        // /var/lib/libvirt is the host's own (a bind mount in its mount
        // namespace): /var/lib would be the controller's, shared by every
        // lab host.
        gate_dir: Some(GATE_DIR.into()),
        lease: None,
    }
}

/// `qemu+libssh2://root@ADDR:22/system?...`: libssh2 checks the host key
/// against `known_hosts` only (no ~/.ssh, never trust on first use) and logs
/// in with `key`.
pub fn libssh2_uri(address: &str, key: &Path, known_hosts: &Path) -> String {
    format!(
        "qemu+libssh2://{USER}@{address}:{SSH_PORT}/system?keyfile={}&sshauth=privkey&known_hosts={}&known_hosts_verify=normal",
        query_value(key),
        query_value(known_hosts)
    )
}

/// A path as a URI query value: everything but unreserved characters and
/// `/` percent-encoded (a lab dir may hold a space or a `&`).
fn query_value(path: &Path) -> String {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|&byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DomainType;

    fn lab_config() -> (Config, Addressing) {
        let paths = LabPaths::new(Path::new("/tmp/labs"), Path::new("/tmp/cache"), "t");
        let plan = Addressing::new("t");
        (with_hosts(topology::config(&paths, "envclone-t", DomainType::Qemu), &paths, &plan), plan)
    }

    #[test]
    fn two_host_config_parses_validates_and_round_trips() {
        let (config, _) = lab_config();
        let text = crate::config::to_toml(&config);
        let options = crate::config::ValidateOptions { check_files: false };

        let parsed = crate::config::parse_with(&text, Path::new("lab.toml"), &options).unwrap();

        assert_eq!(parsed, config);
        assert_eq!(crate::config::to_toml(&parsed), text);
        assert_eq!(parsed.host_of("demo"), "a");
        assert_eq!(parsed.hosts.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn hosts_are_reached_over_libssh2_with_pinned_host_keys() {
        let (config, plan) = lab_config();
        let a = &config.hosts["a"];
        let address = plan.host_address("a").unwrap().to_string();
        assert_eq!(
            a.libvirt_uri,
            format!(
                "qemu+libssh2://root@{address}:22/system?keyfile=/tmp/labs/t/keys/id_ed25519&sshauth=privkey\
                 &known_hosts=/tmp/labs/t/keys/hosts_known_hosts&known_hosts_verify=normal"
            )
        );
        assert_eq!(a.ssh.address, address);
        assert_eq!((a.ssh.port, a.ssh.user.as_str()), (22, "root"));
        assert_eq!(a.ssh.known_hosts, Path::new("/tmp/labs/t/keys/hosts_known_hosts"));
        assert_eq!(a.storage, Path::new("/srv/envclone"));
        assert_ne!(config.hosts["b"].ssh.address, address);
    }

    #[test]
    fn demo_lives_on_host_a_and_its_agents_are_reached_through_a() {
        let (config, _) = lab_config();
        let demo = &config.environments["demo"];
        assert_eq!(demo.host.as_deref(), Some("a"));
        assert!(demo.vms.values().all(|vm| vm.agent.netns.as_deref() == Some("envclone-t-a")));
        // The controller keeps its own (empty) libvirt, as `local`.
        assert_eq!(config.controller.libvirt_netns.as_deref(), Some("envclone-t"));
    }

    #[test]
    fn uri_query_values_escape_what_would_end_them() {
        assert_eq!(query_value(Path::new("/l/my lab&x/k")), "/l/my%20lab%26x/k");
        assert_eq!(query_value(Path::new("/tmp/.tmpA1_b~c/key")), "/tmp/.tmpA1_b~c/key");
    }
}
