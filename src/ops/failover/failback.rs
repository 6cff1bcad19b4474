//! `envclone failback ENV`: ENV's standby SB serves it (a role switch in
//! force, planned or unplanned); ENV gets its service back, with
//! everything SB wrote, and SB goes back to waiting.
//!
//! Steps, each journaled before it runs (operation `failover` on ENV,
//! crash points `failback:STEP`), with their undo:
//!
//! 0. `pin ENV's images of P for SB`: the images of SB's restored point P
//!    the copies will be rebased onto stay pinned by SB (they are already:
//!    a standby pins its point) until step 8 records them as backing.
//! 1. `snapshot failback-sync of ENV on SB`: an app-consistent snapshot of
//!    ENV's active side (SB's domains), so that everything SB wrote up to
//!    now sits in read-only images.
//! 2. `carry home VM/DISK FILE`, SB still serving (under ENV's lock, so no
//!    delete merges what is read): each read-only image of SB's chains on
//!    SB's storage copied into ENV's storage and rebased onto the image
//!    below it at home (see `carry.rs`; undo: delete the copy). An image
//!    the home sync carried already (`standby sync SB` while SB serves, see
//!    `home_sync.rs`) whose source has not changed since is taken as it is,
//!    with no step and so no undo: a failback rolled back keeps those
//!    copies (the report counts them in `bytes_home_before`).
//! 3. `snapshot failback-final of ENV on SB`: app-consistent, through the
//!    agents, right before SB stops; it is a snapshot ENV can restore.
//! 4. `stop SB-VM, ...`: all of SB's domains at once (in parallel), hard:
//!    the final snapshot is the app-consistent point, and the few writes
//!    after its thaw are carried home too, as a power cut would leave them
//!    (undo: start them again). **Downtime** begins.
//! 5. `carry home ...` the remainder: the final snapshot's image and SB's
//!    live overlay (small: what SB wrote since step 1).
//! 6. `compare VM/DISK`: `qemu-img compare` of SB's chain and the chain at
//!    home must say identical, for every disk, before anything switches.
//! 7. `mark epoch N failing back` (undo: in force again): the fence guard
//!    leaves ENV's domains alone from here on.
//! 8. `record the images carried home`: the catalog records the very same
//!    image rows at home (undo: where they were).
//! 9. `give ENV-VM its disks at home, unfenced` (the fence stamp removed;
//!    undo: its fenced definition back), `start ENV-VM` (undo: stop it),
//!    `wait for ENV's agents at its addresses`; when SB served at its own
//!    addresses (`readdress.rs`), ENV's guests came home with SB's host
//!    names and connection strings: each gets its host name back and its
//!    files rewritten with the inverse map, then scanned for SB's subnets.
//!    **Downtime** ends.
//! 10. `give SB-VM its own identity back`: its MACs, its isolated networks,
//!     its own synced copy as disk (undo: the primary's identity again).
//!     SB's served networks (a readdressed switch) are removed after step
//!     11, and by a second run if a crash left them.
//! 11. `record epoch N+1: ENV home`: the switch ended and a `failback` row
//!     with the next epoch, in one transaction (undo: forgotten). From here
//!     `envclone recover` completes the failback instead of rolling it back.
//! 12. `remove FILE from SB's storage`: SB's images that were carried home
//!     (the catalog knows them at home now); SB's synced copy is untouched,
//!     so its next sync goes on incrementally from its point.
//!
//! Any failure before step 11 rolls everything back: SB serves again (its
//! domains started on the chains they stopped on), ENV's domains are shut
//! off on their fenced disks with their stamps, the catalog says what it
//! said, the copies are deleted. The two snapshots stay (snapshots of ENV
//! on SB's storage, like any taken while SB served).
//!
//! The autostart of ENV's domains is given back once ENV is home (after
//! step 11): the fence recorded it in its stamp. A stamp from an envclone
//! that did not record it leaves it off, and the report says so.
//! ENV's own images from before the failover (its disks' old tops) are
//! kept and listed (`superseded`): in an unplanned failover they hold what
//! ENV wrote after SB's point.
//!
//! Run again once ENV is home, it reports "ENV is home, epoch N" and does
//! nothing but remove SB's carried files a crash after step 11 left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::carry::{carry_image, carry_step, live_top, plan_disk, CarryImage};
use super::drill::{millis, wait_for_agents, DrillRequest, Run, StepTime};
use super::{undo, FailoverError, Tools};
use crate::catalog::{
    Dependent, DependentKind, FailoverRecord, ImageFormat, ImageMove, NewFailover, StandbyRecord, UndoAction,
};
use crate::config::Environment;
use crate::hypervisor::HvError;
use crate::ops::context::OpContext;
use crate::ops::journal::Journaled as _;
use crate::ops::snapshot::SnapshotRequest;
use crate::ops::EnvLock;

