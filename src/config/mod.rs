//! The envclone configuration: one TOML file parsed into the types below.
//!
//! Every table rejects unknown keys, so a typo is an error rather than a
//! silently ignored setting. Optional sections and fields carry serde
//! defaults, so new features only add fields and old files keep loading.
//! `config/envclone.example.toml` documents every key.

mod cron;
mod diagnose;
mod error;
mod locate;
mod lookup;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::cron::{CronError, CronExpr};
pub use self::error::{ConfigError, Diagnostic, LookupError};
pub use self::units::{HumanDuration, HumanRate, HumanSize, UnitError};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/envclone/envclone.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub controller: Controller,
    #[serde(default)]
    pub environments: BTreeMap<String, Environment>,
    #[serde(default)]
    pub schedules: BTreeMap<String, Schedule>,
    #[serde(default)]
    pub standbys: BTreeMap<String, Standby>,
    /// Other KVM hosts, by name; the controller's own is `local` and needs
    /// no entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, HostSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabSettings>,
}

/// A KVM host other than the controller's, reached through libvirt's remote
/// protocol and SSH; nothing of envclone's runs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    /// `qemu+libssh2://...`, `qemu+ssh://...` or `qemu+tls://...`.
    pub libvirt_uri: String,
    /// How storage work (qemu-img, copies, checksums) reaches the host.
    pub ssh: HostSsh,
    /// The directory on that host envclone keeps images under.
    pub storage: PathBuf,
    /// The named network namespace the host's libvirtd runs in, as seen on
    /// that host; unset: the host's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_netns: Option<String>,
    /// The most images shipped to or from the host may use, e.g. "50MiB/s";
    /// unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<HumanRate>,
    /// The network namespace, on the controller, from which the guests on
    /// this host's networks are reached (agents whose `netns` is this reach
    /// a standby that took over on another host through that host's). For
    /// labs: real hosts' guest networks are routed, and this stays unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_netns: Option<String>,
    /// The start gate's directory on the host (its `protected` list and
    /// each environment's lease); unset: [`HostSettings::DEFAULT_GATE_DIR`].
    /// See `docs/start-gate.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_dir: Option<PathBuf>,
    /// How long a lease the controller grants lets the host start a
    /// protected environment's domains, e.g. "10m"; unset:
    /// [`HostSettings::DEFAULT_LEASE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<HumanDuration>,
}

impl HostSettings {
    /// Where the start gate keeps its state on a host, unless `gate_dir` says.
    pub const DEFAULT_GATE_DIR: &'static str = "/var/lib/envclone-gate";
    /// A lease's length, unless `lease` says: ten daemon ticks at least, so
    /// a controller that misses a few renewals does not stop the host.
    pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

    /// The start gate's directory on the host.
    pub fn gate_dir(&self) -> PathBuf {
        self.gate_dir.clone().unwrap_or_else(|| PathBuf::from(Self::DEFAULT_GATE_DIR))
    }

    /// How long a lease granted to the host lasts.
    pub fn lease(&self) -> std::time::Duration {
        self.lease.map_or(Self::DEFAULT_LEASE, std::time::Duration::from)
    }
}

/// An SSH login on a host: its host key must be in `known_hosts` already
/// (never trusted on first use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSsh {
    pub address: String,
    #[serde(default = "AgentEndpoint::default_port")]
    pub port: u16,
    #[serde(default = "AgentEndpoint::default_user")]
    pub user: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

/// Settings of the host that runs envclone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    #[serde(default = "Controller::default_libvirt_uri")]
    pub libvirt_uri: String,
    #[serde(default = "Controller::default_state_dir")]
    pub state_dir: PathBuf,
    /// Private key used to reach the agents over SSH.
    pub ssh_key: PathBuf,
    pub known_hosts: PathBuf,
    #[serde(default = "Controller::default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "Controller::default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// Operations that write disk images refuse to start below this.
    #[serde(default = "Controller::default_min_free_space")]
    pub min_free_space: HumanSize,
    /// The named network namespace (`/run/netns/NAME`) libvirtd runs in,
    /// where the bridges of its networks live; unset: the controller's own.
    /// Clones attach their gateway veth to their bridges there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_netns: Option<String>,
}

