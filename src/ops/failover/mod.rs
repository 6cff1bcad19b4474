//! `envclone failover ENV ...`: a standby SB of ENV (see
//! [`crate::ops::standby`]) takes over, or, with `--test`, proves it could
//! (issue #6).
//!
//! # Jobs (one file each)
//!
//! - `drill.rs`: `--test` (a DR drill: SB starts from its restored point on
//!   a throwaway overlay, in its isolated networks, reached through a
//!   gateway namespace; the primary untouched) and `--test --end`; the
//!   journaled, timed step runner (`Run`) every failover uses.
//! - `planned.rs`: `--planned` (a final snapshot, the primary fenced, SB
//!   brought to that snapshot, given the primary's MACs and networks and
//!   started); the take over and the record every role switch shares.
//! - `unplanned.rs`: the default, for a primary that is down (a healthy one
//!   is refused without `--force`): the primary fenced, or recorded
//!   `fenced-unconfirmed` when its libvirt does not answer; SB takes over
//!   from its restored point on fresh overlays (`SB.<disk>.epoch-N.qcow2`),
//!   so SB's copy stays that point and what SB writes is kept apart.
//! - `readdress.rs`: the takeover of a standby configured `network =
//!   "readdress"`: SB serves at addresses of its own on served networks
//!   from the primary's `[readdress] pool`, its agents having rewritten
//!   the connection strings (scanned clean before any link goes up); and
//!   the failback's part, giving the primary its names and strings back.
//! - `fence.rs`: fencing a domain (stopped, autostart off, the epoch
//!   stamped into its libvirt metadata) and the **guard** that keeps an
//!   old primary fenced while a switch is in force (run first by `status`,
//!   `snapshot` and `failover`, and on every daemon tick); `guard.rs`: how
//!   a command runs it (one at a time, connecting only to the primary
//!   hosts a switch in force names) and what it says about what it did.
//! - `failback.rs`: `envclone failback ENV` (SB's changes carried home
//!   while SB serves, SB stopped after a final snapshot, the remainder
//!   carried, the chains compared, ENV's domains started on them, SB given
//!   its own identity back, the next epoch recorded);
//!   `carry.rs`: which images go home, and where.
//! - `home_sync.rs`: `envclone standby sync SB` while SB serves: the
//!   images SB no longer writes carried home (and verified) ahead of
//!   failback, recorded in the switch's row; failback takes them as
//!   carried.
//! - `on_snapshot.rs`: a manual snapshot of ENV while a standby with
//!   `failback_on_manual_snapshot` serves it fails ENV back.
//! - `undo.rs`: the undo of each step.
//!
//! # Roles and epochs
//!
//! A role switch (planned or unplanned) is a `failovers` row in state
//! `active` with the next **epoch** of ENV (1 for its first). While it is
//! in force SB is ENV's active side: [`active_environment`] is how ENV is
//! reached then (SB's domains at ENV's addresses, snapshots on SB's
//! storage), which the commands use in place of ENV's config for
//! snapshots, schedules, restores and recoveries of ENV; `standby destroy
//! SB` is refused, and autorestore and `standby sync SB` run the other way:
//! towards ENV's storage (the home sync). The fence of
//! each primary domain and every return of an old primary are
//! `fence_events` rows; `status` shows them.
//!
//! Both kinds of switch run SB on epoch overlays over its synced copy, so
//! what SB writes while it serves is kept apart: failback carries it home
//! and records the next epoch as a `failback` row (ENV home; the switch
//! `ended`). While a failback runs, its switch is `failing-back`: the
//! guard leaves ENV's domains alone (the failback starts them).
//!
//! # Journal, crashes, idempotence
//!
//! Every step is journaled before it runs (operation kind `failover`, on SB
//! for a drill, on ENV for a switch), with its undo (`undo.rs`); a failure
//! undoes them newest first, and `envclone recover` does the same for a
//! failover whose process died, or completes it once its record step is
//! done ([`is_record_step`]). The crash points are `failover:STEP`, STEP
//! being any step's progress line (`failover:start sb-web`, `failover:record
//! the drill`). A drill that runs is reported, not started twice; ending
//! none is a no-op; a switch recorded is reported, not done twice. A fence
//! undone (a switch rolled back) starts the primary domain again only if it
//! ran before, and removes its stamp. The undo acts through the
//! controller's libvirt: a primary on another host (`--primary-uri`) is
//! unfenced by hand.

mod carry;
mod drill;
mod error;
mod failback;
pub mod fence;
pub mod guard;
mod home_sync;
pub mod on_snapshot;
mod planned;
mod readdress;
mod takeover;
#[cfg(test)]
mod tests;
pub mod undo;
mod unplanned;

pub use self::carry::{CarryImage, HomeCopy};
pub use self::drill::{
    end as end_drill, overlay_path, start as start_drill, DrillAction, DrillDisk, DrillReport, DrillRequest,
    DrillResources, DrillVm, StepTime, BOOT_WITHIN,
};
pub use self::error::FailoverError;
pub use self::failback::{failback, FailbackAction, FailbackDisk, FailbackReport, FailbackVm};
pub use self::fence::{guard, guard_uris, FencedDomain, GuardAction, PrimaryHost, SwitchStatus};
pub use self::home_sync::{sync_home, HomeCopied, HomeSyncReport};
pub use self::planned::{planned, SwitchAction, SwitchReport};
pub use self::readdress::{Readdressed, ServedVm};
pub use self::takeover::{epoch_overlay_path, TakeoverVm};
pub use self::unplanned::{unplanned, Unplanned};

use crate::config::Environment;
use crate::guest::agents::{CloneAgents, Quiescer};

/// What a failover works with besides the context.
#[derive(Clone, Copy)]
pub struct Tools<'t> {
    /// The standby's agents, as its environment stands (and ENV's, at
    /// failback), with what readdressing asks of them.
    pub agents: &'t dyn Fn(&Environment) -> Box<dyn CloneAgents>,
    /// Freezes the primary's guests for the final snapshot (planned).
    pub quiescer: &'t dyn Quiescer,
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").finish_non_exhaustive()
    }
}

/// While a role switch of `name` is in force: how to reach its active side
/// (the standby's domains at `name`'s addresses, snapshots on the
/// standby's storage), with the switch's row.
pub fn active_environment(
    catalog: &crate::catalog::Catalog,
    name: &str,
) -> Result<Option<(Environment, crate::catalog::FailoverRecord)>, crate::catalog::CatalogError> {
    let Some(switch) = catalog.active_switch(name)? else { return Ok(None) };
    let environment = serde_json::from_value(switch.environment.clone()).map_err(|e| {
        crate::catalog::CatalogError::Corrupt { what: "read a switch's active environment", detail: e.to_string() }
    })?;
    Ok(Some((environment, switch)))
}

/// `domain` as libvirt reports it, or which domain could not be looked at.
pub(crate) fn inspect(
    ctx: &crate::ops::context::OpContext<'_>,
    domain: &str,
) -> Result<crate::hypervisor::Domain, FailoverError> {
    ctx.host
        .hypervisor()
        .domain(domain)
        .map_err(|source| FailoverError::InspectDomain { domain: domain.to_owned(), source: Box::new(source) })
}

/// Whether a journaled step is a failover's last, its record: from there
/// on `envclone recover` finishes the failover instead of rolling it back.
pub fn is_record_step(name: &str) -> bool {
    name == "record the drill" || name.starts_with("record epoch ")
}
