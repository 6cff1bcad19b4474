//! Standby environments: `envclone standby create ENV --name SB`, `standby
//! sync SB`, `standby destroy SB` (issue #6, first slice: standbys kept
//! current by autorestore; failover comes later).
//!
//! A **standby** SB of an environment ENV (its *primary*) is a full,
//! independent copy of every VM disk of ENV on SB's own storage (one
//! standalone qcow2 file per disk, `<storage>/<vm>/<SB>.<disk>.qcow2`,
//! needing nothing of the primary's: that storage can later sit on another
//! host), with its domains `SB-<vm>` defined and shut off, on isolated
//! copies `SB-<net>` of the primary's networks (the clone's naming and
//! network code: [`crate::ops::clone::names`], [`NetworkDef::isolated`]).
//! The domains have new UUIDs and MACs while they wait; the primary's MACs
//! are recorded per interface (`StandbyDomain::primary_macs`) for failover
//! to take over.
//!
//! # Jobs (one file each)
//!
//! - `create.rs`: checks the name, defines the networks and domains,
//!   records the standby, then runs a first sync (a full copy) when ENV has
//!   a complete snapshot.
//! - `sync.rs`: brings SB to ENV's newest complete snapshot (what the
//!   daemon runs, as a child `envclone standby sync SB`, after each
//!   snapshot of ENV: *autorestore*).
//! - `transfer.rs`: the data path (copy, verify, merge) behind the
//!   host's storage ([`crate::host::Storage`]): `qemu-img` and SHA-256 there.
//! - `destroy.rs`: removes exactly what SB made.
//! - `undo.rs`: the undo of each journaled step (and the roll forward of
//!   an interrupted merge), run by a failing operation and by `envclone
//!   recover`.
//!
//! # How a sync transfers only what changed
//!
//! ENV's snapshots are external qcow2 overlays: snapshot N's image of a
//! disk is the read-only file the disk wrote to between snapshots N-1 and
//! N, backed by N-1's (see `ops::snapshot`). SB's record says, per disk,
//! which such image SB's copy reads like now. A sync to snapshot M walks
//! M's image down its backing chain in the catalog:
//!
//! - **incremental** when SB's image is in that chain: only the images
//!   above it (the overlays written since SB's point, usually one per
//!   snapshot) are copied into SB's storage, each checked by SHA-256
//!   against its source, then merged oldest first into SB's image (`qemu-img
//!   rebase -u` onto it, `qemu-img commit`), so SB's chain stays one
//!   image per disk;
//! - **full** otherwise (the first sync, or ENV's chain no longer passes
//!   through SB's point, e.g. after a restore of ENV to an older snapshot):
//!   what M reads is copied flattened (`qemu-img convert`, only allocated
//!   data) into a staged file, compared with M's chain (`qemu-img compare`),
//!   and renamed over SB's image.
//!
//! Bytes moved are recorded per sync (`standby_syncs`), and the SHA-256 of
//! the last file written per disk.
//!
//! # Pins: why a standby keeps its point alive
//!
//! Between syncs SB pins (`standby:SB`) the images it reads like: deleting
//! a snapshot merges images (`ops::delete`), and a merge into or from SB's
//! point would make the next incremental sync wrong. Pinned, such a delete
//! is *deferred* (retention tries again later), so at most the snapshot SB
//! is at and the one below it wait for SB's next sync. While a sync runs it
//! also pins every image it reads (taken under ENV's lock, so no delete is
//! half way through them), and the catalog moves the pins to the new point
//! in the transaction that records it.
//!
//! # Journal, crashes, idempotence
//!
//! Every step is journaled before it runs (operation kinds
//! `standby-create`, `standby-sync`, `standby-destroy`, on SB). A sync
//! fails back (copies deleted, pins restored) until its merge starts; from
//! then on SB's image reads like neither snapshot, so the merge step's
//! "undo" **finishes** it instead: merging the verified copies again is
//! idempotent (a partial commit is overwritten cluster by cluster), and
//! the record and pins follow. `envclone recover` runs exactly that for a
//! sync whose process died; `merging` in SB's record says one is pending,
//! and `standby sync` refuses to start until it is finished. The crash
//! points for the tests are `standby-sync:copy` (the first copy is
//! written), `standby-sync:verify` (every copy is verified, no merge yet)
//! and `standby-sync:merge` (the first disk is merged, not recorded).
//!
//! Running a command twice is harmless: `create` of an existing standby of
//! the same primary reports it, `sync` of a standby already at the newest
//! snapshot changes nothing, `destroy` of one that is gone is a no-op.

