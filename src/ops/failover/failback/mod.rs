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
//!
//! One file per phase under `failback/`, each handed the one before's
//! output: `serving.rs` (steps 0 to 3), `stopped.rs` (4 to 6), `switch.rs`
//! (7 to 10), `record.rs` (11 and 12).

mod record;
mod serving;
mod stopped;
mod switch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::carry::CarryImage;
use super::drill::{DrillRequest, Run, StepTime};
use super::{FailoverError, Tools};
use crate::catalog::{FailoverMode, FailoverRecord, FailoverState, StandbyRecord};
use crate::config::Environment;
use crate::ops::context::OpContext;
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
    pub mode: FailoverMode,
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
    if switch.state != FailoverState::Active {
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
    // ENV's active side: SB's domains, on SB's host.
    let active_ctx = OpContext { config: &active_config, host: ctx.host_named(Some(&standby.host))?, ..*ctx };
    let epoch = ctx.catalog.last_epoch(env)? + 1;
    let _standby_lock = EnvLock::acquire(&ctx.config.controller.state_dir, &standby.name, "failback")?;

    ctx.note(format!("failback of {env} from standby {} (epoch {previous_epoch}) to epoch {epoch}", standby.name));
    let mut run = Run::new(ctx, tools, env, started)?;
    run.points = "failback";
    let done = match carry_and_switch(&mut run, &active_ctx, &standby, &primary, &switch) {
        Ok(done) => done,
        Err(error) => return Err(run.roll_back(error)),
    };
    record::record(run, &standby, &primary, &switch, epoch, started_at, done)
}

/// Removes a file SB's chain had (on SB's host, `sb`) and the catalog now
/// knows at home; true if it was there. One the catalog still knows is kept.
fn remove_leftover(ctx: &OpContext<'_>, sb: &str, path: &std::path::Path) -> Result<bool, FailoverError> {
    let storage = ctx.host_named(Some(sb))?.storage();
    let fail = |e: crate::host::StorageError| FailoverError::Remove {
        what: path.display().to_string(),
        detail: crate::error::chain(&e),
    };
    if ctx.catalog.image_by_path(path)?.is_some() || !storage.exists(path).map_err(fail)? {
        return Ok(false);
    }
    storage.remove(path).map(|()| true).map_err(fail)
}

fn autostart_on(ctx: &OpContext<'_>, domain: &str) -> Result<(), FailoverError> {
    ctx.host
        .hypervisor()
        .set_autostart(domain, true)
        .map_err(|e| FailoverError::Autostart { domain: domain.to_owned(), source: Box::new(e) })
}

/// One of the networks SB served on at its own addresses (on SB's host,
/// `sb`); gone is done.
fn remove_network(ctx: &OpContext<'_>, sb: &str, network: &str) -> Result<(), FailoverError> {
    crate::ops::clone::undo::remove_network(ctx.host_named(Some(sb))?.hypervisor(), network)
        .map_err(|detail| FailoverError::Remove { what: format!("network {network}"), detail })
}

/// No switch in force: home already (a failback recorded last), or never
/// failed over.
fn already_home(
    ctx: &OpContext<'_>,
    request: &DrillRequest,
    _tools: Tools<'_>,
) -> Result<FailbackReport, FailoverError> {
    let env = request.env.as_str();
    let last = match ctx.catalog.last_failover(env)? {
        Some(last) if last.mode == FailoverMode::Failback => last,
        _ => return Err(FailoverError::NoSwitch { env: env.to_owned() }),
    };
    let mut report: FailbackReport =
        serde_json::from_value(last.report).map_err(corrupt("read a failback's report"))?;
    let resources: FailbackResources =
        serde_json::from_value(last.resources).map_err(corrupt("read what a failback left"))?;
    report.action = FailbackAction::AlreadyHome;
    report.removed.clear();
    let sb = ctx.catalog.standby_named(&last.standby)?.map_or_else(|| ctx.host.name().to_owned(), |s| s.host);
    for path in &resources.leftovers {
        if remove_leftover(ctx, &sb, path)? {
            report.removed.push(path.clone());
        }
    }
    for network in &resources.networks {
        remove_network(ctx, &sb, network)?;
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
            if open.mode == FailoverMode::Test {
                return Err(FailoverError::FailbackDrillRunning { env: env.to_owned(), standby: other.name });
            }
        }
    }
    let resources = super::fence::switch_resources(switch);
    // ENV's host (the context's) is where the failback brings it home.
    let here = ctx.config.libvirt_uri_of(ctx.host.name()).unwrap_or(&ctx.config.controller.libvirt_uri);
    if let Some(uri) = resources.primary_uri.filter(|uri| uri != here) {
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

/// Steps 0 to 10 of the module documentation, phase by phase.
fn carry_and_switch(
    run: &mut Run<'_, '_>,
    active_ctx: &OpContext<'_>,
    standby: &StandbyRecord,
    primary: &Environment,
    switch: &FailoverRecord,
) -> Result<Done, FailoverError> {
    let serving = serving::while_serving(run, active_ctx, standby, primary)?;
    let state_dir = &run.ctx.config.controller.state_dir;
    let _lock = EnvLock::acquire(state_dir, &standby.primary, "failback (switch)")?;
    let sb = active_ctx.host;
    let stopped = stopped::stop_and_carry(run, sb, standby, primary, serving)?;
    self::switch::switch(run, sb, standby, primary, switch, stopped)
}

/// The report of the switch failback ends (what SB took over with).
fn switch_report(switch: &FailoverRecord) -> Result<super::SwitchReport, FailoverError> {
    serde_json::from_value(switch.report.clone()).map_err(corrupt("read a failover's report"))
}
