//! The fence guard every command that touches a failed-over environment
//! runs first (`status`, `snapshot`, `failover`; the daemon through
//! `status` on every tick): [`crate::ops::failover::guard::run`] with a
//! connect to each primary's libvirt bounded by a deadline, and its
//! notices on stderr. See [`crate::ops::failover::fence`] for what it does
//! and why.

use std::sync::mpsc;
use std::time::Duration;

use super::Output;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::hypervisor::LibvirtHypervisor;
use crate::ops::failover::guard::{self, GuardError};
use crate::ops::failover::SwitchStatus;
use crate::{Error, Result};

/// How long connecting to a primary's libvirt may take: a host that is down
/// can keep a remote connect waiting for minutes, and a runbook must not.
pub const PRIMARY_CONNECT_WITHIN: Duration = Duration::from_secs(15);

/// A primary's libvirt, connected or not.
pub type Connection = guard::Connection<Box<LibvirtHypervisor>>;

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
        Ok(Ok(hv)) => Connection::Answers(Box::new(hv)),
        Ok(Err(e)) => Connection::Unreachable { uri: uri.to_owned(), reason: crate::error::chain(&e) },
        Err(_) => {
            Connection::Unreachable { uri: uri.to_owned(), reason: format!("no answer within {} s", within.as_secs()) }
        }
    }
}

/// Runs the guard over the switches in force (of `env` only, when given)
/// and says loudly on stderr what it did.
pub fn check(config: &Config, catalog: &Catalog, env: Option<&str>, out: &Output) -> Result<Vec<SwitchStatus>> {
    let connect = |uri: &str| connect_within(uri, PRIMARY_CONNECT_WITHIN);
    let statuses = guard::run(&config.controller, catalog, env, connect, chrono::Utc::now()).map_err(|e| match e {
        GuardError::Lock(e) => Error::from(e),
        GuardError::Catalog(e) => Error::from(e),
    })?;
    for notice in guard::notices(&statuses) {
        if !out.json || notice.loud {
            super::write_err(&format!("warning: {}\n", notice.line));
        }
    }
    Ok(statuses)
}
