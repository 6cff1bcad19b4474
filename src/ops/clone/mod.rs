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
//! Each phase from Resolve on is a file of its own (`resolve.rs`,
//! `overlays.rs`, `networks.rs`, `gateway.rs`, `domains.rs`, `start.rs`,
//! `identity.rs`, `record.rs`) and hands what it made to the next by value;
//! `Run::execute` drives them in order.
//!
//! Every step is journaled before it runs (operation kind `clone`, on
//! NEW), with its undo (`undo.rs`); a failure undoes them newest first and
//! leaves nothing behind. `envclone destroy NEW` (`crate::ops::destroy`)
//! removes a recorded clone.

mod domains;
mod error;
mod gateway;
mod identity;
pub mod names;
mod networks;
mod overlays;
pub mod readdress;
mod record;
mod resolve;
mod start;
#[cfg(test)]
mod tests;
pub mod undo;

use std::time::{Duration, Instant};

use serde::Serialize;

pub(crate) use self::error::remaining;
pub use self::error::CloneError;
pub(crate) use crate::ops::journal::Journal;

use super::context::OpContext;
use super::snapshot::SnapshotRequest;
use super::EnvLock;
use crate::catalog::{Catalog, CloneRecord, ClonedDisk, ClonedNetwork, OperationKind, UndoAction};
use crate::config::{Config, Environment, LookupError};
use crate::guest::agents::{CloneAgents, Quiescer};
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
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").finish_non_exhaustive()
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

/// The environment named `name`: the config's, or a clone's from the
/// catalog. How `envclone ssh` and the agent probes address clones.
pub fn resolve_environment(config: &Config, catalog: &Catalog, name: &str) -> Result<Environment, CloneError> {
    match config.environment(name) {
        Ok(env) => Ok(env.clone()),
        Err(LookupError::UnknownEnvironment { name, mut known }) => match catalog.clone_named(&name)? {
            Some(clone) => clone_environment(&clone),
            // A standby in a DR drill: reached through the drill's gateway.
            None => match crate::ops::environments::drill_environment(catalog, &name)? {
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
    Ok(crate::ops::environments::recorded(clone.environment.clone(), "read a clone's environment")?)
}

/// Clones `request.source`; see the module documentation.
pub fn clone(ctx: &OpContext<'_>, request: &CloneRequest, tools: Tools<'_>) -> Result<CloneReport, CloneError> {
    let started = Instant::now();
    let source = ctx.config.environment(&request.source)?;
    let readdressing = check_request(ctx, request, source)?;
    let snapshot = snapshot_to_clone_from(ctx, request, tools)?;

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
        readdressing,
        snapshot: snapshot.name,
        tools,
        journal,
        phase: Phase::Lock,
        storage,
    };
    ctx.note(format!("clone of environment '{}' from snapshot {} as '{}'", request.source, run.snapshot, request.name));
    let made = match run.execute() {
        Ok(made) => made,
        Err(error) => return Err(run.roll_back(error)),
    };
    run.journal.complete()?;
    run.phase.enter(Phase::Done);
    Ok(CloneReport {
        name: request.name.clone(),
        source: request.source.clone(),
        snapshot: run.snapshot,
        snapshot_taken: snapshot.taken,
        source_freeze_window_ms: snapshot.freeze_window_ms,
        disks: request.disks,
        start: request.start,
        network: request.network,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        gateway_netns: made.gateway_netns,
        vms: made.vms,
        networks: made.networks,
        addresses: made.addresses,
        full_copies: made.full_copies,
    })
}

/// What `--network readdress` works with from the source's config, checked
/// present before the run.
#[derive(Debug, Clone, Copy)]
struct Readdressing<'r> {
    addresses: &'r crate::config::Readdress,
    rewrite: &'r crate::config::Rewrite,
}

/// The request's refusals that need nothing made: modes that cannot go
/// together, a missing readdress config, a taken name. Returns what
/// `--network readdress` works with.
fn check_request<'r>(
    ctx: &OpContext<'_>,
    request: &CloneRequest,
    source: &'r Environment,
) -> Result<Option<Readdressing<'r>>, CloneError> {
    if request.new_host_keys && request.start == StartMode::Off {
        return Err(CloneError::Unsupported {
            what: "--new-host-keys with --start off (the agents make the keys in a running guest)".into(),
        });
    }
    let readdressing = match request.network {
        NetworkMode::Isolated => None,
        NetworkMode::Readdress => {
            let readdressing = check_readdress_config(&request.source, source)?;
            if request.start == StartMode::Off {
                return Err(CloneError::Unsupported {
                    what: "--network readdress with --start off (the agents readdress a running guest)".into(),
                });
            }
            Some(readdressing)
        }
    };
    names::check_name(&request.name).map_err(|reason| CloneError::BadName { name: request.name.clone(), reason })?;
    if ctx.config.environments.contains_key(&request.name) {
        return Err(CloneError::BadName { name: request.name.clone(), reason: "an environment has that name".into() });
    }
    if ctx.catalog.clone_named(&request.name)?.is_some() {
        return Err(CloneError::BadName { name: request.name.clone(), reason: "a clone has that name".into() });
    }
    Ok(readdressing)
}

