//! What a command opens, in one place: the config (with recorded clones as
//! environments), the catalog, and for a command that runs an operation
//! the hosts it works on and the [`OpContext`] handed to the operation.
//! A command that only reads records opens [`Records`]: no libvirt
//! connection, so it answers while libvirt is down.

use super::load_config_with_clones;
use crate::catalog::Catalog;
use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::host::{Hosts, LocalHost, LOCAL};
use crate::hypervisor::LibvirtHypervisor;
use crate::ops::context::{OpContext, Progress, SystemClock};
use crate::{Error, Result};

/// The config and the catalog, without libvirt.
#[derive(Debug)]
pub struct Records {
    pub config: Config,
    pub catalog: Catalog,
}

impl Records {
    /// The config named on the command line, clones included.
    pub fn open(global: &GlobalArgs) -> Result<Records> {
        Records::with_config(load_config_with_clones(global)?)
    }

    /// Opens the catalog of `config`.
    pub fn with_config(config: Config) -> Result<Records> {
        let catalog = Catalog::open(&config.controller.state_dir)?;
        Ok(Records { config, catalog })
    }

    /// Connects to the controller's libvirt: the records become a session.
    pub fn connect(self) -> Result<Session> {
        let hv = connect(&self.config)?;
        Ok(Session { config: self.config, catalog: self.catalog, local: LocalHost::new(hv) })
    }
}

#[derive(Debug)]
pub struct Session {
    pub config: Config,
    pub catalog: Catalog,
    local: LocalHost<LibvirtHypervisor>,
}

impl Session {
    /// The config named on the command line, clones included.
    pub fn open(global: &GlobalArgs) -> Result<Session> {
        Records::open(global)?.connect()
    }

    /// Connects to the controller's libvirt and opens the catalog.
    pub fn with_config(config: Config) -> Result<Session> {
        let hv = connect(&config)?;
        let Records { config, catalog } = Records::with_config(config)?;
        Ok(Session { config, catalog, local: LocalHost::new(hv) })
    }

    /// Every host the command may work on, by name: today the
    /// controller's own, `local`.
    pub fn hosts(&self) -> Hosts<'_> {
        Hosts::new().with(&self.local)
    }

    /// The context of an operation on the host named `host`.
    pub fn context_on<'s>(&'s self, host: &str, progress: Progress<'s>) -> Result<OpContext<'s>> {
        let host = self.hosts().get(host)?;
        Ok(OpContext {
            config: &self.config,
            host,
            catalog: &self.catalog,
            progress,
            clock: &SystemClock,
            interrupt: crate::ops::interrupt::Interrupt::process(),
        })
    }

    /// The context of an operation on the controller's own host.
    pub fn context<'s>(&'s self, progress: Progress<'s>) -> Result<OpContext<'s>> {
        self.context_on(LOCAL, progress)
    }
}

fn connect(config: &Config) -> Result<LibvirtHypervisor> {
    let uri = &config.controller.libvirt_uri;
    LibvirtHypervisor::connect(uri).map_err(Error::hypervisor(format!("connect to libvirt at {uri}")))
}
