//! `envclone gate install|renew|status [--host NAME]...`: the start gate
//! on the hosts of `[hosts]` (see [`crate::host::gate`] and
//! `docs/start-gate.md`). Which environments get a lease comes from the
//! catalog here: never one whose role switch is in force.

use std::collections::BTreeSet;

use serde::Serialize;

use super::session::Records;
use super::{load_config, Output};
use crate::catalog::Catalog;
use crate::cli::{GateCommand, GlobalArgs};
use crate::config::Config;
use crate::daemon::status::human_age;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::host::gate::{self, GateError, HookChange, HookState, HostRenewal, Inspected, Installed, Layout, Lease};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, command: GateCommand, out: &Output) -> Result<ExitCode> {
    let Records { config, catalog } = Records::with_config(load_config(global)?)?;
    match command {
        GateCommand::Install(args) => install(&config, &catalog, &hosts(&config, &args.hosts)?, out),
        GateCommand::Renew(args) => renew(&config, &catalog, &hosts(&config, &args.hosts)?, out),
        GateCommand::Status(args) => status(&config, &catalog, &hosts(&config, &args.hosts)?, out),
    }
}

/// `asked`, each a host of `[hosts]`; none: every one.
fn hosts(config: &Config, asked: &[String]) -> Result<Vec<String>> {
    if config.hosts.is_empty() {
        return Err(Error::Usage(
            "the config has no [hosts]: the start gate guards hosts other than the controller's own".into(),
        ));
    }
    if let Some(unknown) = asked.iter().find(|host| !config.hosts.contains_key(*host)) {
        let known = config.hosts.keys().cloned().collect();
        return Err(GateError::NotAGatedHost { host: unknown.clone(), known }.into());
    }
    Ok(if asked.is_empty() { config.hosts.keys().cloned().collect() } else { asked.to_vec() })
}

/// The environments of the config whose role switch is in force (active
/// or failing back): their leases are withheld.
pub(super) fn failed_over(config: &Config, catalog: &Catalog) -> Result<BTreeSet<String>> {
    let mut envs = BTreeSet::new();
    for env in config.environments.keys() {
        if catalog.switch_in_force(env)?.is_some() {
            envs.insert(env.clone());
        }
    }
    Ok(envs)
}

/// Renews the leases on `hosts` for `status` (and says on stderr which
/// host was skipped, and why).
pub(super) fn renew_for_status(
    config: &Config,
    failed_over: &BTreeSet<String>,
    hosts: &[String],
    out: &Output,
) -> Vec<HostRenewal> {
    let renewals: Vec<HostRenewal> = gate::renew_hosts(config, hosts, failed_over)
        .iter()
        .map(|(host, result)| HostRenewal::new(host, result))
        .collect();
    for renewal in renewals.iter().filter(|r| r.error.is_some()) {
        if !out.json && !out.quiet {
            super::write_err(&format!(
                "warning: leases on host {} not renewed: {}\n",
                renewal.host,
                renewal.error.as_deref().unwrap_or_default()
            ));
        }
    }
    renewals
}

