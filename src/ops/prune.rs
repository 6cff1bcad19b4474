//! `envclone prune ENV [--dry-run]`: applies retention to an environment
//! and deletes what it does not keep, through the same code as
//! `delete-snapshot` ([`super::delete`]), under one hold of the
//! environment's lock.
//!
//! What it considers, oldest first:
//!
//! - per schedule of the environment in the config, that schedule's
//!   complete snapshots, kept or not by its `retention`
//!   ([`crate::retention::select_to_keep`]), as the daemon does after each
//!   run;
//! - with `environments.ENV.retention` set, the manual snapshots (taken by
//!   no schedule), kept or not by that policy; unset, they are never
//!   touched;
//! - deletes left unfinished: a delete that was deferred (pins forbade it;
//!   it is tried again, and deferred again while they still do) or
//!   interrupted (the snapshot is deleted but still pins images);
//! - failed snapshots (they hold nothing but their catalog row).
//!
//! Snapshots of schedules no longer in the config are left alone. A delete
//! that fails is reported and the others still run. `--dry-run` plans each
//! delete (which images would go, what would defer it) and changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::context::OpContext;
use super::delete::{self, DeleteError, DeleteReport, DeleteSettings};
use super::EnvLock;
use crate::catalog::{Snapshot, SnapshotId, SnapshotState};
use crate::config::{Config, Retention};
use crate::retention::select_to_keep;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRequest {
    pub env: String,
    pub dry_run: bool,
}

/// What `prune` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub env: String,
    pub dry_run: bool,
    /// Kept by a retention policy, oldest first.
    pub kept: Vec<Kept>,
    /// What it deletes, oldest first, and why.
    pub candidates: Vec<Candidate>,
    pub deleted: Vec<String>,
    pub deferred: Vec<Deferred>,
    pub failed: Vec<Failed>,
    /// Each delete's own report.
    pub deletes: Vec<DeleteReport>,
    pub freed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub snapshot: String,
    /// The policy (`schedule NAME` or `environment`) and its rules that keep it.
    pub by: String,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub snapshot: String,
    pub why: String,
    /// With `dry_run`: why the delete would be deferred (empty: it would go).
    pub would_defer: Vec<String>,
    /// With `dry_run`: the files it would remove.
    pub would_remove: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deferred {
    pub snapshot: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failed {
    pub snapshot: String,
    pub error: String,
}

/// The snapshots `prune` deletes and those retention keeps: see the module
/// documentation. `unfinished` are the environment's unfinished deletes.
pub fn select(
    config: &Config,
    env: &str,
    snapshots: &[Snapshot],
    unfinished: &[SnapshotId],
    now: DateTime<Utc>,
) -> (Vec<(SnapshotId, String)>, Vec<Kept>) {
    let mut delete: BTreeMap<SnapshotId, String> = BTreeMap::new();
    let mut kept = Vec::new();
    let mut apply = |policy: &Retention, by: String, of: &dyn Fn(&Snapshot) -> bool| {
        let candidates: Vec<&Snapshot> =
            snapshots.iter().filter(|s| s.state == SnapshotState::Complete && of(s)).collect();
        let times: Vec<_> = candidates.iter().map(|s| (s.id, s.created_at)).collect();
        let plan = select_to_keep(&times, policy, now);
        for snapshot in &candidates {
            match plan.reasons.get(&snapshot.id) {
                Some(reasons) => kept.push(Kept {
                    snapshot: snapshot.name.clone(),
                    by: by.clone(),
                    rules: reasons.iter().map(|r| r.as_str().to_owned()).collect(),
                }),
                None => {
                    delete.entry(snapshot.id).or_insert_with(|| format!("not kept by the retention of {by}"));
                }
            }
        }
    };
    for (name, schedule) in config.schedules.iter().filter(|(_, s)| s.environment == env) {
        apply(&schedule.retention, format!("schedule {name}"), &|s| s.schedule.as_deref() == Some(name.as_str()));
    }
    if let Some(policy) = config.environments.get(env).and_then(|e| e.retention.as_ref()) {
        apply(policy, "environment".to_owned(), &|s| s.schedule.is_none());
    }
    for snapshot in snapshots {
        let why = if unfinished.contains(&snapshot.id) {
            if snapshot.state == SnapshotState::Deleted {
                "an unfinished delete"
            } else {
                "a delete asked for earlier and deferred"
            }
        } else if snapshot.state == SnapshotState::Failed {
            "a failed snapshot"
        } else {
            continue;
        };
        delete.entry(snapshot.id).or_insert_with(|| why.to_owned());
    }
    let mut order: Vec<&Snapshot> = snapshots.iter().filter(|s| delete.contains_key(&s.id)).collect();
    order.sort_by_key(|s| (s.created_at, s.id));
    let candidates = order.into_iter().map(|s| (s.id, delete[&s.id].clone())).collect();
    (candidates, kept)
}

/// Prunes `request.env`; see the module documentation.
pub fn prune(
    ctx: &OpContext<'_>,
    request: &PruneRequest,
    settings: &DeleteSettings,
) -> Result<PruneReport, DeleteError> {
    let env = ctx.config.environment(&request.env)?;
    let _lock = if request.dry_run {
        None
    } else {
        Some(EnvLock::acquire(&ctx.config.controller.state_dir, &request.env, "prune")?)
    };
    let snapshots = ctx.catalog.snapshots(&request.env)?;
    let unfinished = ctx.catalog.unfinished_deletes(&request.env)?;
    let (chosen, kept) = select(ctx.config, &request.env, &snapshots, &unfinished, ctx.clock.now());
    let mut report = PruneReport {
        env: request.env.clone(),
        dry_run: request.dry_run,
        kept,
        candidates: Vec::new(),
        deleted: Vec::new(),
        deferred: Vec::new(),
        failed: Vec::new(),
        deletes: Vec::new(),
        freed_bytes: 0,
    };
    for (id, why) in chosen {
        let snapshot = ctx.catalog.snapshot(id)?;
        let name = snapshot.name.clone();
        let mut candidate =
            Candidate { snapshot: name.clone(), why, would_defer: Vec::new(), would_remove: Vec::new() };
        if request.dry_run {
            match delete::preview(ctx, &request.env, env, snapshot) {
                Ok(preview) => {
                    candidate.would_defer = preview.deferred;
                    candidate.would_remove = preview.would_remove;
                }
                Err(error) => report.failed.push(Failed { snapshot: name, error: crate::error::chain(&error) }),
            }
            report.candidates.push(candidate);
            continue;
        }
        report.candidates.push(candidate);
        match delete::delete_locked(ctx, &request.env, env, snapshot, settings) {
            Ok(done) => {
                match &done.reason {
                    Some(reason) => report.deferred.push(Deferred { snapshot: name, reason: reason.clone() }),
                    None => report.deleted.push(name),
                }
                report.freed_bytes = report.freed_bytes.saturating_add(done.freed_bytes);
                report.deletes.push(done);
            }
            Err(error) => report.failed.push(Failed { snapshot: name, error: crate::error::chain(&error) }),
        }
    }
    Ok(report)
}
