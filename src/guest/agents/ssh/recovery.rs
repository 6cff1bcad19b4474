//! [`SshRecoveryAgents`]: `envclone-agent status` and `envclone-agent
//! thaw` over a fresh, verified SSH login each, for any VM of the config.

use envclone_agent::freeze::ThawReport;

use super::super::{AgentCallError, FreezeState, RecoveryAgents};
use crate::config::Config;
use crate::guest::endpoint::{ssh_options, ssh_target};
use crate::guest::{AgentClient, GuestSession};

/// The real [`RecoveryAgents`]: see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct SshRecoveryAgents<'a> {
    config: &'a Config,
}

impl<'a> SshRecoveryAgents<'a> {
    pub fn new(config: &'a Config) -> Self {
        SshRecoveryAgents { config }
    }

    fn session(&self, env: &str, vm: &str) -> Result<GuestSession, AgentCallError> {
        let (_, vm) = self.config.vm(env, vm)?;
        Ok(GuestSession::connect(&ssh_target(&vm.agent), &ssh_options(&self.config.controller))?)
    }
}

impl RecoveryAgents for SshRecoveryAgents<'_> {
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