/// A set of VMs that are snapshotted, cloned and failed over together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// libvirt networks the VMs are attached to.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub quiesce: QuiescePolicy,
    /// Hard limit on how long guests stay frozen.
    #[serde(default = "Environment::default_freeze_timeout")]
    pub freeze_timeout: HumanDuration,
    /// Limit for each in-guest hook.
    #[serde(default = "Environment::default_hook_timeout")]
    pub hook_timeout: HumanDuration,
    /// An empty map parses but fails validation, with a better message than
    /// serde's "missing field".
    #[serde(default)]
    pub vms: BTreeMap<String, Vm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Where `clone --network readdress` takes the clone's addresses from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readdress: Option<Readdress>,
    /// Directory for the snapshots' overlays and memory images (one
    /// subdirectory per VM); `<state_dir>/images/<environment>` if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<PathBuf>,
    /// What `envclone prune` keeps of the environment's manual snapshots
    /// (those no schedule took); unset: prune never deletes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// The host the VMs run on (a name under `[hosts]`); unset: `local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// libvirt domain name.
    pub domain: String,
    pub agent: AgentEndpoint,
}

/// Where the in-guest agent is reached over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEndpoint {
    /// IP address or host name.
    pub address: String,
    #[serde(default = "AgentEndpoint::default_port")]
    pub port: u16,
    #[serde(default = "AgentEndpoint::default_user")]
    pub user: String,
    /// Network namespace to enter before connecting, for VMs on isolated
    /// networks such as the lab's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The name the guest's host key is listed under in known_hosts instead
    /// of `address`: a clone with host keys of its own answers at its
    /// source's address, where known_hosts holds the source's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_alias: Option<String>,
}

/// How a clone's connection strings are rewritten inside its guests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Files or globs in the guest to rewrite.
    #[serde(default)]
    pub files: Vec<String>,
    /// Directories that rewriting and scanning may touch; `files` must lie in them.
    #[serde(default = "Rewrite::default_roots")]
    pub roots: Vec<String>,
    /// Extra old -> new replacements beyond the derived address changes.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
}

/// New addresses and names for clones made with `--network readdress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readdress {
    /// IPv4 block the clones' networks are carved from: each source network
    /// gets a free subnet of its own prefix length in it, and each guest
    /// keeps its host part (10.77.1.12/24 may become 10.90.3.12/24).
    pub pool: ipnet::Ipv4Net,
    /// The clone's host name for each VM: `{clone}` and `{vm}` are replaced.
    #[serde(default = "Readdress::default_hostname")]
    pub hostname: String,
}

impl Readdress {
    pub fn new(pool: ipnet::Ipv4Net) -> Self {
        Readdress { pool, hostname: Self::default_hostname() }
    }

    fn default_hostname() -> String {
        "{clone}-{vm}".to_owned()
    }

    /// The host name of `vm` in the clone `clone`.
    pub fn hostname_for(&self, clone: &str, vm: &str) -> String {
        self.hostname.replace("{clone}", clone).replace("{vm}", vm)
    }
}

/// A recurring snapshot of one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub environment: String,
    /// Exactly one of `cron` and `every` is set; see [`CronExpr`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<HumanDuration>,
    /// Also save guest memory, so a restore resumes running processes.
    #[serde(default)]
    pub memory: bool,
    #[serde(default)]
    pub retention: Retention,
}

/// How many snapshots of a schedule to keep; unset means no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
}

