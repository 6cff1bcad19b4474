//! Checks that serde cannot express: cross references, uniqueness, name
//! syntax, non-zero limits and files that must exist.
//!
//! Every check runs and every problem is collected, so one `envclone check`
//! shows everything that needs fixing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path};

use super::cron::CronExpr;
use super::locate::KeyPath;
use super::{
    AgentEndpoint, Config, Controller, Environment, HostSettings, HumanDuration, Readdress, Rewrite, Schedule, Standby,
    StandbyNetwork, ValidateOptions, Vm,
};
use crate::host::LOCAL;

/// A semantic problem, located by key path only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: KeyPath,
    pub message: String,
    pub hint: Option<String>,
}

pub fn validate(config: &Config, options: &ValidateOptions) -> Vec<Problem> {
    let mut checker = Checker::default();
    let root = KeyPath::root();
    checker.controller(&config.controller, &root.key("controller"), options);
    for (name, environment) in &config.environments {
        checker.environment(name, environment, &root.key("environments").key(name));
    }
    checker.unique_domains(config);
    for (name, schedule) in &config.schedules {
        checker.schedule(name, schedule, config, &root.key("schedules").key(name));
    }
    for (name, standby) in &config.standbys {
        checker.standby(name, standby, config, &root.key("standbys").key(name));
    }
    for (name, host) in &config.hosts {
        checker.host(name, host, &root.key("hosts").key(name), options);
    }
    for (name, environment) in &config.environments {
        if let Some(host) = &environment.host {
            checker.host_reference(host, config, &root.key("environments").key(name).key("host"));
        }
    }
    for (name, standby) in &config.standbys {
        if let Some(host) = &standby.host {
            checker.host_reference(host, config, &root.key("standbys").key(name).key("host"));
        }
    }
    checker.problems
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, path: KeyPath, message: String, hint: impl Into<Option<String>>) {
        self.problems.push(Problem { path, message, hint: hint.into() });
    }

    fn controller(&mut self, controller: &Controller, path: &KeyPath, options: &ValidateOptions) {
        if controller.libvirt_uri.trim().is_empty() {
            self.report(path.key("libvirt_uri"), "libvirt URI is empty".into(), hint("use \"qemu:///system\""));
        }
        self.absolute_path(&controller.state_dir, &path.key("state_dir"));
        let ssh_key_hint = format!("create one with `ssh-keygen -t ed25519 -N '' -f {}`", controller.ssh_key.display());
        let known_hosts_hint = "collect the agents' host keys with `ssh-keyscan ADDRESS >> FILE`".to_owned();
        for (field, file, fix) in
            [("ssh_key", &controller.ssh_key, ssh_key_hint), ("known_hosts", &controller.known_hosts, known_hosts_hint)]
        {
            let path = path.key(field);
            if self.absolute_path(file, &path) && options.check_files {
                self.existing_file(file, path, fix);
            }
        }
        self.positive(controller.connect_timeout, &path.key("connect_timeout"));
        self.positive(controller.command_timeout, &path.key("command_timeout"));
    }

    fn environment(&mut self, name: &str, environment: &Environment, path: &KeyPath) {
        self.name(name, "environment name", path);
        if environment.vms.is_empty() {
            let fix = format!("add a VM under [environments.{name}.vms.NAME] with `domain` and an `agent` table");
            self.report(path.clone(), "environment has no VMs".into(), fix);
        }
        for (index, network) in environment.networks.iter().enumerate() {
            self.name(network, "network name", &path.key("networks").index(index));
        }
        self.positive(environment.freeze_timeout, &path.key("freeze_timeout"));
        self.positive(environment.hook_timeout, &path.key("hook_timeout"));
        for (vm_name, vm) in &environment.vms {
            self.vm(vm_name, vm, &path.key("vms").key(vm_name));
        }
        if let Some(rewrite) = &environment.rewrite {
            self.rewrite(rewrite, &path.key("rewrite"));
        }
        if let Some(storage) = &environment.storage {
            self.absolute_path(storage, &path.key("storage"));
        }
        if let Some(readdress) = &environment.readdress {
            self.readdress(readdress, &path.key("readdress"));
        }
    }

    fn readdress(&mut self, readdress: &Readdress, path: &KeyPath) {
        // A pattern must stay a valid host name whatever the clone and VM
        // are called (both are names of letters, digits and '-').
        let sample = readdress.hostname_for("c", "vm");
        let placeholders_only = readdress.hostname.contains("{vm}")
            && sample.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
            });
        if !placeholders_only {
            self.report(
                path.key("hostname"),
                format!("invalid host name pattern {:?}", readdress.hostname),
                hint("use letters, digits, '-', '.' and the placeholders {clone} and {vm} ({vm} is required, so that the VMs differ), e.g. \"{clone}-{vm}\""),
            );
        }
        if readdress.pool.prefix_len() > 30 {
            self.report(
                path.key("pool"),
                format!("pool {} is too small for a network", readdress.pool),
                hint("give a block at least as large as the source networks, e.g. \"10.90.0.0/16\""),
            );
        }
    }

    fn vm(&mut self, name: &str, vm: &Vm, path: &KeyPath) {
        self.name(name, "VM name", path);
        self.name(&vm.domain, "libvirt domain name", &path.key("domain"));
        self.agent(&vm.agent, &path.key("agent"));
    }

    fn agent(&mut self, agent: &AgentEndpoint, path: &KeyPath) {
        if agent.address.trim().is_empty() || agent.address.contains(char::is_whitespace) {
            self.report(
                path.key("address"),
                format!("invalid address {:?}", agent.address),
                hint("use an IP address or host name, e.g. \"10.77.1.11\""),
            );
        }
        if agent.port == 0 {
            self.report(
                path.key("port"),
                "port 0 cannot be connected to".into(),
                hint("use the agent's SSH port, usually 22"),
            );
        }
        if agent.user.trim().is_empty() {
            self.report(path.key("user"), "user is empty".into(), hint("leave `user` out to log in as root"));
        }
        if let Some(netns) = &agent.netns {
            self.name(netns, "network namespace name", &path.key("netns"));
        }
    }

    fn rewrite(&mut self, rewrite: &Rewrite, path: &KeyPath) {
        let roots: Vec<&Path> = rewrite.roots.iter().map(Path::new).collect();
        for (index, root) in roots.iter().enumerate() {
            self.guest_path(root, &path.key("roots").index(index));
        }
        for (index, file) in rewrite.files.iter().enumerate() {
            let file_path = path.key("files").index(index);
            if !self.guest_path(Path::new(file), &file_path) {
                continue;
            }
            if !roots.iter().any(|root| Path::new(file).starts_with(root)) {
                let fix = format!("add its directory to `roots` (now: {})", rewrite.roots.join(", "));
                self.report(file_path, format!("{file} is outside the allowed roots"), fix);
            }
        }
        if rewrite.map.contains_key("") {
            let fix = "give the old value to replace, e.g. \"db.prod.example\" = \"db.clone.example\"";
            self.report(path.key("map").key(""), "empty value to replace".into(), hint(fix));
        }
    }

    /// Reports every VM of a domain that is claimed more than once, since any
    /// of them may be the one the user wants to change.
    fn unique_domains(&mut self, config: &Config) {
        let mut owners: BTreeMap<&str, Vec<KeyPath>> = BTreeMap::new();
        for (env_name, environment) in &config.environments {
            for (vm_name, vm) in &environment.vms {
                let path = KeyPath::root().key("environments").key(env_name).key("vms").key(vm_name);
                owners.entry(&vm.domain).or_default().push(path);
            }
        }
        for (domain, paths) in owners.into_iter().filter(|(_, paths)| paths.len() > 1) {
            for path in &paths {
                let others: Vec<String> =
                    paths.iter().filter(|other| *other != path).map(ToString::to_string).collect();
                let fix = format!("give each VM its own domain; also used by {}", others.join(", "));
                self.report(path.key("domain"), format!("libvirt domain {domain:?} is used by more than one VM"), fix);
            }
        }
    }

    fn schedule(&mut self, name: &str, schedule: &Schedule, config: &Config, path: &KeyPath) {
        self.name(name, "schedule name", path);
        self.environment_reference(&schedule.environment, config, &path.key("environment"));
        match (&schedule.cron, schedule.every) {
            (Some(_), Some(_)) => self.report(
                path.key("every"),
                "both `cron` and `every` are set".into(),
                hint("keep only one: `cron` for wall-clock times, `every` for a fixed interval"),
            ),
            (None, None) => self.report(
                path.clone(),
                "neither `cron` nor `every` is set".into(),
                hint("add `cron = \"0 2 * * *\"` or `every = \"1h\"`"),
            ),
            (Some(cron), None) => {
                if let Err(error) = CronExpr::parse(cron) {
                    let fix = "five fields: minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\"";
                    self.report(path.key("cron"), format!("invalid cron expression {cron:?}: {error}"), hint(fix));
                }
            }
            (None, Some(every)) => self.positive(every, &path.key("every")),
        }
    }

    fn standby(&mut self, name: &str, standby: &Standby, config: &Config, path: &KeyPath) {
        self.name(name, "standby name", path);
        self.environment_reference(&standby.primary, config, &path.key("primary"));
        self.absolute_path(&standby.storage, &path.key("storage"));
        let Some(primary) = config.environments.get(&standby.primary) else { return };
        if standby.network == StandbyNetwork::Readdress {
            // Found at failover otherwise: at the worst moment to fix a config.
            let env = &standby.primary;
            if primary.readdress.is_none() {
                let message = format!("takes over with its own addresses, but {env} has no [readdress] pool");
                let fix =
                    format!("add [environments.{env}.readdress] pool = \"10.90.0.0/16\", or network = \"takeover\"");
                self.report(path.key("network"), message, hint(&fix));
            }
            if !primary.rewrite.as_ref().is_some_and(|r| !r.files.is_empty()) {
                let message = format!("takes over with its own addresses, but {env} has no [rewrite] files");
                let fix = format!("add [environments.{env}.rewrite] files = [the files that hold connection strings]");
                self.report(path.key("network"), message, hint(&fix));
            }
        }
    }

    fn host(&mut self, name: &str, host: &HostSettings, path: &KeyPath, options: &ValidateOptions) {
        self.name(name, "host name", path);
        if name == LOCAL {
            let fix = "the controller's own host needs no entry: remove [hosts.local] (or give the other host a name)";
            self.report(path.clone(), "`local` is the controller's own host".into(), hint(fix));
        }
        if !host.libvirt_uri.contains("://") {
            let fix = format!("e.g. \"qemu+libssh2://root@{}/system?keyfile=...&known_hosts=...\"", host.ssh.address);
            self.report(path.key("libvirt_uri"), format!("{:?} is not a libvirt URI", host.libvirt_uri), fix);
        }
        self.absolute_path(&host.storage, &path.key("storage"));
        if let Some(gate_dir) = &host.gate_dir {
            self.absolute_path(gate_dir, &path.key("gate_dir"));
        }
        if let Some(lease) = host.lease {
            self.positive(lease, &path.key("lease"));
        }
        let ssh = path.key("ssh");
        if host.ssh.address.trim().is_empty() {
            self.report(ssh.key("address"), "the host's SSH address is empty".into(), None);
        }
        let key_fix = format!("create one with `ssh-keygen -t ed25519 -N '' -f {}`", host.ssh.key.display());
        let known_fix = format!(
            "add the host's key, checked out of band (e.g. `ssh-keyscan -p {} {}` compared with the host's own \
             /etc/ssh/*.pub); envclone never trusts a host key on first use",
            host.ssh.port, host.ssh.address
        );
        for (field, file, fix) in [("key", &host.ssh.key, key_fix), ("known_hosts", &host.ssh.known_hosts, known_fix)] {
            let path = ssh.key(field);
            if self.absolute_path(file, &path) && options.check_files {
                self.existing_file(file, path, fix);
            }
        }
    }

    fn host_reference(&mut self, name: &str, config: &Config, path: &KeyPath) {
        if name == LOCAL || config.hosts.contains_key(name) {
            return;
        }
        let known: Vec<&str> = std::iter::once(LOCAL).chain(config.hosts.keys().map(String::as_str)).collect();
        let fix = format!("define [hosts.{name}] or use one of: {}", known.join(", "));
        self.report(path.clone(), format!("no host named {name:?}"), fix);
    }

    fn environment_reference(&mut self, name: &str, config: &Config, path: &KeyPath) {
        if config.environments.contains_key(name) {
            return;
        }
        let known: Vec<&str> = config.environments.keys().map(String::as_str).collect();
        let fix = if known.is_empty() {
            format!("define [environments.{name}]")
        } else {
            format!("define [environments.{name}] or use one of: {}", known.join(", "))
        };
        self.report(path.clone(), format!("no environment named {name:?}"), fix);
    }

    /// Names end up in libvirt object names, file names and command lines,
    /// so they are kept to characters that need no quoting anywhere.
    fn name(&mut self, name: &str, what: &str, path: &KeyPath) {
        let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if name.is_empty() {
            self.report(path.clone(), format!("{what} is empty"), None);
        } else if !valid_chars || name == "." || name == ".." {
            let fix = "use only letters, digits, '_', '.' and '-' (and not just dots)";
            self.report(path.clone(), format!("invalid {what} {name:?}"), hint(fix));
        }
    }

    fn positive(&mut self, duration: HumanDuration, path: &KeyPath) {
        if duration.is_zero() {
            self.report(path.clone(), "must be longer than zero".into(), hint("use e.g. \"5s\""));
        }
    }

    fn absolute_path(&mut self, file: &Path, path: &KeyPath) -> bool {
        let absolute = file.is_absolute();
        if !absolute {
            let fix = "write the full path, starting with '/', since envclone may run from any directory";
            self.report(path.clone(), format!("{} is not an absolute path", file.display()), hint(fix));
        }
        absolute
    }

    /// Guest paths are never resolved on this host, so only their shape is checked.
    fn guest_path(&mut self, file: &Path, path: &KeyPath) -> bool {
        if !self.absolute_path(file, path) {
            return false;
        }
        let escapes = file.components().any(|component| component == Component::ParentDir);
        if escapes {
            self.report(path.clone(), format!("{} contains '..'", file.display()), hint("write the path without '..'"));
        }
        !escapes
    }

    fn existing_file(&mut self, file: &Path, path: KeyPath, fix: String) {
        match std::fs::metadata(file) {
            Ok(metadata) if metadata.is_file() => {}
            Ok(_) => self.report(path, format!("{} is not a regular file", file.display()), fix),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.report(path, format!("{} does not exist", file.display()), fix)
            }
            Err(error) => self.report(path, format!("cannot access {}: {error}", file.display()), None),
        }
    }
}

fn hint(text: &str) -> Option<String> {
    Some(text.to_owned())
}