/// `--network readdress` needs a pool to take addresses from and the files
/// that hold connection strings: without them nothing could be checked.
fn check_readdress_config<'r>(env: &str, source: &'r Environment) -> Result<Readdressing<'r>, CloneError> {
    let Some(addresses) = &source.readdress else {
        return Err(CloneError::ReaddressNotConfigured { env: env.to_owned(), missing: "readdress" });
    };
    match &source.rewrite {
        Some(rewrite) if !rewrite.files.is_empty() => Ok(Readdressing { addresses, rewrite }),
        _ => Err(CloneError::ReaddressNotConfigured { env: env.to_owned(), missing: "rewrite" }),
    }
}

/// The snapshot the clone starts from.
struct SourceSnapshot {
    name: String,
    /// The clone took it (no `--from`).
    taken: bool,
    freeze_window_ms: Option<u64>,
}

/// `--from`'s snapshot, or a fresh one of the source taken now.
fn snapshot_to_clone_from(
    ctx: &OpContext<'_>,
    request: &CloneRequest,
    tools: Tools<'_>,
) -> Result<SourceSnapshot, CloneError> {
    if let Some(name) = &request.from {
        return Ok(SourceSnapshot { name: name.clone(), taken: false, freeze_window_ms: None });
    }
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
    Ok(SourceSnapshot { name: report.name, taken: true, freeze_window_ms: report.freeze_window_ms })
}

/// One clone's run: what every phase works with. What a phase makes is
/// not kept here but handed to the phases that need it.
struct Run<'r, 'c> {
    ctx: &'r OpContext<'c>,
    request: &'r CloneRequest,
    source: &'r Environment,
    /// `--network readdress`: its config.
    readdressing: Option<Readdressing<'r>>,
    snapshot: String,
    tools: Tools<'r>,
    journal: Journal<'c>,
    phase: Phase,
    /// The clone's folder of overlays, NVRAM, memory copies and logs.
    storage: std::path::PathBuf,
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
        &mut self.journal
    }

    fn crash_points(&self) -> Option<&'static str> {
        Some("clone")
    }
}

impl<'r, 'c> Run<'r, 'c> {
    /// The phases in order, each handed what the earlier ones made.
    fn execute(&mut self) -> Result<record::Made, CloneError> {
        self.phase.enter(Phase::Resolve);
        let plans = self.step("resolve", UndoAction::Nothing, |run| run.resolve())?;

        self.phase.enter(Phase::Overlays);
        let overlays = self.overlays(&plans)?;

        self.phase.enter(Phase::Networks);
        let networks = self.networks(&plans)?;

        self.phase.enter(Phase::Gateway);
        let networks = self.gateway(networks)?;

        self.phase.enter(Phase::Domains);
        let domains = self.domains(&plans, &networks, &overlays)?;

        self.phase.enter(Phase::Start);
        let guests = self.start(&plans, domains)?;

        self.phase.enter(Phase::Identity);
        let identified = self.identity(&plans, networks, guests)?;

        self.phase.enter(Phase::Record);
        let undo = record::forget_undo(&self.request.name, &overlays);
        self.step("record the clone", undo, |run| run.record(&plans, overlays, identified))
    }

    /// Undoes, newest first, what the journal says was made.
    fn roll_back(mut self, error: CloneError) -> CloneError {
        self.phase.enter(Phase::Failed);
        let ctx = self.ctx;
        let cause = crate::error::chain(&error);
        let failures = self.journal.roll_back(&cause, |action| undo::undo_action(ctx.host, ctx.catalog, action));
        remove_empty_dirs(self.ctx.host.storage(), &self.storage);
        if failures.is_empty() {
            error
        } else {
            CloneError::CleanupFailed { cause: Box::new(error), failures }
        }
    }
}

/// Removes the clone's storage folder, and its VMs' folders, if nothing is
/// left in them.
pub(crate) fn remove_empty_dirs(files: &dyn crate::host::Storage, storage: &std::path::Path) {
    for entry in files.list_dir(storage).unwrap_or_default() {
        files.remove_dir_if_empty(&entry);
    }
    files.remove_dir_if_empty(storage);
}