/// What the command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailbackAction {
    FailedBack,
    /// ENV was home already: nothing done (the rest is the failback's report).
    AlreadyHome,
}

/// One disk carried home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailbackDisk {
    pub disk: String,
    /// What ENV's domain runs on now: the copy of SB's last overlay.
    pub home_top: PathBuf,
    /// The images carried home, lowest first (their paths at home).
    pub carried: Vec<PathBuf>,
    /// ENV's image of SB's restored point the lowest one is rebased onto.
    pub point: PathBuf,
    pub bytes: u64,
    /// ENV's disk before the failback (its fenced top): kept.
    pub superseded: Option<PathBuf>,
}

/// One VM given back to ENV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailbackVm {
    pub vm: String,
    /// ENV's domain, serving again.
    pub domain: String,
    /// SB's domain, shut off with its own identity.
    pub standby_domain: String,
    pub address: String,
    pub disks: Vec<FailbackDisk>,
}

/// The JSON report for runbooks (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailbackReport {
    pub env: String,
    pub standby: String,
    /// Always `failback`.
    pub mode: String,
    pub action: FailbackAction,
    /// The epoch ENV is home at (the switch's plus one).
    pub epoch: i64,
    /// The switch's epoch, ended.
    pub previous_epoch: i64,
    /// The two snapshots taken on SB (`failback-sync`, `failback-final`).
    pub snapshots: Vec<String>,
    /// ENV's snapshots whose images were carried home (those taken while
    /// SB served, the two above included).
    pub carried_snapshots: Vec<String>,
    /// Bytes copied into ENV's storage by the failback, in all; while SB
    /// still served; after it stopped.
    pub bytes_home: u64,
    pub bytes_while_serving: u64,
    pub bytes_after_stop: u64,
    /// Bytes of the images the home sync (`standby sync SB` while SB
    /// served) had carried before, taken as they were: not in `bytes_home`.
    /// Absent from the reports of an older envclone.
    #[serde(default)]
    pub bytes_home_before: u64,
    /// From SB's stop until every agent of ENV answered.
    pub downtime_ms: u64,
    /// What became of the autostart of ENV's domains.
    pub autostart: String,
    pub vms: Vec<FailbackVm>,
    /// SB's files removed once carried home.
    pub removed: Vec<PathBuf>,
    pub started_at: DateTime<Utc>,
    pub steps: Vec<StepTime>,
    pub duration_ms: u64,
}

/// What a failback row keeps besides its report: SB's files to remove,
/// which a second run removes if a crash left them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FailbackResources {
    leftovers: Vec<PathBuf>,
    /// The networks SB served on at its own addresses (a readdressed switch).
    #[serde(default)]
    networks: Vec<String>,
}

