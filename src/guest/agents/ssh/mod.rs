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
use crate::guest::{GuestError, SshTarget};

/// Where each VM of `env` has its agent.
fn targets(env: &Environment) -> BTreeMap<String, SshTarget> {
    env.vms.iter().map(|(vm, config)| (vm.clone(), ssh_target(&config.agent))).collect()
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
