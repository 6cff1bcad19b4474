//! The undo of each journaled failover step, each idempotent (gone
//! already is done), run newest first by a failing failover and by
//! `envclone recover`.
//!
//! The steps reuse undo kinds that exist already (delete-file, restore's
//! `restore-redefine-disks` and `restore-stop-domain`, the clone's
//! `clone-remove-link` and `clone-remove-netns`); their own kinds:
//!
//! - `failover-forget`: the standby's failover that is not ended (a drill
//!   running, a switch in force) is forgotten in the catalog (its
//!   `failovers` row);
//! - `failover-unfence`: a primary domain the failover fenced loses its
//!   fence stamp and is started again unless it runs, its autostart on
//!   again if the stamp says it was (a stamp from before envclone kept it
//!   leaves it off);
//! - `failover-redefine`: a standby domain whose identity (MACs, networks)
//!   the failover switched to the primary's is defined again as it was
//!   (the domain must be shut off: the undo of its start stops it first);
//!   failback uses it too, both ways (the primary's domain back on its
//!   fenced disks with its stamp, the standby's back in the primary's
//!   identity).
//!
//! Failback's own kinds:
//!
//! - `failback-restart`: the standby domains the failback stopped are
//!   started again, each unless it runs (the standby serves again);
//! - `failback-unmark`: the switch, marked failing back, is in force again;
//! - `failback-unmove`: the images the failback recorded at home are
//!   recorded where they were, on the standby's storage;
//! - `failback-unrecord`: the failback's row is forgotten and the switch
//!   it ended is failing back again.

use crate::catalog::{FailoverState, UndoAction};
use crate::error::chain as error_chain;
use crate::ops::context::OpContext;

pub const UNDO_FORGET: &str = "failover-forget";
pub const UNDO_UNFENCE: &str = "failover-unfence";
pub const UNDO_REDEFINE: &str = "failover-redefine";

pub const UNDO_RESTART: &str = "failback-restart";
pub const UNDO_UNMARK: &str = "failback-unmark";
pub const UNDO_UNMOVE: &str = "failback-unmove";
pub const UNDO_UNRECORD: &str = "failback-unrecord";

/// Every custom kind this module owns.
pub const KINDS: &[&str] =
    &[UNDO_FORGET, UNDO_UNFENCE, UNDO_REDEFINE, UNDO_RESTART, UNDO_UNMARK, UNDO_UNMOVE, UNDO_UNRECORD];

/// Starts `domains` again, each unless it runs.
/// Starts `domains` of host `host` again.
pub fn restart(domains: &[String], host: &str) -> UndoAction {
    UndoAction::Custom { kind: UNDO_RESTART.into(), data: serde_json::json!({ "domains": domains, "host": host }) }
}

