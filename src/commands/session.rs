//! What a command opens, in one place: the config (with recorded clones as
//! environments), the catalog, and for a command that runs an operation
//! the hosts it works on and the [`OpContext`] handed to the operation.
//! A command that only reads records opens [`Records`]: no libvirt
//! connection, so it answers while libvirt is down.

use super::load_config_with_clones;
use crate::catalog::Catalog;
use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::host::{Host, HostRegistry, Hosts, LocalHost, RemoteHost, LOCAL};
use crate::hypervisor::LibvirtHypervisor;
use crate::ops::context::{OpContext, Progress, SystemClock};
use crate::Result;

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

    /// The records with every host of the config: the records become a
    /// session. Each host's libvirt is connected when first needed.
    pub fn connect(self) -> Result<Session> {
        let hosts = registry(&self.config);
        Ok(Session { config: self.config, catalog: self.catalog, hosts })
    }
}

#[derive(Debug)]
pub struct Session {
    pub config: Config,
    pub catalog: Catalog,
    hosts: HostRegistry<'static>,
}

impl Session {
    /// The config named on the command line, clones included.
    pub fn open(global: &GlobalArgs) -> Result<Session> {
        Records::open(global)?.connect()
    }

    /// Opens the catalog of `config`, with its hosts.
    pub fn with_config(config: Config) -> Result<Session> {
        Records::with_config(config)?.connect()
    }

    /// The context of an operation on the host named `host`.
    pub fn context_on<'s>(&'s self, host: &str, progress: Progress<'s>) -> Result<OpContext<'s>> {
        let host = self.hosts.get(host)?;
        Ok(OpContext {
            config: &self.config,
            host,
            hosts: &self.hosts,
            catalog: &self.catalog,
            progress,
            clock: &SystemClock,
            interrupt: crate::ops::interrupt::Interrupt::process(),
        })
    }

    /// The context of an operation on environment `env`'s host (from
    /// the config; `local` if unset).
    pub fn context_for<'s>(&'s self, env: &str, progress: Progress<'s>) -> Result<OpContext<'s>> {
        self.context_on(self.config.host_of(env), progress)
    }

    /// The context of an operation on the controller's own host.
    pub fn context<'s>(&'s self, progress: Progress<'s>) -> Result<OpContext<'s>> {
        self.context_on(LOCAL, progress)
    }
}

/// `local` (the controller's libvirt) and each host of the config, every
/// one opened when first asked for.
pub fn registry(config: &Config) -> HostRegistry<'static> {
    let uri = config.controller.libvirt_uri.clone();
    let mut registry = HostRegistry::new().with_lazy(
        LOCAL,
        Box::new(move || Ok(Box::new(LocalHost::new(LibvirtHypervisor::connect(&uri)?)) as Box<dyn Host>)),
    );
    for (name, settings) in &config.hosts {
        let (name, settings, controller) = (name.clone(), settings.clone(), config.controller.clone());
        registry = registry.with_lazy(
            &name.clone(),
            Box::new(move || Ok(Box::new(RemoteHost::open(&name, &settings, &controller)?) as Box<dyn Host>)),
        );
    }
    registry
}
