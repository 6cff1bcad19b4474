//! The fence guard every command that touches a failed-over environment
//! runs first (`status`, `snapshot`, `failover`; the daemon through
//! `status` on every tick): connects to each primary host a role switch in
//! force names, with a deadline, and runs [`crate::ops::failover::guard`].
//! See [`crate::ops::failover::fence`] for what it does and why.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use super::Output;
use crate::catalog::{Catalog, FenceKind};
use crate::config::Config;
use crate::hypervisor::LibvirtHypervisor;
use crate::ops::failover::{self, PrimaryHost, SwitchStatus};
use crate::ops::EnvLock;
use crate::Result;

/// How long connecting to a primary's libvirt may take: a host that is down
/// can keep a remote connect waiting for minutes, and a runbook must not.
pub const PRIMARY_CONNECT_WITHIN: Duration = Duration::from_secs(15);

/// The lock that lets one guard run at a time (a name no environment
/// takes: a leading dot), and how long a guard waits for another's end
/// (one runs for seconds: a connect of at most [`PRIMARY_CONNECT_WITHIN`]).
const GUARD_LOCK: &str = ".fence-guard";
const GUARD_LOCK_WAIT: Duration = Duration::from_secs(60);

/// A primary's libvirt, connected or not.
#[derive(Debug)]
pub enum Connection {
    Answers(LibvirtHypervisor),
    Unreachable { uri: String, reason: String },
}

impl Connection {
    pub fn host(&self) -> PrimaryHost<'_> {
        match self {
            Connection::Answers(hv) => PrimaryHost::Answers(hv),
            Connection::Unreachable { uri, reason } => PrimaryHost::Unreachable { uri, reason },
        }
    }
}

/// Connects to `uri` on a thread of its own, waiting at most `within`: a
/// connect that hangs is left behind on its thread (the process ends it).
pub fn connect_within(uri: &str, within: Duration) -> Connection {
    let (tx, rx) = mpsc::channel();
    let target = uri.to_owned();
    let spawned = std::thread::Builder::new().name("primary-connect".into()).spawn(move || {
        // The receiver may be gone after a timeout: nothing to tell then.
        let _ = tx.send(LibvirtHypervisor::connect(&target));
    });
    if let Err(e) = spawned {
        return Connection::Unreachable { uri: uri.to_owned(), reason: format!("cannot start a thread: {e}") };
    }
    match rx.recv_timeout(within) {
        Ok(Ok(hv)) => Connection::Answers(hv),
        Ok(Err(e)) => Connection::Unreachable { uri: uri.to_owned(), reason: crate::error::chain(&e) },
        Err(_) => {
            Connection::Unreachable { uri: uri.to_owned(), reason: format!("no answer within {} s", within.as_secs()) }
        }
    }
}

/// Runs the guard over the switches in force (of `env` only, when given)
/// and says loudly on stderr what it did; connects only when a switch is
/// in force, so environments that never failed over cost nothing.
pub fn check(config: &Config, catalog: &Catalog, env: Option<&str>, out: &Output) -> Result<Vec<SwitchStatus>> {
    let default_uri = &config.controller.libvirt_uri;
    let uris = failover::guard_uris(catalog, default_uri, env)?;
    // Two guards at once (the daemon's tick and a command the daemon ran,
    // or a user's) would both find a returned domain running, both fence
    // it, and record its return twice.
    let _one_at_a_time = match uris.is_empty() {
        true => None,
        false => {
            Some(EnvLock::acquire_waiting(&config.controller.state_dir, GUARD_LOCK, "fence guard", GUARD_LOCK_WAIT)?)
        }
    };
    let connections: Vec<(String, Connection)> =
        uris.into_iter().map(|uri| (uri.clone(), connect_within(&uri, PRIMARY_CONNECT_WITHIN))).collect();
    let hosts: BTreeMap<String, PrimaryHost<'_>> =
        connections.iter().map(|(uri, connection)| (uri.clone(), connection.host())).collect();
    let statuses = failover::guard(catalog, default_uri, &hosts, env, chrono::Utc::now())?;
    for status in &statuses {
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
            // On stderr even under --json and -q: two live copies of an
            // environment are never a detail.
            if !out.json || action.action != FenceKind::Fenced {
                eprintln!("warning: {line}");
            }
        }
    }
    Ok(statuses)
}
