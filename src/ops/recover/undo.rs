//! The undo executor: runs one journaled [`UndoAction`] in the `recover`
//! process. Every action is idempotent (it may run for a step that never
//! acted, or that was undone already) and errs on the side of keeping
//! data:
//!
//! - `thaw-agent`: `envclone-agent thaw` in the VM, then its status must
//!   show nothing frozen (a thaw that did not happen is an error, loudly).
//!   Not for a VM whose domain this rollback has just started (a restore's
//!   VM, booted again on its previous disks): a fresh boot holds no freeze,
//!   and its agent cannot answer before the guest is up; the checks wait
//!   for it (see [`Undoer::started`]).
//! - `resume-domain`: QMP `cont` if the domain is paused; nothing otherwise.
//! - `delete-file`: only a file nothing needs: never one a domain uses (as
//!   its disk or anywhere in its backing chain, as libvirt reports it live),
//!   never one the catalog refuses to delete (a base image, an image pinned
//!   by a snapshot, clone or standby, a parent of another image). Such a
//!   file is *kept*, and the step counts as undone: it is not garbage.
//! - `pivot-back`: a stopped domain's disk is pointed back at its former
//!   image; a running one is refused (switching a live disk back would
//!   throw away what the guest wrote since).
//! - `undefine-domain`: stops and undefines the domain the step defined.
//! - `fail-snapshot` and the custom `fail-snapshot-named`: the snapshot is
//!   marked failed if it is still in progress.
//!
//! - the custom kinds of other operations run through their owners'
//!   handlers: a restore's `restore-start-domain`, `restore-stop-domain`
//!   and `restore-redefine-disks` ([`crate::ops::restore::undo_action`]),
//!   a delete's `abort-block-job` ([`crate::ops::delete::undo`]).
//!
//! Custom kinds this build does not know (written by a newer envclone) are
//! never guessed at: [`unknown_kind`] finds them before anything runs and
//! the whole operation is left for the envclone that knows them.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::catalog::{CatalogError, ImageFormat, SnapshotId, SnapshotState, UndoAction};
use crate::error::chain as error_chain;
use crate::hypervisor::{DomainState, HvError, Hypervisor};
use crate::ops::clone::undo::{
    UNDO_DISTRUST_HOST_KEYS, UNDO_FORGET_CLONE, UNDO_REMOVE_LINK, UNDO_REMOVE_NETNS, UNDO_REMOVE_NETWORK,
};
use crate::ops::context::OpContext;
use crate::ops::delete::UNDO_ABORT_BLOCK_JOB;
use crate::ops::failover::undo::{
    UNDO_FORGET as UNDO_FAILOVER_FORGET, UNDO_REDEFINE, UNDO_RESTART, UNDO_UNFENCE, UNDO_UNMARK, UNDO_UNMOVE,
    UNDO_UNRECORD,
};
use crate::ops::restore::{UNDO_REDEFINE_DISKS, UNDO_START_DOMAIN, UNDO_STOP_DOMAIN};
use crate::ops::snapshot::UNDO_FAIL_SNAPSHOT_NAMED;
use crate::ops::standby::undo::{UNDO_DROP_COPY, UNDO_FINISH_SYNC, UNDO_FORGET, UNDO_RESTORE_PINS};

use crate::guest::agents::RecoveryAgents;

/// The custom undo kinds this build executes. A kind added by another
/// operation gets its handler in [`Undoer::custom`] and its name here.
pub const KNOWN_CUSTOM_KINDS: &[&str] = &[
    UNDO_FAIL_SNAPSHOT_NAMED,
    UNDO_START_DOMAIN,
    UNDO_STOP_DOMAIN,
    UNDO_REDEFINE_DISKS,
    UNDO_ABORT_BLOCK_JOB,
    UNDO_REMOVE_NETWORK,
    UNDO_REMOVE_NETNS,
    UNDO_REMOVE_LINK,
    UNDO_FORGET_CLONE,
    UNDO_DISTRUST_HOST_KEYS,
    UNDO_RESTORE_PINS,
    UNDO_DROP_COPY,
    UNDO_FINISH_SYNC,
    UNDO_FORGET,
    UNDO_FAILOVER_FORGET,
    UNDO_UNFENCE,
    UNDO_REDEFINE,
    UNDO_RESTART,
    UNDO_UNMARK,
    UNDO_UNMOVE,
    UNDO_UNRECORD,
];

