//! `envclone clone ENV --name NEW [--from SNAP] --disks linked|full --start resume|boot|off --network isolated`:
//! a new environment NEW made from a snapshot of ENV, whose VMs run next to
//! ENV's without touching them (ENV keeps running, never restarted).
//!
//! ```text
//! [Snapshot] -> Lock -> Resolve -> Overlays -> Networks -> Gateway -> Domains -> Start -> Identity -> Record -> Done
//! ```
//!
//! 1. **Snapshot** (without `--from`): a fresh consistent snapshot of ENV,
//!    taken the usual way ([`crate::ops::snapshot::take`], which holds ENV's
//!    lock while it runs).
//! 2. **Lock**: ENV's lock (no snapshot delete, restore or prune of ENV can
//!    move the images the clone is being built on) and NEW's.
//! 3. **Resolve**: the snapshot is complete and has an image of every disk
//!    of every VM; NEW is a free name (no environment, clone, domain or
//!    network of that name).
//! 4. **Overlays**: one qcow2 overlay per disk on the snapshot's image,
//!    `<storage of NEW>/<vm>/<NEW>.<disk>.qcow2` (`--disks full`: a
//!    standalone qcow2 copy there instead, only allocated data copied, that
//!    needs nothing of the source's); a NVRAM file is copied.
//! 5. **Networks**: each network the VMs use becomes `NEW-<net>`: an
//!    isolated bridge (no `<forward>`, no `<ip>`, no DHCP) with a bridge
//!    name of its own. The guests keep their addresses and host names, and
//!    have no route out of their bridge.
//! 6. **Gateway**: a namespace `envclone-c-<NEW>` holding, per network, a
//!    veth with the source gateway's address (`host_net.rs`): the
//!    controller reaches the clone's agents through it, at the source's
//!    addresses, and nothing else does.
//! 7. **Domains**: each VM's definition (from the source domain) with a new
//!    name `NEW-<vm>`, a new UUID, new MACs, its interfaces on the cloned
//!    networks (an interface on anything else is refused: it would join the
//!    clone to production), its disks on the overlays. Edited through
//!    [`DomainDef`]'s setters, never as text.
//! 8. **Start**: `boot` starts every domain and waits for every agent
//!    through the gateway; `off` leaves them defined and shut off;
//!    `resume` restores each domain from the snapshot's memory image: the
//!    clone's definition is made from the one saved in the image, and a
//!    copy of the image whose XML names the clone (name, UUID, MACs,
//!    networks, overlays; same room, so QEMU's stream does not move:
//!    `snapshot/save_image.rs`) is restored (libvirt refuses another name
//!    or UUID than the saved ones), then deleted; each guest is thawed (it
//!    resumes frozen if it was captured frozen; a failed thaw is a hard
//!    error) and its clock set (it resumes at the snapshot's time).
//! 9. **Identity** (a clone that runs): each guest gets a new machine-id.
//!    With `--network readdress` the VMs so far sit in the quarantine (the
//!    isolated copies above, named `NEW-q-<net>`, reached only through the
//!    gateway namespace), and their own networks `NEW-<net>` (a free subnet
//!    of the environment's `[readdress] pool`, a host address, no forward)
//!    are defined but empty. Each agent rewrites the configured files with
//!    the map of every source address and host name to the clone's
//!    (`readdress.rs`), then `scan`s them for any address of the source's
//!    subnets: one left (a production host no map could know) stops the
//!    clone before any link goes up, the file named, and everything is
//!    rolled back. Only when every VM is clean is each guest re-addressed
//!    and its interface moved onto its own network ("link up"), its agent
//!    awaited at the new address, and the quarantine removed.
//! 10. **Record**: the clone in the catalog (its environment, as the config
//!     would describe it, and everything it made), its overlays as images
//!     on the snapshot's images, and a pin `clone:NEW` on each of those, so
//!     deleting the snapshot is deferred while the clone lives.
//!
//! Every step is journaled before it runs (operation kind `clone`, on
//! NEW), with its undo (`undo.rs`); a failure undoes them newest first and
//! leaves nothing behind. `envclone destroy NEW` (`crate::ops::destroy`)
//! removes a recorded clone.

mod error;
pub mod full_copy;
pub mod host_net;
pub mod names;
pub mod readdress;
#[cfg(test)]
mod tests;
pub mod undo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

pub(crate) use self::error::remaining;
pub use self::error::CloneError;
pub use self::full_copy::{FullCopy, QemuImgConvert};
pub use self::host_net::{HostNet, HostNetError, IpCommand};
pub use self::readdress::CloneAgents;
pub(crate) use crate::ops::journal::Journal;

use super::context::OpContext;
use super::restore::ImageFiles;
use super::snapshot::save_image::SavePrefix;
use super::snapshot::{snapshot_dependent, Quiescer, SnapshotRequest};
use super::EnvLock;
use crate::catalog::{
    Catalog, CloneRecord, CloneResources, ClonedDisk, ClonedNetwork, Dependent, Image, ImageFormat, ImageKind,
    NewImage, OperationKind, SnapshotState, UndoAction,
};
use crate::config::{Config, Environment, LookupError};
use crate::hypervisor::{random_mac, random_uuid, DomainDef, HvError, NetworkDef, NetworkSpec};
use crate::ops::journal::{Journaled, PhaseMachine};

/// How long a booted clone's agent may take to answer.
const BOOT_WITHIN: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskMode {
    Linked,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartMode {
    Resume,
    Boot,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    Isolated,
    Readdress,
}

/// What to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneRequest {
    pub source: String,
    pub name: String,
    /// The snapshot to start from; `None`: take one now.
    pub from: Option<String>,
    pub disks: DiskMode,
    pub start: StartMode,
    pub network: NetworkMode,
    /// New SSH host keys in every guest (known_hosts updated).
    pub new_host_keys: bool,
}

/// What the clone works with besides the context.
#[derive(Clone, Copy)]
pub struct Tools<'t> {
    /// Freezes the source's guests for the fresh snapshot (no `--from`).
    pub quiescer: &'t dyn Quiescer,
    /// The clone's agents, once its environment is known.
    pub agents: &'t dyn Fn(&Environment) -> Box<dyn CloneAgents>,
    pub files: &'t dyn ImageFiles,
    /// `--disks full`: independent copies.
    pub copier: &'t dyn FullCopy,
    pub net: &'t dyn HostNet,
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").field("files", &self.files).field("net", &self.net).finish_non_exhaustive()
    }
}

