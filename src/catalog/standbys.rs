//! Standbys: made by `envclone standby create` from an environment (the
//! primary), kept current by `envclone standby sync`, removed by
//! `envclone standby destroy`.
//!
//! A standby's row holds everything it made (`resources`) and its restored
//! point: the primary's snapshot it was last brought to, whose creation
//! time gives the standby's lag. Each VM disk has a `standby_disks` row
//! saying which snapshot image of the primary SB's copy reads like now
//! (`source_image_id`: the base of the next incremental sync) and the
//! SHA-256 of the last file written for it. The standby pins exactly those
//! images (`Dependent::standby_named`) between syncs, so no merge can
//! change what they read while SB relies on them; a sync adds pins on the
//! images it reads while it runs, and [`Catalog::record_standby_sync`]
//! moves the pins to the new images in the same transaction that records
//! the new point.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::clones::ClonedNetwork;
use super::model::{DependentKind, ImageId};
use super::{path_text, Catalog, CatalogError, Timestamp};

const STANDBY_COLUMNS: &str = "id, name, primary_env, storage, autorestore, created_at, snapshot, \
                               snapshot_created_at, synced_at, resources, merging, host";
const DISK_COLUMNS: &str = "vm, disk, path, snapshot, source_image_id, sha256, synced_at";

/// One standby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbyRecord {
    pub name: String,
    /// The environment it copies.
    pub primary: String,
    /// The host its domains, networks and disks are on (`local`: the
    /// controller's own).
    pub host: String,
    /// Where its disks live, on its host.
    pub storage: PathBuf,
    /// The daemon brings it to each new snapshot of the primary.
    pub autorestore: bool,
    pub created_at: DateTime<Utc>,
    /// The primary's snapshot it was last brought to; none before its first sync.
    pub snapshot: Option<String>,
    pub snapshot_created_at: Option<DateTime<Utc>>,
    pub synced_at: Option<DateTime<Utc>>,
    /// Set while a sync merges its copies into SB's images (the snapshot it
    /// brings SB to): SB reads like no snapshot until that sync is finished
    /// (by itself, or by `envclone recover`).
    pub merging: Option<String>,
    pub resources: StandbyResources,
    /// By VM, then disk.
    pub disks: Vec<StandbyDisk>,
}

/// Everything a standby made, and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyResources {
    pub domains: Vec<StandbyDomain>,
    /// Isolated copies of the primary's networks its domains wait on.
    pub networks: Vec<ClonedNetwork>,
    /// Console logs and NVRAM copies it made next to its disks.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// The primary's networks as its host defines them (name to libvirt
    /// XML), when SB lives on another host: a takeover defines them on
    /// SB's host, where the primary's host may be gone by then.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub primary_networks: std::collections::BTreeMap<String, String>,
}

/// One of the standby's domains, and what it will take over on failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyDomain {
    pub vm: String,
    pub domain: String,
    pub uuid: String,
    /// Its own MACs while it waits (one per interface).
    pub macs: Vec<String>,
    /// The primary's domain and its MACs, interface by interface: what
    /// failover gives the standby's domain.
    pub primary_domain: String,
    pub primary_macs: Vec<String>,
}

/// One VM disk of a standby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbyDisk {
    pub vm: String,
    pub disk: String,
    /// SB's own image: one standalone qcow2 file.
    pub path: PathBuf,
    /// The snapshot its content equals; none before the first sync.
    pub snapshot: Option<String>,
    /// The primary's image of that snapshot for this disk.
    pub source_image: Option<ImageId>,
    /// SHA-256 of the last file written for it (the full copy, or the last overlay).
    pub sha256: Option<String>,
    pub synced_at: Option<DateTime<Utc>>,
}

/// One finished transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbySyncRecord {
    pub snapshot: String,
    /// `full` or `incremental`.
    pub mode: String,
    pub bytes: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// What [`Catalog::record_standby_sync`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStandbySync {
    pub snapshot: String,
    pub snapshot_created_at: DateTime<Utc>,
    pub mode: String,
    pub bytes: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub disks: Vec<SyncedDisk>,
}

/// A disk brought to the sync's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedDisk {
    pub vm: String,
    pub disk: String,
    pub source_image: ImageId,
    pub sha256: String,
}

