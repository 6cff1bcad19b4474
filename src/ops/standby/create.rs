//! `envclone standby create ENV --name SB [--storage DIR]`: SB's networks
//! and domains (defined, shut off), its record, then a first sync.
//!
//! Steps, journaled before each runs (operation `standby-create` on SB):
//! `create network SB-<net>` per network the VMs use (an isolated bridge
//! with no address and no forward: the clone's isolated copy), `define
//! SB-<vm>` per VM (the primary's definition with a new name, UUID and
//! MACs, its interfaces on SB's networks, its disks on SB's image paths,
//! its own console log and NVRAM copy; an interface that is not on a
//! libvirt network is refused), `record the standby`. A failure undoes
//! them all. The first sync is a separate operation (`sync.rs`): a standby
//! whose first sync fails exists, and `standby sync` tries again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::{undo, StandbyError, SyncReport};
use crate::catalog::{
    ClonedNetwork, ImageFormat, OperationKind, StandbyDisk, StandbyDomain, StandbyRecord, StandbyResources, UndoAction,
};
use crate::host::{Host, LOCAL};
use crate::hypervisor::{random_mac, random_uuid, DomainDef, HvError};
use crate::ops::clone::names;
use crate::ops::context::OpContext;
use crate::ops::journal::{Journal, Journaled};
use crate::ops::transfer::{self, At};
use crate::ops::EnvLock;

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub primary: String,
    pub name: String,
    /// Default: `[standbys.SB] storage` of the config, else `<state_dir>/standbys/SB`.
    pub storage: Option<PathBuf>,
    /// Default: `[standbys.SB] autorestore` of the config, else on.
    pub autorestore: Option<bool>,
    /// The host SB lives on. Default: `[standbys.SB] host`, else `local`.
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateReport {
    pub standby: String,
    pub primary: String,
    /// False when SB existed already (nothing was done).
    pub created: bool,
    /// The host SB lives on.
    pub host: String,
    pub storage: PathBuf,
    pub autorestore: bool,
    pub domains: Vec<StandbyDomain>,
    pub networks: Vec<ClonedNetwork>,
    /// The first sync; none when ENV has no complete snapshot yet, or SB existed.
    pub sync: Option<SyncReport>,
    /// Why there was no first sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_skipped: Option<String>,
    pub duration_ms: u64,
}