/// What the report says of the autostart of ENV's domains.
fn autostart_note(before: &BTreeMap<String, Option<bool>>) -> String {
    let said = |on: bool| if on { "on" } else { "off" };
    let known: Vec<String> =
        before.iter().filter_map(|(domain, on)| on.map(|on| format!("{domain} {}", said(on)))).collect();
    let unknown: Vec<&str> = before.iter().filter(|(_, on)| on.is_none()).map(|(d, _)| d.as_str()).collect();
    let mut note = Vec::new();
    if !known.is_empty() {
        note.push(format!("as before the failover: {}", known.join(", ")));
    }
    if !unknown.is_empty() {
        note.push(format!(
            "left off for {}: the fence did not record what it was; `virsh autostart DOMAIN` if it was on",
            unknown.join(", ")
        ));
    }
    note.join("; ")
}

fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> FailoverError {
    move |e| FailoverError::Catalog(crate::catalog::CatalogError::Corrupt { what, detail: e.to_string() })
}

/// Fails ENV back from its standby; see the module documentation.
pub fn failback(
    ctx: &OpContext<'_>,
    request: &DrillRequest,
    tools: Tools<'_>,
) -> Result<FailbackReport, FailoverError> {
    let started = Instant::now();
    let started_at = ctx.clock.now();
    let env = request.env.as_str();
    let primary = ctx.config.environment(env)?.clone();
    let Some(switch) = ctx.catalog.switch_in_force(env)? else {
        return already_home(ctx, request, tools);
    };
    let previous_epoch = switch.epoch.unwrap_or(0);
    if switch.state != "active" {
        return Err(FailoverError::FailbackInterrupted { env: env.to_owned(), epoch: previous_epoch });
    }
    if let Some(named) = request.standby.as_ref().filter(|n| **n != switch.standby) {
        return Err(FailoverError::UnknownStandby {
            env: env.to_owned(),
            standby: named.clone(),
            known: vec![switch.standby.clone()],
        });
    }
    let standby =
        ctx.catalog.standby_named(&switch.standby)?.ok_or_else(|| FailoverError::NoStandby { env: env.to_owned() })?;
    preflight(ctx, env, &primary, &switch)?;
    let (active, _) =
        super::active_environment(ctx.catalog, env)?.ok_or_else(|| FailoverError::NoSwitch { env: env.to_owned() })?;
    let mut active_config = ctx.config.clone();
    active_config.environments.insert(env.to_owned(), active);
    let active_ctx = OpContext { config: &active_config, ..*ctx };
    let epoch = ctx.catalog.last_epoch(env)? + 1;
    let _standby_lock = EnvLock::acquire(&ctx.config.controller.state_dir, &standby.name, "failback")?;

    ctx.note(format!("failback of {env} from standby {} (epoch {previous_epoch}) to epoch {epoch}", standby.name));
    let mut run = Run::new(ctx, tools, env, started)?;
    run.points = "failback";
    let done = match carry_and_switch(&mut run, &active_ctx, &standby, &primary, &switch) {
        Ok(done) => done,
        Err(error) => return Err(run.roll_back(error)),
    };
    let mut report = FailbackReport {
        env: env.to_owned(),
        standby: standby.name.clone(),
        mode: "failback".into(),
        action: FailbackAction::FailedBack,
        epoch,
        previous_epoch,
        snapshots: done.snapshots,
        carried_snapshots: done.carried_snapshots,
        bytes_home: done.bytes_while_serving + done.bytes_after_stop,
        bytes_while_serving: done.bytes_while_serving,
        bytes_after_stop: done.bytes_after_stop,
        bytes_home_before: done.bytes_home_before,
        downtime_ms: millis(done.downtime),
        autostart: autostart_note(&done.autostart),
        vms: done.vms,
        removed: Vec::new(),
        started_at,
        steps: Vec::new(),
        duration_ms: 0,
    };
    let leftovers: Vec<PathBuf> = done.carried.iter().map(|image| image.from.clone()).collect();
    let networks = done.readdressed.map(|r| r.networks.into_iter().map(|n| n.name).collect()).unwrap_or_default();
    let resources = FailbackResources { leftovers: leftovers.clone(), networks };
    let recorded =
        run.step(&format!("record epoch {epoch}: {env} home"), undo::unrecord(switch.id, env, epoch), |run| {
            let mut stored = report.clone();
            stored.steps = run.steps.clone();
            stored.duration_ms = millis(run.started.elapsed());
            let row = NewFailover {
                env: env.to_owned(),
                standby: standby.name.clone(),
                mode: "failback".into(),
                epoch: Some(epoch),
                state: "ended".into(),
                started_at,
                environment: serde_json::to_value(&primary).unwrap_or_default(),
                resources: serde_json::to_value(&resources).unwrap_or_default(),
                report: serde_json::to_value(&stored).unwrap_or_default(),
            };
            Ok(run.ctx.catalog.record_failback(switch.id, &row, run.ctx.clock.now())?)
        });
    if let Err(error) = recorded {
        return Err(run.roll_back(error));
    }
    // Recorded: ENV is home. What follows only tidies SB's storage, and a
    // second run finishes it if this one dies.
    for path in &leftovers {
        let removed = run.step(
            &format!("remove {} from {}'s storage", path.display(), standby.name),
            UndoAction::Nothing,
            |run| remove_leftover(run.ctx, run.tools, path),
        )?;
        if removed {
            report.removed.push(path.clone());
        }
    }
    for network in &resources.networks {
        run.step(&format!("remove {}'s network {network}", standby.name), UndoAction::Nothing, |run| {
            remove_network(run.ctx, network)
        })?;
    }
    // Only now: a domain of ENV that autostarts while the failback could
    // still roll back would be a second live copy after a host reboot. Not
    // repeated by a second run: by then it is the operator's setting.
    let on = done.autostart.iter().filter(|(_, on)| **on == Some(true)).map(|(domain, _)| domain);
    for domain in on {
        run.step(&format!("autostart {domain} on again, as before the failover"), UndoAction::Nothing, |run| {
            autostart_on(run.ctx, domain)
        })?;
    }
    run.complete()?;
    report.steps = std::mem::take(&mut run.steps);
    report.duration_ms = millis(started.elapsed());
    Ok(report)
}

