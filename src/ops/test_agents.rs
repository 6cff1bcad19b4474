//! Fake guest agents for the unit tests of the operations that talk to
//! agents (clone, failover): they answer everything the way a guest would,
//! and log what they were asked.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::guest::GuestError;
use crate::ops::clone::CloneAgents;
use crate::ops::restore::GuestAgents;

/// Agents that answer everything; they log what they were asked (`vm:
/// call`) into the shared log, and `scan` finds what `findings` says.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReadyAgents {
    pub log: std::sync::Arc<Mutex<Vec<String>>>,
    pub findings: Vec<envclone_agent::Finding>,
    /// Where the agents are reached, from the environment they were made for.
    pub endpoints: BTreeMap<String, String>,
    /// Agents that never answer: `wait_ready` times out.
    pub silent: bool,
}

impl ReadyAgents {
    /// Agents that answer, or (`false`) never do.
    pub fn answering(answering: bool) -> Self {
        ReadyAgents { silent: !answering, ..Default::default() }
    }

    /// These agents, reached as `env` says: calls are logged as
    /// `vm@ADDRESS/NETNS: call`.
    pub fn reaching(&self, env: &crate::config::Environment) -> Self {
        let at = |c: &crate::config::Vm| format!("{}/{}", c.agent.address, c.agent.netns.clone().unwrap_or_default());
        ReadyAgents { endpoints: env.vms.iter().map(|(vm, c)| (vm.clone(), at(c))).collect(), ..self.clone() }
    }

    pub fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn note(&self, vm: &str, call: &str) {
        let at = self.endpoints.get(vm).cloned().unwrap_or_default();
        self.log.lock().unwrap().push(format!("{vm}@{at}: {call}"));
    }
}

impl GuestAgents for ReadyAgents {
    fn wait_ready(&self, vm: &str, within: Duration) -> Result<(), GuestError> {
        self.note(vm, "wait");
        if self.silent {
            return Err(GuestError::CommandTimeout { target: vm.to_owned(), command: "status".into(), after: within });
        }
        Ok(())
    }

    fn thaw(&self, _vm: &str, _within: Duration) -> Result<(), GuestError> {
        Ok(())
    }

    fn set_clock(&self, _vm: &str) -> Result<i64, GuestError> {
        Ok(0)
    }
}

impl CloneAgents for ReadyAgents {
    fn host_key(&self, _vm: &str) -> Result<Vec<u8>, GuestError> {
        Ok(b"\0\0\0\x0bssh-ed25519\0\0\0\x01k".to_vec())
    }

    fn hostname(&self, vm: &str) -> Result<String, GuestError> {
        Ok(vm.to_owned())
    }

    fn rewrite(
        &self,
        vm: &str,
        plan: &envclone_agent::RewritePlan,
    ) -> Result<envclone_agent::RewriteReport, GuestError> {
        let map: Vec<String> = plan.map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.note(vm, &format!("rewrite {}", map.join(",")));
        Ok(envclone_agent::RewriteReport { dry_run: false, backup_dir: None, files: Vec::new(), replacements: 3 })
    }

    fn scan(&self, vm: &str, request: &envclone_agent::ScanRequest) -> Result<envclone_agent::ScanReport, GuestError> {
        self.note(vm, &format!("scan {}", request.subnets.join(",")));
        Ok(envclone_agent::ScanReport {
            findings: if vm == "web" { self.findings.clone() } else { Vec::new() },
            truncated: false,
            files_scanned: 2,
            binary_files: 0,
            skipped: Vec::new(),
            missing_roots: Vec::new(),
        })
    }

    fn readdress(
        &self,
        vm: &str,
        _mac: &str,
        address: &ipnet::Ipv4Net,
        gateway: std::net::Ipv4Addr,
        hostname: &str,
    ) -> Result<envclone_agent::ReaddressReport, GuestError> {
        self.note(vm, &format!("readdress {address} via {gateway} as {hostname}"));
        Ok(readdress_report(address, hostname))
    }

    fn reset_identity(&self, vm: &str, host_keys: bool) -> Result<envclone_agent::ResetIdentityReport, GuestError> {
        self.note(vm, if host_keys { "reset-identity --ssh-host-keys" } else { "reset-identity" });
        let server = envclone_agent::SshServer::Dropbear;
        Ok(envclone_agent::ResetIdentityReport {
            previous_machine_id: None,
            machine_id: format!("{:0>32}", vm.len()),
            dbus_machine_id_updated: false,
            host_keys: if host_keys {
                vec![envclone_agent::HostKey {
                    server,
                    path: "/etc/dropbear/dropbear_ed25519_host_key".into(),
                    public_key: format!("ssh-ed25519 NEW{vm}"),
                }]
            } else {
                Vec::new()
            },
            ssh_servers: if host_keys {
                vec![envclone_agent::SshServerReload {
                    server,
                    previous_pid: 1,
                    pid: Some(2),
                    serves_new_keys: true,
                    note: None,
                }]
            } else {
                Vec::new()
            },
        })
    }
}

pub(crate) fn readdress_report(address: &ipnet::Ipv4Net, hostname: &str) -> envclone_agent::ReaddressReport {
    envclone_agent::ReaddressReport {
        interface: "eth0".into(),
        mac: "52:54:00:00:00:01".into(),
        address: address.to_string(),
        address_added: true,
        removed: Vec::new(),
        removal_deferred: Vec::new(),
        removal_delay_ms: 0,
        gateway: None,
        hostname: Some(envclone_agent::HostnameChange { previous: "x".into(), new: hostname.into() }),
        hosts_file_changed: false,
        persisted: false,
        not_persisted_reason: None,
    }
}
