//! [`SshQuiescer`]: the freeze held as a [`FreezeLease`] on a session
//! logged in beforehand (at [`Quiescer::prepare`]), so that no new login
//! is needed while a guest's root filesystem is frozen.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use envclone_agent::freeze::{Frozen, ThawReason};
use envclone_agent::ExitStatus;

use super::super::{ArmedGuest, FreezeInfo, FrozenGuest, Quiescer, ThawInfo};
use super::{targets, unknown_vm};
use crate::config::{Controller, Environment};
use crate::guest::endpoint::ssh_options;
use crate::guest::{
    AgentClient, ArmedLease, FreezeLease, FreezeRequest, GuestError, GuestSession, SshOptions, SshTarget,
};

/// The real [`Quiescer`]: see the module documentation.
#[derive(Debug)]
pub struct SshQuiescer {
    targets: BTreeMap<String, SshTarget>,
    options: SshOptions,
    request: FreezeRequest,
    sessions: Mutex<BTreeMap<String, GuestSession>>,
}

impl SshQuiescer {
    /// The agents of `env`, reached with `controller`'s key and limits.
    /// `request.lease_timeout` should be the freeze limit: the agent's own
    /// bound on the freeze if the controller is lost.
    pub fn new(controller: &Controller, env: &Environment, request: FreezeRequest) -> Self {
        SshQuiescer {
            targets: targets(env),
            options: ssh_options(controller),
            request,
            sessions: Mutex::new(BTreeMap::new()),
        }
    }

    /// The session [`Quiescer::prepare`] opened, or a new one.
    fn session(&self, vm: &str) -> Result<GuestSession, GuestError> {
        let prepared = self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(vm);
        match prepared {
            Some(session) => Ok(session),
            None => self.connect(vm),
        }
    }

    fn connect(&self, vm: &str) -> Result<GuestSession, GuestError> {
        let target = self.targets.get(vm).ok_or_else(|| unknown_vm(vm))?;
        GuestSession::connect(target, &self.options)
    }
}

impl Quiescer for SshQuiescer {
    fn prepare(&self, vm: &str) -> Result<(), GuestError> {
        let session = self.connect(vm)?;
        let status = AgentClient::new(&session).status()?;
        if !status.frozen.is_empty() || status.freeze_in_progress {
            return Err(GuestError::Agent {
                target: session.target().to_owned(),
                kind: envclone_agent::freeze::error_kind::ALREADY_FROZEN.into(),
                message: format!(
                    "a freeze is already held (frozen: {}; holder at work: {})",
                    if status.frozen.is_empty() { "nothing".into() } else { status.frozen.join(", ") },
                    status.freeze_in_progress
                ),
                hint: Some("wait for it to end, or end it with `envclone-agent thaw`".into()),
                exit: Some(ExitStatus::Busy),
            });
        }
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(vm.to_owned(), session);
        Ok(())
    }

    fn arm(&self, vm: &str) -> Result<Option<Box<dyn ArmedGuest>>, GuestError> {
        let session = self.session(vm)?;
        match FreezeLease::arm(session, &self.request) {
            Ok((armed, _)) => Ok(Some(Box::new(ArmedLeaseGuest(armed)))),
            // An agent older than the two-phase freeze: one step, at the go.
            Err(GuestError::Agent { kind, message, .. })
                if kind == envclone_agent::freeze::error_kind::BAD_ARGUMENT && message.contains("--barrier") =>
            {
                tracing::warn!(vm, "the agent predates `freeze --barrier`: freezing in one step (update the agent)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn freeze(&self, vm: &str) -> Result<(Box<dyn FrozenGuest>, FreezeInfo), GuestError> {
        let (lease, frozen) = FreezeLease::start(self.session(vm)?, &self.request)?;
        Ok((Box::new(LeaseGuest(lease)), freeze_info(&frozen)))
    }

    fn recover(&self, vm: &str) -> Result<(), GuestError> {
        let session = self.connect(vm)?;
        let result = super::thaw_checked(&AgentClient::new(&session), session.target());
        if let Ok(report) = &result {
            tracing::warn!(vm, thawed = ?report.thawed, "recovery thaw done");
        }
        result.map(drop)
    }
}

fn freeze_info(frozen: &Frozen) -> FreezeInfo {
    FreezeInfo { freezing: Duration::from_millis(frozen.mounts.iter().map(|m| m.freeze_ms).sum()) }
}

struct ArmedLeaseGuest(ArmedLease);

impl ArmedGuest for ArmedLeaseGuest {
    fn freeze(self: Box<Self>) -> Result<(Box<dyn FrozenGuest>, FreezeInfo), GuestError> {
        let (lease, frozen) = self.0.freeze()?;
        Ok((Box::new(LeaseGuest(lease)), freeze_info(&frozen)))
    }
}

struct LeaseGuest(FreezeLease);

impl FrozenGuest for LeaseGuest {
    fn thaw(self: Box<Self>) -> Result<ThawInfo, GuestError> {
        let report = self.0.thaw()?;
        Ok(ThawInfo {
            frozen: Duration::from_millis(report.frozen_ms),
            by_lease_timeout: report.reason == ThawReason::LeaseTimeout,
        })
    }
}