mod create;
mod destroy;
mod error;
mod sync;
#[cfg(test)]
mod tests;
pub mod undo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use self::create::{create, CreateReport, CreateRequest};
pub use self::destroy::{destroy, DestroyReport};
pub use self::error::StandbyError;
pub use self::sync::{sync, SyncMode, SyncReport};

use crate::hypervisor::NetworkDef;
use crate::ops::context::OpContext;

/// How long a sync waits for the primary's lock (a snapshot, or the delete
/// retention runs right after it) before it gives up as busy.
pub const PRIMARY_LOCK_WAIT: Duration = Duration::from_secs(600);

/// Where SB's own image of `disk` of `vm` lives.
pub fn image_path(storage: &Path, standby: &str, vm: &str, disk: &str) -> PathBuf {
    crate::ops::clone::names::overlay(storage, standby, vm, disk)
}

/// The staged full copy, renamed over the image once verified.
pub(crate) fn staged_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".sync");
    PathBuf::from(name)
}

/// The copy of the primary's overlay (catalog image `image`) for `disk` of `vm`.
pub(crate) fn overlay_copy_path(storage: &Path, standby: &str, vm: &str, disk: &str, image: i64) -> PathBuf {
    storage.join(vm).join(format!("{standby}.{disk}.from-{image}.qcow2"))
}

/// Where a full copy for `standby` is flattened on its primary's host
/// before it is shipped: next to the primary's snapshots of `vm`.
pub(crate) fn scratch_path(
    config: &crate::config::Config,
    primary: &str,
    standby: &str,
    vm: &str,
    disk: &str,
) -> PathBuf {
    let dir = config.environments.get(primary).map_or_else(
        || config.controller.state_dir.join("images").join(primary),
        |env| env.storage_dir(config, primary),
    );
    dir.join(vm).join(format!(".ship-{standby}.{disk}.qcow2"))
}

/// The default storage of standby `standby` on host `host`: `standbys/<SB>`
/// under that host's `storage` (the controller's `state_dir` for `local`).
pub fn default_storage(config: &crate::config::Config, host: &str, standby: &str) -> PathBuf {
    config.hosts.get(host).map_or(&config.controller.state_dir, |h| &h.storage).join("standbys").join(standby)
}

/// `ctx` on the host `standby` lives on: what every standby operation
/// changes is there (its primary is reached through `ctx.hosts`).
pub(crate) fn on_its_host<'c>(
    ctx: &OpContext<'c>,
    standby: &crate::catalog::StandbyRecord,
) -> Result<OpContext<'c>, StandbyError> {
    Ok(OpContext { host: ctx.host_named(Some(&standby.host))?, ..*ctx })
}

/// The host the primary of `standby` runs on.
pub(crate) fn primary_host<'c>(
    ctx: &OpContext<'c>,
    standby: &crate::catalog::StandbyRecord,
) -> Result<&'c dyn crate::host::Host, StandbyError> {
    Ok(ctx.host_named(Some(ctx.config.host_of(&standby.primary)))?)
}