/// Creates the standby; see the module documentation.
pub fn create(ctx: &OpContext<'_>, request: &CreateRequest) -> Result<CreateReport, StandbyError> {
    let started = Instant::now();
    let primary = ctx.config.environment(&request.primary)?;
    let name = &request.name;
    let bad = |reason: String| StandbyError::BadName { name: name.clone(), reason };
    names::check_name(name).map_err(bad)?;
    if ctx.config.environments.contains_key(name) {
        return Err(bad("an environment has that name".into()));
    }
    if ctx.catalog.clone_named(name)?.is_some() {
        return Err(bad("a clone has that name".into()));
    }
    let configured = ctx.config.standbys.get(name);
    if let Some(configured) = configured.filter(|c| c.primary != request.primary) {
        return Err(bad(format!("[standbys.{name}] in the config is a standby of '{}'", configured.primary)));
    }
    let host_name = request.host.clone().or_else(|| configured.and_then(|c| c.host.clone()));
    let host_name = host_name.unwrap_or_else(|| LOCAL.to_owned());
    // The operation changes SB's host; it reads the primary's definitions on the primary's.
    let sb_ctx = OpContext { host: ctx.host_named(Some(&host_name))?, ..*ctx };
    let primary_host = ctx.host_named(Some(ctx.config.host_of(&request.primary)))?;
    let ctx = &sb_ctx;
    let storage = request
        .storage
        .clone()
        .or_else(|| configured.map(|c| c.storage.clone()))
        .unwrap_or_else(|| super::default_storage(ctx.config, &host_name, name));
    let autorestore = request.autorestore.or(configured.map(|c| c.autorestore)).unwrap_or(true);

    let lock = EnvLock::acquire(&ctx.config.controller.state_dir, name, "standby create")?;
    if let Some(existing) = ctx.catalog.standby_named(name)? {
        if existing.primary != request.primary {
            return Err(bad(format!("it is a standby of '{}'", existing.primary)));
        }
        if existing.host != host_name {
            return Err(bad(format!("it is on host {}", existing.host)));
        }
        ctx.note(format!("standby {name} of {} exists already: nothing to do", existing.primary));
        return Ok(CreateReport {
            standby: name.clone(),
            primary: existing.primary.clone(),
            created: false,
            host: existing.host.clone(),
            storage: existing.storage.clone(),
            autorestore: existing.autorestore,
            domains: existing.resources.domains.clone(),
            networks: existing.resources.networks.clone(),
            sync: None,
            sync_skipped: Some("the standby existed already; `envclone standby sync` brings it up to date".into()),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    let journal = Journal::begin(ctx.catalog, OperationKind::StandbyCreate, name, ctx.clock.now())?;
    journal.on_host(ctx.host.name())?;
    let mut run = Run { ctx, journal, primary_host };
    let made = run.execute(&request.primary, primary, name, &storage, autorestore);
    let resources = match made {
        Ok(resources) => {
            run.journal.complete()?;
            resources
        }
        Err(error) => return Err(run.roll_back(error)),
    };
    drop(lock);

    let (sync, sync_skipped) = match ctx.catalog.live_snapshot(&request.primary)? {
        Some(_) => (Some(super::sync(ctx, name)?), None),
        None => {
            let why = format!(
                "{} has no complete snapshot yet: take one (`envclone snapshot {}`), then `envclone standby sync {name}` \
                 (the daemon does it for a standby with autorestore)",
                request.primary, request.primary
            );
            ctx.note(why.clone());
            (None, Some(why))
        }
    };
    Ok(CreateReport {
        standby: name.clone(),
        primary: request.primary.clone(),
        created: true,
        host: host_name,
        storage,
        autorestore,
        domains: resources.domains,
        networks: resources.networks,
        sync,
        sync_skipped,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

struct Run<'r, 'c> {
    /// Its host is SB's.
    ctx: &'r OpContext<'c>,
    /// Consumed by the commit or the rollback, which end the run.
    journal: Journal<'c>,
    /// Where the primary's domains and networks are.
    primary_host: &'c dyn Host,
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = StandbyError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    fn journal(&mut self) -> &mut Journal<'c> {
        &mut self.journal
    }

    fn crash_points(&self) -> Option<&'static str> {
        Some("standby-create")
    }
}

/// A primary VM to copy: its name in the config, its domain, and that
/// domain's definition.
type PrimaryVm = (String, String, DomainDef);

impl Run<'_, '_> {
    fn execute(
        &mut self,
        primary_name: &str,
        primary: &crate::config::Environment,
        name: &str,
        storage: &std::path::Path,
        autorestore: bool,
    ) -> Result<StandbyResources, StandbyError> {
        let ctx = self.ctx;
        let (defs, sources) = self.primary_definitions(primary, name)?;
        let networks = self.create_networks(name, sources)?;
        let on: BTreeMap<String, String> = networks.iter().map(|n| (n.source.clone(), n.name.clone())).collect();

        let mut domains = Vec::new();
        let mut disks = Vec::new();
        let mut files = Vec::new();
        for primary_vm in defs {
            domains.push(self.define_domain(name, storage, &on, primary_vm, &mut disks, &mut files)?);
        }

        // On another host, a takeover needs the primary's networks there.
        let mut primary_networks = BTreeMap::new();
        if !crate::ops::transfer::same_host(self.primary_host, ctx.host) {
            for network in networks.iter().map(|n| &n.source) {
                let found = self
                    .primary_host
                    .hypervisor()
                    .network(network)
                    .map_err(|e| StandbyError::InspectNetwork { network: network.clone(), source: Box::new(e) })?;
                primary_networks.insert(network.clone(), found.def.to_xml());
            }
        }
        let resources = StandbyResources { domains, networks, files, primary_networks };
        let record = StandbyRecord {
            name: name.to_owned(),
            primary: primary_name.to_owned(),
            host: ctx.host.name().to_owned(),
            storage: storage.to_owned(),
            autorestore,
            created_at: ctx.clock.now(),
            snapshot: None,
            snapshot_created_at: None,
            synced_at: None,
            merging: None,
            resources: resources.clone(),
            disks,
        };
        self.step("record the standby", undo::forget(name), |run| Ok(run.ctx.catalog.add_standby(&record)?))?;
        Ok(resources)
    }

    /// The primary's definitions, and every network they use (the
    /// environment's own first). Changes nothing: it runs before the first
    /// step, so a refusal here leaves nothing to undo.
    fn primary_definitions(
        &self,
        primary: &crate::config::Environment,
        name: &str,
    ) -> Result<(Vec<PrimaryVm>, Vec<String>), StandbyError> {
        let ctx = self.ctx;
        let mut defs = Vec::new();
        let mut sources: Vec<String> = primary.networks.clone();
        for (vm, config) in &primary.vms {
            let domain = names::domain(name, vm);
            match ctx.host.hypervisor().domain(&domain) {
                Err(HvError::NoSuchDomain { .. }) => {}
                Ok(_) => {
                    return Err(StandbyError::BadName {
                        name: name.to_owned(),
                        reason: format!("domain {domain} exists"),
                    })
                }
                Err(source) => {
                    return Err(StandbyError::InspectDomain { vm: vm.clone(), domain, source: Box::new(source) })
                }
            }
            let def = self
                .primary_host
                .hypervisor()
                .domain(&config.domain)
                .map_err(|source| StandbyError::InspectDomain {
                    vm: vm.clone(),
                    domain: config.domain.clone(),
                    source: Box::new(source),
                })?
                .def;
            for (index, iface) in def.interfaces().iter().enumerate() {
                match &iface.network {
                    Some(network) if !sources.contains(network) => sources.push(network.clone()),
                    Some(_) => {}
                    None => {
                        return Err(StandbyError::Unsupported {
                            what: format!(
                                "interface {index} of {} (not on a libvirt network: a standby would join it)",
                                config.domain
                            ),
                        })
                    }
                }
            }
            defs.push((vm.clone(), config.domain.clone(), def));
        }
        Ok((defs, sources))
    }

    /// One isolated copy of each source network, one step each.
    fn create_networks(&mut self, name: &str, sources: Vec<String>) -> Result<Vec<ClonedNetwork>, StandbyError> {
        let mut networks = Vec::new();
        for source in sources {
            self.primary_host
                .hypervisor()
                .network(&source)
                .map_err(|e| StandbyError::InspectNetwork { network: source.clone(), source: Box::new(e) })?;
            let network = names::network(name, &source);
            let bridge = names::bridge(name, &source);
            let undo = UndoAction::Custom {
                kind: crate::ops::clone::undo::UNDO_REMOVE_NETWORK.to_owned(),
                data: serde_json::json!({ "network": network }),
            };
            self.step(&format!("create network {network} (isolated copy of {source})"), undo, |run| {
                let fail = |e: HvError| StandbyError::DefineNetwork { network: network.clone(), source: Box::new(e) };
                run.ctx.host.hypervisor().define_network(&super::isolated_network(&network, &bridge)).map_err(fail)?;
                run.ctx.host.hypervisor().start_network(&network).map_err(fail)
            })?;
            networks.push(ClonedNetwork { source, name: network, bridge, veth: None, gateway: None });
        }
        Ok(networks)
    }

    /// Defines one VM's standby domain (shut off): a new identity, its
    /// interfaces on the networks in `on` (source to copy), its disks under
    /// `storage` (added to `disks`), its own NVRAM copy and console log
    /// (added to `files`).
    fn define_domain(
        &mut self,
        name: &str,
        storage: &std::path::Path,
        on: &BTreeMap<String, String>,
        (vm, primary_domain, source_def): PrimaryVm,
        disks: &mut Vec<StandbyDisk>,
        files: &mut Vec<PathBuf>,
    ) -> Result<StandbyDomain, StandbyError> {
        let ctx = self.ctx;
        let dir = storage.join(&vm);
        ctx.host.storage().create_dir(&dir)?;
        let domain = names::domain(name, &vm);
        let fail =
            |e: HvError| StandbyError::DefineDomain { vm: vm.clone(), domain: domain.clone(), source: Box::new(e) };
        let mut def: DomainDef = source_def.clone();
        def.set_name(&domain);
        def.strip_for_new_identity();
        let uuid = random_uuid();
        def.set_uuid(&uuid);
        let mut macs = Vec::new();
        let mut primary_macs = Vec::new();
        for (index, iface) in source_def.interfaces().iter().enumerate() {
            let mac = random_mac();
            def.set_interface_mac(index, &mac).map_err(fail)?;
            if let Some(network) = iface.network.as_ref().and_then(|n| on.get(n)) {
                def.set_interface_network(index, network).map_err(fail)?;
            }
            macs.push(mac);
            primary_macs.push(iface.mac.clone().unwrap_or_default());
        }
        for disk in source_def.disks() {
            if disk.device != "disk" || disk.readonly || disk.source.is_none() {
                continue;
            }
            let path = super::image_path(storage, name, &vm, &disk.target);
            def.set_disk_source(&disk.target, &path, ImageFormat::Qcow2.as_str()).map_err(fail)?;
            disks.push(StandbyDisk {
                vm: vm.clone(),
                disk: disk.target.clone(),
                path,
                snapshot: None,
                source_image: None,
                sha256: None,
                synced_at: None,
            });
        }
        if let Some(from) = def.nvram() {
            let to = dir.join(format!("{name}.nvram.fd"));
            let undo = UndoAction::DeleteFile { path: to.clone() };
            self.step(&format!("copy the NVRAM of {vm}"), undo, |run| {
                run.ctx.host.storage().remove(&to)?;
                let (from, to) = (At::new(run.primary_host, &from), At::new(run.ctx.host, &to));
                transfer::copy_file(run.ctx.config, from, to, &|_, _| {}).map(drop).map_err(|source| {
                    StandbyError::Ship { vm: vm.clone(), disk: "nvram".into(), step: "copy", source: Box::new(source) }
                })
            })?;
            def.set_nvram(&to);
            files.push(to);
        }
        if !def.chardev_files().is_empty() {
            let log = dir.join(format!("{name}.console.log"));
            def.set_chardev_files(&log);
            files.push(log);
        }
        let undo = UndoAction::UndefineDomain { name: domain.clone() };
        self.step(&format!("define {domain} for {vm} (shut off)"), undo, |run| {
            run.ctx.host.hypervisor().define_domain(&def).map(drop).map_err(fail)
        })?;
        Ok(StandbyDomain { vm, domain, uuid, macs, primary_domain, primary_macs })
    }

    fn roll_back(self, error: StandbyError) -> StandbyError {
        let ctx = self.ctx;
        let cause = crate::error::chain(&error);
        let failures = self.journal.roll_back(&cause, |action| super::destroy::undo_create_step(ctx, action));
        if failures.is_empty() {
            error
        } else {
            StandbyError::CleanupFailed { cause: Box::new(error), failures }
        }
    }
}
