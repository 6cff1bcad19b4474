//! Environments and snapshots: what `envclone snapshots ENV` lists and what
//! retention chooses from.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Params, Row};

use super::model::{EnvId, Environment, NewSnapshot, Snapshot, SnapshotId, SnapshotState, VmConsistency};
use super::{Catalog, CatalogError, Timestamp};

const SNAPSHOT_COLUMNS: &str = "s.id, e.name, s.name, s.label, s.schedule, s.created_at, s.state, s.memory, \
     s.freeze_window_ms, (SELECT COALESCE(SUM(i.size_bytes), 0) FROM images i WHERE i.snapshot_id = s.id)";

impl Catalog {
    /// The environment's id, recording it first if it is new.
    pub fn ensure_environment(&self, name: &str, now: DateTime<Utc>) -> Result<EnvId, CatalogError> {
        let tx = self.write("record an environment")?;
        let id = ensure_environment(&tx, name, now)?;
        tx.commit().map_err(CatalogError::query("record an environment"))?;
        Ok(id)
    }

    pub fn environment(&self, name: &str) -> Result<Option<Environment>, CatalogError> {
        self.conn
            .query_row("SELECT id, name, created_at FROM environments WHERE name = ?1", [name], environment_row)
            .optional()
            .map_err(CatalogError::query("look up an environment"))
    }

    /// Every environment, by name.
    pub fn environments(&self) -> Result<Vec<Environment>, CatalogError> {
        let what = "list the environments";
        let mut statement = self
            .conn
            .prepare("SELECT id, name, created_at FROM environments ORDER BY name")
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([], environment_row).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// Records a snapshot that is about to be taken, in state `in-progress`.
    pub fn create_snapshot(&self, new: &NewSnapshot) -> Result<SnapshotId, CatalogError> {
        let what = "record a snapshot";
        let tx = self.write(what)?;
        let env = ensure_environment(&tx, &new.env, new.created_at)?;
        tx.execute(
            "INSERT INTO snapshots (env_id, name, label, schedule, created_at, state, memory) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                env,
                new.name,
                new.label,
                new.schedule,
                Timestamp(new.created_at),
                SnapshotState::InProgress,
                new.memory
            ],
        )
        .map_err(CatalogError::insert(what, format!("snapshot '{}' of environment '{}'", new.name, new.env)))?;
        let id = SnapshotId(tx.last_insert_rowid());
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(id)
    }

    pub fn snapshot(&self, id: SnapshotId) -> Result<Snapshot, CatalogError> {
        self.load_snapshots("s.id = ?1", [id])?
            .pop()
            .ok_or_else(|| CatalogError::NotFound { what: format!("snapshot {id}") })
    }

    pub fn snapshot_named(&self, env: &str, name: &str) -> Result<Option<Snapshot>, CatalogError> {
        Ok(self.load_snapshots("e.name = ?1 AND s.name = ?2", params![env, name])?.pop())
    }

    /// Every snapshot of `env` in any state, oldest first.
    pub fn snapshots(&self, env: &str) -> Result<Vec<Snapshot>, CatalogError> {
        self.load_snapshots("e.name = ?1", [env])
    }

    /// The newest complete snapshot of `env`, or of one of its schedules.
    pub fn last_snapshot(&self, env: &str, schedule: Option<&str>) -> Result<Option<Snapshot>, CatalogError> {
        let mut snapshots = match schedule {
            Some(schedule) => {
                self.load_snapshots("e.name = ?1 AND s.state = 'complete' AND s.schedule = ?2", params![env, schedule])?
            }
            None => self.load_snapshots("e.name = ?1 AND s.state = 'complete'", [env])?,
        };
        Ok(snapshots.pop())
    }