/// Removes a file SB's chain had and the catalog now knows at home;
/// true if it was there. One the catalog still knows is kept.
fn remove_leftover(ctx: &OpContext<'_>, tools: Tools<'_>, path: &std::path::Path) -> Result<bool, FailoverError> {
    if ctx.catalog.image_by_path(path)?.is_some() || !tools.home.exists(path) {
        return Ok(false);
    }
    tools
        .home
        .remove(path)
        .map(|()| true)
        .map_err(|e| FailoverError::Remove { what: path.display().to_string(), detail: crate::error::chain(&e) })
}

fn autostart_on(ctx: &OpContext<'_>, domain: &str) -> Result<(), FailoverError> {
    ctx.hv
        .set_autostart(domain, true)
        .map_err(|e| FailoverError::Autostart { domain: domain.to_owned(), source: Box::new(e) })
}

/// One of the networks SB served on at its own addresses; gone is done.
fn remove_network(ctx: &OpContext<'_>, network: &str) -> Result<(), FailoverError> {
    crate::ops::clone::undo::remove_network(ctx.hv, network)
        .map_err(|detail| FailoverError::Remove { what: format!("network {network}"), detail })
}

/// No switch in force: home already (a failback recorded last), or never
/// failed over.
fn already_home(
    ctx: &OpContext<'_>,
    request: &DrillRequest,
    tools: Tools<'_>,
) -> Result<FailbackReport, FailoverError> {
    let env = request.env.as_str();
    let last = match ctx.catalog.last_failover(env)? {
        Some(last) if last.mode == "failback" => last,
        _ => return Err(FailoverError::NoSwitch { env: env.to_owned() }),
    };
    let mut report: FailbackReport =
        serde_json::from_value(last.report).map_err(corrupt("read a failback's report"))?;
    let resources: FailbackResources =
        serde_json::from_value(last.resources).map_err(corrupt("read what a failback left"))?;
    report.action = FailbackAction::AlreadyHome;
    report.removed.clear();
    for path in &resources.leftovers {
        if remove_leftover(ctx, tools, path)? {
            report.removed.push(path.clone());
        }
    }
    for network in &resources.networks {
        remove_network(ctx, network)?;
    }

    ctx.note(format!("{env} is home, epoch {}: nothing to do", report.epoch));
    Ok(report)
}

