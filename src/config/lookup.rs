//! Looking up environments, VMs and standbys named on the command line.

use super::{Config, Environment, LookupError, Standby, Vm};

impl Config {
    pub fn environment(&self, name: &str) -> Result<&Environment, LookupError> {
        self.environments.get(name).ok_or_else(|| LookupError::UnknownEnvironment {
            name: name.to_owned(),
            known: self.environments.keys().cloned().collect(),
        })
    }

    pub fn vm(&self, environment: &str, name: &str) -> Result<(&Environment, &Vm), LookupError> {
        let env = self.environment(environment)?;
        let vm = env.vms.get(name).ok_or_else(|| LookupError::UnknownVm {
            environment: environment.to_owned(),
            name: name.to_owned(),
            known: env.vms.keys().cloned().collect(),
        })?;
        Ok((env, vm))
    }

    pub fn standby(&self, name: &str) -> Result<&Standby, LookupError> {
        self.standbys.get(name).ok_or_else(|| LookupError::UnknownStandby {
            name: name.to_owned(),
            known: self.standbys.keys().cloned().collect(),
        })
    }
}