    /// Moves a snapshot to `to`, refusing a change
    /// [`SnapshotState::valid_transition`] does not allow.
    pub fn set_snapshot_state(&self, id: SnapshotId, to: SnapshotState) -> Result<(), CatalogError> {
        let what = "change a snapshot's state";
        let tx = self.write(what)?;
        let from: SnapshotState = tx
            .query_row("SELECT state FROM snapshots WHERE id = ?1", [id], |row| row.get(0))
            .optional()
            .map_err(CatalogError::query(what))?
            .ok_or_else(|| CatalogError::NotFound { what: format!("snapshot {id}") })?;
        if !from.valid_transition(to) {
            return Err(CatalogError::InvalidTransition {
                what: format!("snapshot {id}"),
                from: from.as_str(),
                to: to.as_str(),
            });
        }
        tx.execute("UPDATE snapshots SET state = ?2 WHERE id = ?1", params![id, to])
            .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Records (or replaces) how consistent one VM's part of a snapshot is.
    pub fn record_vm_consistency(&self, id: SnapshotId, vm: &VmConsistency) -> Result<(), CatalogError> {
        let what = "record a VM's consistency";
        let changed = self
            .conn
            .execute(
                "INSERT INTO snapshot_vms (snapshot_id, vm, consistency, reason) \
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM snapshots WHERE id = ?1) \
                 ON CONFLICT (snapshot_id, vm) DO UPDATE SET consistency = excluded.consistency, \
                 reason = excluded.reason",
                params![id, vm.vm, vm.consistency, vm.reason],
            )
            .map_err(CatalogError::query(what))?;
        if changed == 0 {
            return Err(CatalogError::NotFound { what: format!("snapshot {id}") });
        }
        Ok(())
    }

    /// Records how long the guests stayed frozen for this snapshot.
    pub fn set_freeze_window(&self, id: SnapshotId, window: Duration) -> Result<(), CatalogError> {
        let millis = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let changed = self
            .conn
            .execute("UPDATE snapshots SET freeze_window_ms = ?2 WHERE id = ?1", params![id, millis])
            .map_err(CatalogError::query("record a freeze window"))?;
        if changed == 0 {
            return Err(CatalogError::NotFound { what: format!("snapshot {id}") });
        }
        Ok(())
    }

    /// Snapshots matching `filter` (a fixed SQL condition over `s` and `e`),
    /// oldest first, each with its VMs.
    fn load_snapshots<P: Params + Copy>(&self, filter: &str, params: P) -> Result<Vec<Snapshot>, CatalogError> {
        let what = "list snapshots";
        let from = format!("FROM snapshots s JOIN environments e ON e.id = s.env_id WHERE {filter}");
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {SNAPSHOT_COLUMNS} {from} ORDER BY s.created_at, s.id"))
            .map_err(CatalogError::query(what))?;
        let mut snapshots: Vec<Snapshot> = statement
            .query_map(params, snapshot_row)
            .map_err(CatalogError::query(what))?
            .collect::<Result<_, _>>()
            .map_err(CatalogError::query(what))?;

        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT snapshot_id, vm, consistency, reason FROM snapshot_vms \
                 WHERE snapshot_id IN (SELECT s.id {from}) ORDER BY snapshot_id, vm"
            ))
            .map_err(CatalogError::query(what))?;
        let mut vms: BTreeMap<SnapshotId, Vec<VmConsistency>> = BTreeMap::new();
        let rows = statement
            .query_map(params, |row| {
                Ok((
                    row.get::<_, SnapshotId>(0)?,
                    VmConsistency { vm: row.get(1)?, consistency: row.get(2)?, reason: row.get(3)? },
                ))
            })
            .map_err(CatalogError::query(what))?;
        for row in rows {
            let (id, vm) = row.map_err(CatalogError::query(what))?;
            vms.entry(id).or_default().push(vm);
        }
        for snapshot in &mut snapshots {
            snapshot.vms = vms.remove(&snapshot.id).unwrap_or_default();
        }
        Ok(snapshots)
    }
}

pub(super) fn ensure_environment(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    now: DateTime<Utc>,
) -> Result<EnvId, CatalogError> {
    let what = "record an environment";
    tx.execute(
        "INSERT INTO environments (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![name, Timestamp(now)],
    )
    .map_err(CatalogError::query(what))?;
    tx.query_row("SELECT id FROM environments WHERE name = ?1", [name], |row| row.get(0))
        .map_err(CatalogError::query(what))
}

fn environment_row(row: &Row<'_>) -> rusqlite::Result<Environment> {
    Ok(Environment { id: row.get(0)?, name: row.get(1)?, created_at: row.get::<_, Timestamp>(2)?.0 })
}

