//! The fence guard as every command that touches a failed-over environment
//! runs it first (`status`, `snapshot`, `failover`, `failback`, the home
//! sync; the daemon through `status` on every tick): one guard at a time,
//! a connect to each primary host a switch in force names (only then:
//! environments that never failed over cost nothing), [`super::guard`]
//! over them, and what it has to say about what it did ([`notices`]).
//! How a primary's libvirt is reached (with a deadline) is the caller's:
//! [`run`] takes the connect as a function.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::fence::{guard, guard_uris, PrimaryHost, SwitchStatus};
use crate::catalog::{Catalog, CatalogError, FenceKind};
use crate::config::Controller;
use crate::hypervisor::Hypervisor;
use crate::ops::{EnvLock, LockError};

/// The lock that lets one guard run at a time (a name no environment
/// takes: a leading dot), and how long a guard waits for another's end
/// (one runs for seconds: a connect bounded by the caller's deadline).
const GUARD_LOCK: &str = ".fence-guard";
const GUARD_LOCK_WAIT: Duration = Duration::from_secs(60);

/// A primary's libvirt, connected (`H` owns or borrows the connection) or not.
#[derive(Debug)]
pub enum Connection<H> {
    Answers(H),
    Unreachable { uri: String, reason: String },
}

impl<H> Connection<H>
where
    H: Deref,
    H::Target: Hypervisor + Sized,
{
    pub fn host(&self) -> PrimaryHost<'_> {
        match self {
            Connection::Answers(hv) => PrimaryHost::Answers(&**hv),
            Connection::Unreachable { uri, reason } => PrimaryHost::Unreachable { uri, reason },
        }
    }
}

/// What the guard can fail with before it looks at any domain.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Another guard held on longer than [`GUARD_LOCK_WAIT`], or the lock
    /// cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Runs the guard over the switches in force (of `env` only, when given):
/// connects through `connect` to each primary host they name, fences
/// again what must not run, and returns each switch as `status` shows it.
pub fn run<H>(
    controller: &Controller,
    catalog: &Catalog,
    env: Option<&str>,
    connect: impl Fn(&str) -> Connection<H>,
    now: DateTime<Utc>,
) -> Result<Vec<SwitchStatus>, GuardError>
where
    H: Deref,
    H::Target: Hypervisor + Sized,
{
    let default_uri = &controller.libvirt_uri;
    let uris = guard_uris(catalog, default_uri, env)?;
    // Two guards at once (the daemon's tick and a command the daemon ran,
    // or a user's) would both find a returned domain running, both fence
    // it, and record its return twice.
    let _one_at_a_time = match uris.is_empty() {
        true => None,
        false => Some(EnvLock::acquire_waiting(&controller.state_dir, GUARD_LOCK, "fence guard", GUARD_LOCK_WAIT)?),
    };
    let connections: Vec<(String, Connection<H>)> = uris.into_iter().map(|uri| (uri.clone(), connect(&uri))).collect();
    let hosts: BTreeMap<String, PrimaryHost<'_>> =
        connections.iter().map(|(uri, connection)| (uri.clone(), connection.host())).collect();
    Ok(guard(catalog, default_uri, &hosts, env, now)?)
}

/// One thing the guard did, in a line for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub line: String,
    /// Said even to a script (under `--json` and `-q`): two live copies of
    /// an environment are never a detail; a fence confirmed is one.
    pub loud: bool,
}

/// What the guard has to say about the actions in `statuses`.
pub fn notices(statuses: &[SwitchStatus]) -> Vec<Notice> {
    let mut notices = Vec::new();
    for status in statuses {
        for action in &status.actions {
            let detail = action.detail.as_deref().unwrap_or("");
            let line = match action.action {
                FenceKind::ReturnedRefenced => format!(
                    "OLD PRIMARY RETURNED: domain {} of {} ran while standby {} serves epoch {}; fenced again ({detail})",
                    action.domain, action.env, status.active, action.epoch
                ),
                FenceKind::RefenceFailed => format!(
                    "OLD PRIMARY RETURNED AND STILL RUNS: domain {} of {} (standby {} serves epoch {}): {detail}; stop \
                     it by hand (`virsh destroy {}`)",
                    action.domain, action.env, status.active, action.epoch, action.domain
                ),
                _ => format!("fence of domain {} of {} confirmed: {detail}", action.domain, action.env),
            };
            notices.push(Notice { line, loud: action.action != FenceKind::Fenced });
        }
    }
    notices
}
