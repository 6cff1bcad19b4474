//! Fakes of the guest agents port ([`crate::guest::agents`]), one per
//! role, each with named scenarios and a log of what it was asked:
//!
//! - [`FakeQuiescer`]: freezes; `healthy()`, `.with_agent_down(vm)`,
//!   `.with_failing_hook(vm, hook)`, `.with_slow_freeze(vm, delay)`,
//!   `.with_failing_thaw(vm)`, `.two_phase()`, or `without_agents()`.
//! - [`ReadyAgents`]: a clone's agents that answer everything.
//! - [`FakeRestoreAgents`]: the agents after a restore's start, with named
//!   failures per VM.
//! - [`FakeRecoveryAgents`]: what `recover` asks, with guests left frozen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guest::agents::{
    AgentCallError, ArmedGuest, CloneAgents, FreezeInfo, FreezeState, FrozenGuest, Quiescer, RecoveryAgents,
    RestoreAgents, ThawInfo,
};
use crate::guest::GuestError;

/// The error of an agent that cannot be reached.
fn unreachable(vm: &str) -> GuestError {
    GuestError::Connect {
        netns: None,
        addr: "10.0.0.9:22".parse().unwrap(),
        source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, format!("{vm} is down")),
    }
}

/// What the scripted quiescer did, shared with the freezes it hands out.
#[derive(Debug, Default)]
struct AgentLog {
    events: Vec<String>,
    /// Guests frozen and not thawed by a call (a freeze only dropped stays
    /// here: a test sees that nothing thawed it).
    frozen: BTreeSet<String>,
}

/// A [`Quiescer`] with named scenarios per VM. It logs `prepare VM`,
/// `arm VM`, `freeze VM`, `thaw VM`, `thaw failed VM`, `hook failed VM`,
/// `stand down VM` (an armed guest dropped), `release VM` (a freeze
/// dropped without a thaw) and `recover VM`.
#[derive(Debug, Default)]
pub(crate) struct FakeQuiescer {
    log: Arc<Mutex<AgentLog>>,
    unreachable: BTreeSet<String>,
    failing_hook: BTreeMap<String, String>,
    slow_freeze: BTreeMap<String, Duration>,
    failing_thaw: BTreeSet<String>,
    /// Arms first (hooks, sync), freezes at the go, as the real agent does.
    two_phase: bool,
    /// No guest has an agent: every call fails.
    missing: bool,
}

impl FakeQuiescer {
    /// Every agent answers and freezes in one step.
    pub(crate) fn healthy() -> Self {
        Self::default()
    }

    /// No guest has an agent: for operations that must not ask one.
    pub(crate) fn without_agents() -> Self {
        FakeQuiescer { missing: true, ..Self::default() }
    }

    pub(crate) fn with_agent_down(mut self, vm: &str) -> Self {
        self.unreachable.insert(vm.into());
        self
    }

    pub(crate) fn with_failing_hook(mut self, vm: &str, hook: &str) -> Self {
        self.failing_hook.insert(vm.into(), hook.into());
        self
    }

    pub(crate) fn with_slow_freeze(mut self, vm: &str, delay: Duration) -> Self {
        self.slow_freeze.insert(vm.into(), delay);
        self
    }

    pub(crate) fn with_failing_thaw(mut self, vm: &str) -> Self {
        self.failing_thaw.insert(vm.into());
        self
    }

    pub(crate) fn two_phase(mut self) -> Self {
        self.two_phase = true;
        self
    }

    /// What it did, in order.
    pub(crate) fn events(&self) -> Vec<String> {
        self.log.lock().unwrap().events.clone()
    }

    pub(crate) fn clear_events(&self) {
        self.log.lock().unwrap().events.clear();
    }

    /// The guests frozen now.
    pub(crate) fn frozen(&self) -> BTreeSet<String> {
        self.log.lock().unwrap().frozen.clone()
    }

    fn missing(&self, vm: &str) -> Result<(), GuestError> {
        if self.missing {
            return Err(GuestError::AgentMissing { target: vm.into() });
        }
        Ok(())
    }

    /// The pre-freeze part: the slow ones are slow, the failing hook fails.
    fn run_hooks(&self, vm: &str) -> Result<(), GuestError> {
        if let Some(delay) = self.slow_freeze.get(vm) {
            std::thread::sleep(*delay);
        }
        if let Some(hook) = self.failing_hook.get(vm) {
            self.log.lock().unwrap().events.push(format!("hook failed {vm}"));
            return Err(GuestError::Agent {
                target: format!("root@{vm}:22"),
                kind: "hook-failed".into(),
                message: format!(
                    "pre-freeze hook {hook} exited with status 3; its stderr ends: refused; nothing was frozen"
                ),
                hint: None,
                exit: Some(envclone_agent::ExitStatus::Failed),
            });
        }
        Ok(())
    }