impl Catalog {
    /// Records a standby and its disks (not synced yet); its name must be new.
    pub fn add_standby(&self, standby: &StandbyRecord) -> Result<(), CatalogError> {
        let what = "record a standby";
        let resources = serde_json::to_string(&standby.resources)
            .map_err(|e| CatalogError::Corrupt { what, detail: e.to_string() })?;
        let tx = self.write(what)?;
        tx.execute(
            &format!(
                "INSERT INTO standbys ({STANDBY_COLUMNS}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, NULL, NULL, NULL, ?6, NULL, ?7)"
            ),
            params![
                standby.name,
                standby.primary,
                path_text(&standby.storage)?,
                standby.autorestore,
                Timestamp(standby.created_at),
                resources,
                standby.host,
            ],
        )
        .map_err(CatalogError::insert(what, format!("standby {}", standby.name)))?;
        let id = tx.last_insert_rowid();
        for disk in &standby.disks {
            tx.execute(
                "INSERT INTO standby_disks (standby_id, vm, disk, path) VALUES (?1, ?2, ?3, ?4)",
                params![id, disk.vm, disk.disk, path_text(&disk.path)?],
            )
            .map_err(CatalogError::insert(
                what,
                format!("disk {}/{} of standby {}", disk.vm, disk.disk, standby.name),
            ))?;
        }
        tx.commit().map_err(CatalogError::query(what))
    }

    pub fn standby_named(&self, name: &str) -> Result<Option<StandbyRecord>, CatalogError> {
        let what = "look up a standby";
        let found = self
            .conn
            .query_row(&format!("SELECT {STANDBY_COLUMNS} FROM standbys WHERE name = ?1"), [name], standby_row)
            .optional()
            .map_err(CatalogError::query(what))?;
        match found {
            Some((id, mut record)) => {
                record.disks = self.standby_disks(id)?;
                Ok(Some(record))
            }
            None => Ok(None),
        }
    }