/// Refusals before anything is done: a drill of another standby of ENV,
/// a primary on another host, a primary domain that runs.
fn preflight(
    ctx: &OpContext<'_>,
    env: &str,
    primary: &Environment,
    switch: &FailoverRecord,
) -> Result<(), FailoverError> {
    for other in ctx.catalog.standbys(Some(env))? {
        if let Some(open) = ctx.catalog.open_failover(&other.name)? {
            if open.mode == "test" {
                return Err(FailoverError::FailbackDrillRunning { env: env.to_owned(), standby: other.name });
            }
        }
    }
    let resources = super::fence::switch_resources(switch);
    if let Some(uri) = resources.primary_uri.filter(|uri| *uri != ctx.config.controller.libvirt_uri) {
        return Err(FailoverError::Unsupported {
            what: format!("failback to a primary on another host ({uri}); bring its disks and domains here first"),
        });
    }
    for vm in primary.vms.values() {
        let found = super::inspect(ctx, &vm.domain)?;
        if found.state.is_active() {
            return Err(FailoverError::PrimaryRunning { env: env.to_owned(), domain: vm.domain.clone() });
        }
    }
    Ok(())
}

/// What steps 1 to 10 did.
struct Done {
    snapshots: Vec<String>,
    carried_snapshots: Vec<String>,
    carried: Vec<CarryImage>,
    bytes_while_serving: u64,
    bytes_after_stop: u64,
    bytes_home_before: u64,
    downtime: Duration,
    vms: Vec<FailbackVm>,
    readdressed: Option<super::Readdressed>,
    /// Each domain of ENV: its autostart before the fence, if recorded.
    autostart: BTreeMap<String, Option<bool>>,
}

/// One disk of SB as carried so far.
#[derive(Debug, Default)]
struct DiskCarry {
    /// Carried, lowest first.
    images: Vec<CarryImage>,
    bytes: u64,
    /// Of the images, the bytes the home sync had carried already.
    home_before: u64,
    /// SB's live image of the disk when last looked at.
    standby_top: PathBuf,
}

type Carried = BTreeMap<(String, String), DiskCarry>;

