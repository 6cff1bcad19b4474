//! The undo of each journaled standby step, each idempotent (gone already
//! is done), run newest first by a failing operation and by `envclone
//! recover`:
//!
//! - `standby-restore-pins`: the standby's pins become exactly the images
//!   its record says it reads like (a sync's extra pins go);
//! - `standby-drop-copy`: a copy a sync made is deleted, unless that sync
//!   already began merging (the standby's `merging` is set): then the copy
//!   is what finishing it needs, and it stays;
//! - `standby-finish-sync`: **rolls forward**: the merge of a sync that
//!   began merging is done again from its verified copies, recorded, and
//!   the copies removed (see [`super::sync::finish`]);
//! - `standby-forget`: the standby's record and pins go.
//!
//! Networks and domains a standby defines are undone with the clone's
//! `clone-remove-network` and the generic `undefine-domain`.

use serde::{Deserialize, Serialize};

use crate::catalog::UndoAction;
use crate::error::chain as error_chain;
use crate::ops::context::OpContext;

pub const UNDO_RESTORE_PINS: &str = "standby-restore-pins";
pub const UNDO_DROP_COPY: &str = "standby-drop-copy";
pub const UNDO_FINISH_SYNC: &str = "standby-finish-sync";
pub const UNDO_FORGET: &str = "standby-forget";

/// Every custom kind this module handles.
pub const KINDS: &[&str] = &[UNDO_RESTORE_PINS, UNDO_DROP_COPY, UNDO_FINISH_SYNC, UNDO_FORGET];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCopy {
    pub standby: String,
    pub path: std::path::PathBuf,
}

pub fn restore_pins(standby: &str) -> UndoAction {
    UndoAction::Custom { kind: UNDO_RESTORE_PINS.into(), data: serde_json::json!({ "standby": standby }) }
}

pub fn drop_copy(standby: &str, path: &std::path::Path) -> UndoAction {
    let data = DropCopy { standby: standby.to_owned(), path: path.to_owned() };
    UndoAction::Custom { kind: UNDO_DROP_COPY.into(), data: serde_json::to_value(data).unwrap_or_default() }
}

pub fn forget(standby: &str) -> UndoAction {
    UndoAction::Custom { kind: UNDO_FORGET.into(), data: serde_json::json!({ "standby": standby }) }
}

/// What undoing `kind` does, for `recover`'s plan and report.
pub fn describe(kind: &str, data: &serde_json::Value) -> String {
    let standby = data["standby"].as_str().unwrap_or("?");
    match kind {
        UNDO_RESTORE_PINS => format!("set standby {standby}'s pins back to the images it is recorded at"),
        UNDO_DROP_COPY => {
            format!("delete {} unless standby {standby} is being merged", data["path"].as_str().unwrap_or("?"))
        }
        UNDO_FINISH_SYNC => format!(
            "finish standby {standby}'s merge to snapshot {} (merges are finished, never undone)",
            data["snapshot"].as_str().unwrap_or("?")
        ),
        UNDO_FORGET => format!("forget standby {standby} and its pins"),
        other => format!("'{other}'"),
    }
}

/// Undoes one standby step; an error says what is left.
pub fn undo_action(ctx: &OpContext<'_>, action: &UndoAction) -> Result<String, String> {
    let (kind, data) = match action {
        UndoAction::Nothing => return Ok("nothing to undo".into()),
        UndoAction::Custom { kind, data } => (kind, data),
        other => return Err(format!("no standby undo for {other:?}")),
    };
    let catalog = ctx.catalog;
    let fail = |e: crate::catalog::CatalogError| format!("catalog: {}", error_chain(&e));
    let standby =
        || data["standby"].as_str().map(str::to_owned).ok_or_else(|| format!("bad {kind} data {data}: no standby"));
    match kind.as_str() {
        UNDO_RESTORE_PINS => {
            let standby = standby()?;
            catalog.restore_standby_pins(&standby).map_err(fail)?;
            Ok(describe(kind, data))
        }
        UNDO_DROP_COPY => {
            let copy: DropCopy =
                serde_json::from_value(data.clone()).map_err(|e| format!("bad {kind} data {data}: {e}"))?;
            drop_copy_unless_merging(ctx, &copy)
        }
        UNDO_FINISH_SYNC => {
            let plan: super::sync::FinishPlan =
                serde_json::from_value(data.clone()).map_err(|e| format!("bad {kind} data {data}: {e}"))?;
            super::sync::finish(ctx, &plan).map_err(|e| error_chain(&e))?;
            Ok(format!("standby {} finished at snapshot {}", plan.standby, plan.snapshot))
        }
        UNDO_FORGET => {
            let standby = standby()?;
            catalog.remove_standby(&standby).map_err(fail)?;
            Ok(describe(kind, data))
        }
        other => Err(format!("no undo for a {other:?} step of a standby")),
    }
}

/// The copy is on SB's host (the context's, if SB is not recorded).
fn drop_copy_unless_merging(ctx: &OpContext<'_>, copy: &DropCopy) -> Result<String, String> {
    let record = ctx.catalog.standby_named(&copy.standby).map_err(|e| format!("catalog: {}", error_chain(&e)))?;
    let host = match &record {
        Some(record) => ctx.host_named(Some(&record.host)).map_err(|e| error_chain(&e))?,
        None => ctx.host,
    };
    let transfer = host.storage();
    if let Some(snapshot) = record.and_then(|r| r.merging) {
        return Ok(format!(
            "{} kept: standby {} is being merged to snapshot {snapshot}, which needs it",
            copy.path.display(),
            copy.standby
        ));
    }
    transfer.remove(&copy.path).map_err(|e| error_chain(&e))?;
    Ok(format!("deleted {}", copy.path.display()))
}