    fn armed(&self, vm: &str) -> FakeArmed {
        FakeArmed {
            vm: vm.to_owned(),
            log: Arc::clone(&self.log),
            thaw_fails: self.failing_thaw.contains(vm),
            fired: false,
        }
    }
}

impl Quiescer for FakeQuiescer {
    fn prepare(&self, vm: &str) -> Result<(), GuestError> {
        self.missing(vm)?;
        self.log.lock().unwrap().events.push(format!("prepare {vm}"));
        if self.unreachable.contains(vm) {
            return Err(unreachable(vm));
        }
        Ok(())
    }

    fn arm(&self, vm: &str) -> Result<Option<Box<dyn ArmedGuest>>, GuestError> {
        self.missing(vm)?;
        if !self.two_phase {
            // One step, as with an agent older than `freeze --barrier`:
            // `freeze` at the go runs the hooks and freezes.
            return Ok(None);
        }
        self.run_hooks(vm)?;
        self.log.lock().unwrap().events.push(format!("arm {vm}"));
        Ok(Some(Box::new(self.armed(vm))))
    }

    fn freeze(&self, vm: &str) -> Result<(Box<dyn FrozenGuest>, FreezeInfo), GuestError> {
        self.missing(vm)?;
        self.run_hooks(vm)?;
        Ok((Box::new(self.armed(vm).fire()), FreezeInfo { freezing: Duration::ZERO }))
    }

    fn recover(&self, vm: &str) -> Result<(), GuestError> {
        self.missing(vm)?;
        let mut log = self.log.lock().unwrap();
        log.events.push(format!("recover {vm}"));
        log.frozen.remove(vm);
        Ok(())
    }
}

/// Armed: freezes at the go; dropped without it, stands down.
struct FakeArmed {
    vm: String,
    log: Arc<Mutex<AgentLog>>,
    thaw_fails: bool,
    fired: bool,
}

impl FakeArmed {
    fn fire(mut self) -> FakeFrozen {
        self.fired = true;
        let mut log = self.log.lock().unwrap();
        log.events.push(format!("freeze {}", self.vm));
        log.frozen.insert(self.vm.clone());
        drop(log);
        FakeFrozen {
            vm: self.vm.clone(),
            since: Instant::now(),
            log: Arc::clone(&self.log),
            fails: self.thaw_fails,
            ended: false,
        }
    }
}

impl ArmedGuest for FakeArmed {
    fn freeze(self: Box<Self>) -> Result<(Box<dyn FrozenGuest>, FreezeInfo), GuestError> {
        Ok((Box::new(self.fire()), FreezeInfo { freezing: Duration::ZERO }))
    }
}

impl Drop for FakeArmed {
    fn drop(&mut self) {
        if !self.fired {
            self.log.lock().unwrap().events.push(format!("stand down {}", self.vm));
        }
    }
}

/// One held freeze; dropped without a thaw, it is released.
struct FakeFrozen {
    vm: String,
    since: Instant,
    log: Arc<Mutex<AgentLog>>,
    fails: bool,
    /// Thawed, or tried to: the freeze is over either way.
    ended: bool,
}

impl FrozenGuest for FakeFrozen {
    fn thaw(mut self: Box<Self>) -> Result<ThawInfo, GuestError> {
        self.ended = true;
        let mut log = self.log.lock().unwrap();
        if self.fails {
            log.events.push(format!("thaw failed {}", self.vm));
            return Err(GuestError::LeaseLost {
                target: self.vm.clone(),
                expected: "the final report",
                status: None,
                stderr_tail: String::new(),
            });
        }
        log.events.push(format!("thaw {}", self.vm));
        log.frozen.remove(&self.vm);
        Ok(ThawInfo { frozen: self.since.elapsed(), by_lease_timeout: false })
    }
}

impl Drop for FakeFrozen {
    fn drop(&mut self) {
        if !self.ended {
            self.log.lock().unwrap().events.push(format!("release {}", self.vm));
        }
    }
}

/// Agents that answer everything; they log what they were asked (`vm:
/// call`) into the shared log, and `scan` finds what `findings` says.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReadyAgents {
    pub log: Arc<Mutex<Vec<String>>>,
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

