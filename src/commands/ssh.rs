//! `envclone ssh ENV VM [-- CMD...]`: a shell or a command in a VM, reached
//! the way the controller reaches it (namespace, key, verified host key).
//! ENV is an environment of the config or a clone (from the catalog); while
//! a standby serves ENV, ENV's VMs are the standby's (its active side).

use super::session::Records;
use crate::cli::{GlobalArgs, SshArgs};
use crate::guest::endpoint::{ssh_options, ssh_target};
use crate::guest::GuestSession;
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &SshArgs) -> Result<std::process::ExitCode> {
    let Records { config, catalog } = Records::open(global)?;
    // A drill's VMs are in the catalog, not the config.
    let env = match config.environment(&args.environment) {
        Ok(env) => env.clone(),
        Err(_) => crate::ops::clone::resolve_environment(&config, &catalog, &args.environment)
            .map_err(Error::operation("look up"))?,
    };
    let vm = env.vms.get(&args.vm).ok_or_else(|| crate::config::LookupError::UnknownVm {
        environment: args.environment.clone(),
        name: args.vm.clone(),
        known: env.vms.keys().cloned().collect(),
    })?;
    let label = format!("{}/{}", args.environment, args.vm);
    let session = GuestSession::connect(&ssh_target(&vm.agent), &ssh_options(&config.controller))
        .map_err(Error::guest(label.clone()))?;
    // Joined with spaces like ssh(1) does, so `-- 'echo $HOME'` expands remotely.
    let command = (!args.command.is_empty()).then(|| args.command.join(" "));
    let status = session.interactive(command.as_deref()).map_err(Error::guest(label))?;
    // The remote status is the answer: a shell's exit code passes through.
    Ok(std::process::ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX)))
}