/// A warm copy of an environment kept ready for failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standby {
    pub primary: String,
    /// Directory holding the standby's disks.
    pub storage: PathBuf,
    /// Keep the standby current: after each snapshot of the primary the
    /// daemon brings it to that snapshot (`envclone standby sync`).
    /// `standby create` takes this (and `storage`) as its defaults.
    #[serde(default = "Standby::default_autorestore")]
    pub autorestore: bool,
    #[serde(default)]
    pub network: StandbyNetwork,
    /// While this standby serves its primary (after a failover), a manual
    /// `envclone snapshot PRIMARY` (not a scheduled one) fails back once it
    /// is taken: the operator's "done here", as DR enclaves read it.
    #[serde(default)]
    pub failback_on_manual_snapshot: bool,
    /// The host the standby lives on (a name under `[hosts]`); unset:
    /// `local`. `storage` is a directory on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Settings for `envclone lab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSettings {
    #[serde(default)]
    pub domain_type: DomainType,
}

/// What to do when guests cannot be frozen for a consistent snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuiescePolicy {
    /// Fail the snapshot.
    #[default]
    Required,
    /// Take a crash-consistent snapshot and say so.
    BestEffort,
    /// Never freeze.
    Off,
}

/// How a standby takes over the primary's network identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StandbyNetwork {
    /// Reuse the primary's addresses.
    #[default]
    Takeover,
    /// Give the standby new addresses and rewrite connection strings.
    Readdress,
}

/// libvirt domain type for lab guests: `kvm` needs /dev/kvm, `qemu` emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainType {
    #[default]
    Qemu,
    Kvm,
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::Kvm => "kvm",
        })
    }
}

impl Controller {
    /// A controller section with every optional field at its default.
    pub fn new(ssh_key: impl Into<PathBuf>, known_hosts: impl Into<PathBuf>) -> Self {
        Self {
            libvirt_uri: Self::default_libvirt_uri(),
            state_dir: Self::default_state_dir(),
            ssh_key: ssh_key.into(),
            known_hosts: known_hosts.into(),
            connect_timeout: Self::default_connect_timeout(),
            command_timeout: Self::default_command_timeout(),
            min_free_space: Self::default_min_free_space(),
            libvirt_netns: None,
        }
    }

    fn default_libvirt_uri() -> String {
        "qemu:///system".to_owned()
    }

    fn default_state_dir() -> PathBuf {
        PathBuf::from("/var/lib/envclone")
    }

    fn default_connect_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    fn default_command_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    fn default_min_free_space() -> HumanSize {
        HumanSize::from_gib(1)
    }
}

impl Config {
    /// The name of the host environment `env` runs on (`local` if unset or
    /// unknown: lookups of unknown environments fail elsewhere).
    pub fn host_of(&self, env: &str) -> &str {
        self.environments.get(env).and_then(|e| e.host.as_deref()).unwrap_or(crate::host::LOCAL)
    }

    /// The libvirt URI of host `host`: the controller's for `local`, its
    /// `[hosts]` entry's otherwise (none for an unknown host).
    pub fn libvirt_uri_of(&self, host: &str) -> Option<&str> {
        match self.hosts.get(host) {
            Some(settings) => Some(&settings.libvirt_uri),
            None => (host == crate::host::LOCAL).then_some(self.controller.libvirt_uri.as_str()),
        }
    }
}

impl Environment {
    /// Where snapshots of the environment `name` keep their files, on its
    /// host: `storage` if set, else `images/<name>` under its host's
    /// `storage` (the controller's `state_dir` for `local`).
    pub fn storage_dir(&self, config: &Config, name: &str) -> PathBuf {
        self.storage.clone().unwrap_or_else(|| {
            let host = self.host.as_deref().and_then(|host| config.hosts.get(host));
            host.map_or(&config.controller.state_dir, |host| &host.storage).join("images").join(name)
        })
    }

    fn default_freeze_timeout() -> HumanDuration {
        HumanDuration::from_secs(5)
    }

    fn default_hook_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            description: None,
            networks: Vec::new(),
            quiesce: QuiescePolicy::default(),
            freeze_timeout: Self::default_freeze_timeout(),
            hook_timeout: Self::default_hook_timeout(),
            vms: BTreeMap::new(),
            rewrite: None,
            readdress: None,
            storage: None,
            retention: None,
            host: None,
        }
    }
}

