//! The agents as `recover` needs them: is a guest frozen, and thaw it.
//! Behind a trait so the undo executor and the checks are unit tested
//! without SSH; [`SshAgents`] is the real one (`envclone-agent status` and
//! `envclone-agent thaw` over a fresh, verified SSH login each).

use envclone_agent::freeze::ThawReport;

use crate::config::{Config, LookupError};
use crate::error::Failure;
use crate::guest::endpoint::{ssh_options, ssh_target};
use crate::guest::{AgentClient, GuestError, GuestSession};

/// What a guest's agent says about freezes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreezeState {
    /// Mount points frozen now (by a live holder or left by a dead one).
    pub frozen: Vec<String>,
    /// A freeze holder is at work (hooks, or holding the lease).
    pub in_progress: bool,
}

impl FreezeState {
    /// Anything `envclone-agent thaw` would have to end.
    pub fn needs_thaw(&self) -> bool {
        !self.frozen.is_empty() || self.in_progress
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// The journal names a VM the config no longer has: no endpoint to reach.
    #[error(transparent)]
    UnknownVm(#[from] LookupError),
    #[error(transparent)]
    Guest(#[from] GuestError),
}

impl AgentCallError {
    pub fn hint(&self) -> Option<String> {
        match self {
            AgentCallError::UnknownVm(e) => e.hint(),
            AgentCallError::Guest(e) => e.hint(),
        }
    }
}

/// One environment's agents, by VM name.
pub trait Agents: Sync + std::fmt::Debug {
    /// `envclone-agent status`: what is frozen.
    fn status(&self, env: &str, vm: &str) -> Result<FreezeState, AgentCallError>;
    /// `envclone-agent thaw`: thaws whatever is frozen (safe when nothing
    /// is); returns the mount points it thawed.
    fn thaw(&self, env: &str, vm: &str) -> Result<Vec<String>, AgentCallError>;
}

/// The real [`Agents`]: see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct SshAgents<'a> {
    config: &'a Config,
}

impl<'a> SshAgents<'a> {
    pub fn new(config: &'a Config) -> Self {
        SshAgents { config }
    }

    fn session(&self, env: &str, vm: &str) -> Result<GuestSession, AgentCallError> {
        let (_, vm) = self.config.vm(env, vm)?;
        Ok(GuestSession::connect(&ssh_target(&vm.agent), &ssh_options(&self.config.controller))?)
    }
}

impl Agents for SshAgents<'_> {
    fn status(&self, env: &str, vm: &str) -> Result<FreezeState, AgentCallError> {
        let session = self.session(env, vm)?;
        let status = AgentClient::new(&session).status()?;
        Ok(FreezeState { frozen: status.frozen, in_progress: status.freeze_in_progress })
    }

    fn thaw(&self, env: &str, vm: &str) -> Result<Vec<String>, AgentCallError> {
        let session = self.session(env, vm)?;
        let report: ThawReport = AgentClient::new(&session).call(&["thaw"], None)?;
        Ok(report.thawed)
    }
}
