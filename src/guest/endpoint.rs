//! From the config's words (an agent endpoint, the controller's keys and
//! time limits) to the transport's.

use super::{SshOptions, SshTarget};
use crate::config::{AgentEndpoint, Controller};

pub fn ssh_target(agent: &AgentEndpoint) -> SshTarget {
    SshTarget {
        host: agent.address.clone(),
        port: agent.port,
        user: agent.user.clone(),
        netns: agent.netns.clone(),
        host_key_alias: agent.host_key_alias.clone(),
    }
}

pub fn ssh_options(controller: &Controller) -> SshOptions {
    SshOptions {
        key: controller.ssh_key.clone(),
        known_hosts: controller.known_hosts.clone(),
        connect_timeout: controller.connect_timeout.into(),
        command_timeout: controller.command_timeout.into(),
    }
}
