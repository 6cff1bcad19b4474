//! Whatever the journal says, the environment as it is: every domain that
//! should run runs, no guest is left frozen, and the catalog knows the
//! image each disk writes to.
//!
//! - **Domain**: a domain an interrupted operation found running (every
//!   domain of a snapshot's environment, any domain it paused) and that is
//!   paused now is resumed; one that is shut off is a problem to report
//!   (envclone does not boot it behind the operator's back). A domain no
//!   recovered operation touched is only reported.
//! - **Agent** (for a running domain, unless the environment never
//!   quiesces): a guest with anything frozen is thawed (`envclone-agent
//!   thaw`) and checked again. No live operation can hold a freeze here:
//!   `recover` holds the environment's lock. A domain the rollback has just
//!   started (a restore's VM, booted again on its previous disks) is waited
//!   for first, up to [`BOOT_WITHIN`] (as long as a restore waits for its
//!   guests), until its agent answers; one that does not is reported.
//! - **Disks**: libvirt's live definition is the truth for what QEMU writes
//!   to. When the catalog does not know a disk's live image and it lies in
//!   the environment's snapshot storage (an overlay of an operation that
//!   died before recording it), the image and the part of its live backing
//!   chain the catalog lacks are recorded the way a snapshot records them:
//!   envclone's overlays as `overlay`, the first image outside the storage
//!   (the VM's own disk) as `base`. A disk on the VM's own image that no
//!   snapshot recorded yet is left to its first snapshot. A live image that
//!   the catalog records as the backing file of another image is a problem
//!   to report: nothing automatic can make that right.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{Catalog, CatalogError, ImageFormat, ImageId, ImageKind, NewImage};
use crate::config::{Environment, QuiescePolicy};
use crate::error::chain as error_chain;
use crate::hypervisor::{Disk, DomainState};
use crate::ops::context::OpContext;

use super::undo::{image_format, resume_if_paused, Undone};
use crate::guest::agents::RecoveryAgents;

/// One thing checked in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub vm: String,
    /// `domain demo-web`, `agent`, `disk vda`.
    pub subject: String,
    pub status: CheckStatus,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    /// As it should be.
    Ok,
    /// Was wrong; recover put it right (resumed, thawed).
    Fixed,
    /// The catalog lacked the live image; recover recorded it.
    Recorded,
    /// `--dry-run`: would be fixed or recorded.
    WouldFix,
    /// Worth knowing, not recover's to change (a domain paused by hand).
    Warning,
    /// Wrong and still wrong: recover exits 1.
    Problem,
}

impl CheckStatus {
    pub fn is_problem(self) -> bool {
        self == CheckStatus::Problem
    }
}

/// What the recovered operations say the environment should look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Domains that were running when an interrupted operation started.
    pub running: BTreeSet<String>,
    /// VMs an interrupted operation froze (or may have).
    pub thawed: BTreeSet<String>,
    /// Domains the rollback started: their guests are booting.
    pub booting: BTreeSet<String>,
}

/// How long a guest the rollback booted may take until its agent answers.
pub const BOOT_WITHIN: Duration = Duration::from_secs(240);
/// How often its agent is tried meanwhile.
const BOOT_POLL: Duration = Duration::from_millis(500);

