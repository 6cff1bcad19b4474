//! [`SshAgents`]: one environment's agents, each VM's session kept from one
//! call to the next. The calls of a restore ([`RestoreAgents`]) log in
//! again until the guest answers, within a deadline; those of a clone
//! ([`CloneAgents`]) change the guest and are made once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use envclone_agent::{
    ReaddressReport, ResetIdentityReport, RewritePlan, RewriteReport, ScanReport, ScanRequest, SetClockReport,
};
use ipnet::Ipv4Net;

use super::super::{CloneAgents, RestoreAgents};
use super::{targets, unknown_vm};
use crate::config::{Controller, Environment};
use crate::guest::endpoint::ssh_options;
use crate::guest::{AgentClient, GuestError, GuestSession, SshOptions, SshTarget};

/// How often a guest that does not answer yet is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// The real [`RestoreAgents`] and [`CloneAgents`]; see the module
/// documentation.
#[derive(Debug)]
pub struct SshAgents {
    targets: BTreeMap<String, SshTarget>,
    options: SshOptions,
    /// The session of the last successful call per VM, reused by the next.
    sessions: Mutex<BTreeMap<String, GuestSession>>,
}

impl SshAgents {
    pub fn new(controller: &Controller, env: &Environment) -> Self {
        SshAgents { targets: targets(env), options: ssh_options(controller), sessions: Mutex::new(BTreeMap::new()) }
    }

    fn target(&self, vm: &str) -> Result<&SshTarget, GuestError> {
        self.targets.get(vm).ok_or_else(|| unknown_vm(vm))
    }

    /// Runs `call` once on the kept session to `vm` or a new login; keeps
    /// the session when the call succeeds.
    fn with_session<T>(
        &self,
        vm: &str,
        call: impl FnOnce(&GuestSession) -> Result<T, GuestError>,
    ) -> Result<T, GuestError> {
        let target = self.target(vm)?;
        let kept = self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(vm);
        let session = match kept {
            Some(session) => session,
            None => GuestSession::connect(target, &self.options)?,
        };
        let value = call(&session)?;
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(vm.to_owned(), session);
        Ok(value)
    }

    /// Drops the kept session to `vm`: the next call logs in again.
    fn forget_session(&self, vm: &str) {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(vm);
    }

    /// Runs `call` on a session to `vm` (the kept one, or a new login),
    /// again and again until it succeeds or `within` has passed; returns
    /// the last error then.
    fn retry<T>(
        &self,
        vm: &str,
        what: &str,
        within: Duration,
        call: impl Fn(&GuestSession) -> Result<T, GuestError>,
    ) -> Result<T, GuestError> {
        let target = self.target(vm)?;
        let outcome = crate::wait::until(what, within, RETRY, || self.with_session(vm, &call).map(Some));
        outcome.map_err(|crate::wait::WaitError::Timeout { last, waited, .. }| {
            last.unwrap_or_else(|| GuestError::CommandTimeout {
                target: target.to_string(),
                command: what.to_owned(),
                after: waited,
            })
        })
    }

    /// One agent call on the kept session or a new login, not retried:
    /// these calls change the guest, so a second try is the caller's call.
    fn once<T>(&self, vm: &str, call: impl Fn(&AgentClient<'_>) -> Result<T, GuestError>) -> Result<T, GuestError> {
        self.with_session(vm, |session| call(&AgentClient::new(session)))
    }
}

impl RestoreAgents for SshAgents {
    fn wait_ready(&self, vm: &str, within: Duration) -> Result<(), GuestError> {
        self.retry(vm, "the agent to answer", within, |session| AgentClient::new(session).status().map(|_| ()))
    }

    fn thaw(&self, vm: &str, within: Duration) -> Result<(), GuestError> {
        self.retry(vm, "the guest to thaw", within, |session| {
            let report = super::thaw_checked(&AgentClient::new(session), session.target())?;
            if !report.thawed.is_empty() {
                tracing::info!(vm, thawed = ?report.thawed, "thawed after the memory restore");
            }
            Ok(())
        })
    }

    fn set_clock(&self, vm: &str) -> Result<i64, GuestError> {
        let within = self.options.connect_timeout + self.options.command_timeout;
        self.retry(vm, "the guest clock to be set", within, |session| {
            // Read the time at the last moment: logins take a while.
            let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
            let report: SetClockReport =
                AgentClient::new(session).call(&["set-clock", "--now-from-controller", &now], None)?;
            Ok(report.step_ms)
        })
    }
}

impl CloneAgents for SshAgents {
    fn host_key(&self, vm: &str) -> Result<Vec<u8>, GuestError> {
        self.with_session(vm, |session| {
            session
                .session()
                .host_key()
                .map(|(blob, _)| blob.to_vec())
                .ok_or_else(|| GuestError::NoHostKey { target: session.target().to_owned() })
        })
    }

    fn hostname(&self, vm: &str) -> Result<String, GuestError> {
        self.once(vm, |agent| agent.status().map(|s| s.hostname))
    }

    fn rewrite(&self, vm: &str, plan: &RewritePlan) -> Result<RewriteReport, GuestError> {
        // Cannot fail: the plan holds strings, lists and string-keyed maps only.
        #[allow(clippy::expect_used)]
        let plan = serde_json::to_vec(plan).expect("a rewrite plan serializes");
        self.once(vm, |agent| agent.call(&["rewrite"], Some(&plan)))
    }

    fn scan(&self, vm: &str, request: &ScanRequest) -> Result<ScanReport, GuestError> {
        // Cannot fail: the request holds strings, lists and string-keyed maps only.
        #[allow(clippy::expect_used)]
        let request = serde_json::to_vec(request).expect("a scan request serializes");
        self.once(vm, |agent| agent.call(&["scan"], Some(&request)))
    }

    fn readdress(
        &self,
        vm: &str,
        mac: &str,
        address: &Ipv4Net,
        gateway: Ipv4Addr,
        hostname: &str,
    ) -> Result<ReaddressReport, GuestError> {
        let (address, gateway) = (address.to_string(), gateway.to_string());
        let args = ["readdress", "--mac", mac, "--address", &address, "--gateway", &gateway, "--hostname", hostname];
        let report = self.once(vm, |agent| agent.call(&args, None));
        // The session came in on the address the agent is about to drop.
        self.forget_session(vm);
        report
    }

    fn reset_identity(&self, vm: &str, host_keys: bool) -> Result<ResetIdentityReport, GuestError> {
        let args: &[&str] = if host_keys { &["reset-identity", "--ssh-host-keys"] } else { &["reset-identity"] };
        self.once(vm, |agent| agent.call(args, None))
    }
}
