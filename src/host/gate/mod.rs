//! The start gate: a libvirt qemu hook on every host of `[hosts]` that
//! refuses, at the moment libvirt would start it, a domain that must not
//! run there, so that a host coming back after an unconfirmed fence (its
//! autostart still on) cannot run an old primary even for a moment.
//!
//! ```text
//!   controller                                host (libvirtd + hook)
//!   ──────────                                ──────────────────────
//!   gate install ──ssh──> /etc/libvirt/hooks/qemu.d/envclone   (hook.sh)
//!                         GATE/protected       "DOMAIN ENV" per line
//!   gate renew,  ──ssh──> GATE/ENV.lease       expiry, unix s, host clock
//!   status, daemon        (granted while ENV is to run here;
//!                          removed while a standby serves ENV)
//!
//!   virsh start / autostart ──> libvirtd ──> hook DOMAIN prepare begin <XML
//!        fence stamp in <metadata>                 -> refused (exit 1)
//!        DOMAIN in protected, lease stale/missing  -> refused (exit 1)
//!        anything else                             -> started
//! ```
//!
//! The host holds no secret and runs nothing of envclone's but the hook:
//! POSIX sh, grep and coreutils. What it needs is written over the host's
//! SSH login ([`HostShell`]), one script per host and command. Lease
//! expiries are computed on the host by its own clock, so the controller's
//! clock never has to agree with it. libvirt looks for hook scripts when
//! libvirtd starts (or reloads, SIGHUP): a hook installed after that acts
//! from the next restart (`install` says so when it created the hook).
//!
//! What the controller wants on a host ([`Wanted`]) comes from the config
//! and the catalog: the domains of every environment whose `host` is that
//! host are protected; a lease is granted to each such environment that is
//! not failed over, and withheld (its file removed) from one that is.

mod script;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::remote::{ssh_options, ssh_target, SshShell};
use super::ToolError;
use crate::config::{Config, HostSettings};
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::{shell_quote, ExecOutput};
use crate::ops::shared::{OperationError, Shared};

pub use self::script::{HookChange, HookState};

/// The hook's text, before the gate directory is put in: see [`hook_script`].
const HOOK_TEMPLATE: &str = include_str!("hook.sh");
/// Stands for the gate directory in [`HOOK_TEMPLATE`].
const GATE_DIR_PLACEHOLDER: &str = "@GATE_DIR@";
/// The line that marks a hook as the gate's (a file at the gate's path
/// without it is someone else's, never overwritten).
pub const MARKER: &str = "# envclone start gate";
/// libvirt's hook directory on a host.
pub const HOOKS_DIR: &str = "/etc/libvirt/hooks";
/// The hook's name in `qemu.d/`, where libvirt runs every script after
/// `hooks/qemu`: the gate never needs to touch another hook.
pub const HOOK_NAME: &str = "envclone";
/// The first libvirt that runs the scripts of `hooks/qemu.d/`.
pub const MIN_LIBVIRT: (u32, u32) = (6, 5);
/// One gate script on a host: a few file writes; the rest of the bound is
/// for the SSH login of a host under load.
pub const SCRIPT_WITHIN: Duration = Duration::from_secs(20);

/// The hook with `gate_dir` (as the host sees it) put in.
pub fn hook_script(gate_dir: &Path) -> String {
    HOOK_TEMPLATE.replace(GATE_DIR_PLACEHOLDER, &shell_quote(&gate_dir.to_string_lossy()))
}

/// Where the gate lives on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// libvirt's hook directory ([`HOOKS_DIR`] on a real host).
    pub hooks_dir: PathBuf,
    /// The `protected` list and the leases.
    pub gate_dir: PathBuf,
}

impl Layout {
    /// The layout of a host of `[hosts]`.
    pub fn of(settings: &HostSettings) -> Layout {
        Layout { hooks_dir: PathBuf::from(HOOKS_DIR), gate_dir: settings.gate_dir() }
    }

    /// `<hooks>/qemu.d/envclone`.
    pub fn hook_path(&self) -> PathBuf {
        self.hooks_dir.join("qemu.d").join(HOOK_NAME)
    }

    pub fn protected_path(&self) -> PathBuf {
        self.gate_dir.join("protected")
    }