/// The custom kind of `action` if this build does not know it.
pub fn unknown_kind(action: &UndoAction) -> Option<&str> {
    match action {
        UndoAction::Custom { kind, .. } if !KNOWN_CUSTOM_KINDS.contains(&kind.as_str()) => Some(kind),
        _ => None,
    }
}

/// What undoing `action` does, for the plan and the report.
pub fn describe(action: &UndoAction) -> String {
    match action {
        UndoAction::Nothing => "nothing to undo".into(),
        UndoAction::DeleteFile { path } => format!("delete {} unless something needs it", path.display()),
        UndoAction::ThawAgent { vm } => format!("thaw VM '{vm}' (envclone-agent thaw)"),
        UndoAction::ResumeDomain { domain } => format!("resume domain {domain} if it is paused"),
        UndoAction::PivotBack { domain, disk, image } => {
            format!("point disk {disk} of domain {domain} back at {}", image.display())
        }
        UndoAction::UndefineDomain { name } => format!("stop and undefine domain {name}"),
        UndoAction::FailSnapshot { snapshot } => format!("mark snapshot {snapshot} failed if still in progress"),
        UndoAction::Custom { kind, data } if kind == UNDO_FAIL_SNAPSHOT_NAMED => format!(
            "mark snapshot {}/{} failed if still in progress",
            data["env"].as_str().unwrap_or("?"),
            data["snapshot"].as_str().unwrap_or("?")
        ),
        UndoAction::Custom { kind, data } if kind == UNDO_START_DOMAIN => {
            format!("start domain {} unless it runs", data["domain"].as_str().unwrap_or("?"))
        }
        UndoAction::Custom { kind, data } if kind == UNDO_STOP_DOMAIN => {
            format!("stop domain {} if it runs", data["domain"].as_str().unwrap_or("?"))
        }
        UndoAction::Custom { kind, data } if kind == UNDO_REDEFINE_DISKS => {
            format!("point domain {}'s disks back at the images it used before", data["domain"].as_str().unwrap_or("?"))
        }
        UndoAction::Custom { kind, data } if kind == UNDO_ABORT_BLOCK_JOB => format!(
            "abort the block job on {}/{} if one runs",
            data["domain"].as_str().unwrap_or("?"),
            data["disk"].as_str().unwrap_or("?")
        ),
        UndoAction::Custom { kind, data } if kind == UNDO_REMOVE_NETWORK => {
            format!("remove the clone's network {}", data["network"].as_str().unwrap_or("?"))
        }
        UndoAction::Custom { kind, data } if kind == UNDO_REMOVE_NETNS => {
            format!("remove the clone's gateway namespace {}", data["netns"].as_str().unwrap_or("?"))
        }
        UndoAction::Custom { kind, data } if kind == UNDO_REMOVE_LINK => {
            format!("remove the clone's gateway link {}", data["link"].as_str().unwrap_or("?"))
        }
        UndoAction::Custom { kind, data } if kind == UNDO_FORGET_CLONE => {
            format!("forget clone {} and its overlays", data["clone"].as_str().unwrap_or("?"))
        }
        UndoAction::Custom { kind, data } if kind == UNDO_DISTRUST_HOST_KEYS => {
            let lines = data["lines"].as_array().map_or(0, Vec::len);
            format!(
                "remove the {lines} known_hosts line(s) it added from {}",
                data["known_hosts"].as_str().unwrap_or("?")
            )
        }
        UndoAction::Custom { kind, data } if crate::ops::standby::undo::KINDS.contains(&kind.as_str()) => {
            crate::ops::standby::undo::describe(kind, data)
        }
        UndoAction::Custom { kind, data } if crate::ops::failover::undo::KINDS.contains(&kind.as_str()) => {
            crate::ops::failover::undo::describe(kind, data)
        }
        UndoAction::Custom { kind, .. } => format!("'{kind}' (unknown to this envclone)"),
    }
}

/// How an undo ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undone {
    /// What it did (or found already done).
    Done(String),
    /// A file left in place because something needs it; why.
    Kept(String),
}