/// Steps 1 to 10 of the module documentation.
fn carry_and_switch(
    run: &mut Run<'_, '_>,
    active_ctx: &OpContext<'_>,
    standby: &StandbyRecord,
    primary: &Environment,
    switch: &FailoverRecord,
) -> Result<Done, FailoverError> {
    let ctx = run.ctx;
    let env = standby.primary.as_str();
    let state_dir = &ctx.config.controller.state_dir;
    // (a) The copies home will hang on ENV's images of SB's point: pinned
    // by SB (its restored point) until the catalog records them as their
    // backing. SB pins them already; pinning again says so and is harmless.
    let point = standby.snapshot.clone().unwrap_or_default();
    run.step(&format!("pin {env}'s images of {point} for {}", standby.name), UndoAction::Nothing, |run| {
        let dependent = Dependent::standby_named(&standby.name);
        for disk in &standby.disks {
            let image = disk.source_image.ok_or_else(|| FailoverError::NotSynced { standby: standby.name.clone() })?;
            run.ctx.catalog.pin(image, &dependent)?;
        }
        Ok(())
    })?;
    let mut snapshots = vec![snapshot(run, active_ctx, env, &standby.name, "failback-sync")?];

    let mut carried = Carried::new();
    let bytes_while_serving = {
        // ENV's lock: no delete merges what is read, no snapshot adds to it.
        let _lock = EnvLock::acquire(state_dir, env, "failback (carry home)")?;
        carry(run, standby, primary, &mut carried, false)?
    };
    snapshots.push(snapshot(run, active_ctx, env, &standby.name, "failback-final")?);
    let _lock = EnvLock::acquire(state_dir, env, "failback (switch)")?;

    let stopped = Instant::now();
    let domains: Vec<String> = standby.resources.domains.iter().map(|d| d.domain.clone()).collect();
    // In parallel: each stop is seconds of QEMU teardown, all of it downtime.
    run.step(&format!("stop {}", domains.join(", ")), undo::restart(&domains), |run| {
        let hv = run.ctx.hv;
        let results = crate::ops::parallel::each(&domains, |domain| {
            hv.destroy_domain(domain).map_err(|e| FailoverError::Stop { domain: domain.clone(), source: Box::new(e) })
        });
        results.into_iter().try_for_each(|result| result.unwrap_or(Err(FailoverError::Panicked)))
    })?;
    let bytes_after_stop = carry(run, standby, primary, &mut carried, true)?;
    let mut vms = verify(run, standby, primary, &carried)?;

    run.step(&format!("mark epoch {} failing back", switch.epoch.unwrap_or(0)), undo::unmark(switch.id), |run| {
        run.ctx.catalog.set_switch_state(switch.id, "active", "failing-back").map(drop).map_err(FailoverError::from)
    })?;
    let moves: Vec<ImageMove> = carried.values().flat_map(|d| d.images.iter().map(CarryImage::moved)).collect();
    // The undo needs what each image was: read before the step records it.
    let mut previous = Vec::with_capacity(moves.len());
    let mut carried_snapshots = BTreeSet::new();
    for moved in &moves {
        let image = ctx.catalog.image(moved.id)?;
        for dependent in ctx.catalog.dependents_of(image.id)? {
            if dependent.kind == DependentKind::Snapshot {
                let name = dependent.name.strip_prefix(&format!("{env}/")).unwrap_or(&dependent.name);
                carried_snapshots.insert(name.to_owned());
            }
        }
        previous.push(ImageMove { id: image.id, path: image.path, kind: image.kind, backing: image.backing });
    }
    run.step(&format!("record the {} images carried home", moves.len()), undo::unmove(&previous), |run| {
        run.ctx.catalog.move_images(&moves).map(drop).map_err(FailoverError::from)
    })?;

    let mut autostart = BTreeMap::new();
    for vm in &mut vms {
        let found = super::inspect(ctx, &vm.domain)?;
        let mut def = found.def.clone();
        let redefine = |e: HvError| FailoverError::Redefine { domain: vm.domain.clone(), source: Box::new(e) };
        for disk in &mut vm.disks {
            disk.superseded = found.def.disks().into_iter().find(|d| d.target == disk.disk).and_then(|d| d.source);
            def.set_disk_source(&disk.disk, &disk.home_top, ImageFormat::Qcow2.as_str()).map_err(redefine)?;
        }
        autostart.insert(vm.domain.clone(), found.def.fence_stamp().and_then(|stamp| stamp.autostart));
        def.clear_fence_stamp();
        run.step(&format!("give {} its disks at home, unfenced", vm.domain), undo::redefine(&found.def), |run| {
            run.ctx.hv.define_domain(&def).map(drop).map_err(redefine)
        })?;
    }
    super::drill::start_domains(run, vms.iter().map(|vm| vm.domain.as_str()))?;
    wait_for_agents(run, &format!("wait for {env}'s agents at its addresses"), primary)?;
    // SB served at its own addresses: ENV's guests came home with SB's
    // host names and connection strings, and serve only once they are theirs.
    let readdressed = switch_report(switch)?.readdressed;
    if let Some(readdressed) = &readdressed {
        super::readdress::give_back(run, primary, readdressed)?;
    }
    let downtime = stopped.elapsed();

    own_identity(run, standby, readdressed.as_ref())?;
    Ok(Done {
        snapshots,
        carried_snapshots: carried_snapshots.into_iter().collect(),
        bytes_home_before: carried.values().map(|d| d.home_before).sum(),
        carried: carried.into_values().flat_map(|d| d.images).collect(),
        bytes_while_serving,
        bytes_after_stop,
        downtime,
        vms,
        readdressed,
        autostart,
    })
}

