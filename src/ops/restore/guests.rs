//! The agents after the start, behind a small trait so that the state
//! machine is unit tested without SSH: [`GuestAgents`] waits for a booted
//! guest's agent, thaws a guest restored from memory (it resumes frozen if
//! it was captured frozen) and sets its clock (it resumes at the
//! snapshot's time). [`SshAgents`] is the real one: `envclone-agent` over
//! SSH, logging in again until the guest answers, within a deadline.
//!
//! The best-effort freeze before the stop goes through the snapshot's
//! [`crate::ops::snapshot::Quiescer`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use envclone_agent::freeze::ThawReport;
use envclone_agent::SetClockReport;

use crate::config::{Controller, Environment};
use crate::guest::endpoint::{ssh_options, ssh_target};
use crate::guest::{AgentClient, GuestError, GuestSession, SshOptions, SshTarget};

/// How often a guest that does not answer yet is tried again.
const RETRY: Duration = Duration::from_millis(500);

pub trait GuestAgents: Sync {
    /// Waits up to `within` until `vm`'s agent answers (a cold boot).
    fn wait_ready(&self, vm: &str, within: Duration) -> Result<(), GuestError>;
    /// Thaws `vm` (`envclone-agent thaw`, safe when nothing is frozen) and
    /// checks that nothing stays frozen, trying up to `within`.
    fn thaw(&self, vm: &str, within: Duration) -> Result<(), GuestError>;
    /// Sets `vm`'s clock to the controller's; returns the step in ms.
    fn set_clock(&self, vm: &str) -> Result<i64, GuestError>;
}

/// The real [`GuestAgents`]; see the module documentation.
#[derive(Debug)]
pub struct SshAgents {
    targets: BTreeMap<String, SshTarget>,
    options: SshOptions,
    /// The session of the last successful call per VM, reused by the next.
    sessions: Mutex<BTreeMap<String, GuestSession>>,
}

impl SshAgents {
    pub fn new(controller: &Controller, env: &Environment) -> Self {
        SshAgents {
            targets: env.vms.iter().map(|(vm, config)| (vm.clone(), ssh_target(&config.agent))).collect(),
            options: ssh_options(controller),
            sessions: Mutex::new(BTreeMap::new()),
        }
    }

    fn target(&self, vm: &str) -> Result<&SshTarget, GuestError> {
        self.targets.get(vm).ok_or_else(|| GuestError::Agent {
            target: vm.to_owned(),
            kind: "unknown-vm".into(),
            message: format!("no agent endpoint for VM '{vm}'"),
            hint: None,
            exit: None,
        })
    }

    /// Runs `call` once on the kept session to `vm` or a new login; keeps
    /// the session when the call succeeds.
    pub(crate) fn with_session<T>(
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
    pub(crate) fn forget_session(&self, vm: &str) {
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
}

impl GuestAgents for SshAgents {
    fn wait_ready(&self, vm: &str, within: Duration) -> Result<(), GuestError> {
        self.retry(vm, "the agent to answer", within, |session| AgentClient::new(session).status().map(|_| ()))
    }

    fn thaw(&self, vm: &str, within: Duration) -> Result<(), GuestError> {
        self.retry(vm, "the guest to thaw", within, |session| {
            let agent = AgentClient::new(session);
            let report: ThawReport = agent.call(&["thaw"], None)?;
            if !report.thawed.is_empty() {
                tracing::info!(vm, thawed = ?report.thawed, "thawed after the memory restore");
            }
            let status = agent.status()?;
            if status.frozen.is_empty() {
                Ok(())
            } else {
                Err(GuestError::Agent {
                    target: session.target().to_owned(),
                    kind: envclone_agent::freeze::error_kind::THAW_FAILED.into(),
                    message: format!("still frozen after `envclone-agent thaw`: {}", status.frozen.join(", ")),
                    hint: None,
                    exit: None,
                })
            }
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