/// Where a clone is; [`Phase::valid_transition`] says what may follow what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Lock,
    Resolve,
    Overlays,
    Networks,
    Gateway,
    Domains,
    Start,
    Identity,
    Record,
    Done,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::Lock,
        Phase::Resolve,
        Phase::Overlays,
        Phase::Networks,
        Phase::Gateway,
        Phase::Domains,
        Phase::Start,
        Phase::Identity,
        Phase::Record,
        Phase::Done,
        Phase::Failed,
    ];
}

impl PhaseMachine for Phase {
    const OPERATION: &'static str = "clone";

    fn valid_transition(self, to: Phase) -> bool {
        use Phase::*;
        match (self, to) {
            (Done | Failed, _) => false,
            (_, Failed) => true,
            (Lock, Resolve)
            | (Resolve, Overlays)
            | (Overlays, Networks)
            | (Networks, Gateway)
            | (Gateway, Domains)
            | (Domains, Start)
            | (Start, Identity)
            | (Identity, Record)
            | (Record, Done) => true,
            _ => false,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Phase::Lock => "lock",
            Phase::Resolve => "resolve",
            Phase::Overlays => "overlays",
            Phase::Networks => "networks",
            Phase::Gateway => "gateway",
            Phase::Domains => "domains",
            Phase::Start => "start",
            Phase::Identity => "identity",
            Phase::Record => "record",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloneReport {
    pub name: String,
    pub source: String,
    pub snapshot: String,
    /// True when the clone took that snapshot itself (no `--from`).
    pub snapshot_taken: bool,
    /// What the clone cost the source: how long its guests stayed frozen
    /// for the snapshot this clone took (`None` with `--from`, or when
    /// nothing was frozen).
    pub source_freeze_window_ms: Option<u64>,
    pub disks: DiskMode,
    pub start: StartMode,
    pub network: NetworkMode,
    pub duration_ms: u64,
    /// Where the controller reaches an isolated clone from; none for a
    /// readdressed one, which its own networks' host addresses reach.
    pub gateway_netns: Option<String>,
    pub vms: Vec<VmReport>,
    pub networks: Vec<ClonedNetwork>,
    /// `--network readdress`: the subnets and addresses the clone got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<readdress::AddressPlan>,
    /// `--disks full`: what each copy moved and how fast.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub full_copies: Vec<FullCopyReport>,
}

/// One disk copied in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FullCopyReport {
    pub vm: String,
    pub disk: String,
    /// The copy's size: the allocated data, with qcow2's metadata.
    pub bytes: u64,
    pub duration_ms: u64,
    pub mib_per_second: f64,
}

impl FullCopyReport {
    fn new(vm: &str, disk: &str, bytes: u64, took: Duration) -> Self {
        let seconds = took.as_secs_f64().max(0.001);
        FullCopyReport {
            vm: vm.to_owned(),
            disk: disk.to_owned(),
            bytes,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            mib_per_second: (bytes as f64 / (1024.0 * 1024.0) / seconds * 10.0).round() / 10.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmReport {
    pub vm: String,
    pub source_domain: String,
    pub domain: String,
    pub uuid: String,
    pub macs: Vec<String>,
    /// Where its agent answers (the source's address in an isolated clone).
    pub address: String,
    pub disks: Vec<ClonedDisk>,
    /// The new /etc/machine-id; none for a clone left off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// `--network readdress`: the host name the guest has now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `--network readdress`: replacements made in the configured files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacements: Option<u64>,
}

/// One VM of the clone, as planned.
#[derive(Debug, Clone)]
struct VmPlan {
    vm: String,
    source_domain: String,
    domain: String,
    def: DomainDef,
    /// Snapshot images by disk target.
    images: Vec<(String, Image)>,
    nvram: Option<(PathBuf, PathBuf)>,
    /// `--start resume`: the snapshot's memory image, and the clone's copy
    /// of it (its XML rewritten for the clone).
    memory: Option<(PathBuf, PathBuf)>,
}

/// The environment named `name`: the config's, or a clone's from the
/// catalog. How `envclone ssh` and the agent probes address clones.
pub fn resolve_environment(config: &Config, catalog: &Catalog, name: &str) -> Result<Environment, CloneError> {
    match config.environment(name) {
        Ok(env) => Ok(env.clone()),
        Err(LookupError::UnknownEnvironment { name, mut known }) => match catalog.clone_named(&name)? {
            Some(clone) => clone_environment(&clone),
            // A standby in a DR drill: reached through the drill's gateway.
            None => match crate::ops::failover::drill_environment(catalog, &name)? {
                Some(drill) => Ok(drill),
                None => {
                    known.extend(catalog.clones()?.into_iter().map(|c| c.name));
                    Err(CloneError::Lookup(LookupError::UnknownEnvironment { name, known }))
                }
            },
        },
        Err(other) => Err(CloneError::Lookup(other)),
    }
}

/// A recorded clone's environment.
pub fn clone_environment(clone: &CloneRecord) -> Result<Environment, CloneError> {
    serde_json::from_value(clone.environment.clone()).map_err(|e| {
        CloneError::Catalog(crate::catalog::CatalogError::Corrupt {
            what: "read a clone's environment",
            detail: e.to_string(),
        })
    })
}

/// Clones `request.source`; see the module documentation.
pub fn clone(ctx: &OpContext<'_>, request: &CloneRequest, tools: Tools<'_>) -> Result<CloneReport, CloneError> {
    let started = Instant::now();
    let source = ctx.config.environment(&request.source)?;
    if request.new_host_keys && request.start == StartMode::Off {
        return Err(CloneError::Unsupported {
            what: "--new-host-keys with --start off (the agents make the keys in a running guest)".into(),
        });
    }
    if request.network == NetworkMode::Readdress {
        check_readdress_config(&request.source, source)?;
        if request.start == StartMode::Off {
            return Err(CloneError::Unsupported {
                what: "--network readdress with --start off (the agents readdress a running guest)".into(),
            });
        }
    }
    names::check_name(&request.name).map_err(|reason| CloneError::BadName { name: request.name.clone(), reason })?;
    if ctx.config.environments.contains_key(&request.name) {
        return Err(CloneError::BadName { name: request.name.clone(), reason: "an environment has that name".into() });
    }
    if ctx.catalog.clone_named(&request.name)?.is_some() {
        return Err(CloneError::BadName { name: request.name.clone(), reason: "a clone has that name".into() });
    }

    let (snapshot, snapshot_taken, source_freeze_window_ms) = match &request.from {
        Some(name) => (name.clone(), false, None),
        None => {
            let timer = ctx.begin(format!("snapshot {} to clone from", request.source));
            let snap = SnapshotRequest {
                env: request.source.clone(),
                label: Some(format!("clone-{}", request.name)),
                memory: request.start == StartMode::Resume,
                quiesce: None,
                schedule: None,
            };
            let report = timer
                .finish(super::snapshot::take(ctx, &snap, tools.quiescer))
                .map_err(|source| CloneError::Snapshot { env: request.source.clone(), source: Box::new(source) })?;
            (report.name, true, report.freeze_window_ms)
        }
    };

    let state_dir = &ctx.config.controller.state_dir;
    let _source_lock = EnvLock::acquire(state_dir, &request.source, "clone")?;
    let _clone_lock = EnvLock::acquire(state_dir, &request.name, "clone")?;
    let journal = Journal::begin(ctx.catalog, OperationKind::Clone, &request.name, ctx.clock.now())?;
    journal.also_touches(&request.source)?;
    let storage = ctx.config.controller.state_dir.join("images").join(&request.name);
    let mut run = Run {
        ctx,
        request,
        source,
        snapshot,
        tools,
        journal: Some(journal),
        phase: Phase::Lock,
        plans: Vec::new(),
        storage,
        networks: Vec::new(),
        disks: Vec::new(),
        environment: None,
        vms: Vec::new(),
        addresses: None,
        own_networks: Vec::new(),
        gateway_removed: false,
        agents: None,
        known_hosts: Vec::new(),
        full_copies: Vec::new(),
    };
    ctx.note(format!("clone of environment '{}' from snapshot {} as '{}'", request.source, run.snapshot, request.name));
    if let Err(error) = run.execute() {
        return Err(run.roll_back(error));
    }
    run.journal.take().expect("the journal is taken once").complete()?;
    run.phase.enter(Phase::Done);
    Ok(CloneReport {
        name: request.name.clone(),
        source: request.source.clone(),
        snapshot: run.snapshot.clone(),
        snapshot_taken,
        source_freeze_window_ms,
        disks: request.disks,
        start: request.start,
        network: request.network,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        gateway_netns: (!run.gateway_removed).then(|| names::gateway_netns(&request.name)),
        vms: run.vms.clone(),
        networks: run.recorded_networks(),
        addresses: run.addresses.clone(),
        full_copies: run.full_copies.clone(),
    })
}

/// `--network readdress` needs a pool to take addresses from and the files
/// that hold connection strings: without them nothing could be checked.
fn check_readdress_config(env: &str, source: &Environment) -> Result<(), CloneError> {
    if source.readdress.is_none() {
        return Err(CloneError::ReaddressNotConfigured { env: env.to_owned(), missing: "readdress" });
    }
    if !source.rewrite.as_ref().is_some_and(|r| !r.files.is_empty()) {
        return Err(CloneError::ReaddressNotConfigured { env: env.to_owned(), missing: "rewrite" });
    }
    Ok(())
}

struct Run<'r, 'c> {
    ctx: &'r OpContext<'c>,
    request: &'r CloneRequest,
    source: &'r Environment,
    snapshot: String,
    tools: Tools<'r>,
    journal: Option<Journal<'c>>,
    phase: Phase,
    plans: Vec<VmPlan>,
    storage: PathBuf,
    networks: Vec<ClonedNetwork>,
    disks: Vec<ClonedDisk>,
    environment: Option<Environment>,
    vms: Vec<VmReport>,
    /// `--network readdress`: the plan, and the clone's own networks (the
    /// ones in `networks` are then the quarantine).
    addresses: Option<readdress::AddressPlan>,
    own_networks: Vec<ClonedNetwork>,
    /// The quarantine and its gateway are gone (a readdressed clone).
    gateway_removed: bool,
    agents: Option<Box<dyn CloneAgents>>,
    /// Lines added to the controller's known_hosts.
    known_hosts: Vec<String>,
    full_copies: Vec<FullCopyReport>,
}

/// Maps an agent's error in `step` of `vm`.
fn agent_error(vm: &str, step: &'static str) -> impl FnOnce(crate::guest::GuestError) -> CloneError {
    let vm = vm.to_owned();
    move |source| CloneError::Agent { vm, step, source: Box::new(source) }
}

impl<'r, 'c> Journaled<'r, 'c> for Run<'r, 'c> {
    type Error = CloneError;

    fn context(&self) -> &'r OpContext<'c> {
        self.ctx
    }

    fn journal(&mut self) -> &mut Journal<'c> {
        self.journal.as_mut().expect("the journal is only taken at the end of the run")
    }

    fn crash_points(&self) -> Option<&'static str> {
        Some("clone")
    }
}

impl<'r, 'c> Run<'r, 'c> {
    fn execute(&mut self) -> Result<(), CloneError> {
        self.phase.enter(Phase::Resolve);
        self.step("resolve", UndoAction::Nothing, |run| run.resolve())?;

        self.phase.enter(Phase::Overlays);
        self.overlays()?;

        self.phase.enter(Phase::Networks);
        self.networks()?;

        self.phase.enter(Phase::Gateway);
        self.gateway()?;

        self.phase.enter(Phase::Domains);
        self.domains()?;

        self.phase.enter(Phase::Start);
        match self.request.start {
            StartMode::Boot => self.start()?,
            StartMode::Resume => self.resume()?,
            StartMode::Off => {}
        }

        self.phase.enter(Phase::Identity);
        if self.request.start != StartMode::Off {
            self.new_machine_ids()?;
        }
        if self.addresses.is_some() {
            self.readdress()?;
        }
        if self.request.new_host_keys {
            self.new_host_keys()?;
        }

        self.phase.enter(Phase::Record);
        let forget = undo::ForgetClone {
            clone: self.request.name.clone(),
            overlays: self.disks.iter().map(|d| d.path.clone()).collect(),
        };
        let undo = UndoAction::Custom {
            kind: undo::UNDO_FORGET_CLONE.to_owned(),
            data: serde_json::to_value(&forget).unwrap_or_default(),
        };
        self.step("record the clone", undo, |run| run.record())
    }

    /// The snapshot, its image of every disk, the source domains and networks.
    fn resolve(&mut self) -> Result<(), CloneError> {
        let ctx = self.ctx;
        let env = &self.request.source;
        let snapshot = ctx.catalog.snapshot_named(env, &self.snapshot)?;
        let snapshot = match snapshot {
            Some(s) if s.state == SnapshotState::Complete => s,
            other => {
                let known = ctx
                    .catalog
                    .snapshots(env)?
                    .into_iter()
                    .filter(|s| s.state == SnapshotState::Complete)
                    .map(|s| s.name)
                    .collect();
                return Err(CloneError::UnknownSnapshot {
                    env: env.clone(),
                    name: self.snapshot.clone(),
                    state: other.map(|s| s.state),
                    known,
                });
            }
        };
        let resume = self.request.start == StartMode::Resume;
        if resume && !snapshot.memory {
            return Err(CloneError::NoMemoryImage { snapshot: snapshot.name.clone(), vm: None });
        }
        let memory: BTreeMap<String, PathBuf> = ctx
            .catalog
            .images_of_snapshot(snapshot.id)?
            .into_iter()
            .filter(|image| image.kind == ImageKind::Memory)
            .map(|image| (image.vm, image.path))
            .collect();
        let mut pinned: BTreeMap<String, Vec<(String, Image)>> = BTreeMap::new();
        for image in ctx.catalog.images_needed_by(&snapshot_dependent(env, &snapshot.name))? {
            if let Some(disk) = image.disk.clone() {
                pinned.entry(image.vm.clone()).or_default().push((disk, image));
            }
        }
        for (vm, config) in &self.source.vms {
            let images = pinned.remove(vm).unwrap_or_default();
            if images.is_empty() {
                return Err(CloneError::SnapshotLacksVm { snapshot: snapshot.name.clone(), vm: vm.clone() });
            }
            for (disk, image) in &images {
                if !self.tools.files.exists(&image.path) {
                    return Err(CloneError::ImageMissing {
                        vm: vm.clone(),
                        disk: disk.clone(),
                        path: image.path.clone(),
                    });
                }
            }
            let domain = names::domain(&self.request.name, vm);
            match ctx.hv.domain(&domain) {
                Err(HvError::NoSuchDomain { .. }) => {}
                Ok(_) => {
                    return Err(CloneError::BadName {
                        name: self.request.name.clone(),
                        reason: format!("domain {domain} exists"),
                    })
                }
                Err(source) => {
                    return Err(CloneError::InspectDomain { vm: vm.clone(), domain, source: Box::new(source) })
                }
            }
            let mut def = ctx
                .hv
                .domain(&config.domain)
                .map_err(|source| CloneError::InspectDomain {
                    vm: vm.clone(),
                    domain: config.domain.clone(),
                    source: Box::new(source),
                })?
                .def;
            let memory = if resume {
                let image = memory.get(vm).cloned().ok_or_else(|| CloneError::NoMemoryImage {
                    snapshot: snapshot.name.clone(),
                    vm: Some(vm.clone()),
                })?;
                // The definition QEMU's state was saved with: the clone's
                // is made from it, so that the memory restores onto it.
                let fail = |detail: String| CloneError::MemoryImage { vm: vm.clone(), path: image.clone(), detail };
                let prefix = SavePrefix::read(&image).map_err(|e| fail(crate::error::chain(&e)))?;
                def = DomainDef::parse(&prefix.xml).map_err(|e| fail(crate::error::chain(&e)))?;
                let copy = self.storage.join(vm).join(format!("{}.mem", self.request.name));
                Some((image, copy))
            } else {
                None
            };
            let nvram = def.nvram().map(|from| {
                let to = self.storage.join(vm).join(format!("{}.nvram.fd", self.request.name));
                (from, to)
            });
            self.plans.push(VmPlan {
                vm: vm.clone(),
                source_domain: config.domain.clone(),
                domain,
                def,
                images,
                nvram,
                memory,
            });
        }
        Ok(())
    }

    fn overlays(&mut self) -> Result<(), CloneError> {
        for plan in self.plans.clone() {
            let dir = self.storage.join(&plan.vm);
            std::fs::create_dir_all(&dir).map_err(|source| CloneError::StorageDir { path: dir.clone(), source })?;
            for (disk, image) in &plan.images {
                let overlay = names::overlay(&self.storage, &self.request.name, &plan.vm, disk);
                let undo = UndoAction::DeleteFile { path: overlay.clone() };
                if self.request.disks == DiskMode::Full {
                    let step = format!("copy {}/{disk} in full", plan.vm);
                    let started = Instant::now();
                    let bytes = self.step(&step, undo, |run| {
                        let progress = run.ctx.progress;
                        let report =
                            |permille| progress(&super::context::Event::Progress { step: step.clone(), permille });
                        run.tools.copier.copy_full(&image.path, &overlay, &report).map_err(|source| {
                            CloneError::CreateOverlay {
                                vm: plan.vm.clone(),
                                disk: disk.clone(),
                                source: Box::new(source),
                            }
                        })
                    })?;
                    self.full_copies.push(FullCopyReport::new(&plan.vm, disk, bytes, started.elapsed()));
                } else {
                    self.step(&format!("create overlay {}/{disk}", plan.vm), undo, |run| {
                        run.tools.files.create_overlay(&overlay, &image.path, image.format).map_err(|source| {
                            CloneError::CreateOverlay {
                                vm: plan.vm.clone(),
                                disk: disk.clone(),
                                source: Box::new(source),
                            }
                        })
                    })?;
                }
                self.disks.push(ClonedDisk {
                    vm: plan.vm.clone(),
                    disk: disk.clone(),
                    path: overlay,
                    backing: image.path.clone(),
                });
            }
            if let Some((from, to)) = &plan.nvram {
                let undo = UndoAction::DeleteFile { path: to.clone() };
                self.step(&format!("copy the NVRAM of {}", plan.vm), undo, |_| {
                    std::fs::copy(from, to)
                        .map(drop)
                        .map_err(|source| CloneError::StorageDir { path: to.clone(), source })
                })?;
            }
        }
        Ok(())
    }

    /// The networks the VMs use (and the environment lists), each copied as
    /// an isolated bridge without a host address.
    fn networks(&mut self) -> Result<(), CloneError> {
        let ctx = self.ctx;
        let mut sources: Vec<String> = self.source.networks.clone();
        for plan in &self.plans {
            for (index, iface) in plan.def.interfaces().iter().enumerate() {
                match &iface.network {
                    Some(network) if !sources.contains(network) => sources.push(network.clone()),
                    Some(_) => {}
                    None => {
                        return Err(CloneError::Unsupported {
                            what: format!(
                                "interface {index} of {} (not on a libvirt network: it would reach production)",
                                plan.source_domain
                            ),
                        })
                    }
                }
            }
        }
        let readdress = self.request.network == NetworkMode::Readdress;
        let mut source_networks = Vec::new();
        for source in sources {
            let def = ctx
                .hv
                .network(&source)
                .map_err(|e| CloneError::InspectNetwork { network: source.clone(), source: Box::new(e) })?
                .def;
            // Readdressed VMs wait in a quarantine copy until they are clean.
            let (name, bridge) = if readdress {
                (
                    names::quarantine_network(&self.request.name, &source),
                    names::quarantine_bridge(&self.request.name, &source),
                )
            } else {
                (names::network(&self.request.name, &source), names::bridge(&self.request.name, &source))
            };
            // An isolated clone's network has no host address: the gateway
            // its own clone recorded stands in for it (a clone of a clone).
            let ip = match def.ip() {
                Some((std::net::IpAddr::V4(address), prefix)) => Some((address, prefix)),
                Some(_) => None,
                None => self.recorded_gateway(&source)?,
            };
            let gateway = ip.map(|(address, prefix)| format!("{address}/{prefix}"));
            let kind = if readdress { "quarantine" } else { "isolated copy" };
            self.create_network(&name, &bridge, None, &format!("{kind} of {source}"))?;
            source_networks.push(readdress::SourceNetwork { name: source.clone(), gateway: ip });
            self.networks.push(ClonedNetwork { source, name, bridge, veth: None, gateway });
        }
        if readdress {
            let plan = self.plan_addresses(&source_networks)?;
            for network in &plan.networks {
                let name = names::network(&self.request.name, &network.source_network);
                let bridge = names::bridge(&self.request.name, &network.source_network);
                let ip = Some((network.gateway, network.subnet.prefix_len()));
                self.create_network(&name, &bridge, ip, &format!("{} for {}", network.subnet, network.source_network))?;
                self.own_networks.push(ClonedNetwork {
                    source: network.source_network.clone(),
                    name,
                    bridge,
                    veth: None,
                    gateway: Some(format!("{}/{}", network.gateway, network.subnet.prefix_len())),
                });
            }
            self.addresses = Some(plan);
        }
        Ok(())
    }

    /// The gateway address a clone recorded for its network `network`.
    fn recorded_gateway(&self, network: &str) -> Result<Option<(std::net::Ipv4Addr, u8)>, CloneError> {
        for clone in self.ctx.catalog.clones()? {
            let recorded = clone.resources.networks.iter().find(|n| n.name == network);
            if let Some(gateway) = recorded.and_then(|n| n.gateway.as_deref()) {
                return Ok(gateway.parse::<ipnet::Ipv4Net>().ok().map(|net| (net.addr(), net.prefix_len())));
            }
        }
        Ok(None)
    }

    /// Defines and starts one of the clone's networks: a bridge that
    /// forwards nowhere, with a host address or without.
    fn create_network(
        &mut self,
        name: &str,
        bridge: &str,
        ip: Option<(std::net::Ipv4Addr, u8)>,
        what: &str,
    ) -> Result<(), CloneError> {
        self.step(&format!("create network {name} ({what})"), undo::remove_network_undo(name), |run| {
            let def = NetworkDef::isolated(&NetworkSpec { name: name.to_owned(), bridge: bridge.to_owned(), ip });
            let fail = |e: HvError| CloneError::DefineNetwork { network: name.to_owned(), source: Box::new(e) };
            run.ctx.hv.define_network(&def).map_err(fail)?;
            run.ctx.hv.start_network(name).map_err(fail)
        })
    }

    /// The clone's subnets and addresses, clear of every subnet libvirt has.
    fn plan_addresses(&mut self, networks: &[readdress::SourceNetwork]) -> Result<readdress::AddressPlan, CloneError> {
        let config = self.source.readdress.clone().expect("checked before the run");
        let mut vms = Vec::new();
        for plan in &self.plans {
            let interfaces = plan.def.interfaces();
            let [iface] = interfaces.as_slice() else {
                return Err(CloneError::Unsupported {
                    what: format!(
                        "--network readdress of VM '{}' with {} interfaces (one per VM is readdressed)",
                        plan.vm,
                        interfaces.len()
                    ),
                });
            };
            vms.push(readdress::SourceVm {
                vm: plan.vm.clone(),
                network: iface.network.clone().unwrap_or_default(),
                address: self.source.vms[&plan.vm].agent.address.clone(),
            });
        }
        let taken = readdress::taken_subnets(self.ctx.hv)
            .map_err(|(network, source)| CloneError::InspectNetwork { network, source })?;
        let clone = self.request.name.clone();
        self.step("plan the clone's addresses", UndoAction::Nothing, |_| {
            readdress::plan(config.pool, networks, &vms, &taken, |vm| config.hostname_for(&clone, vm))
        })
    }

    /// The networks the clone keeps: its own when readdressed, else the copies.
    fn recorded_networks(&self) -> Vec<ClonedNetwork> {
        if self.addresses.is_some() {
            self.own_networks.clone()
        } else {
            self.networks.clone()
        }
    }

    /// The gateway namespace and one veth per network with a gateway address.
    fn gateway(&mut self) -> Result<(), CloneError> {
        let netns = names::gateway_netns(&self.request.name);
        let libvirt_netns = self.ctx.config.controller.libvirt_netns.clone();
        let fail = |netns: &str| {
            let netns = netns.to_owned();
            move |e: HostNetError| CloneError::Gateway { netns, source: Box::new(e) }
        };
        let undo = UndoAction::Custom {
            kind: undo::UNDO_REMOVE_NETNS.to_owned(),
            data: serde_json::json!({ "netns": netns }),
        };
        self.step(&format!("create the gateway namespace {netns}"), undo, |run| {
            run.tools.net.add_netns(&netns).map_err(fail(&netns))
        })?;
        for index in 0..self.networks.len() {
            let network = self.networks[index].clone();
            let Some(address) = network.gateway.clone() else { continue };
            let (veth, peer) = names::veth_pair(&self.request.name, &network.source);
            let link = undo::LinkRef { netns: libvirt_netns.clone(), link: veth.clone() };
            let undo = UndoAction::Custom {
                kind: undo::UNDO_REMOVE_LINK.to_owned(),
                data: serde_json::to_value(&link).unwrap_or_default(),
            };
            self.step(&format!("gateway {address} on {}", network.name), undo, |run| {
                run.tools
                    .net
                    .add_gateway(libvirt_netns.as_deref(), &network.bridge, &veth, &netns, &peer, &address)
                    .map_err(fail(&netns))
            })?;
            self.networks[index].veth = Some(veth);
        }
        Ok(())
    }

    fn domains(&mut self) -> Result<(), CloneError> {
        let networks: BTreeMap<String, String> =
            self.networks.iter().map(|n| (n.source.clone(), n.name.clone())).collect();
        let netns = names::gateway_netns(&self.request.name);
        let mut environment = self.source.clone();
        environment.description = Some(format!("clone of {} at snapshot {}", self.request.source, self.snapshot));
        environment.networks = self.networks.iter().map(|n| n.name.clone()).collect();
        environment.storage = Some(self.storage.clone());
        environment.retention = None;
        for plan in self.plans.clone() {
            let fail = |e: HvError| CloneError::DefineDomain {
                vm: plan.vm.clone(),
                domain: plan.domain.clone(),
                source: Box::new(e),
            };
            let mut def = plan.def.clone();
            def.set_name(&plan.domain);
            def.strip_for_new_identity();
            let uuid = random_uuid();
            def.set_uuid(&uuid);
            let mut macs = Vec::new();
            for (index, iface) in plan.def.interfaces().iter().enumerate() {
                let mac = random_mac();
                def.set_interface_mac(index, &mac).map_err(fail)?;
                if let Some(network) = iface.network.as_ref().and_then(|n| networks.get(n)) {
                    def.set_interface_network(index, network).map_err(fail)?;
                }
                macs.push(mac);
            }
            for (disk, _) in &plan.images {
                let overlay = names::overlay(&self.storage, &self.request.name, &plan.vm, disk);
                def.set_disk_source(disk, &overlay, ImageFormat::Qcow2.as_str()).map_err(fail)?;
            }
            if let Some((_, to)) = &plan.nvram {
                def.set_nvram(to);
            }
            if !def.chardev_files().is_empty() {
                // Its own console log: the source's is in use (and locked) by the source.
                let log = self.storage.join(&plan.vm).join(format!("{}.console.log", self.request.name));
                def.set_chardev_files(&log);
                let undo = UndoAction::DeleteFile { path: log.clone() };
                self.step(&format!("console log of {} in {}", plan.domain, log.display()), undo, |_| Ok(()))?;
            }
            let undo = UndoAction::UndefineDomain { name: plan.domain.clone() };
            self.step(&format!("define {} for {}", plan.domain, plan.vm), undo, |run| {
                run.ctx.hv.define_domain(&def).map(drop).map_err(fail)
            })?;
            if let Some((image, copy)) = &plan.memory {
                let undo = UndoAction::DeleteFile { path: copy.clone() };
                self.step(&format!("memory image of {} for {}", plan.vm, plan.domain), undo, |_| {
                    write_memory_copy(&plan.vm, image, copy, &def)
                })?;
            }
            let vm = environment.vms.get_mut(&plan.vm).expect("plans come from the environment's VMs");
            vm.domain = plan.domain.clone();
            vm.agent.netns = Some(netns.clone());
            self.vms.push(VmReport {
                vm: plan.vm.clone(),
                source_domain: plan.source_domain.clone(),
                domain: plan.domain.clone(),
                uuid,
                macs,
                address: vm.agent.address.clone(),
                disks: self.disks.iter().filter(|d| d.vm == plan.vm).cloned().collect(),
                machine_id: None,
                hostname: None,
                replacements: None,
            });
        }
        self.environment = Some(environment);
        Ok(())
    }

    /// Restores every domain from its memory image, then thaws each guest
    /// and sets its clock through the gateway.
    fn resume(&mut self) -> Result<(), CloneError> {
        for plan in self.plans.clone() {
            let Some((_, copy)) = &plan.memory else { continue };
            self.step(&format!("restore {} from memory", plan.domain), UndoAction::Nothing, |run| {
                run.ctx.hv.restore_memory(copy, None).map_err(|source| CloneError::RestoreMemory {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                })?;
                // The copy served its purpose; the snapshot keeps the original.
                if let Err(e) = run.tools.files.remove(copy) {
                    run.ctx.note(format!("cannot remove {}: {e}", copy.display()));
                }
                Ok(())
            })?;
        }
        for plan in self.plans.clone() {
            let vm = plan.vm.clone();
            self.step(&format!("thaw {vm} and set its clock"), UndoAction::Nothing, |run| {
                let agents = run.agents();
                agents
                    .thaw(&vm, BOOT_WITHIN)
                    .map_err(|source| CloneError::Thaw { vm: vm.clone(), source: Box::new(source) })?;
                agents
                    .set_clock(&vm)
                    .map(drop)
                    .map_err(|source| CloneError::SetClock { vm: vm.clone(), source: Box::new(source) })
            })?;
        }
        Ok(())
    }

    /// Boots every domain, then waits for every agent through the gateway.
    fn start(&mut self) -> Result<(), CloneError> {
        for plan in self.plans.clone() {
            self.step(&format!("start {}", plan.domain), UndoAction::Nothing, |run| {
                run.ctx.hv.start_domain(&plan.domain).map_err(|source| CloneError::Start {
                    vm: plan.vm.clone(),
                    domain: plan.domain.clone(),
                    source: Box::new(source),
                })
            })?;
        }
        self.wait_for_agents("wait for the clone's agents")
    }

    /// Waits for every VM's agent, in parallel.
    fn wait_for_agents(&mut self, what: &str) -> Result<(), CloneError> {
        let vms: Vec<String> = self.plans.iter().map(|p| p.vm.clone()).collect();
        self.step(what, UndoAction::Nothing, |run| {
            let agents = run.agents();
            let results = super::parallel::each(&vms, |vm| {
                agents
                    .wait_ready(vm, BOOT_WITHIN)
                    .map_err(|source| CloneError::AgentNotReady { vm: vm.clone(), source: Box::new(source) })
            });
            results.into_iter().try_for_each(|result| result.unwrap_or(Err(CloneError::Panicked)))
        })
    }

    /// The clone's agents as its environment stands now (logins are kept).
    fn agents(&mut self) -> &dyn CloneAgents {
        if self.agents.is_none() {
            let environment = self.environment.as_ref().expect("domains come before the agents");
            self.agents = Some((self.tools.agents)(environment));
        }
        self.agents.as_deref().expect("just set")
    }

    /// A new /etc/machine-id in every guest: two machines with one id
    /// confuse DHCP, journald and anything that keys on it.
    fn new_machine_ids(&mut self) -> Result<(), CloneError> {
        for index in 0..self.vms.len() {
            let vm = self.vms[index].vm.clone();
            let report = self.step(&format!("new machine-id for {vm}"), UndoAction::Nothing, |run| {
                run.agents().reset_identity(&vm, false).map_err(agent_error(&vm, "give the guest a new machine-id"))
            })?;
            self.vms[index].machine_id = Some(report.machine_id);
        }
        Ok(())
    }

    /// `--new-host-keys`: each guest makes new keys and its SSH server
    /// serves them; known_hosts trusts them under the guest's clone-side
    /// name (its new address, or for an isolated clone, which answers at
    /// the source's address, an alias naming the clone's domain), and the
    /// agents are reached again with the new keys before going on.
    fn new_host_keys(&mut self) -> Result<(), CloneError> {
        let known_hosts = self.ctx.config.controller.known_hosts.clone();
        let isolated = self.addresses.is_none();
        let mut environment = self.environment.clone().expect("domains come before the identity");
        for index in 0..self.vms.len() {
            let vm = self.vms[index].vm.clone();
            let report = self.step(&format!("new SSH host keys for {vm}"), UndoAction::Nothing, |run| {
                let report =
                    run.agents().reset_identity(&vm, true).map_err(agent_error(&vm, "give the guest new host keys"))?;
                match report.ssh_servers.iter().find(|s| !s.serves_new_keys) {
                    None => Ok(report),
                    Some(server) => Err(CloneError::HostKeysNotServed {
                        vm: vm.clone(),
                        detail: server.note.clone().unwrap_or_else(|| format!("{:?} was not restarted", server.server)),
                    }),
                }
            })?;
            self.vms[index].machine_id = Some(report.machine_id.clone());
            let endpoint = &mut environment.vms.get_mut(&vm).expect("the environment has every VM").agent;
            let name = if isolated { self.vms[index].domain.clone() } else { endpoint.address.clone() };
            let host_name = crate::guest::hostkey::known_hosts_name(&name, endpoint.port);
            let lines: Vec<String> = report.host_keys.iter().map(|k| format!("{host_name} {}", k.public_key)).collect();
            // The lines trusting the source's key at this name go.
            let stale: Vec<String> =
                self.known_hosts.iter().filter(|l| l.split(' ').next() == Some(host_name.as_str())).cloned().collect();
            let undo = UndoAction::Custom {
                kind: undo::UNDO_DISTRUST_HOST_KEYS.to_owned(),
                data: serde_json::to_value(undo::HostKeys { known_hosts: known_hosts.clone(), lines: lines.clone() })
                    .unwrap_or_default(),
            };
            self.step(&format!("trust {vm}'s new host keys as {host_name}"), undo, |_| {
                let fail = |source| CloneError::KnownHosts { path: known_hosts.clone(), source };
                crate::guest::hostkey::distrust(&known_hosts, &stale).map_err(fail)?;
                crate::guest::hostkey::trust(&known_hosts, &lines).map_err(fail)
            })?;
            self.known_hosts.retain(|l| !stale.contains(l));
            self.known_hosts.extend(lines);
            if isolated {
                endpoint.host_key_alias = Some(name);
            }
        }
        self.environment = Some(environment);
        self.agents = None;
        self.wait_for_agents("wait for the clone's agents with their new host keys")
    }

    /// `--network readdress`, from the quarantine: rewrite, scan (stop if
    /// any source address is left), readdress, link up, wait, and remove
    /// the quarantine.
    fn readdress(&mut self) -> Result<(), CloneError> {
        let plan = self.addresses.clone().expect("planned in the networks phase");
        let host_keys = self.rewrite_and_scan(&plan)?;
        self.readdress_and_link_up(&plan, &host_keys)?;
        self.wait_for_agents("wait for the clone's agents at their new addresses")?;
        self.remove_quarantine()
    }

    /// Every VM's connection strings rewritten and found clean, before any
    /// link goes up; returns each guest's host key, read in the quarantine.
    fn rewrite_and_scan(&mut self, plan: &readdress::AddressPlan) -> Result<BTreeMap<String, Vec<u8>>, CloneError> {
        let rewrite = self.source.rewrite.clone().expect("checked before the run");
        let vms: Vec<String> = self.vms.iter().map(|v| v.vm.clone()).collect();

        let mut hostnames = BTreeMap::new();
        for vm in &vms {
            let hostname = self.step(&format!("ask {vm} for its host name"), UndoAction::Nothing, |run| {
                run.agents().hostname(vm).map_err(agent_error(vm, "ask the host name"))
            })?;
            hostnames.insert(vm.clone(), hostname);
        }
        let (rewrite_plan, scan) =
            readdress::agent_requests(plan.rewrite_map(&hostnames, &rewrite.map), plan.source_subnets(), &rewrite);
        // Every VM is rewritten and found clean before any link goes up.
        let mut host_keys = BTreeMap::new();
        for (index, vm) in vms.iter().enumerate() {
            let key = self.step(&format!("read {vm}'s host key"), UndoAction::Nothing, |run| {
                run.agents().host_key(vm).map_err(agent_error(vm, "read the host key"))
            })?;
            host_keys.insert(vm.clone(), key);
            let report = self.step(&format!("rewrite connection strings in {vm}"), UndoAction::Nothing, |run| {
                run.agents().rewrite(vm, &rewrite_plan).map_err(agent_error(vm, "rewrite connection strings"))
            })?;
            self.vms[index].replacements = Some(report.replacements);
            self.step(&format!("scan {vm} for source addresses"), UndoAction::Nothing, |run| {
                let report = run.agents().scan(vm, &scan).map_err(agent_error(vm, "scan for source addresses"))?;
                if report.findings.is_empty() {
                    Ok(())
                } else {
                    Err(CloneError::SourceAddressesRemain { vm: vm.clone(), findings: report.findings })
                }
            })?;
        }
        Ok(host_keys)
    }

    /// Each guest re-addressed, its host key trusted at its new address,
    /// its interface moved onto the clone's own network; the environment
    /// then names the new addresses.
    fn readdress_and_link_up(
        &mut self,
        plan: &readdress::AddressPlan,
        host_keys: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), CloneError> {
        let vms: Vec<String> = self.vms.iter().map(|v| v.vm.clone()).collect();
        let libvirt_netns = self.ctx.config.controller.libvirt_netns.clone();
        let mut environment = self.environment.clone().expect("domains come before the identity");
        for (index, vm) in vms.iter().enumerate() {
            let addresses = plan.vm(vm).expect("the plan has every VM").clone();
            let network = plan.network(&addresses.source_network).expect("the plan has every network").clone();
            let mac = self.vms[index].macs[0].clone();
            // A guest resumed from memory still has its source's MAC: QEMU's
            // saved device state carries it, whatever the new XML says.
            let guest_mac = match self.request.start {
                StartMode::Resume => self.plans[index].def.interfaces()[0].mac.clone().unwrap_or_else(|| mac.clone()),
                _ => mac.clone(),
            };
            let what = format!(
                "readdress {vm}: {} -> {} ({})",
                addresses.source_address, addresses.address, addresses.hostname
            );
            self.step(&what, UndoAction::Nothing, |run| {
                run.agents()
                    .readdress(vm, &guest_mac, &addresses.address, network.gateway, &addresses.hostname)
                    .map_err(agent_error(vm, "readdress the guest"))
            })?;
            // The guest keeps its host key: trust it at the new address.
            let port = self.source.vms[vm].agent.port;
            let known_hosts = &self.ctx.config.controller.known_hosts;
            let trusted = undo::HostKeys::at(known_hosts, &addresses.address.addr().to_string(), port, &host_keys[vm]);
            self.step(&format!("trust {vm}'s host key at {}", addresses.address.addr()), trusted.distrust(), |_| {
                crate::guest::hostkey::trust(known_hosts, &trusted.lines)
                    .map_err(|source| CloneError::KnownHosts { path: known_hosts.clone(), source })
            })?;
            self.known_hosts.extend(trusted.lines);
            let domain = self.vms[index].domain.clone();
            let own = names::network(&self.request.name, &addresses.source_network);
            self.step(&format!("link up: {domain} onto {own}"), UndoAction::Nothing, |run| {
                run.ctx.hv.move_interface(&domain, &mac, &own).map_err(|source| CloneError::MoveInterface {
                    vm: vm.clone(),
                    domain: domain.clone(),
                    mac: mac.clone(),
                    source: Box::new(source),
                })
            })?;
            let endpoint = &mut environment.vms.get_mut(vm).expect("the environment has every VM").agent;
            endpoint.address = addresses.address.addr().to_string();
            endpoint.netns = libvirt_netns.clone();
            self.vms[index].address = endpoint.address.clone();
            self.vms[index].hostname = Some(addresses.hostname.clone());
        }
        environment.networks = self.own_networks.iter().map(|n| n.name.clone()).collect();
        self.environment = Some(environment);
        self.agents = None;
        Ok(())
    }

    /// The quarantine networks, their gateway links and namespace.
    fn remove_quarantine(&mut self) -> Result<(), CloneError> {
        let libvirt_netns = self.ctx.config.controller.libvirt_netns.clone();
        for network in self.networks.clone() {
            if let Some(veth) = &network.veth {
                self.step(&format!("remove the gateway link {veth}"), UndoAction::Nothing, |run| {
                    run.tools.net.delete_link(libvirt_netns.as_deref(), veth).map_err(|e| CloneError::Gateway {
                        netns: names::gateway_netns(&run.request.name),
                        source: Box::new(e),
                    })
                })?;
            }
            self.step(&format!("remove the quarantine network {}", network.name), UndoAction::Nothing, |_| {
                undo::remove_network(self.ctx.hv, &network.name).map_err(|detail| CloneError::Remove {
                    clone: self.request.name.clone(),
                    what: network.name.clone(),
                    detail,
                })
            })?;
        }
        let netns = names::gateway_netns(&self.request.name);
        self.step(&format!("remove the gateway namespace {netns}"), UndoAction::Nothing, |run| {
            run.tools
                .net
                .delete_netns(&netns)
                .map_err(|e| CloneError::Gateway { netns: netns.clone(), source: Box::new(e) })
        })?;
        self.gateway_removed = true;
        Ok(())
    }

    /// The catalog: overlays, pins, the clone.
    fn record(&mut self) -> Result<(), CloneError> {
        let ctx = self.ctx;
        let now = ctx.clock.now();
        let dependent = Dependent::clone_named(&self.request.name);
        for plan in &self.plans {
            for (disk, image) in &plan.images {
                let overlay = names::overlay(&self.storage, &self.request.name, &plan.vm, disk);
                let linked = self.request.disks == DiskMode::Linked;
                ctx.catalog.add_image(&NewImage {
                    path: overlay.clone(),
                    vm: plan.vm.clone(),
                    disk: Some(disk.clone()),
                    kind: if linked { ImageKind::Overlay } else { ImageKind::FullCopy },
                    format: ImageFormat::Qcow2,
                    size_bytes: self.tools.files.size(&overlay).unwrap_or(0),
                    backing: linked.then_some(image.id),
                    snapshot: None,
                    created_at: now,
                })?;
                // A full copy needs nothing of the source's.
                if linked {
                    ctx.catalog.pin(image.id, &dependent)?;
                }
            }
        }
        let environment = self.environment.as_ref().expect("domains come before the record");
        ctx.catalog.add_clone(&CloneRecord {
            name: self.request.name.clone(),
            source_env: self.request.source.clone(),
            snapshot: self.snapshot.clone(),
            created_at: now,
            disks: match self.request.disks {
                DiskMode::Linked => "linked".into(),
                DiskMode::Full => "full".into(),
            },
            network: match self.request.network {
                NetworkMode::Isolated => "isolated".into(),
                NetworkMode::Readdress => "readdress".into(),
            },
            environment: serde_json::to_value(environment).map_err(|e| {
                CloneError::Catalog(crate::catalog::CatalogError::Corrupt {
                    what: "record a clone's environment",
                    detail: e.to_string(),
                })
            })?,
            resources: CloneResources {
                domains: self.plans.iter().map(|p| p.domain.clone()).collect(),
                networks: self.recorded_networks(),
                gateway_netns: (!self.gateway_removed).then(|| names::gateway_netns(&self.request.name)),
                disks: self.disks.clone(),
                storage: self.storage.clone(),
                known_hosts: self.known_hosts.clone(),
            },
        })?;
        Ok(())
    }

    fn roll_back(&mut self, error: CloneError) -> CloneError {
        self.phase.enter(Phase::Failed);
        let ctx = self.ctx;
        let tools = self.tools;
        let cause = crate::error::chain(&error);
        let failures = match self.journal.take() {
            Some(journal) => journal
                .roll_back(&cause, |action| undo::undo_action(ctx.hv, ctx.catalog, tools.files, tools.net, action)),
            None => Vec::new(),
        };
        remove_empty_dirs(&self.storage);
        if failures.is_empty() {
            error
        } else {
            CloneError::CleanupFailed { cause: Box::new(error), failures }
        }
    }
}

/// Writes `copy`: the save image `image` with `def` as its domain XML (same
/// room, so the QEMU stream that follows does not move), then the stream.
fn write_memory_copy(vm: &str, image: &Path, copy: &Path, def: &DomainDef) -> Result<(), CloneError> {
    use std::io::{Seek, SeekFrom, Write};
    let fail = |detail: String| CloneError::MemoryImage { vm: vm.to_owned(), path: copy.to_owned(), detail };
    let prefix = SavePrefix::read(image).map_err(|e| fail(crate::error::chain(&e)))?;
    let rewritten = prefix.with_xml(&def.to_xml()).map_err(|e| fail(e.to_string()))?;
    let bytes = rewritten.encode().map_err(|e| fail(e.to_string()))?;
    let mut from = std::fs::File::open(image).map_err(|e| fail(format!("cannot open {}: {e}", image.display())))?;
    from.seek(SeekFrom::Start(prefix.stream_offset())).map_err(|e| fail(e.to_string()))?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(copy)
        .map_err(|e| fail(format!("cannot create it: {e}")))?;
    to.write_all(&bytes).map_err(|e| fail(e.to_string()))?;
    std::io::copy(&mut from, &mut to).map_err(|e| fail(e.to_string()))?;
    to.sync_all().map_err(|e| fail(e.to_string()))
}

/// Removes the clone's storage folder if nothing is left in it.
pub(crate) fn remove_empty_dirs(storage: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(storage) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    let _ = std::fs::remove_dir(storage);
}
