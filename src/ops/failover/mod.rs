//! `envclone failover ENV ...`: a standby SB of ENV (see
//! [`crate::ops::standby`]) takes over, or, with `--test`, proves it could
//! (issue #6).
//!
//! # Done so far
//!
//! - `drill.rs`: `--test` (a DR drill: SB starts from its restored point on
//!   a throwaway overlay, in its isolated networks, reached through a
//!   gateway namespace; the primary untouched) and `--test --end`.
//! - `planned.rs`: `--planned` (a final snapshot, the primary fenced, SB
//!   brought to that snapshot, given the primary's MACs and networks and
//!   started; the switch recorded with an epoch).
//!
//! Not built yet: unplanned failover (the command refuses it, exit 2),
//! keeping a returning old primary fenced by its epoch, `status` showing
//! the active side, schedules and autorestore following the new roles,
//! failback.
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
//! none is a no-op; a switch recorded is reported, not done twice.

mod drill;
mod error;
mod planned;
#[cfg(test)]
mod tests;
pub mod undo;

pub use self::drill::{
    end as end_drill, overlay_path, start as start_drill, DrillAction, DrillDisk, DrillReport, DrillRequest,
    DrillResources, DrillVm, StepTime, BOOT_WITHIN,
};
pub use self::error::FailoverError;
pub use self::planned::{planned, SwitchAction, SwitchReport, TakeoverVm};

use crate::config::Environment;
use crate::ops::clone::HostNet;
use crate::ops::restore::{GuestAgents, ImageFiles};
use crate::ops::snapshot::Quiescer;
use crate::ops::standby::Transfer;

/// What a failover works with besides the context.
#[derive(Clone, Copy)]
pub struct Tools<'t> {
    pub files: &'t dyn ImageFiles,
    pub net: &'t dyn HostNet,
    /// The standby's agents, as its environment stands.
    pub agents: &'t dyn Fn(&Environment) -> Box<dyn GuestAgents>,
    /// Freezes the primary's guests for the final snapshot (planned).
    pub quiescer: &'t dyn Quiescer,
    /// Brings the standby to the final snapshot (planned).
    pub transfer: &'t dyn Transfer,
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").field("files", &self.files).field("net", &self.net).finish_non_exhaustive()
    }
}

/// The environment a running drill of `name` (a standby) reaches its VMs
/// with, if one runs: how `envclone ssh SB VM` finds them.
pub fn drill_environment(
    catalog: &crate::catalog::Catalog,
    name: &str,
) -> Result<Option<Environment>, crate::catalog::CatalogError> {
    let Some(open) = catalog.open_failover(name)? else { return Ok(None) };
    if open.mode != "test" {
        return Ok(None);
    }
    serde_json::from_value(open.environment).map(Some).map_err(|e| crate::catalog::CatalogError::Corrupt {
        what: "read a drill's environment",
        detail: e.to_string(),
    })
}

/// Whether a journaled step is a failover's last, its record: from there
/// on `envclone recover` finishes the failover instead of rolling it back.
pub fn is_record_step(name: &str) -> bool {
    name == "record the drill" || name.starts_with("record epoch ")
}