    pub fn lease_path(&self, env: &str) -> PathBuf {
        self.gate_dir.join(format!("{env}.lease"))
    }
}

/// A domain the gate starts only under a fresh lease of its environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Protected {
    pub domain: String,
    pub env: String,
}

/// The `protected` file's text: a `DOMAIN ENV` line per domain.
pub fn protected_list(protected: &[Protected]) -> String {
    protected.iter().map(|p| format!("{} {}\n", p.domain, p.env)).collect()
}

/// A lease file's text: the expiry, unix seconds.
pub fn lease_text(expiry: u64) -> String {
    format!("{expiry}\n")
}

/// What the controller wants on one host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub host: String,
    pub protected: Vec<Protected>,
    /// Environments whose lease is renewed.
    pub grant: Vec<String>,
    /// Environments failed over: their lease is removed, so that nothing of
    /// them starts on the host until they come home.
    pub withhold: Vec<String>,
    pub lease: Duration,
}

impl Wanted {
    /// For host `host` of `config`: every environment on it protected;
    /// those in `failed_over` withheld, the others granted.
    pub fn for_host(config: &Config, host: &str, failed_over: &BTreeSet<String>) -> Wanted {
        let lease = config.hosts.get(host).map_or(HostSettings::DEFAULT_LEASE, HostSettings::lease);
        let mut wanted =
            Wanted { host: host.to_owned(), protected: Vec::new(), grant: Vec::new(), withhold: Vec::new(), lease };
        for (name, env) in config.environments.iter().filter(|(name, _)| config.host_of(name) == host) {
            wanted
                .protected
                .extend(env.vms.values().map(|vm| Protected { domain: vm.domain.clone(), env: name.clone() }));
            if failed_over.contains(name) {
                wanted.withhold.push(name.clone());
            } else {
                wanted.grant.push(name.clone());
            }
        }
        wanted.protected.sort();
        wanted
    }
}

/// A lease as the host holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub env: String,
    /// Unix seconds, the host's clock.
    pub expires_at: u64,
    /// From the host's now; negative once expired.
    pub expires_in_seconds: i64,
    /// Since the lease was last written, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
}

impl Lease {
    pub fn fresh(&self) -> bool {
        self.expires_in_seconds > 0
    }
}

/// What a renewal did on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renewed {
    /// False: the gate is not installed there (no gate directory), so
    /// nothing was written.
    pub installed: bool,
    pub granted: Vec<Lease>,
    pub withheld: Vec<String>,
}

/// What an install did on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub hook: HookChange,
    /// As the host's `libvirtd --version` says, when it does.
    pub libvirt: Option<String>,
    pub protected: Vec<Protected>,
    pub renewed: Renewed,
}

/// The gate on one host, as `gate status` and `check --live` see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspected {
    pub hook: HookState,
    /// Whether the gate directory exists.
    pub gate_dir_exists: bool,
    pub protected: Vec<Protected>,
    pub leases: Vec<Lease>,
}

impl Inspected {
    /// The lease of `env`, if the host holds one.
    pub fn lease(&self, env: &str) -> Option<&Lease> {
        self.leases.iter().find(|lease| lease.env == env)
    }
}

/// Runs a gate script on a host: its SSH login, or `sh` in tests.
pub trait HostShell {
    /// Runs `script` within `timeout`, whatever its exit status.
    fn run_script(&self, script: &str, timeout: Duration) -> Result<ExecOutput, ToolError>;
}

impl HostShell for SshShell {
    fn run_script(&self, script: &str, timeout: Duration) -> Result<ExecOutput, ToolError> {
        // The shell names a command that could not run by its text: the
        // gate's scripts are a screen long, so only where it ran is kept.
        self.script(script, timeout).map_err(|error| match error {
            ToolError::Spawn { command, source } => {
                let on = command.rfind(" (on host ").map_or("", |at| &command[at..]);
                ToolError::Spawn { command: format!("sh{on}"), source }
            }
            other => other,
        })
    }
}

/// The SSH login of host `name` of `[hosts]` (made at its first script).
pub fn shell_of(config: &Config, name: &str, settings: &HostSettings) -> SshShell {
    SshShell::new(name, ssh_target(settings), ssh_options(settings, &config.controller))
}