impl AgentEndpoint {
    /// An endpoint on the default port and user.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            port: Self::default_port(),
            user: Self::default_user(),
            netns: None,
            host_key_alias: None,
        }
    }

    pub(crate) fn default_port() -> u16 {
        22
    }

    pub(crate) fn default_user() -> String {
        "root".to_owned()
    }
}

impl Rewrite {
    fn default_roots() -> Vec<String> {
        vec!["/etc".to_owned()]
    }
}

impl Default for Rewrite {
    fn default() -> Self {
        Self { files: Vec::new(), roots: Self::default_roots(), map: BTreeMap::new() }
    }
}

impl Standby {
    fn default_autorestore() -> bool {
        true
    }
}

/// What `parse_with` checks beyond the text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateOptions {
    /// Check that `ssh_key` and `known_hosts` exist. Off for checking a
    /// config meant for another host.
    pub check_files: bool,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self { check_files: true }
    }
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, &ValidateOptions::default())
}

pub fn load_with(path: &Path, options: &ValidateOptions) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_with(&text, path, options)
}

/// Parses and validates config `text`; `path` is only used in diagnostics.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, &ValidateOptions::default())
}

/// Like [`parse`], reporting every semantic problem at once rather than the first.
pub fn parse_with(text: &str, path: &Path, options: &ValidateOptions) -> Result<Config, ConfigError> {
    let invalid = |diagnostics| ConfigError::Invalid { path: path.to_owned(), diagnostics };
    let config: Config =
        toml::from_str(text).map_err(|error| invalid(vec![diagnose::from_toml_error(&error, text, path)]))?;
    let problems = validate::validate(&config, options);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(diagnose::from_problems(problems, text, path)))
    }
}

/// The config as TOML text that [`parse`] reads back to an equal `Config`.
pub fn to_toml(config: &Config) -> String {
    // Cannot fail: every field is a string, integer, bool, array or table
    // with string keys, which the TOML serializer always accepts.
    #[allow(clippy::expect_used)]
    toml::to_string(config).expect("Config always serializes to TOML")
}

#[cfg(test)]
mod tests;

/// The snapshot storage setting (`environments.X.storage`).
#[cfg(test)]
mod storage_tests {
    use super::*;

    const BASE: &str = r#"
[controller]
ssh_key = "/k"
known_hosts = "/h"
state_dir = "/var/lib/envclone"

[environments.demo.vms.web]
domain = "demo-web"
agent = { address = "10.0.0.2" }
"#;

    fn parse_unchecked(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, Path::new("envclone.toml"), &ValidateOptions { check_files: false })
    }

    #[test]
    fn storage_defaults_under_the_state_dir_per_environment() {
        let config = parse_unchecked(BASE).unwrap();
        let env = &config.environments["demo"];
        assert_eq!(env.storage, None);
        assert_eq!(env.storage_dir(&config, "demo"), Path::new("/var/lib/envclone/images/demo"));
    }

    #[test]
    fn storage_is_taken_as_given_and_round_trips() {
        let text = BASE.replace(
            "[environments.demo.vms.web]",
            "[environments.demo]\nstorage = \"/srv/snap\"\n\n[environments.demo.vms.web]",
        );
        let config = parse_unchecked(&text).unwrap();
        assert_eq!(config.environments["demo"].storage_dir(&config, "demo"), Path::new("/srv/snap"));
        assert_eq!(parse_unchecked(&to_toml(&config)).unwrap(), config);
    }

    #[test]
    fn relative_storage_is_rejected() {
        let text = BASE.replace(
            "[environments.demo.vms.web]",
            "[environments.demo]\nstorage = \"snap\"\n\n[environments.demo.vms.web]",
        );
        let error = parse_unchecked(&text).unwrap_err();
        let keys: Vec<String> = error.diagnostics().iter().map(|d| d.key.clone()).collect();
        assert_eq!(keys, ["environments.demo.storage"]);
    }
}