/// An app-consistent snapshot of ENV on its active side (SB's domains),
/// labelled `label`; its own journal, under ENV's lock.
fn snapshot(
    run: &mut Run<'_, '_>,
    active_ctx: &OpContext<'_>,
    env: &str,
    standby: &str,
    label: &'static str,
) -> Result<String, FailoverError> {
    let request = SnapshotRequest {
        env: env.to_owned(),
        label: Some(label.to_owned()),
        memory: false,
        quiesce: None,
        schedule: None,
    };
    run.step(&format!("snapshot {label} of {env} on {standby}"), UndoAction::Nothing, |run| {
        crate::ops::snapshot::take(active_ctx, &request, run.tools.quiescer)
            .map(|taken| taken.name)
            .map_err(|e| FailoverError::FailbackSnapshot { env: env.to_owned(), label, source: Box::new(e) })
    })
}

/// Carries home every image of SB's chains not carried yet: the read-only
/// ones while SB serves (`stopped` false), all that is left once SB is
/// stopped. An image the home sync carried already, from a source that did
/// not change since, is taken as it is: not copied again, and with no undo
/// (a failback rolled back leaves the home sync's copies for the next).
/// Returns the bytes copied.
fn carry(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
    carried: &mut Carried,
    stopped: bool,
) -> Result<u64, FailoverError> {
    let ctx = run.ctx;
    let home_copies = match ctx.catalog.switch_in_force(&standby.primary)? {
        Some(switch) => super::fence::switch_resources(&switch).home,
        None => Vec::new(),
    };
    let mut total = 0;
    for domain in &standby.resources.domains {
        for disk in standby.disks.iter().filter(|d| d.vm == domain.vm) {
            let top = live_top(ctx, &domain.domain, &disk.disk)?;
            let home_dir = primary.storage_dir(&ctx.config.controller, &standby.primary).join(&disk.vm);
            let plan = plan_disk(ctx, standby, disk, &top, &home_dir)?;
            let entry = carried.entry((disk.vm.clone(), disk.disk.clone())).or_default();
            entry.standby_top = top.clone();
            for image in plan {
                // The live overlay is still written while SB serves.
                if entry.images.iter().any(|c| c.id == image.id) || (!stopped && image.from == top) {
                    continue;
                }
                let home = run.tools.home;
                if let Some(copy) = home_copies.iter().find(|c| c.image == image.id && c.still_valid(&image, home)) {
                    entry.home_before += copy.bytes;
                    entry.images.push(image);
                    continue;
                }
                let undo = UndoAction::DeleteFile { path: image.to.clone() };
                let bytes = run.step(&carry_step(&disk.vm, &disk.disk, &image), undo, |run| {
                    carry_image(run.tools.home, &disk.vm, &disk.disk, &image)
                })?;
                entry.images.push(image);
                entry.bytes += bytes;
                total += bytes;
            }
        }
    }
    Ok(total)
}