    /// Every standby (of `primary` only, when given), by name.
    pub fn standbys(&self, primary: Option<&str>) -> Result<Vec<StandbyRecord>, CatalogError> {
        let what = "list the standbys";
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT {STANDBY_COLUMNS} FROM standbys WHERE ?1 IS NULL OR primary_env = ?1 ORDER BY name"
            ))
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([primary], standby_row).map_err(CatalogError::query(what))?;
        let found: Vec<(i64, StandbyRecord)> = rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))?;
        let mut standbys = Vec::with_capacity(found.len());
        for (id, mut record) in found {
            record.disks = self.standby_disks(id)?;
            standbys.push(record);
        }
        Ok(standbys)
    }

    fn standby_disks(&self, id: i64) -> Result<Vec<StandbyDisk>, CatalogError> {
        let what = "list a standby's disks";
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {DISK_COLUMNS} FROM standby_disks WHERE standby_id = ?1 ORDER BY vm, disk"))
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([id], disk_row).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// The standby's transfers, newest first, at most `limit`.
    pub fn standby_syncs(&self, name: &str, limit: usize) -> Result<Vec<StandbySyncRecord>, CatalogError> {
        let what = "list a standby's transfers";
        let mut statement = self
            .conn
            .prepare(
                "SELECT snapshot, mode, bytes, started_at, finished_at FROM standby_syncs WHERE standby_id = \
                 (SELECT id FROM standbys WHERE name = ?1) ORDER BY id DESC LIMIT ?2",
            )
            .map_err(CatalogError::query(what))?;
        let rows = statement
            .query_map(params![name, i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                let bytes: i64 = row.get(2)?;
                Ok(StandbySyncRecord {
                    snapshot: row.get(0)?,
                    mode: row.get(1)?,
                    bytes: u64::try_from(bytes).unwrap_or(0),
                    started_at: row.get::<_, Timestamp>(3)?.0,
                    finished_at: row.get::<_, Timestamp>(4)?.0,
                })
            })
            .map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// Records that every disk of `name` now reads like `sync.snapshot`, in
    /// one transaction: the disks' rows, the standby's restored point, the
    /// transfer, and the standby's pins (exactly the new images: the pins
    /// the sync held on what it read are released).
    pub fn record_standby_sync(&self, name: &str, sync: &NewStandbySync) -> Result<(), CatalogError> {
        let what = "record a standby's sync";
        let tx = self.write(what)?;
        let id: i64 = tx
            .query_row("SELECT id FROM standbys WHERE name = ?1", [name], |row| row.get(0))
            .optional()
            .map_err(CatalogError::query(what))?
            .ok_or_else(|| CatalogError::NotFound { what: format!("standby {name}") })?;
        for disk in &sync.disks {
            let changed = tx
                .execute(
                    "UPDATE standby_disks SET snapshot = ?1, source_image_id = ?2, sha256 = ?3, synced_at = ?4 \
                     WHERE standby_id = ?5 AND vm = ?6 AND disk = ?7",
                    params![
                        sync.snapshot,
                        disk.source_image,
                        disk.sha256,
                        Timestamp(sync.finished_at),
                        id,
                        disk.vm,
                        disk.disk
                    ],
                )
                .map_err(CatalogError::query(what))?;
            if changed == 0 {
                return Err(CatalogError::NotFound {
                    what: format!("disk {}/{} of standby {name}", disk.vm, disk.disk),
                });
            }
        }
        tx.execute(
            "UPDATE standbys SET snapshot = ?1, snapshot_created_at = ?2, synced_at = ?3, merging = NULL \
             WHERE id = ?4",
            params![sync.snapshot, Timestamp(sync.snapshot_created_at), Timestamp(sync.finished_at), id],
        )
        .map_err(CatalogError::query(what))?;
        tx.execute(
            "INSERT INTO standby_syncs (standby_id, snapshot, mode, bytes, started_at, finished_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                sync.snapshot,
                sync.mode,
                i64::try_from(sync.bytes).unwrap_or(i64::MAX),
                Timestamp(sync.started_at),
                Timestamp(sync.finished_at)
            ],
        )
        .map_err(CatalogError::query(what))?;
        repin(&tx, name, id)?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Marks the standby as being merged to `snapshot` (see
    /// [`StandbyRecord::merging`]); [`Catalog::record_standby_sync`] clears it.
    pub fn begin_standby_merge(&self, name: &str, snapshot: &str) -> Result<(), CatalogError> {
        let changed = self
            .conn
            .execute("UPDATE standbys SET merging = ?1 WHERE name = ?2", params![snapshot, name])
            .map_err(CatalogError::query("mark a standby as being merged"))?;
        if changed == 0 {
            return Err(CatalogError::NotFound { what: format!("standby {name}") });
        }
        Ok(())
    }

    /// Sets the standby's pins back to exactly the images its disks are
    /// recorded at (the undo of a sync's pins; idempotent).
    pub fn restore_standby_pins(&self, name: &str) -> Result<(), CatalogError> {
        let what = "restore a standby's pins";
        let tx = self.write(what)?;
        let id: Option<i64> = tx
            .query_row("SELECT id FROM standbys WHERE name = ?1", [name], |row| row.get(0))
            .optional()
            .map_err(CatalogError::query(what))?;
        match id {
            Some(id) => repin(&tx, name, id)?,
            None => {
                tx.execute(
                    "DELETE FROM image_dependents WHERE kind = ?1 AND name = ?2",
                    params![DependentKind::Standby, name],
                )
                .map_err(CatalogError::query(what))?;
            }
        }
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Forgets a standby, its disks, transfers and pins; false if there was
    /// none of that name.
    pub fn remove_standby(&self, name: &str) -> Result<bool, CatalogError> {
        let what = "forget a standby";
        let tx = self.write(what)?;
        tx.execute("DELETE FROM image_dependents WHERE kind = ?1 AND name = ?2", params![DependentKind::Standby, name])
            .map_err(CatalogError::query(what))?;
        let changed = tx.execute("DELETE FROM standbys WHERE name = ?1", [name]).map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(changed > 0)
    }
}

/// The standby's pins become exactly its disks' recorded images.
fn repin(tx: &rusqlite::Transaction<'_>, name: &str, id: i64) -> Result<(), CatalogError> {
    let what = "move a standby's pins";
    tx.execute("DELETE FROM image_dependents WHERE kind = ?1 AND name = ?2", params![DependentKind::Standby, name])
        .map_err(CatalogError::query(what))?;
    tx.execute(
        "INSERT INTO image_dependents (image_id, kind, name) SELECT DISTINCT source_image_id, ?1, ?2 \
         FROM standby_disks WHERE standby_id = ?3 AND source_image_id IS NOT NULL \
         AND source_image_id IN (SELECT id FROM images)",
        params![DependentKind::Standby, name, id],
    )
    .map_err(CatalogError::query(what))?;
    Ok(())
}

fn standby_row(row: &Row<'_>) -> rusqlite::Result<(i64, StandbyRecord)> {
    let storage: String = row.get(3)?;
    let resources: String = row.get(9)?;
    let resources = serde_json::from_str(&resources)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, Box::new(e)))?;
    Ok((
        row.get(0)?,
        StandbyRecord {
            name: row.get(1)?,
            primary: row.get(2)?,
            host: row.get(11)?,
            storage: PathBuf::from(storage),
            autorestore: row.get(4)?,
            created_at: row.get::<_, Timestamp>(5)?.0,
            snapshot: row.get(6)?,
            snapshot_created_at: row.get::<_, Option<Timestamp>>(7)?.map(|t| t.0),
            synced_at: row.get::<_, Option<Timestamp>>(8)?.map(|t| t.0),
            merging: row.get(10)?,
            resources,
            disks: Vec::new(),
        },
    ))
}

fn disk_row(row: &Row<'_>) -> rusqlite::Result<StandbyDisk> {
    let path: String = row.get(2)?;
    Ok(StandbyDisk {
        vm: row.get(0)?,
        disk: row.get(1)?,
        path: PathBuf::from(path),
        snapshot: row.get(3)?,
        source_image: row.get(4)?,
        sha256: row.get(5)?,
        synced_at: row.get::<_, Option<Timestamp>>(6)?.map(|t| t.0),
    })
}

#[cfg(test)]
mod tests {
    use super::super::model::{Dependent, ImageFormat, ImageKind, NewImage};
    use super::super::testing::*;
    use super::*;

    fn record(name: &str) -> StandbyRecord {
        StandbyRecord {
            name: name.into(),
            primary: "demo".into(),
            host: "local".into(),
            storage: PathBuf::from("/srv/sb"),
            autorestore: true,
            created_at: at(2, 0),
            snapshot: None,
            snapshot_created_at: None,
            synced_at: None,
            merging: None,
            resources: StandbyResources::default(),
            disks: vec![StandbyDisk {
                vm: "db".into(),
                disk: "vda".into(),
                path: PathBuf::from("/srv/sb/db/sb.vda.qcow2"),
                snapshot: None,
                source_image: None,
                sha256: None,
                synced_at: None,
            }],
        }
    }

    fn image(catalog: &Catalog, path: &str) -> ImageId {
        catalog
            .add_image(&NewImage {
                path: PathBuf::from(path),
                vm: "db".into(),
                disk: Some("vda".into()),
                kind: ImageKind::Base,
                format: ImageFormat::Qcow2,
                size_bytes: 1,
                backing: None,
                snapshot: None,
                created_at: at(1, 0),
            })
            .unwrap()
    }

    fn sync(snapshot: &str, image: ImageId) -> NewStandbySync {
        NewStandbySync {
            snapshot: snapshot.into(),
            snapshot_created_at: at(3, 0),
            mode: "full".into(),
            bytes: 42,
            started_at: at(3, 1),
            finished_at: at(3, 2),
            disks: vec![SyncedDisk { vm: "db".into(), disk: "vda".into(), source_image: image, sha256: "ab".into() }],
        }
    }

    #[test]
    fn a_standby_round_trips_and_is_forgotten_with_its_pins() {
        let (_dir, catalog) = catalog();
        catalog.add_standby(&record("sb")).unwrap();
        let base = image(&catalog, "/img/db.qcow2");

        catalog.record_standby_sync("sb", &sync("s1", base)).unwrap();

        let found = catalog.standby_named("sb").unwrap().unwrap();
        assert_eq!(found.snapshot.as_deref(), Some("s1"));
        assert_eq!(found.snapshot_created_at, Some(at(3, 0)));
        assert_eq!(found.disks[0].source_image, Some(base));
        assert_eq!(found.disks[0].sha256.as_deref(), Some("ab"));
        assert_eq!(catalog.standby_syncs("sb", 5).unwrap()[0].bytes, 42);
        assert_eq!(catalog.dependents_of(base).unwrap(), [Dependent::standby_named("sb")]);
        assert_eq!(catalog.standbys(Some("demo")).unwrap().len(), 1);
        assert!(catalog.standbys(Some("other")).unwrap().is_empty());
        assert!(catalog.remove_standby("sb").unwrap());
        assert!(catalog.dependents_of(base).unwrap().is_empty());
        assert!(!catalog.remove_standby("sb").unwrap());
    }

    #[test]
    fn a_sync_moves_the_pins_and_restore_drops_the_extra_ones() {
        let (_dir, catalog) = catalog();
        catalog.add_standby(&record("sb")).unwrap();
        let first = image(&catalog, "/img/1.qcow2");
        let second = image(&catalog, "/img/2.qcow2");
        catalog.record_standby_sync("sb", &sync("s1", first)).unwrap();
        catalog.pin(second, &Dependent::standby_named("sb")).unwrap();

        catalog.restore_standby_pins("sb").unwrap();
        assert!(catalog.dependents_of(second).unwrap().is_empty());

        catalog.record_standby_sync("sb", &sync("s2", second)).unwrap();
        assert!(catalog.dependents_of(first).unwrap().is_empty());
        assert_eq!(catalog.dependents_of(second).unwrap(), [Dependent::standby_named("sb")]);
    }

    #[test]
    fn add_standby_refuses_a_name_taken() {
        let (_dir, catalog) = catalog();
        catalog.add_standby(&record("sb")).unwrap();

        let again = catalog.add_standby(&record("sb"));

        assert!(matches!(again, Err(CatalogError::AlreadyExists { .. })));
    }
}
