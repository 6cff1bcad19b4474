//! What a command that runs an operation opens, in one place: the config
//! (with recorded clones as environments), the hosts it works on, the
//! catalog, and the [`OpContext`] handed to the operation.

use super::load_config_with_clones;
use crate::catalog::Catalog;
use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::host::{Host, LocalHost};
use crate::hypervisor::LibvirtHypervisor;
use crate::ops::context::{OpContext, Progress, SystemClock};
use crate::{Error, Result};

#[derive(Debug)]
pub struct Session {
    pub config: Config,
    pub catalog: Catalog,
    local: LocalHost<LibvirtHypervisor>,
}

impl Session {
    /// The config named on the command line, clones included.
    pub fn open(global: &GlobalArgs) -> Result<Session> {
        Session::with_config(load_config_with_clones(global)?)
    }

    /// Connects to the controller's libvirt and opens the catalog.
    pub fn with_config(config: Config) -> Result<Session> {
        let uri = &config.controller.libvirt_uri;
        let hv = LibvirtHypervisor::connect(uri).map_err(Error::hypervisor(format!("connect to libvirt at {uri}")))?;
        let catalog = Catalog::open(&config.controller.state_dir)?;
        Ok(Session { config, catalog, local: LocalHost::new(hv) })
    }

    /// The context of an operation on the controller's own host.
    pub fn context<'s>(&'s self, progress: Progress<'s>) -> OpContext<'s> {
        let host: &dyn Host = &self.local;
        OpContext { config: &self.config, host, catalog: &self.catalog, progress, clock: &SystemClock }
    }
}