/// Writes (or keeps) the hook, then the protected list and the leases as
/// `wanted` says. A file at the hook's path that is not the gate's is
/// left alone and refused ([`GateError::ForeignHook`]), and so is a
/// libvirt too old to run it ([`GateError::OldLibvirt`]): nothing is
/// written then.
pub fn install(shell: &dyn HostShell, layout: &Layout, wanted: &Wanted) -> Result<Installed, GateError> {
    let text = script::install(layout, &hook_script(&layout.gate_dir), wanted);
    let out = script::parse(&wanted.host, &run(shell, &wanted.host, &text)?)?;
    let hook = match &out.hook {
        Some(script::HookLine::Changed(change)) => *change,
        Some(script::HookLine::Foreign) => {
            return Err(GateError::ForeignHook { host: wanted.host.clone(), path: layout.hook_path() })
        }
        Some(script::HookLine::OldLibvirt) => {
            return Err(GateError::OldLibvirt {
                host: wanted.host.clone(),
                version: out.libvirt.clone().unwrap_or_default(),
            })
        }
        _ => return Err(GateError::BadOutput { host: wanted.host.clone(), what: "the hook's state" }),
    };
    Ok(Installed { hook, libvirt: out.libvirt.clone(), protected: wanted.protected.clone(), renewed: out.renewed() })
}

/// Rewrites the protected list and renews (or withholds) the leases as
/// `wanted` says, where the gate is installed; where it is not, writes
/// nothing and says so.
pub fn renew(shell: &dyn HostShell, layout: &Layout, wanted: &Wanted) -> Result<Renewed, GateError> {
    let text = script::renew(layout, wanted);
    Ok(script::parse(&wanted.host, &run(shell, &wanted.host, &text)?)?.renewed())
}

/// The hook's state, the protected list and the leases on the host.
pub fn inspect(shell: &dyn HostShell, host: &str, layout: &Layout) -> Result<Inspected, GateError> {
    let expected = script::sha256(&hook_script(&layout.gate_dir));
    script::parse(host, &run(shell, host, &script::inspect(layout))?)?.inspected(host, &expected)
}

/// Grants `env` a fresh lease on host `host` now, whatever the catalog
/// says: for an operation about to start `env`'s domains there on purpose
/// (a failback, once the switch is marked failing back and the fence
/// stamps are gone). `None` when `host` is `local` (no gate) or the gate
/// is not installed there.
pub fn grant(config: &Config, host: &str, env: &str) -> Result<Option<Lease>, GateError> {
    let Some(settings) = config.hosts.get(host) else { return Ok(None) };
    grant_on(&shell_of(config, host, settings), &Layout::of(settings), host, env, settings.lease())
}

/// [`grant`] through `shell`: `env`'s lease only (the protected list is
/// left as it is); `None` where the gate is not installed.
pub fn grant_on(
    shell: &dyn HostShell,
    layout: &Layout,
    host: &str,
    env: &str,
    lease: Duration,
) -> Result<Option<Lease>, GateError> {
    let wanted = Wanted {
        host: host.to_owned(),
        protected: Vec::new(),
        grant: vec![env.to_owned()],
        withhold: Vec::new(),
        lease,
    };
    let renewed = script::parse(host, &run(shell, host, &script::grant(layout, &wanted))?)?.renewed();
    Ok(renewed.granted.into_iter().next())
}

/// A renewal on one host, as `gate renew` and `status` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRenewal {
    pub host: String,
    /// The host answered and has the gate (else nothing was written).
    pub installed: bool,
    pub granted: Vec<Lease>,
    /// Environments failed over: no lease on this host.
    pub withheld: Vec<String>,
    /// Why the host was skipped: it did not answer, or the script failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl HostRenewal {
    pub fn new(host: &str, result: &Result<Renewed, GateError>) -> HostRenewal {
        match result {
            Ok(renewed) => HostRenewal {
                host: host.to_owned(),
                installed: renewed.installed,
                granted: renewed.granted.clone(),
                withheld: renewed.withheld.clone(),
                error: None,
                hint: None,
            },
            Err(error) => HostRenewal {
                host: host.to_owned(),
                installed: false,
                granted: Vec::new(),
                withheld: Vec::new(),
                error: Some(crate::error::chain(error)),
                hint: error.hint(),
            },
        }
    }
}

