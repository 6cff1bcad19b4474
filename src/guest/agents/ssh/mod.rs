//! The real guest agents: `envclone-agent` over SSH, with the controller's
//! key and time limits, one verified login per session.
//!
//! - `quiescer.rs`: [`SshQuiescer`], freezes held as leases.
//! - `agents.rs`: [`SshAgents`], one environment's agents after the start
//!   and during a clone, on one kept session per VM.
//! - `recovery.rs`: [`SshRecoveryAgents`], any VM of the config, a fresh
//!   login per call.

mod agents;
mod quiescer;
mod recovery;

use std::collections::BTreeMap;

pub use self::agents::SshAgents;
pub use self::quiescer::SshQuiescer;
pub use self::recovery::SshRecoveryAgents;
use crate::config::Environment;
use crate::guest::endpoint::ssh_target;
use crate::guest::{AgentClient, GuestError, SshTarget};
use envclone_agent::freeze::ThawReport;

/// Where each VM of `env` has its agent.
fn targets(env: &Environment) -> BTreeMap<String, SshTarget> {
    env.vms.iter().map(|(vm, config)| (vm.clone(), ssh_target(&config.agent))).collect()
}

/// `envclone-agent thaw`, then a status that must show nothing frozen: a
/// thaw is checked, never assumed. Returns what the thaw thawed.
fn thaw_checked(agent: &AgentClient<'_>, target: &str) -> Result<ThawReport, GuestError> {
    let report: ThawReport = agent.call(&["thaw"], None)?;
    let status = agent.status()?;
    if status.frozen.is_empty() {
        Ok(report)
    } else {
        Err(GuestError::Agent {
            target: target.to_owned(),
            kind: envclone_agent::freeze::error_kind::THAW_FAILED.into(),
            message: format!("still frozen after `envclone-agent thaw`: {}", status.frozen.join(", ")),
            hint: None,
            exit: None,
        })
    }
}

/// A VM the environment does not have: no endpoint to reach.
fn unknown_vm(vm: &str) -> GuestError {
    GuestError::Agent {
        target: vm.to_owned(),
        kind: "unknown-vm".into(),
        message: format!("no agent endpoint for VM '{vm}'"),
        hint: None,
        exit: None,
    }
}