/// Runs undo actions of one environment's operations.
#[derive(Debug)]
pub struct Undoer<'a, 'c> {
    pub ctx: &'a OpContext<'c>,
    pub agents: &'a dyn RecoveryAgents,
    pub env: &'a str,
    /// Domains an undo started (they were shut off): their guests are
    /// booting. Their `thaw-agent` undos have nothing to thaw, and the
    /// checks wait for their agents.
    pub started: RefCell<BTreeSet<String>>,
}

impl<'a, 'c> Undoer<'a, 'c> {
    pub fn new(ctx: &'a OpContext<'c>, agents: &'a dyn RecoveryAgents, env: &'a str) -> Self {
        Undoer { ctx, agents, env, started: RefCell::default() }
    }
}

impl Undoer<'_, '_> {
    /// Runs `action`; an error says what is left undone.
    pub fn run(&self, action: &UndoAction) -> Result<Undone, String> {
        match action {
            UndoAction::Nothing => Ok(Undone::Done("nothing to undo".into())),
            UndoAction::ThawAgent { vm } => self.thaw(vm),
            UndoAction::ResumeDomain { domain } => resume_if_paused(self.ctx.host.hypervisor(), domain),
            UndoAction::DeleteFile { path } => self.delete_file(path),
            UndoAction::PivotBack { domain, disk, image } => {
                pivot_back(self.ctx.host.hypervisor(), domain, disk, image)
            }
            UndoAction::UndefineDomain { name } => undefine(self.ctx.host.hypervisor(), name),
            UndoAction::FailSnapshot { snapshot } => self.fail_snapshot(*snapshot),
            UndoAction::Custom { kind, data } => self.custom(kind, data),
        }
    }

    fn thaw(&self, vm: &str) -> Result<Undone, String> {
        let domain = self.ctx.config.environments.get(self.env).and_then(|env| env.vms.get(vm)).map(|v| &v.domain);
        if domain.is_some_and(|domain| self.started.borrow().contains(domain)) {
            return Ok(Undone::Done(format!("VM '{vm}' was booted by this rollback: a fresh boot holds no freeze")));
        }
        let thawed = self
            .agents
            .thaw(self.env, vm)
            .map_err(|e| format!("VM '{vm}': THAW FAILED, it may still be frozen: {}", error_chain(&e)))?;
        let state = self
            .agents
            .status(self.env, vm)
            .map_err(|e| format!("VM '{vm}': cannot confirm the thaw: {}", error_chain(&e)))?;
        if !state.frozen.is_empty() {
            return Err(format!("VM '{vm}': THAW FAILED, still frozen: {}", state.frozen.join(", ")));
        }
        Ok(Undone::Done(if thawed.is_empty() {
            format!("VM '{vm}' was not frozen")
        } else {
            format!("VM '{vm}' thawed ({})", thawed.join(", "))
        }))
    }