/// Checks (and, unless `dry_run`, fixes) every VM of `env`.
pub fn check_env(
    ctx: &OpContext<'_>,
    agents: &dyn RecoveryAgents,
    env_name: &str,
    env: &Environment,
    expected: &Expected,
    dry_run: bool,
) -> Vec<Check> {
    let storage = env.storage_dir(ctx.config, env_name);
    let mut checks = Vec::new();
    for (vm, config) in &env.vms {
        let check =
            |subject: String, status: CheckStatus, detail: String| Check { vm: vm.clone(), subject, status, detail };
        let domain_subject = format!("domain {}", config.domain);
        let timer = ctx.begin(format!("check VM '{vm}'"));
        let domain = match ctx.host.hypervisor().domain(&config.domain) {
            Ok(domain) => domain,
            Err(e) => {
                let status =
                    if expected.running.contains(&config.domain) { CheckStatus::Problem } else { CheckStatus::Warning };
                checks.push(check(domain_subject, status, format!("cannot look it up: {}", error_chain(&e))));
                timer.failed();
                continue;
            }
        };
        let expect_running = expected.running.contains(&config.domain);
        let (status, detail, running) = match domain.state {
            DomainState::Running => (CheckStatus::Ok, "running".to_owned(), true),
            DomainState::Paused if !expect_running => {
                (CheckStatus::Warning, "paused, and no interrupted operation paused it: left as is".to_owned(), false)
            }
            DomainState::Paused if dry_run => {
                (CheckStatus::WouldFix, "paused by an interrupted operation: would resume it".to_owned(), false)
            }
            DomainState::Paused => match resume_if_paused(ctx.host.hypervisor(), &config.domain) {
                Ok(Undone::Done(what) | Undone::Kept(what)) => (CheckStatus::Fixed, what, true),
                Err(e) => (CheckStatus::Problem, e, false),
            },
            other if expect_running => (
                CheckStatus::Problem,
                format!(
                    "{}, but it ran when the interrupted operation started: start it (`virsh start {}`) once \
                     you know why it stopped",
                    other.name(),
                    config.domain
                ),
                false,
            ),
            other => (CheckStatus::Warning, other.name().to_owned(), false),
        };
        checks.push(check(domain_subject, status, detail));

        let quiesces = env.quiesce != QuiescePolicy::Off || expected.thawed.contains(vm);
        let booting = running && expected.booting.contains(&config.domain);
        if booting {
            if let Err(detail) = wait_for_boot(agents, env_name, vm) {
                checks.push(check("agent".into(), CheckStatus::Warning, detail));
            } else if quiesces {
                // A fresh boot holds no freeze, whatever the journal says.
                let (status, detail) = check_agent(agents, env_name, vm, false, dry_run);
                checks.push(check("agent".into(), status, format!("booted by the rollback; {detail}")));
            } else {
                checks.push(check("agent".into(), CheckStatus::Ok, "booted by the rollback; answers".into()));
            }
        } else if running && quiesces {
            let (status, detail) = check_agent(agents, env_name, vm, expected.thawed.contains(vm), dry_run);
            checks.push(check("agent".into(), status, detail));
        }

        for disk in domain.def.disks() {
            if disk.device != "disk" || disk.readonly || disk.source.is_none() {
                continue;
            }
            let (status, detail) = check_disk(ctx.catalog, vm, &disk, &storage, ctx.clock.now(), dry_run);
            checks.push(check(format!("disk {}", disk.target), status, detail));
        }
        if checks.iter().any(|c| c.vm == *vm && c.status.is_problem()) {
            timer.failed();
        } else {
            timer.done();
        }
    }
    checks
}

/// Waits until the agent of `vm` (booting) answers; an error says it did not.
fn wait_for_boot(agents: &dyn RecoveryAgents, env: &str, vm: &str) -> Result<(), String> {
    crate::wait::until(&format!("the agent of {vm}"), BOOT_WITHIN, BOOT_POLL, || agents.status(env, vm).map(Some))
        .map(|_| ())
        .map_err(|e| {
            let crate::wait::WaitError::Timeout { waited, last, .. } = e;
            let why = last.map(|e| format!(": {}", error_chain(&e))).unwrap_or_default();
            format!("booted by the rollback, but its agent did not answer within {} s{why}", waited.as_secs())
        })
}

fn check_agent(agents: &dyn RecoveryAgents, env: &str, vm: &str, froze: bool, dry_run: bool) -> (CheckStatus, String) {
    let unreachable = if froze { CheckStatus::Problem } else { CheckStatus::Warning };
    let state = match agents.status(env, vm) {
        Ok(state) => state,
        Err(e) => return (unreachable, format!("cannot tell whether it is frozen: {}", error_chain(&e))),
    };
    if !state.needs_thaw() {
        return (CheckStatus::Ok, "not frozen".into());
    }
    let what = if state.frozen.is_empty() {
        "a freeze holder at work, nothing frozen yet".to_owned()
    } else {
        format!("frozen: {}", state.frozen.join(", "))
    };
    if dry_run {
        return (CheckStatus::WouldFix, format!("{what}; would thaw it"));
    }
    if let Err(e) = agents.thaw(env, vm) {
        return (CheckStatus::Problem, format!("{what}; THAW FAILED: {}", error_chain(&e)));
    }
    match agents.status(env, vm) {
        Ok(after) if after.frozen.is_empty() => (CheckStatus::Fixed, format!("was {what}; thawed")),
        Ok(after) => (CheckStatus::Problem, format!("THAW FAILED: still frozen: {}", after.frozen.join(", "))),
        Err(e) => (CheckStatus::Problem, format!("was {what}; cannot confirm the thaw: {}", error_chain(&e))),
    }
}