/// A host's outcome in a report: what was done, or why not.
#[derive(Debug, Serialize)]
struct HostOutcome<T> {
    host: String,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    done: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

fn outcomes<T>(results: Vec<(String, std::result::Result<T, GateError>)>) -> (Vec<HostOutcome<T>>, Option<GateError>) {
    let mut first = None;
    let outcomes = results
        .into_iter()
        .map(|(host, result)| match result {
            Ok(done) => HostOutcome { host, done: Some(done), error: None, hint: None },
            Err(error) => {
                let outcome =
                    HostOutcome { host, done: None, error: Some(crate::error::chain(&error)), hint: error.hint() };
                first.get_or_insert(error);
                outcome
            }
        })
        .collect();
    (outcomes, first)
}

#[derive(Debug, Serialize)]
struct InstallReport {
    hosts: Vec<HostOutcome<HostInstalled>>,
}

#[derive(Debug, Serialize)]
struct HostInstalled {
    #[serde(flatten)]
    installed: Installed,
    /// The hook is new: libvirtd looks for hooks when it starts (or on
    /// SIGHUP), so it acts from then on.
    restart_libvirtd: bool,
}

fn install(config: &Config, catalog: &Catalog, hosts: &[String], out: &Output) -> Result<ExitCode> {
    let failed_over = failed_over(config, catalog)?;
    let results = gate::on_hosts(config, hosts, |host, settings| {
        let wanted = gate::Wanted::for_host(config, host, &failed_over);
        let installed = gate::install(&gate::shell_of(config, host, settings), &Layout::of(settings), &wanted)?;
        Ok(HostInstalled { restart_libvirtd: installed.hook == HookChange::Created, installed })
    });
    let (hosts, failed) = outcomes(results);
    out.report(&InstallReport { hosts }, |report| human_install(&report.hosts));
    finish(failed)
}

fn human_install(hosts: &[HostOutcome<HostInstalled>]) -> String {
    let mut text = String::new();
    for outcome in hosts {
        let host = &outcome.host;
        let Some(done) = &outcome.done else {
            text.push_str(&failed_line(outcome));
            continue;
        };
        let installed = &done.installed;
        let hook = match installed.hook {
            HookChange::Created => "created",
            HookChange::Updated => "updated",
            HookChange::Unchanged => "unchanged",
        };
        text.push_str(&format!("host {host}: hook {hook}"));
        if let Some(libvirt) = &installed.libvirt {
            text.push_str(&format!(" ({libvirt})"));
        }
        text.push('\n');
        text.push_str(&protected_line(&installed.protected.iter().map(|p| (&p.domain, &p.env)).collect::<Vec<_>>()));
        text.push_str(&leases_lines(&installed.renewed.granted, &installed.renewed.withheld));
        if done.restart_libvirtd {
            text.push_str(&format!(
                "  restart libvirtd on {host} (or `systemctl reload libvirtd`): libvirt looks for hooks when it \
                 starts, so the gate acts from then on; running guests keep running\n"
            ));
        }
    }
    text
}

#[derive(Debug, Serialize)]
struct RenewReport {
    hosts: Vec<HostRenewal>,
}

fn renew(config: &Config, catalog: &Catalog, hosts: &[String], out: &Output) -> Result<ExitCode> {
    let results = gate::renew_hosts(config, hosts, &failed_over(config, catalog)?);
    let renewals = results.iter().map(|(host, result)| HostRenewal::new(host, result)).collect();
    out.report(&RenewReport { hosts: renewals }, |report| human_renew(&report.hosts));
    finish(results.into_iter().find_map(|(_, result)| result.err()))
}

fn human_renew(hosts: &[HostRenewal]) -> String {
    let mut text = String::new();
    for renewal in hosts {
        let host = &renewal.host;
        if let Some(error) = &renewal.error {
            text.push_str(&format!("host {host}: FAILED: {error}\n"));
            if let Some(hint) = &renewal.hint {
                text.push_str(&format!("  hint: {hint}\n"));
            }
        } else if !renewal.installed {
            text.push_str(&format!("host {host}: no start gate (`envclone gate install --host {host}`)\n"));
        } else if renewal.granted.is_empty() && renewal.withheld.is_empty() {
            text.push_str(&format!("host {host}: no environment runs there\n"));
        } else {
            text.push_str(&format!("host {host}:\n"));
            text.push_str(&leases_lines(&renewal.granted, &renewal.withheld));
        }
    }
    text
}

#[derive(Debug, Serialize)]
struct StatusReport {
    hosts: Vec<HostOutcome<HostGate>>,
}

/// The gate on one host, with what the controller wants there.
#[derive(Debug, Serialize)]
struct HostGate {
    #[serde(flatten)]
    found: Inspected,
    gate_dir: std::path::PathBuf,
    /// The protected list on the host is the config's.
    protected_current: bool,
    /// Environments of the host that are failed over (their lease withheld).
    failed_over: Vec<String>,
}

fn status(config: &Config, catalog: &Catalog, hosts: &[String], out: &Output) -> Result<ExitCode> {
    let failed_over = failed_over(config, catalog)?;
    let results = gate::on_hosts(config, hosts, |host, settings| {
        let layout = Layout::of(settings);
        let found = gate::inspect(&gate::shell_of(config, host, settings), host, &layout)?;
        let wanted = gate::Wanted::for_host(config, host, &failed_over);
        let mut on_host = found.protected.clone();
        on_host.sort();
        Ok(HostGate {
            protected_current: on_host == wanted.protected,
            gate_dir: layout.gate_dir,
            failed_over: wanted.withhold,
            found,
        })
    });
    let (hosts, failed) = outcomes(results);
    out.report(&StatusReport { hosts }, |report| human_status(&report.hosts));
    finish(failed)
}

fn human_status(hosts: &[HostOutcome<HostGate>]) -> String {
    let mut text = String::new();
    for outcome in hosts {
        let host = &outcome.host;
        let Some(gate) = &outcome.done else {
            text.push_str(&failed_line(outcome));
            continue;
        };
        let hook = match gate.found.hook {
            HookState::Current => "installed, current".to_owned(),
            HookState::Stale => format!("STALE (`envclone gate install --host {host}`)"),
            HookState::Missing => format!("MISSING (`envclone gate install --host {host}`)"),
            HookState::Foreign => {
                format!("NOT ENVCLONE'S: {}/qemu.d/{} is another tool's", gate::HOOKS_DIR, gate::HOOK_NAME)
            }
        };
        text.push_str(&format!(
            "host {host}: hook {hook}; gate directory {}{}\n",
            gate.gate_dir.display(),
            if gate.found.gate_dir_exists { "" } else { " (missing)" }
        ));
        let protected: Vec<_> = gate.found.protected.iter().map(|p| (&p.domain, &p.env)).collect();
        text.push_str(&protected_line(&protected));
        if !gate.protected_current {
            text.push_str(&format!("  the protected list is not the config's: `envclone gate renew --host {host}`\n"));
        }
        for lease in &gate.found.leases {
            text.push_str(&format!(
                "  lease {}: {}{}\n",
                lease.env,
                lease_state(lease),
                lease.age_seconds.map_or(String::new(), |age| format!(", written {} ago", human_age(age as i64)))
            ));
        }
        for env in &gate.failed_over {
            text.push_str(&format!("  {env} is failed over: its lease is withheld until it is home\n"));
        }
    }
    text
}

fn lease_state(lease: &Lease) -> String {
    if lease.fresh() {
        format!("fresh, expires in {}", human_age(lease.expires_in_seconds))
    } else {
        format!("EXPIRED {} ago", human_age(-lease.expires_in_seconds))
    }
}

fn protected_line(protected: &[(&String, &String)]) -> String {
    if protected.is_empty() {
        return "  protected: none\n".into();
    }
    let list: Vec<String> = protected.iter().map(|(domain, env)| format!("{domain} ({env})")).collect();
    format!("  protected: {}\n", list.join(", "))
}

fn leases_lines(granted: &[Lease], withheld: &[String]) -> String {
    let mut text = String::new();
    for lease in granted {
        text.push_str(&format!("  lease {} granted, expires in {}\n", lease.env, human_age(lease.expires_in_seconds)));
    }
    for env in withheld {
        text.push_str(&format!("  lease {env} withheld: {env} is failed over\n"));
    }
    text
}

fn failed_line<T>(outcome: &HostOutcome<T>) -> String {
    let mut text = format!("host {}: FAILED: {}\n", outcome.host, outcome.error.as_deref().unwrap_or_default());
    if let Some(hint) = &outcome.hint {
        text.push_str(&format!("  hint: {hint}\n"));
    }
    text
}

/// The report is printed: the first host's failure, if any, decides the exit.
fn finish(failed: Option<GateError>) -> Result<ExitCode> {
    match failed {
        Some(error) => Err(error.into()),
        None => Ok(ExitCode::Ok),
    }
}