/// `work` on each of `hosts` (names under `[hosts]`) at once, each over
/// its own SSH login: a host that does not answer costs the others
/// nothing. The results in the order of `hosts`.
pub fn on_hosts<T: Send>(
    config: &Config,
    hosts: &[String],
    work: impl Fn(&str, &HostSettings) -> Result<T, GateError> + Sync,
) -> Vec<(String, Result<T, GateError>)> {
    let results = crate::ops::parallel::each(hosts, |host| match config.hosts.get(host) {
        Some(settings) => work(host, settings),
        None => Err(GateError::NotAGatedHost { host: host.clone(), known: config.hosts.keys().cloned().collect() }),
    });
    // A panicked worker is a bug: its panic goes on, as it was.
    hosts
        .iter()
        .cloned()
        .zip(results.into_iter().map(|result| result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))))
        .collect()
}

/// [`renew`] on each of `hosts` at once (see [`on_hosts`]).
pub fn renew_hosts(
    config: &Config,
    hosts: &[String],
    failed_over: &BTreeSet<String>,
) -> Vec<(String, Result<Renewed, GateError>)> {
    on_hosts(config, hosts, |host, settings| {
        renew(&shell_of(config, host, settings), &Layout::of(settings), &Wanted::for_host(config, host, failed_over))
    })
}

fn run(shell: &dyn HostShell, host: &str, text: &str) -> Result<String, GateError> {
    let output = shell
        .run_script(text, SCRIPT_WITHIN)
        .map_err(|source| GateError::Unreachable { host: host.to_owned(), source: Box::new(source) })?;
    if output.status != 0 {
        return Err(GateError::Script {
            host: host.to_owned(),
            status: output.status,
            stderr: super::tool::tail(&String::from_utf8_lossy(&output.stderr), 800),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The gate could not be installed, renewed or read on a host.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot run the gate's script on host {host}")]
    Unreachable {
        host: String,
        #[source]
        source: Box<ToolError>,
    },
    #[error("the gate's script failed on host {host} (exit {status}): {stderr}")]
    Script { host: String, status: i32, stderr: String },
    #[error("{} on host {host} is not envclone's start gate: left as it is", path.display())]
    ForeignHook { host: String, path: PathBuf },
    #[error("host {host} runs {version}: libvirt runs hooks/qemu.d/ scripts from 6.5 on")]
    OldLibvirt { host: String, version: String },
    #[error("host {host} answered the gate's script without {what}")]
    BadOutput { host: String, what: &'static str },
    /// `--host local`, or a name not under `[hosts]`.
    #[error("host {host} is not a host of [hosts]: the start gate guards only those")]
    NotAGatedHost { host: String, known: Vec<String> },
}

impl Failure for GateError {
    fn exit_code(&self) -> ExitCode {
        match self {
            GateError::Unreachable { .. } => ExitCode::Unreachable,
            GateError::NotAGatedHost { .. } => ExitCode::NotFound,
            GateError::Script { .. }
            | GateError::ForeignHook { .. }
            | GateError::OldLibvirt { .. }
            | GateError::BadOutput { .. } => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            GateError::Unreachable { host, .. } => format!(
                "is host {host}'s sshd up, with its key in [hosts.{host}.ssh] known_hosts? `envclone check --live` \
                 says which part fails"
            ),
            GateError::Script { host, .. } => {
                format!("the gate writes to [hosts.{host}] gate_dir and {HOOKS_DIR}/qemu.d as [hosts.{host}.ssh] user")
            }
            GateError::ForeignHook { path, .. } => format!(
                "another tool's hook sits at {}: move it (libvirt runs every script of qemu.d/, so it can live \
                 there under another name), then `envclone gate install` again",
                path.display()
            ),
            GateError::OldLibvirt { .. } => "upgrade libvirt on that host; until then it has no start gate".into(),
            GateError::BadOutput { .. } => return None,
            GateError::NotAGatedHost { known, .. } => format!("name one of: {}", known.join(", ")),
        })
    }
}

impl OperationError for GateError {
    const OPERATION: &'static str = "gate";

    fn into_shared(self) -> Result<Shared, Self> {
        Err(self)
    }
}

#[cfg(test)]
mod tests;