fn check_disk(
    catalog: &Catalog,
    vm: &str,
    disk: &Disk,
    storage: &Path,
    now: DateTime<Utc>,
    dry_run: bool,
) -> (CheckStatus, String) {
    let Some(source) = disk.source.clone() else { return (CheckStatus::Ok, "no image".into()) };
    let shown = source.display();
    let failed = |e: CatalogError| (CheckStatus::Problem, format!("on {shown}; catalog: {}", error_chain(&e)));
    match catalog.image_by_path(&source) {
        Err(e) => failed(e),
        Ok(Some(image)) => {
            let children = match catalog.children_of(image.id) {
                Ok(children) => children,
                Err(e) => return failed(e),
            };
            if let Some(child) = children.first() {
                return (
                    CheckStatus::Problem,
                    format!(
                        "QEMU writes to {shown}, which the catalog records as the backing file of {}: that \
                         image no longer reads as it was; keep both and restore from a snapshot",
                        child.path.display()
                    ),
                );
            }
            let recorded_backing = match image.backing.map(|id| catalog.image(id)).transpose() {
                Ok(backing) => backing.map(|b| b.path),
                Err(e) => return failed(e),
            };
            match (recorded_backing, disk.backing.first()) {
                (Some(recorded), Some(live)) if recorded != *live => (
                    CheckStatus::Warning,
                    format!(
                        "on {shown}; the catalog says it is backed by {}, libvirt by {}",
                        recorded.display(),
                        live.display()
                    ),
                ),
                _ => (CheckStatus::Ok, format!("on {shown}, as the catalog records it")),
            }
        }
        Ok(None) if !source.starts_with(storage) => {
            (CheckStatus::Ok, format!("on its own image {shown} (recorded by its first snapshot)"))
        }
        Ok(None) if dry_run => (
            CheckStatus::WouldFix,
            format!("on {shown}, which the catalog does not know: would record it (libvirt's live definition)"),
        ),
        Ok(None) => match record_live_chain(catalog, vm, disk, storage, now) {
            Ok(recorded) => (
                CheckStatus::Recorded,
                format!(
                    "on {shown}, which the catalog did not know: recorded {} (libvirt's live definition is \
                     what QEMU writes to)",
                    recorded.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" <- ")
                ),
            ),
            Err(e) => failed(e),
        },
    }
}

/// Records `disk`'s live image and the part of its live backing chain the
/// catalog lacks (see the module documentation); returns what it recorded,
/// top first.
pub fn record_live_chain(
    catalog: &Catalog,
    vm: &str,
    disk: &Disk,
    storage: &Path,
    now: DateTime<Utc>,
) -> Result<Vec<PathBuf>, CatalogError> {
    let chain: Vec<&PathBuf> = disk.source.iter().chain(disk.backing.iter()).collect();
    let mut overlays = Vec::new();
    let mut below: Option<ImageId> = None;
    let mut recorded = Vec::new();
    for (index, path) in chain.iter().enumerate() {
        if let Some(image) = catalog.image_by_path(path)? {
            below = Some(image.id);
            break;
        }
        if index > 0 && !path.starts_with(storage) {
            below = Some(catalog.add_image(&new_image(vm, disk, path, ImageKind::Base, None, now))?);
            recorded.push((*path).clone());
            break;
        }
        overlays.push(*path);
    }
    for path in overlays.iter().rev() {
        below = Some(catalog.add_image(&new_image(vm, disk, path, ImageKind::Overlay, below, now))?);
        recorded.push((*path).clone());
    }
    recorded.reverse();
    Ok(recorded)
}

fn new_image(
    vm: &str,
    disk: &Disk,
    path: &Path,
    kind: ImageKind,
    backing: Option<ImageId>,
    now: DateTime<Utc>,
) -> NewImage {
    let format = if disk.source.as_deref() == Some(path) {
        match disk.format.as_deref() {
            Some("qcow2") => ImageFormat::Qcow2,
            Some("raw") => ImageFormat::Raw,
            _ => image_format(path).unwrap_or(ImageFormat::Raw),
        }
    } else {
        image_format(path).unwrap_or(ImageFormat::Raw)
    };
    NewImage {
        path: path.to_owned(),
        vm: vm.to_owned(),
        disk: Some(disk.target.clone()),
        kind,
        format,
        size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        backing,
        snapshot: None,
        created_at: now,
    }
}