/// Step 6: every disk's chain at home reads like SB's, checked before
/// anything switches; returns ENV's VMs with their disks at home.
fn verify(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
    carried: &Carried,
) -> Result<Vec<FailbackVm>, FailoverError> {
    let mut vms = Vec::new();
    for domain in &standby.resources.domains {
        let vm = domain.vm.as_str();
        let mut disks = Vec::new();
        for ((_, disk), carry) in carried.iter().filter(|((v, _), _)| v == vm) {
            let (Some(lowest), Some(top)) = (carry.images.first(), carry.images.last()) else { continue };
            let (standby_top, home_top) = (carry.standby_top.clone(), top.to.clone());
            run.step(&format!("compare {vm}/{disk}"), UndoAction::Nothing, |run| {
                let compared = run.tools.home.same_content(&standby_top, &home_top);
                match compared {
                    Ok(true) if top.from == standby_top => Ok(()),
                    Ok(_) => Err(FailoverError::CompareFailed {
                        vm: vm.to_owned(),
                        disk: disk.clone(),
                        standby: standby_top.clone(),
                        home: home_top.clone(),
                    }),
                    Err(source) => Err(FailoverError::Carry {
                        vm: vm.to_owned(),
                        disk: disk.clone(),
                        step: "compare",
                        path: home_top.clone(),
                        source: Box::new(source),
                    }),
                }
            })?;
            disks.push(FailbackDisk {
                disk: disk.clone(),
                home_top,
                carried: carry.images.iter().map(|c| c.to.clone()).collect(),
                point: lowest.backing_path.clone(),
                bytes: carry.bytes,
                superseded: None,
            });
        }
        vms.push(FailbackVm {
            vm: vm.to_owned(),
            domain: primary.vms.get(vm).map(|v| v.domain.clone()).unwrap_or_else(|| domain.primary_domain.clone()),
            standby_domain: domain.domain.clone(),
            address: primary.vms.get(vm).map(|v| v.agent.address.clone()).unwrap_or_default(),
            disks,
        });
    }
    Ok(vms)
}

/// Step 10: each SB domain back to its own MACs, isolated networks and
/// synced copy, shut off as it waited before the switch.
fn own_identity(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    readdressed: Option<&super::Readdressed>,
) -> Result<(), FailoverError> {
    let ctx = run.ctx;
    // The switch put SB's interfaces on the primary's networks, or on its
    // served ones: back on SB's copies.
    let mut networks: BTreeMap<String, String> =
        standby.resources.networks.iter().map(|n| (n.source.clone(), n.name.clone())).collect();
    for served in readdressed.map(|r| r.networks.as_slice()).unwrap_or_default() {
        if let Some(isolated) = networks.get(&served.source).cloned() {
            networks.insert(served.name.clone(), isolated);
        }
    }
    for domain in &standby.resources.domains {
        let current = super::inspect(ctx, &domain.domain)?;
        let redefine = |e: HvError| FailoverError::Redefine { domain: domain.domain.clone(), source: Box::new(e) };
        let mut def = current.def.clone();
        for (index, iface) in current.def.interfaces().iter().enumerate() {
            if let Some(mac) = domain.macs.get(index).filter(|m| !m.is_empty()) {
                def.set_interface_mac(index, mac).map_err(redefine)?;
            }
            if let Some(network) = iface.network.as_ref().and_then(|n| networks.get(n)) {
                def.set_interface_network(index, network).map_err(redefine)?;
            }
        }
        for disk in standby.disks.iter().filter(|d| d.vm == domain.vm) {
            def.set_disk_source(&disk.disk, &disk.path, ImageFormat::Qcow2.as_str()).map_err(redefine)?;
        }
        let what = format!("give {} its own identity back: {}", domain.domain, domain.macs.join(", "));
        run.step(&what, undo::redefine(&current.def), |run| {
            run.ctx.hv.define_domain(&def).map(drop).map_err(redefine)
        })?;
    }
    Ok(())
}

/// The report of the switch failback ends (what SB took over with).
fn switch_report(switch: &FailoverRecord) -> Result<super::SwitchReport, FailoverError> {
    serde_json::from_value(switch.report.clone()).map_err(corrupt("read a failover's report"))
}
