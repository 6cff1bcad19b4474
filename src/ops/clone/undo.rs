//! Removing what a clone made, one thing at a time, each idempotent (gone
//! already is done): the undo of each clone step, and `envclone destroy`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Dependent, UndoAction};
use crate::error::chain as error_chain;
use crate::host::{Host, Storage};
use crate::hypervisor::{HvError, Hypervisor};

pub const UNDO_REMOVE_NETWORK: &str = "clone-remove-network";
pub const UNDO_REMOVE_NETNS: &str = "clone-remove-netns";
pub const UNDO_REMOVE_LINK: &str = "clone-remove-link";
pub const UNDO_FORGET_CLONE: &str = "clone-forget";
pub const UNDO_DISTRUST_HOST_KEYS: &str = "clone-distrust-host-keys";

/// Every custom kind this module owns (other operations borrow them).
pub const KINDS: &[&str] =
    &[UNDO_REMOVE_NETWORK, UNDO_REMOVE_NETNS, UNDO_REMOVE_LINK, UNDO_FORGET_CLONE, UNDO_DISTRUST_HOST_KEYS];

/// known_hosts lines a clone added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeys {
    pub known_hosts: PathBuf,
    pub lines: Vec<String>,
}

impl HostKeys {
    /// The known_hosts line that trusts `key` at `address`:`port` in
    /// `known_hosts`, as the one line of the undo that removes it again.
    pub fn at(known_hosts: &Path, address: &str, port: u16, key: &[u8]) -> Self {
        let host_name = crate::guest::hostkey::known_hosts_name(address, port);
        let line = crate::guest::hostkey::known_hosts_entry(&host_name, key);
        HostKeys { known_hosts: known_hosts.to_owned(), lines: vec![line] }
    }

    pub fn distrust(&self) -> UndoAction {
        UndoAction::Custom {
            kind: UNDO_DISTRUST_HOST_KEYS.to_owned(),
            data: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

/// The undo of a network made: remove it.
pub fn remove_network_undo(network: &str) -> UndoAction {
    UndoAction::Custom { kind: UNDO_REMOVE_NETWORK.to_owned(), data: serde_json::json!({ "network": network }) }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRef {
    pub netns: Option<String>,
    pub link: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetClone {
    pub clone: String,
    pub overlays: Vec<PathBuf>,
}

/// Undoes one step of a clone.
pub fn undo_action(host: &dyn Host, catalog: &Catalog, action: &UndoAction) -> Result<(), String> {
    let (hv, net) = (host.hypervisor(), host.net());
    let data = |kind: &str, data: &serde_json::Value, key: &str| {
        data[key].as_str().map(str::to_owned).ok_or_else(|| format!("bad {kind} data {data}: no {key}"))
    };
    match action {
        UndoAction::Nothing => Ok(()),
        UndoAction::DeleteFile { path } => remove_file(host.storage(), path),
        UndoAction::UndefineDomain { name } => remove_domain(hv, name),
        UndoAction::Custom { kind, data: value } => match kind.as_str() {
            UNDO_REMOVE_NETWORK => remove_network(hv, &data(kind, value, "network")?),
            UNDO_REMOVE_NETNS => {
                let netns = data(kind, value, "netns")?;
                net.delete_netns(&netns).map_err(|e| format!("cannot delete namespace {netns}: {}", error_chain(&e)))
            }
            UNDO_REMOVE_LINK => {
                let link: LinkRef =
                    serde_json::from_value(value.clone()).map_err(|e| format!("bad {kind} data {value}: {e}"))?;
                net.delete_link(link.netns.as_deref(), &link.link)
                    .map_err(|e| format!("cannot delete link {}: {}", link.link, error_chain(&e)))
            }
            UNDO_DISTRUST_HOST_KEYS => {
                let keys: HostKeys =
                    serde_json::from_value(value.clone()).map_err(|e| format!("bad {kind} data {value}: {e}"))?;
                distrust_host_keys(&keys.known_hosts, &keys.lines)
            }
            UNDO_FORGET_CLONE => {
                let forget: ForgetClone =
                    serde_json::from_value(value.clone()).map_err(|e| format!("bad {kind} data {value}: {e}"))?;
                forget_clone(catalog, &forget.clone, &forget.overlays)
            }
            other => Err(format!("no undo for a {other:?} step in a clone")),
        },
        other => Err(format!("no undo for {other:?} in a clone")),
    }
}

pub fn distrust_host_keys(known_hosts: &Path, lines: &[String]) -> Result<(), String> {
    crate::guest::hostkey::distrust(known_hosts, lines)
        .map_err(|e| format!("cannot remove the clone's lines from {}: {e}", known_hosts.display()))
}

pub fn remove_file(storage: &dyn Storage, path: &Path) -> Result<(), String> {
    storage.remove(path).map_err(|e| error_chain(&e))
}

/// Stops (if it runs) and undefines a domain.
pub fn remove_domain(hv: &dyn Hypervisor, name: &str) -> Result<(), String> {
    let fail = |what: &str, e: HvError| format!("cannot {what} domain {name}: {}", error_chain(&e));
    match hv.domain(name) {
        Err(HvError::NoSuchDomain { .. }) => return Ok(()),
        Err(e) => return Err(fail("inspect", e)),
        Ok(domain) if domain.state.is_active() => match hv.destroy_domain(name) {
            Ok(()) | Err(HvError::NoSuchDomain { .. }) => {}
            Err(e) => return Err(fail("stop", e)),
        },
        Ok(_) => {}
    }
    match hv.undefine_domain(name) {
        Ok(()) | Err(HvError::NoSuchDomain { .. }) => Ok(()),
        Err(e) => Err(fail("undefine", e)),
    }
}

/// Stops (if active) and undefines a network.
pub fn remove_network(hv: &dyn Hypervisor, name: &str) -> Result<(), String> {
    let fail = |what: &str, e: HvError| format!("cannot {what} network {name}: {}", error_chain(&e));
    match hv.network(name) {
        Err(HvError::NoSuchNetwork { .. }) => return Ok(()),
        Err(e) => return Err(fail("inspect", e)),
        Ok(network) if network.active => match hv.destroy_network(name) {
            Ok(()) | Err(HvError::NoSuchNetwork { .. }) => {}
            Err(e) => return Err(fail("stop", e)),
        },
        Ok(_) => {}
    }
    match hv.undefine_network(name) {
        Ok(()) | Err(HvError::NoSuchNetwork { .. }) => Ok(()),
        Err(e) => Err(fail("undefine", e)),
    }
}

/// Forgets the clone in the catalog: its pins, its overlays' records (each
/// checked by [`Catalog::remove_image`]: refused if anything else needs
/// it) and its row.
pub fn forget_clone(catalog: &Catalog, clone: &str, overlays: &[PathBuf]) -> Result<(), String> {
    let fail = |e: crate::catalog::CatalogError| format!("catalog: {}", error_chain(&e));
    let dependent = Dependent::clone_named(clone);
    for image in catalog.images_needed_by(&dependent).map_err(fail)? {
        catalog.unpin(image.id, &dependent).map_err(fail)?;
    }
    for path in overlays {
        if let Some(image) = catalog.image_by_path(path).map_err(fail)? {
            catalog.remove_image(image.id).map_err(fail)?;
        }
    }
    catalog.remove_clone(clone).map_err(fail)?;
    Ok(())
}