fn snapshot_row(row: &Row<'_>) -> rusqlite::Result<Snapshot> {
    let freeze_ms: Option<i64> = row.get(8)?;
    let size: i64 = row.get(9)?;
    Ok(Snapshot {
        id: row.get(0)?,
        env: row.get(1)?,
        name: row.get(2)?,
        label: row.get(3)?,
        schedule: row.get(4)?,
        created_at: row.get::<_, Timestamp>(5)?.0,
        state: row.get(6)?,
        memory: row.get(7)?,
        freeze_window: freeze_ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        size_bytes: u64::try_from(size).unwrap_or(0),
        vms: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::model::Consistency;
    use super::super::testing::*;
    use super::*;

    fn new_snapshot(env: &str, name: &str, hour: u32) -> NewSnapshot {
        NewSnapshot {
            env: env.into(),
            name: name.into(),
            label: None,
            schedule: None,
            created_at: at(hour, 0),
            memory: false,
        }
    }

    #[test]
    fn snapshot_round_trip_with_vms_and_freeze_window() {
        let (_dir, catalog) = catalog();
        let id = catalog
            .create_snapshot(&NewSnapshot {
                label: Some("before upgrade".into()),
                memory: true,
                ..new_snapshot("prod", "s1", 2)
            })
            .unwrap();
        catalog
            .record_vm_consistency(
                id,
                &VmConsistency { vm: "web".into(), consistency: Consistency::AppConsistent, reason: None },
            )
            .unwrap();
        let db = VmConsistency {
            vm: "db".into(),
            consistency: Consistency::CrashConsistent,
            reason: Some("agent did not answer".into()),
        };
        catalog.record_vm_consistency(id, &db).unwrap();
        catalog.set_freeze_window(id, Duration::from_millis(1234)).unwrap();
        catalog.set_snapshot_state(id, SnapshotState::Complete).unwrap();

        let snapshot = catalog.snapshot(id).unwrap();

        assert_eq!(snapshot.env, "prod");
        assert_eq!(snapshot.label.as_deref(), Some("before upgrade"));
        assert_eq!(snapshot.created_at, at(2, 0));
        assert_eq!(snapshot.state, SnapshotState::Complete);
        assert!(snapshot.memory);
        assert_eq!(snapshot.freeze_window, Some(Duration::from_millis(1234)));
        assert_eq!(snapshot.size_bytes, 0);
        assert_eq!(snapshot.vms.len(), 2);
        assert_eq!(snapshot.vms[0], db);
        assert_eq!(catalog.snapshot_named("prod", "s1").unwrap().map(|s| s.id), Some(id));
    }

    #[test]
    fn snapshots_list_per_environment_oldest_first() {
        let (_dir, catalog) = catalog();
        let late = catalog.create_snapshot(&new_snapshot("prod", "late", 5)).unwrap();
        let early = catalog.create_snapshot(&new_snapshot("prod", "early", 1)).unwrap();
        catalog.create_snapshot(&new_snapshot("test", "other", 3)).unwrap();

        let ids: Vec<SnapshotId> = catalog.snapshots("prod").unwrap().iter().map(|s| s.id).collect();

        assert_eq!(ids, [early, late]);
        let names: Vec<String> = catalog.environments().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["prod", "test"]);
    }

    #[test]
    fn last_snapshot_is_the_newest_complete_one_of_the_schedule() {
        let (_dir, catalog) = catalog();
        let nightly =
            |name: &str, hour| NewSnapshot { schedule: Some("nightly".into()), ..new_snapshot("prod", name, hour) };
        let old = catalog.create_snapshot(&nightly("a", 1)).unwrap();
        catalog.set_snapshot_state(old, SnapshotState::Complete).unwrap();
        let manual = catalog.create_snapshot(&new_snapshot("prod", "manual", 3)).unwrap();
        catalog.set_snapshot_state(manual, SnapshotState::Complete).unwrap();
        catalog.create_snapshot(&nightly("running", 4)).unwrap();

        assert_eq!(catalog.last_snapshot("prod", Some("nightly")).unwrap().map(|s| s.id), Some(old));
        assert_eq!(catalog.last_snapshot("prod", None).unwrap().map(|s| s.id), Some(manual));
        assert_eq!(catalog.last_snapshot("test", None).unwrap(), None);
    }

    #[test]
    fn create_snapshot_refuses_a_duplicate_name() {
        let (_dir, catalog) = catalog();
        catalog.create_snapshot(&new_snapshot("prod", "s1", 1)).unwrap();

        let error = catalog.create_snapshot(&new_snapshot("prod", "s1", 2)).unwrap_err();

        assert!(matches!(error, CatalogError::AlreadyExists { .. }), "{error:?}");
    }

    #[test]
    fn set_snapshot_state_refuses_an_invalid_transition() {
        let (_dir, catalog) = catalog();
        let id = catalog.create_snapshot(&new_snapshot("prod", "s1", 1)).unwrap();

        let error = catalog.set_snapshot_state(id, SnapshotState::Deleted).unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "in-progress", to: "deleted", .. }));
        assert_eq!(catalog.snapshot(id).unwrap().state, SnapshotState::InProgress);
    }

    #[test]
    fn unknown_snapshot_is_not_found() {
        let (_dir, catalog) = catalog();
        let vm = VmConsistency { vm: "web".into(), consistency: Consistency::None, reason: None };

        assert!(matches!(catalog.snapshot(SnapshotId(7)), Err(CatalogError::NotFound { .. })));
        assert!(matches!(catalog.record_vm_consistency(SnapshotId(7), &vm), Err(CatalogError::NotFound { .. })));
        assert!(matches!(catalog.set_freeze_window(SnapshotId(7), Duration::ZERO), Err(CatalogError::NotFound { .. })));
        assert!(matches!(
            catalog.set_snapshot_state(SnapshotId(7), SnapshotState::Failed),
            Err(CatalogError::NotFound { .. })
        ));
    }

    #[test]
    fn a_state_the_catalog_does_not_know_is_corrupt() {
        let (_dir, catalog) = catalog();
        let id = catalog.create_snapshot(&new_snapshot("prod", "s1", 1)).unwrap();
        catalog.conn.execute_batch("PRAGMA ignore_check_constraints = ON").unwrap();
        catalog.conn.execute("UPDATE snapshots SET state = 'exploded' WHERE id = ?1", [id]).unwrap();

        let error = catalog.snapshot(id).unwrap_err();

        assert!(matches!(error, CatalogError::Corrupt { .. }), "{error:?}");
    }
}
