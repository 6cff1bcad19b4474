//! Environments the catalog records rather than the config names: a clone's
//! (`envclone clone`) and a running drill's standby (`envclone failover
//! --test`). Read here, outside both operations, so that looking a name up
//! (`envclone ssh`, the clone's own lookup) reaches either without one
//! operation reaching into the other.

use crate::catalog::{Catalog, CatalogError};
use crate::config::Environment;

/// The environment a running drill of `name` (a standby) reaches its VMs
/// with, if one runs: how `envclone ssh SB VM` finds them.
pub fn drill_environment(catalog: &Catalog, name: &str) -> Result<Option<Environment>, CatalogError> {
    let Some(open) = catalog.open_failover(name)? else { return Ok(None) };
    if open.mode != crate::catalog::FailoverMode::Test {
        return Ok(None);
    }
    recorded(open.environment, "read a drill's environment").map(Some)
}

/// An environment as the catalog stored it (JSON of [`Environment`]);
/// `what` names the read in the error.
pub fn recorded(value: serde_json::Value, what: &'static str) -> Result<Environment, CatalogError> {
    serde_json::from_value(value).map_err(|e| CatalogError::Corrupt { what, detail: e.to_string() })
}