    fn delete_file(&self, path: &Path) -> Result<Undone, String> {
        let catalog = self.ctx.catalog;
        let record = catalog.image_by_path(path).map_err(|e| catalog_failure(path, &e))?;
        let exists = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => return Err(format!("{} is a directory: not deleting it", path.display())),
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
        };
        if exists {
            if let Some(user) = domain_using(self.ctx.host.hypervisor(), path)? {
                return Ok(Undone::Kept(format!("{} kept: {user} uses it", path.display())));
            }
        }
        if let Some(image) = &record {
            match catalog.can_delete(image.id).map_err(|e| catalog_failure(path, &e))? {
                Ok(()) => {
                    // The record first: a crash in between leaves an orphan file, never a dangling record.
                    catalog.remove_image(image.id).map_err(|e| catalog_failure(path, &e))?;
                }
                Err(refusal) => return Ok(Undone::Kept(format!("kept: {refusal}"))),
            }
        }
        if !exists {
            return Ok(Undone::Done(format!("{} is already gone", path.display())));
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(Undone::Done(format!("deleted {}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Undone::Done(format!("{} is already gone", path.display())))
            }
            Err(e) => Err(format!("cannot delete {}: {e}", path.display())),
        }
    }

    fn fail_snapshot(&self, snapshot: SnapshotId) -> Result<Undone, String> {
        match self.ctx.catalog.snapshot(snapshot) {
            Ok(found) => mark_failed(self.ctx.catalog, found),
            Err(CatalogError::NotFound { .. }) => Ok(Undone::Done(format!("snapshot {snapshot} was never recorded"))),
            Err(e) => Err(format!("cannot read snapshot {snapshot} in the catalog: {}", error_chain(&e))),
        }
    }

    fn custom(&self, kind: &str, data: &serde_json::Value) -> Result<Undone, String> {
        let action = || UndoAction::Custom { kind: kind.to_owned(), data: data.clone() };
        match kind {
            UNDO_START_DOMAIN => {
                let domain = data["domain"].as_str().unwrap_or_default();
                let was_active = self.ctx.host.hypervisor().domain(domain).is_ok_and(|found| found.state.is_active());
                crate::ops::restore::undo_action(self.ctx.host, self.ctx.catalog, &action())?;
                if was_active {
                    return Ok(Undone::Done(format!("domain {domain} runs already")));
                }
                self.started.borrow_mut().insert(domain.to_owned());
                Ok(Undone::Done(format!("domain {domain} started (booting)")))
            }
            UNDO_STOP_DOMAIN | UNDO_REDEFINE_DISKS => {
                crate::ops::restore::undo_action(self.ctx.host, self.ctx.catalog, &action())?;
                Ok(Undone::Done(describe(&action())))
            }
            UNDO_ABORT_BLOCK_JOB => {
                crate::ops::delete::undo(self.ctx.host.hypervisor(), &action())?;
                Ok(Undone::Done(describe(&action())))
            }
            UNDO_REMOVE_NETWORK
            | UNDO_REMOVE_NETNS
            | UNDO_REMOVE_LINK
            | UNDO_FORGET_CLONE
            | UNDO_DISTRUST_HOST_KEYS => {
                crate::ops::clone::undo::undo_action(self.ctx.host, self.ctx.catalog, &action())?;
                Ok(Undone::Done(describe(&action())))
            }
            UNDO_RESTORE_PINS | UNDO_DROP_COPY | UNDO_FINISH_SYNC | UNDO_FORGET => {
                crate::ops::standby::undo::undo_action(self.ctx, &action()).map(Undone::Done)
            }
            UNDO_FAILOVER_FORGET | UNDO_UNFENCE | UNDO_REDEFINE | UNDO_RESTART | UNDO_UNMARK | UNDO_UNMOVE
            | UNDO_UNRECORD => crate::ops::failover::undo::undo_own(self.ctx, kind, data).map(Undone::Done),
            UNDO_FAIL_SNAPSHOT_NAMED => {
                let (Some(env), Some(name)) = (data["env"].as_str(), data["snapshot"].as_str()) else {
                    return Err(format!("malformed '{kind}' undo (env and snapshot expected): {data}"));
                };
                match self.ctx.catalog.snapshot_named(env, name) {
                    Ok(Some(found)) => mark_failed(self.ctx.catalog, found),
                    Ok(None) => Ok(Undone::Done(format!("snapshot {env}/{name} was never recorded"))),
                    Err(e) => Err(format!("cannot read snapshot {env}/{name} in the catalog: {}", error_chain(&e))),
                }
            }
            // Refused before the rollback started (`unknown_kind`); never guessed at.
            other => Err(format!("undo '{other}' is unknown to this envclone; a newer envclone wrote it")),
        }
    }
}

fn catalog_failure(path: &Path, error: &CatalogError) -> String {
    format!("cannot check in the catalog whether {} is needed: {}", path.display(), error_chain(error))
}

fn mark_failed(catalog: &crate::catalog::Catalog, snapshot: crate::catalog::Snapshot) -> Result<Undone, String> {
    let name = format!("{}/{}", snapshot.env, snapshot.name);
    if snapshot.state != SnapshotState::InProgress {
        return Ok(Undone::Done(format!("snapshot {name} is {}: left as is", snapshot.state)));
    }
    catalog
        .set_snapshot_state(snapshot.id, SnapshotState::Failed)
        .map(|()| Undone::Done(format!("snapshot {name} marked failed")))
        .map_err(|e| format!("cannot mark snapshot {name} failed: {}", error_chain(&e)))
}

pub(super) fn resume_if_paused(hv: &dyn Hypervisor, domain: &str) -> Result<Undone, String> {
    let state = match hv.domain(domain) {
        Ok(found) => found.state,
        Err(HvError::NoSuchDomain { .. }) => return Ok(Undone::Done(format!("domain {domain} is gone"))),
        Err(e) => return Err(format!("cannot check whether domain {domain} is paused: {}", error_chain(&e))),
    };
    if state != DomainState::Paused {
        return Ok(Undone::Done(format!("domain {domain} is not paused ({})", state.name())));
    }
    crate::hypervisor::qmp(hv, domain, qapi::qmp::cont {})
        .map_err(|e| format!("domain {domain} stays PAUSED: {}", error_chain(&e)))?;
    Ok(Undone::Done(format!("domain {domain} resumed")))
}

fn pivot_back(hv: &dyn Hypervisor, domain: &str, disk: &str, image: &Path) -> Result<Undone, String> {
    let found = match hv.domain(domain) {
        Ok(found) => found,
        Err(HvError::NoSuchDomain { .. }) => return Ok(Undone::Done(format!("domain {domain} is gone"))),
        Err(e) => return Err(format!("cannot look up domain {domain}: {}", error_chain(&e))),
    };
    let Some(current) = found.def.disks().into_iter().find(|d| d.target == disk) else {
        return Err(format!("domain {domain} has no disk {disk}"));
    };
    if current.source.as_deref().is_some_and(|source| same_file(source, image)) {
        return Ok(Undone::Done(format!("disk {disk} of domain {domain} is on {} already", image.display())));
    }
    if found.state.is_active() {
        return Err(format!(
            "domain {domain} runs with disk {disk} on {}; envclone does not switch a running disk back to {} \
             (what the guest wrote since would be lost): shut the domain down and run `envclone recover` again",
            current.source.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "nothing".into()),
            image.display()
        ));
    }
    let format = image_format(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let mut def = found.def;
    def.set_disk_source(disk, image, format.as_str())
        .and_then(|()| hv.define_domain(&def).map(|_| ()))
        .map_err(|e| format!("cannot point disk {disk} of domain {domain} back: {}", error_chain(&e)))?;
    Ok(Undone::Done(format!("disk {disk} of domain {domain} points at {} again", image.display())))
}

fn undefine(hv: &dyn Hypervisor, name: &str) -> Result<Undone, String> {
    let found = match hv.domain(name) {
        Ok(found) => found,
        Err(HvError::NoSuchDomain { .. }) => return Ok(Undone::Done(format!("domain {name} is gone already"))),
        Err(e) => return Err(format!("cannot look up domain {name}: {}", error_chain(&e))),
    };
    if found.state.is_active() {
        hv.destroy_domain(name).map_err(|e| format!("cannot stop domain {name}: {}", error_chain(&e)))?;
    }
    match hv.undefine_domain(name) {
        Ok(()) | Err(HvError::NoSuchDomain { .. }) => Ok(Undone::Done(format!("domain {name} undefined"))),
        Err(e) => Err(format!("cannot undefine domain {name}: {}", error_chain(&e))),
    }
}

/// The domain (and disk) that uses `path` as its disk or anywhere in its
/// live backing chain, if any.
fn domain_using(hv: &dyn Hypervisor, path: &Path) -> Result<Option<String>, String> {
    let refuse = |e: HvError| format!("cannot check that no domain uses {}: {}", path.display(), error_chain(&e));
    for name in hv.domain_names().map_err(refuse)? {
        let domain = match hv.domain(&name) {
            Ok(domain) => domain,
            Err(HvError::NoSuchDomain { .. }) => continue,
            Err(e) => return Err(refuse(e)),
        };
        for disk in domain.def.disks() {
            let chain: Vec<&PathBuf> = disk.source.iter().chain(disk.backing.iter()).collect();
            if chain.iter().any(|image| same_file(image, path)) {
                return Ok(Some(format!("domain {name} (disk {})", disk.target)));
            }
        }
    }
    Ok(None)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b)
}

/// qcow2 by its magic, raw otherwise.
pub(super) fn image_format(path: &Path) -> io::Result<ImageFormat> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path)?;
    let read = file.read(&mut magic)?;
    Ok(if read == 4 && magic == *b"QFI\xfb" { ImageFormat::Qcow2 } else { ImageFormat::Raw })
}
