//! Clone environments: made by `envclone clone` from a snapshot of another
//! environment, removed by `envclone destroy`. A clone's row holds its
//! environment (as the config would describe it, so its VMs can be
//! addressed like any other) and everything it made (domains, networks,
//! gateway namespace, overlays): `destroy` removes exactly that. The
//! images it needs are pinned apart, with `Dependent::clone_named`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError, Timestamp};

const CLONE_COLUMNS: &str = "name, source_env, snapshot, created_at, disks, network, environment, resources";

/// One clone environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloneRecord {
    pub name: String,
    /// The environment it was cloned from.
    pub source_env: String,
    /// The source's snapshot its disks start from.
    pub snapshot: String,
    pub created_at: DateTime<Utc>,
    /// `linked` or `full`.
    pub disks: String,
    /// `isolated` or `readdress`.
    pub network: String,
    /// The clone's environment (JSON of `config::Environment`).
    pub environment: serde_json::Value,
    pub resources: CloneResources,
}

/// Everything a clone made, and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneResources {
    /// Its libvirt domains.
    pub domains: Vec<String>,
    pub networks: Vec<ClonedNetwork>,
    /// The named network namespace its controller-side gateway lives in.
    pub gateway_netns: Option<String>,
    /// Its own disk images (overlays on the snapshot's images).
    pub disks: Vec<ClonedDisk>,
    /// The folder its images live in.
    pub storage: PathBuf,
    /// Lines it added to the controller's known_hosts (a readdressed
    /// clone's guests answer at new addresses, with the keys they had).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClonedNetwork {
    /// The source's libvirt network.
    pub source: String,
    /// The clone's libvirt network.
    pub name: String,
    pub bridge: String,
    /// The gateway veth's end on the bridge (in libvirtd's namespace).
    pub veth: Option<String>,
    /// The source gateway's address the gateway namespace holds, `a.b.c.d/p`.
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClonedDisk {
    pub vm: String,
    pub disk: String,
    /// The clone's own image.
    pub path: PathBuf,
    /// The snapshot's image it is an overlay on.
    pub backing: PathBuf,
}

impl Catalog {
    /// Records a clone; its name must be new.
    pub fn add_clone(&self, clone: &CloneRecord) -> Result<(), CatalogError> {
        let what = "record a clone";
        let resources = serde_json::to_string(&clone.resources)
            .map_err(|e| CatalogError::Corrupt { what, detail: e.to_string() })?;
        self.conn
            .execute(
                &format!("INSERT INTO clones ({CLONE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    clone.name,
                    clone.source_env,
                    clone.snapshot,
                    Timestamp(clone.created_at),
                    clone.disks,
                    clone.network,
                    clone.environment.to_string(),
                    resources,
                ],
            )
            .map_err(CatalogError::insert(what, format!("clone {}", clone.name)))?;
        Ok(())
    }

    pub fn clone_named(&self, name: &str) -> Result<Option<CloneRecord>, CatalogError> {
        self.conn
            .query_row(&format!("SELECT {CLONE_COLUMNS} FROM clones WHERE name = ?1"), [name], clone_row)
            .optional()
            .map_err(CatalogError::query("look up a clone"))
    }

    /// Every clone, by name.
    pub fn clones(&self) -> Result<Vec<CloneRecord>, CatalogError> {
        let what = "list the clones";
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {CLONE_COLUMNS} FROM clones ORDER BY name"))
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([], clone_row).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// Forgets a clone; false if there was none of that name.
    pub fn remove_clone(&self, name: &str) -> Result<bool, CatalogError> {
        let changed = self
            .conn
            .execute("DELETE FROM clones WHERE name = ?1", [name])
            .map_err(CatalogError::query("forget a clone"))?;
        Ok(changed > 0)
    }
}

fn clone_row(row: &Row<'_>) -> rusqlite::Result<CloneRecord> {
    let json = |index: usize, text: String| {
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e)))
    };
    let environment = json(6, row.get(6)?)?;
    let resources: String = row.get(7)?;
    let resources = serde_json::from_str(&resources)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e)))?;
    Ok(CloneRecord {
        name: row.get(0)?,
        source_env: row.get(1)?,
        snapshot: row.get(2)?,
        created_at: row.get::<_, Timestamp>(3)?.0,
        disks: row.get(4)?,
        network: row.get(5)?,
        environment,
        resources,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn record(name: &str) -> CloneRecord {
        CloneRecord {
            name: name.into(),
            source_env: "demo".into(),
            snapshot: "s1".into(),
            created_at: at(2, 0),
            disks: "linked".into(),
            network: "isolated".into(),
            environment: serde_json::json!({ "vms": {} }),
            resources: CloneResources {
                domains: vec![format!("{name}-web")],
                gateway_netns: Some(format!("envclone-c-{name}")),
                ..CloneResources::default()
            },
        }
    }

    #[test]
    fn a_clone_round_trips_and_is_forgotten() {
        let (_dir, catalog) = catalog();

        catalog.add_clone(&record("c1")).unwrap();

        assert_eq!(catalog.clone_named("c1").unwrap(), Some(record("c1")));
        assert_eq!(catalog.clones().unwrap().len(), 1);
        assert!(catalog.remove_clone("c1").unwrap());
        assert!(!catalog.remove_clone("c1").unwrap());
        assert_eq!(catalog.clone_named("c1").unwrap(), None);
    }

    #[test]
    fn add_clone_refuses_a_name_taken() {
        let (_dir, catalog) = catalog();
        catalog.add_clone(&record("c1")).unwrap();

        let again = catalog.add_clone(&record("c1"));

        assert!(matches!(again, Err(CatalogError::AlreadyExists { .. })));
    }
}