impl RestoreAgents for ReadyAgents {
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

fn readdress_report(address: &ipnet::Ipv4Net, hostname: &str) -> envclone_agent::ReaddressReport {
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

/// [`RestoreAgents`] with named failures per VM. It logs `ready? VM`,
/// `thaw VM` and `set-clock VM`; every clock is an hour behind.
#[derive(Debug, Default)]
pub(crate) struct FakeRestoreAgents {
    log: Mutex<Vec<String>>,
    not_ready: BTreeSet<String>,
    failing_thaw: BTreeSet<String>,
}

impl FakeRestoreAgents {
    pub(crate) fn healthy() -> Self {
        Self::default()
    }

    /// `vm`'s agent never answers.
    pub(crate) fn with_agent_not_ready(mut self, vm: &str) -> Self {
        self.not_ready.insert(vm.into());
        self
    }

    /// `vm` stays frozen after `envclone-agent thaw`.
    pub(crate) fn with_failing_thaw(mut self, vm: &str) -> Self {
        self.failing_thaw.insert(vm.into());
        self
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl RestoreAgents for FakeRestoreAgents {
    fn wait_ready(&self, vm: &str, _within: Duration) -> Result<(), GuestError> {
        self.log.lock().unwrap().push(format!("ready? {vm}"));
        if self.not_ready.contains(vm) {
            return Err(unreachable(vm));
        }
        Ok(())
    }

    fn thaw(&self, vm: &str, _within: Duration) -> Result<(), GuestError> {
        self.log.lock().unwrap().push(format!("thaw {vm}"));
        if self.failing_thaw.contains(vm) {
            return Err(GuestError::Agent {
                target: vm.into(),
                kind: envclone_agent::freeze::error_kind::THAW_FAILED.into(),
                message: "still frozen after `envclone-agent thaw`: /".into(),
                hint: None,
                exit: None,
            });
        }
        Ok(())
    }

    fn set_clock(&self, vm: &str) -> Result<i64, GuestError> {
        self.log.lock().unwrap().push(format!("set-clock {vm}"));
        Ok(3_600_000)
    }
}

/// [`RecoveryAgents`] with named scenarios; every call is logged in order
/// (`status ENV/VM`, `thaw ENV/VM`).
#[derive(Debug, Default)]
pub(crate) struct FakeRecoveryAgents {
    state: Mutex<RecoveryState>,
}

#[derive(Debug, Default)]
struct RecoveryState {
    frozen: BTreeMap<String, Vec<String>>,
    unreachable: BTreeSet<String>,
    thaw_fails: BTreeSet<String>,
    /// Status calls that still fail, per VM, before its agent answers.
    booting: BTreeMap<String, u32>,
    log: Vec<String>,
}

impl FakeRecoveryAgents {
    /// Every agent answers; nothing is frozen.
    pub(crate) fn healthy() -> Self {
        Self::default()
    }

    /// `vm`'s guest was left frozen (`/` and `/var`).
    pub(crate) fn with_frozen(self, vm: &str) -> Self {
        self.state.lock().unwrap().frozen.insert(vm.into(), vec!["/".into(), "/var".into()]);
        self
    }

    pub(crate) fn with_failing_thaw(self, vm: &str) -> Self {
        self.state.lock().unwrap().thaw_fails.insert(vm.into());
        self
    }

    /// `vm`'s guest is booting: its agent answers from the `calls`+1-th status call on.
    pub(crate) fn booting(self, vm: &str, calls: u32) -> Self {
        self.state.lock().unwrap().booting.insert(vm.into(), calls);
        self
    }

    /// `vm`'s thaw works from now on.
    pub(crate) fn heal(&self, vm: &str) {
        self.state.lock().unwrap().thaw_fails.remove(vm);
    }

    pub(crate) fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub(crate) fn thaws(&self) -> Vec<String> {
        self.log().into_iter().filter(|line| line.starts_with("thaw")).collect()
    }

    pub(crate) fn frozen(&self, vm: &str) -> bool {
        self.state.lock().unwrap().frozen.contains_key(vm)
    }

    fn unreachable_error() -> AgentCallError {
        AgentCallError::Guest(GuestError::Connect {
            netns: None,
            addr: "10.0.0.9:22".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        })
    }
}

impl RecoveryAgents for FakeRecoveryAgents {
    fn status(&self, env: &str, vm: &str) -> Result<FreezeState, AgentCallError> {
        let mut state = self.state.lock().unwrap();
        state.log.push(format!("status {env}/{vm}"));
        if state.unreachable.contains(vm) {
            return Err(Self::unreachable_error());
        }
        if let Some(left) = state.booting.get_mut(vm).filter(|left| **left > 0) {
            *left -= 1;
            return Err(Self::unreachable_error());
        }
        Ok(FreezeState { frozen: state.frozen.get(vm).cloned().unwrap_or_default(), in_progress: false })
    }

    fn thaw(&self, env: &str, vm: &str) -> Result<Vec<String>, AgentCallError> {
        let mut state = self.state.lock().unwrap();
        state.log.push(format!("thaw {env}/{vm}"));
        if state.unreachable.contains(vm) || state.thaw_fails.contains(vm) {
            return Err(Self::unreachable_error());
        }
        Ok(state.frozen.remove(vm).unwrap_or_default())
    }
}