/// A standby's lag: the age of its newest restored point, the RPO now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// The primary's snapshot SB was last brought to.
    pub snapshot: Option<String>,
    pub snapshot_created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds since that snapshot was taken; none before the first sync.
    pub lag_seconds: Option<i64>,
    /// The primary's newest complete snapshot, when SB is not at it.
    pub behind: Option<String>,
    /// What the next sync would ship (incrementally): the images the
    /// primary's disks read above SB's point, at their recorded sizes.
    pub pending_bytes: u64,
}

/// SB's lag at `now`.
pub fn lag(
    catalog: &crate::catalog::Catalog,
    standby: &crate::catalog::StandbyRecord,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Lag, crate::catalog::CatalogError> {
    let newest = catalog.live_snapshot(&standby.primary)?;
    let behind = newest.filter(|n| Some(&n.name) != standby.snapshot.as_ref());
    let pending_bytes = match &behind {
        Some(newest) => pending_bytes(catalog, standby, newest)?,
        None => 0,
    };
    let behind = behind.map(|n| n.name);
    Ok(Lag {
        pending_bytes,
        snapshot: standby.snapshot.clone(),
        snapshot_created_at: standby.snapshot_created_at,
        lag_seconds: standby.snapshot_created_at.map(|at| (now - at).num_seconds().max(0)),
        behind,
    })
}

/// The recorded sizes of the images each disk of `standby` reads in
/// `newest` above the image SB is at (all of its chain before a first sync).
fn pending_bytes(
    catalog: &crate::catalog::Catalog,
    standby: &crate::catalog::StandbyRecord,
    newest: &crate::catalog::Snapshot,
) -> Result<u64, crate::catalog::CatalogError> {
    let pinned = catalog.images_needed_by(&crate::ops::snapshot::snapshot_dependent(&standby.primary, &newest.name))?;
    let mut bytes = 0;
    for disk in &standby.disks {
        let mut tops = pinned.iter().filter(|i| i.vm == disk.vm && i.disk.as_deref() == Some(disk.disk.as_str()));
        // The snapshot's image of the disk is the one no other of its images backs onto.
        let Some(top) = tops.find(|i| !pinned.iter().any(|o| o.backing == Some(i.id))) else { continue };
        for image in catalog.chain(top.id)? {
            if Some(image.id) == disk.source_image {
                break;
            }
            bytes += image.size_bytes;
        }
    }
    Ok(bytes)
}

/// An isolated copy of a network: a bridge without address or forward.
pub(crate) fn isolated_network(name: &str, bridge: &str) -> NetworkDef {
    NetworkDef::isolated(&crate::hypervisor::NetworkSpec { name: name.to_owned(), bridge: bridge.to_owned(), ip: None })
}

/// One standby as `standby list` and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbySummary {
    pub name: String,
    pub primary: String,
    /// The host it lives on.
    pub host: String,
    pub storage: PathBuf,
    pub autorestore: bool,
    /// The newest restored point, its time and age (the RPO now).
    #[serde(flatten)]
    pub lag: Lag,
    pub synced_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A sync stopped half way through its merge (`envclone recover` finishes it).
    pub merging: Option<String>,
    pub domains: Vec<String>,
    /// The newest transfer.
    pub last_sync: Option<crate::catalog::StandbySyncRecord>,
}

/// Every standby (of `primary` only, when given) at `now`.
pub fn summaries(
    catalog: &crate::catalog::Catalog,
    primary: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<StandbySummary>, crate::catalog::CatalogError> {
    let mut out = Vec::new();
    for standby in catalog.standbys(primary)? {
        out.push(StandbySummary {
            lag: lag(catalog, &standby, now)?,
            last_sync: catalog.standby_syncs(&standby.name, 1)?.into_iter().next(),
            name: standby.name,
            primary: standby.primary,
            host: standby.host,
            storage: standby.storage,
            autorestore: standby.autorestore,
            synced_at: standby.synced_at,
            merging: standby.merging,
            domains: standby.resources.domains.into_iter().map(|d| d.domain).collect(),
        });
    }
    Ok(out)
}