fn restart_domains(data: &serde_json::Value) -> Vec<String> {
    let domains = data["domains"].as_array();
    domains.map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

pub fn unmark(switch: i64) -> UndoAction {
    UndoAction::Custom { kind: UNDO_UNMARK.into(), data: serde_json::json!({ "switch": switch }) }
}

/// Moves the images back to `before` (what [`crate::catalog::Catalog::move_images`] returned).
pub fn unmove(before: &[crate::catalog::ImageMove]) -> UndoAction {
    UndoAction::Custom { kind: UNDO_UNMOVE.into(), data: serde_json::json!({ "images": before }) }
}

pub fn unrecord(switch: i64, env: &str, epoch: i64) -> UndoAction {
    UndoAction::Custom {
        kind: UNDO_UNRECORD.into(),
        data: serde_json::json!({ "switch": switch, "env": env, "epoch": epoch }),
    }
}

pub fn forget_open(standby: &str) -> UndoAction {
    UndoAction::Custom { kind: UNDO_FORGET.into(), data: serde_json::json!({ "standby": standby }) }
}

pub fn unfence(domain: &str, host: &str) -> UndoAction {
    UndoAction::Custom { kind: UNDO_UNFENCE.into(), data: serde_json::json!({ "domain": domain, "host": host }) }
}

/// The undo of fencing a domain that was down already: its stamp goes, it
/// is not started (an unplanned failover rolled back leaves the primary as
/// it found it).
pub fn unfence_down(domain: &str, host: &str) -> UndoAction {
    UndoAction::Custom {
        kind: UNDO_UNFENCE.into(),
        data: serde_json::json!({ "domain": domain, "host": host, "start": false }),
    }
}

/// Defines `def` again (the standby domain as it was before the takeover).
/// Defines `def` again on host `host`.
pub fn redefine(def: &crate::hypervisor::DomainDef, host: &str) -> UndoAction {
    UndoAction::Custom {
        kind: UNDO_REDEFINE.into(),
        data: serde_json::json!({ "domain": def.name(), "xml": def.to_xml(), "host": host }),
    }
}

/// What undoing `kind` does, for `recover`'s plan and report.
pub fn describe(kind: &str, data: &serde_json::Value) -> String {
    match kind {
        UNDO_FORGET => {
            format!("forget the open failover of standby {}", data["standby"].as_str().unwrap_or("?"))
        }
        UNDO_UNFENCE => {
            format!("start the fenced domain {} again unless it runs", data["domain"].as_str().unwrap_or("?"))
        }
        UNDO_REDEFINE => format!(
            "give domain {} back its own identity (MACs, networks) as a standby",
            data["domain"].as_str().unwrap_or("?")
        ),
        UNDO_RESTART => {
            format!("start the standby's domains {} again, each unless it runs", restart_domains(data).join(", "))
        }
        UNDO_UNMARK => format!("put switch {} back in force", data["switch"]),
        UNDO_UNMOVE => format!(
            "record the {} images carried home back on the standby's storage",
            data["images"].as_array().map_or(0, Vec::len)
        ),
        UNDO_UNRECORD => format!(
            "forget the failback of {} to epoch {}, its switch failing back again",
            data["env"].as_str().unwrap_or("?"),
            data["epoch"]
        ),
        other => format!("'{other}'"),
    }
}

/// Undoes this module's own kinds; an error says what is left.
pub fn undo_own(ctx: &OpContext<'_>, kind: &str, data: &serde_json::Value) -> Result<String, String> {
    match kind {
        UNDO_FORGET => {
            let standby = data["standby"].as_str().ok_or_else(|| format!("bad {kind} data {data}: no standby"))?;
            ctx.catalog.forget_open_failover(standby).map_err(|e| format!("catalog: {}", error_chain(&e)))?;
            Ok(describe(kind, data))
        }
        UNDO_UNFENCE => {
            let domain = data["domain"].as_str().ok_or_else(|| format!("bad {kind} data {data}: no domain"))?;
            // The primary's host (an undo journaled before hosts: the context's).
            let host = ctx.host_named(data["host"].as_str()).map_err(|e| error_chain(&e))?;
            let found = match host.hypervisor().domain(domain) {
                Ok(found) => found,
                Err(crate::hypervisor::HvError::NoSuchDomain { .. }) => {
                    return Ok(format!("domain {domain} is not defined here: nothing to unfence"))
                }
                Err(e) => return Err(format!("cannot look up domain {domain}: {}", error_chain(&e))),
            };
            if found.state.is_active() {
                return Ok(format!("domain {domain} runs already"));
            }
            let autostart = found.def.fence_stamp().and_then(|stamp| stamp.autostart);
            if found.def.fence_stamp().is_some() {
                // The fence is undone: its stamp would tell a lie.
                let mut def = found.def.clone();
                def.clear_fence_stamp();
                host.hypervisor()
                    .define_domain(&def)
                    .map_err(|e| format!("cannot remove the fence stamp of domain {domain}: {}", error_chain(&e)))?;
            }
            if autostart == Some(true) {
                host.hypervisor().set_autostart(domain, true).map_err(|e| {
                    format!("cannot turn the autostart of domain {domain} on again: {}", error_chain(&e))
                })?;
            }
            let autostart = match autostart {
                Some(true) => "its autostart on again",
                Some(false) => "its autostart off, as before",
                None => "its autostart stays off: what it was is not recorded",
            };
            if data["start"].as_bool() == Some(false) {
                return Ok(format!("domain {domain} unstamped, {autostart}; it was down before the failover"));
            }
            host.hypervisor()
                .start_domain(domain)
                .map_err(|e| format!("cannot start domain {domain}: {}", error_chain(&e)))?;
            Ok(format!("domain {domain} started again, {autostart}"))
        }
        UNDO_REDEFINE => {
            let domain = data["domain"].as_str().ok_or_else(|| format!("bad {kind} data {data}: no domain"))?;
            let xml = data["xml"].as_str().ok_or_else(|| format!("bad {kind} data {data}: no xml"))?;
            let def = crate::hypervisor::DomainDef::parse(xml).map_err(|e| error_chain(&e))?;
            let host = ctx.host_named(data["host"].as_str()).map_err(|e| error_chain(&e))?;
            let found = host
                .hypervisor()
                .domain(domain)
                .map_err(|e| format!("cannot look up domain {domain}: {}", error_chain(&e)))?;
            if found.state.is_active() {
                return Err(format!("domain {domain} runs; stop it, then run `envclone recover` again"));
            }
            host.hypervisor()
                .define_domain(&def)
                .map_err(|e| format!("cannot redefine domain {domain}: {}", error_chain(&e)))?;
            Ok(describe(kind, data))
        }
        UNDO_RESTART => {
            let domains = restart_domains(data);
            if domains.is_empty() {
                return Err(format!("bad {kind} data {data}: no domains"));
            }
            let host = ctx.host_named(data["host"].as_str()).map_err(|e| error_chain(&e))?;
            // Each domain on its own: one that cannot start must not keep the others down.
            let mut failures = Vec::new();
            for domain in &domains {
                match host.hypervisor().domain(domain) {
                    Ok(found) if found.state.is_active() => {}
                    Ok(_) => {
                        if let Err(e) = host.hypervisor().start_domain(domain) {
                            failures.push(format!("cannot start domain {domain}: {}", error_chain(&e)));
                        }
                    }
                    Err(e) => failures.push(format!("cannot look up domain {domain}: {}", error_chain(&e))),
                }
            }
            if failures.is_empty() {
                Ok(format!("domains {} run again: the standby serves", domains.join(", ")))
            } else {
                Err(failures.join("; "))
            }
        }
        UNDO_UNMARK => {
            let switch = data["switch"].as_i64().ok_or_else(|| format!("bad {kind} data {data}: no switch"))?;
            ctx.catalog
                .set_switch_state(switch, FailoverState::FailingBack, FailoverState::Active)
                .map_err(|e| format!("catalog: {}", error_chain(&e)))?;
            Ok(describe(kind, data))
        }
        UNDO_UNMOVE => {
            let images: Vec<crate::catalog::ImageMove> =
                serde_json::from_value(data["images"].clone()).map_err(|e| format!("bad {kind} data {data}: {e}"))?;
            ctx.catalog.move_images(&images).map_err(|e| format!("catalog: {}", error_chain(&e)))?;
            Ok(describe(kind, data))
        }
        UNDO_UNRECORD => {
            let (Some(switch), Some(env), Some(epoch)) =
                (data["switch"].as_i64(), data["env"].as_str(), data["epoch"].as_i64())
            else {
                return Err(format!("bad {kind} data {data}: switch, env and epoch expected"));
            };
            ctx.catalog.unrecord_failback(switch, env, epoch).map_err(|e| format!("catalog: {}", error_chain(&e)))?;
            Ok(describe(kind, data))
        }
        other => Err(format!("no undo for a {other:?} step of a failover")),
    }
}

/// Undoes one step of a failover (the kinds it borrows included).
pub fn undo_action(ctx: &OpContext<'_>, action: &UndoAction) -> Result<(), String> {
    match action {
        UndoAction::Custom { kind, data } if KINDS.contains(&kind.as_str()) => undo_own(ctx, kind, data).map(drop),
        UndoAction::Custom { kind, .. }
            if [crate::ops::restore::UNDO_STOP_DOMAIN, crate::ops::restore::UNDO_REDEFINE_DISKS]
                .contains(&kind.as_str()) =>
        {
            crate::ops::restore::undo_action(ctx.host, ctx.catalog, action)
        }
        other => crate::ops::clone::undo::undo_action(ctx.host, ctx.catalog, other),
    }
}
