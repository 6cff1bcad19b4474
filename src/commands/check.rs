//! `envclone check [--live [ENV]]`: is the configuration usable, and (live)
//! does what it names exist and answer? `--live ENV` checks one environment
//! only: one of the config's, or a clone (from the catalog, its VMs reached
//! through its gateway namespace). On each host of `[hosts]` it also
//! checks the start gate: hook, protected list, leases.

use super::{load_config, Output};
use crate::cli::{CheckArgs, GlobalArgs};
use crate::config::{Config, Environment};
use crate::daemon::status::human_age;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::endpoint::{ssh_options, ssh_target};
use crate::guest::{AgentClient, GuestSession};
use crate::host::gate::{self, HookState};
use crate::host::{Hosts, LOCAL};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub config: PathBuf,
    pub environments: usize,
    pub vms: usize,
    pub schedules: usize,
    pub standbys: usize,
    /// Empty without `--live`.
    pub live: Vec<LiveCheck>,
}

#[derive(Debug, Serialize)]
pub struct LiveCheck {
    /// What was checked, e.g. `domain demo-web` or `agent demo/web`.
    pub subject: String,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl LiveCheck {
    fn from_result(subject: String, result: Result<String>) -> LiveCheck {
        match result {
            Ok(detail) => LiveCheck { subject, ok: true, detail, hint: None },
            Err(e) => LiveCheck { subject, ok: false, detail: crate::error::chain(&e), hint: e.hint() },
        }
    }
}

pub fn run(global: &GlobalArgs, args: &CheckArgs, out: &Output) -> Result<ExitCode> {
    let config = load_config(global)?;
    let mut report = CheckReport {
        config: global.config.clone(),
        environments: config.environments.len(),
        vms: config.environments.values().map(|env| env.vms.len()).sum(),
        schedules: config.schedules.len(),
        standbys: config.standbys.len(),
        live: Vec::new(),
    };
    if args.live {
        let environments: Vec<(String, Environment)> = match &args.environment {
            Some(name) => vec![(name.clone(), live_environment(&config, name)?)],
            None => config.environments.iter().map(|(name, env)| (name.clone(), env.clone())).collect(),
        };
        report.live = live_checks(&config, &environments);
    }
    out.report(&report, human);
    let failed = report.live.iter().filter(|check| !check.ok).count();
    if failed > 0 {
        return Err(Error::CheckFailed { failed, total: report.live.len() });
    }
    Ok(ExitCode::Ok)
}

/// The environment `name`: the config's, or a clone's from the catalog.
fn live_environment(config: &Config, name: &str) -> Result<Environment> {
    if let Ok(env) = config.environment(name) {
        return Ok(env.clone());
    }
    let catalog = crate::catalog::Catalog::open(&config.controller.state_dir)?;
    crate::ops::clone::resolve_environment(config, &catalog, name).map_err(Error::operation("look up"))
}

/// Every host first (its libvirt; for a host of `[hosts]`, its SSH login
/// and storage directory too), then each environment's networks and
/// domains on its host, then every agent in parallel: each SSH login costs
/// a fraction of a second and they do not depend on each other.
fn live_checks(config: &Config, environments: &[(String, Environment)]) -> Vec<LiveCheck> {
    let hosts = super::session::registry(config);
    let mut checks = Vec::new();
    let in_use = hosts_in_use(config, environments);
    for name in &in_use {
        checks.extend(host_checks(config, &hosts, name));
    }
    let gated: Vec<&String> = in_use.iter().filter(|name| config.hosts.contains_key(*name)).collect();
    if !gated.is_empty() {
        match crate::catalog::Catalog::open(&config.controller.state_dir)
            .map_err(Error::from)
            .and_then(|catalog| super::gate::failed_over(config, &catalog))
        {
            Ok(failed_over) => {
                let gates = crate::ops::parallel::each(&gated, |name| gate_checks(config, name, &failed_over));
                checks
                    .extend(gates.into_iter().flat_map(|c| c.unwrap_or_else(|panic| std::panic::resume_unwind(panic))));
            }
            Err(e) => checks.push(LiveCheck::from_result("start gate: the catalog".into(), Err(e))),
        }
    }
    for (env_name, env) in environments {
        let host_name = env.host.as_deref().unwrap_or(LOCAL);
        let Ok(host) = hosts.get(host_name) else { continue };
        let hv = host.hypervisor();
        let on = if host_name == LOCAL { String::new() } else { format!(" on host {host_name}") };
        for network in &env.networks {
            let result = hv
                .network(network)
                .map(|n| if n.active { "active".to_string() } else { "defined, not active".to_string() })
                .map_err(Error::hypervisor(format!("environment '{env_name}'")));
            checks.push(LiveCheck::from_result(format!("network {network}{on}"), result));
        }
        for vm in env.vms.values() {
            let result = hv
                .domain(&vm.domain)
                .map(|d| format!("{:?}", d.state).to_lowercase())
                .map_err(Error::hypervisor(format!("environment '{env_name}'")));
            checks.push(LiveCheck::from_result(format!("domain {}{on}", vm.domain), result));
        }
    }
    let options = ssh_options(&config.controller);
    let vms: Vec<_> = environments
        .iter()
        .flat_map(|(env_name, env)| env.vms.iter().map(move |(vm_name, vm)| (env_name, vm_name, vm)))
        .collect();
    let agents = crate::ops::parallel::each(&vms, |(env_name, vm_name, vm)| {
        let result = GuestSession::connect(&ssh_target(&vm.agent), &options)
            .and_then(|session| AgentClient::new(&session).status())
            .map(|status| format!("envclone-agent answers as {} at {}", status.hostname, vm.agent.address))
            .map_err(Error::guest(format!("{env_name}/{vm_name}")));
        LiveCheck::from_result(format!("agent {env_name}/{vm_name}"), result)
    });
    // A panicked check is a bug: its panic goes on, as it was.
    checks.extend(agents.into_iter().map(|check| check.unwrap_or_else(|panic| std::panic::resume_unwind(panic))));
    checks
}

/// The hosts the checked environments run on, every standby's, and every
/// host of `[hosts]`: `local` only when something is on it.
fn hosts_in_use(config: &Config, environments: &[(String, Environment)]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = config.hosts.keys().cloned().collect();
    let on_local = environments
        .iter()
        .map(|(_, env)| env.host.as_deref())
        .chain(config.standbys.values().map(|s| s.host.as_deref()));
    for host in on_local {
        names.insert(host.unwrap_or(LOCAL).to_owned());
    }
    if names.is_empty() {
        names.insert(LOCAL.to_owned());
    }
    names
}

/// The host's libvirt and, for a host of `[hosts]`, its storage directory
/// over SSH: each its own line, so a host whose sshd is down while libvirt
/// answers says exactly that.
fn host_checks(config: &Config, hosts: &dyn Hosts, name: &str) -> Vec<LiveCheck> {
    let uri = config.libvirt_uri_of(name).unwrap_or(&config.controller.libvirt_uri);
    let host = match hosts.get(name) {
        Ok(host) => host,
        Err(e) => return vec![LiveCheck::from_result(format!("host {name} libvirt {uri}"), Err(e.into()))],
    };
    let mut checks = vec![LiveCheck {
        subject: format!("host {name} libvirt {uri}"),
        ok: true,
        detail: "connected".into(),
        hint: None,
    }];
    if let Some(settings) = config.hosts.get(name) {
        let storage = &settings.storage;
        let result = match host.storage().exists(storage) {
            Ok(true) => host
                .storage()
                .free_space(storage)
                .map(|free| format!("{} exists, {} free", storage.display(), bytesize::ByteSize::b(free)))
                .map_err(|e| Error::storage(name, e)),
            Ok(false) => Err(Error::storage(
                name,
                crate::host::StorageError::Io {
                    what: "find the storage directory",
                    path: storage.clone(),
                    source: std::io::ErrorKind::NotFound.into(),
                },
            )),
            Err(e) => Err(Error::storage(name, e)),
        };
        let ssh = &settings.ssh;
        checks.push(LiveCheck::from_result(
            format!("host {name} ssh {}@{}:{} storage", ssh.user, ssh.address, ssh.port),
            result,
        ));
    }
    checks
}

/// The start gate on host `name` of `[hosts]`: its hook installed and
/// current, its protected list the config's, and a fresh lease for each
/// environment on it that is not failed over (one that is must have none).
fn gate_checks(config: &Config, name: &str, failed_over: &BTreeSet<String>) -> Vec<LiveCheck> {
    let Some(settings) = config.hosts.get(name) else { return Vec::new() };
    let subject = format!("host {name} start gate");
    let layout = gate::Layout::of(settings);
    let found = match gate::inspect(&gate::shell_of(config, name, settings), name, &layout) {
        Ok(found) => found,
        Err(e) => return vec![LiveCheck::from_result(subject, Err(e.into()))],
    };
    let wanted = gate::Wanted::for_host(config, name, failed_over);
    let install = format!("`envclone gate install --host {name}`");
    let hook = layout.hook_path();
    let mut checks = vec![match found.hook {
        HookState::Current => {
            let mut on_host = found.protected.clone();
            on_host.sort();
            if on_host == wanted.protected {
                let detail = format!("{} current, {} domains protected", hook.display(), on_host.len());
                LiveCheck { subject, ok: true, detail, hint: None }
            } else {
                let detail = format!("the protected list in {} is not the config's", layout.gate_dir.display());
                let hint = Some(format!("`envclone gate renew --host {name}` writes it"));
                LiveCheck { subject, ok: false, detail, hint }
            }
        }
        HookState::Missing => LiveCheck {
            subject,
            ok: false,
            detail: format!("no hook at {}: a returning host may start a fenced primary", hook.display()),
            hint: Some(format!("{install}, then restart libvirtd on {name}")),
        },
        HookState::Stale => LiveCheck {
            subject,
            ok: false,
            detail: format!("{} is an older gate hook (or not executable)", hook.display()),
            hint: Some(install),
        },
        HookState::Foreign => LiveCheck {
            subject,
            ok: false,
            detail: format!("{} is not envclone's start gate", hook.display()),
            hint: Some(format!("move that hook elsewhere in qemu.d/, then {install}")),
        },
    }];
    for env in &wanted.grant {
        let subject = format!("lease {env} on host {name}");
        checks.push(match found.lease(env) {
            Some(lease) if lease.fresh() => LiveCheck {
                subject,
                ok: true,
                detail: format!("fresh, expires in {}", human_age(lease.expires_in_seconds)),
                hint: None,
            },
            lease => LiveCheck {
                subject,
                ok: false,
                detail: match lease {
                    Some(lease) => format!(
                        "expired {} ago: {name} refuses to start {env}'s domains",
                        human_age(-lease.expires_in_seconds)
                    ),
                    None => format!("none: {name} refuses to start {env}'s domains"),
                },
                hint: Some(
                    "`envclone gate renew` (the daemon and `envclone status` renew leases: is the daemon running?)"
                        .into(),
                ),
            },
        });
    }
    for env in &wanted.withhold {
        let subject = format!("lease {env} on host {name}");
        checks.push(match found.lease(env) {
            Some(lease) if lease.fresh() => LiveCheck {
                subject,
                ok: false,
                detail: format!("{env} is failed over, yet {name} holds a fresh lease for it"),
                hint: Some(format!("`envclone gate renew --host {name}` withdraws it")),
            },
            _ => LiveCheck { subject, ok: true, detail: format!("withheld: {env} is failed over"), hint: None },
        });
    }
    checks
}

fn human(report: &CheckReport) -> String {
    let mut text = format!(
        "config {}: ok ({} environments, {} VMs, {} schedules, {} standbys)\n",
        report.config.display(),
        report.environments,
        report.vms,
        report.schedules,
        report.standbys
    );
    for check in &report.live {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        text.push_str(&format!("{mark} {}: {}\n", check.subject, check.detail));
        if let Some(hint) = &check.hint {
            text.push_str(&format!("     hint: {hint}\n"));
        }
    }
    text
}
