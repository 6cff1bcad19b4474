//! Environments and snapshots: what `envclone snapshots ENV` lists and what
//! retention chooses from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Params, Row};

use super::model::{EnvId, Environment, ImageId, NewSnapshot, Snapshot, SnapshotId, SnapshotState, VmConsistency};
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

    /// The newest complete snapshot on `env`'s live chain: the one its
    /// disks go on from now. After `restore ENV S` that is S, not the undo
    /// snapshot nor any snapshot taken after S, which are newer but lie on
    /// the branch the restore left. Every "newest point" decision (standby
    /// create and sync, autorestore, the home sync) asks this, never
    /// [`Catalog::last_snapshot`].
    ///
    /// A disk's live image is its newest leaf: every step that moves a disk
    /// (snapshot, restore, failback) records the new image after the old
    /// one, and a snapshot's own image is never a disk's live one. The
    /// leaves looked at are the images below `env`'s snapshots' images,
    /// clones' overlays and what lies below them aside. A catalog that
    /// knows no live image of `env` (written by hand, say) falls back to
    /// the newest complete snapshot.
    pub fn live_snapshot(&self, env: &str) -> Result<Option<Snapshot>, CatalogError> {
        let what = "find an environment's live chain";
        let mut statement = self
            .conn
            .prepare("SELECT id, vm, disk, backing_image_id, path FROM images WHERE disk IS NOT NULL ORDER BY id")
            .map_err(CatalogError::query(what))?;
        let mut images: Vec<LiveImage> = statement
            .query_map([], |row| {
                Ok(LiveImage {
                    id: row.get(0)?,
                    disk: (row.get(1)?, row.get(2)?),
                    backing: row.get(3)?,
                    path: row.get(4)?,
                    snapshot_image: false,
                    env_snapshots: Vec::new(),
                })
            })
            .map_err(CatalogError::query(what))?
            .collect::<Result<_, _>>()
            .map_err(CatalogError::query(what))?;
        let mut statement = self
            .conn
            .prepare("SELECT image_id, name FROM image_dependents WHERE kind = 'snapshot'")
            .map_err(CatalogError::query(what))?;
        let pins: Vec<(ImageId, String)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(CatalogError::query(what))?
            .collect::<Result<_, _>>()
            .map_err(CatalogError::query(what))?;
        let prefix = format!("{env}/");
        for (id, pin) in pins {
            if let Ok(at) = images.binary_search_by_key(&id, |i| i.id) {
                images[at].snapshot_image = true;
                if let Some(snapshot) = pin.strip_prefix(&prefix) {
                    images[at].env_snapshots.push(snapshot.to_owned());
                }
            }
        }
        let clone_overlays: BTreeSet<String> = self
            .clones()?
            .into_iter()
            .flat_map(|clone| clone.resources.disks)
            .map(|disk| disk.path.to_string_lossy().into_owned())
            .collect();

        // Down from `env`'s snapshots' images, not into a clone's overlay.
        let mut children: BTreeMap<ImageId, Vec<&LiveImage>> = BTreeMap::new();
        for image in &images {
            if let Some(backing) = image.backing {
                children.entry(backing).or_default().push(image);
            }
        }
        let mut below: Vec<&LiveImage> = images.iter().filter(|i| !i.env_snapshots.is_empty()).collect();
        let mut seen: BTreeSet<ImageId> = below.iter().map(|i| i.id).collect();
        let mut live_leaf: BTreeMap<&(String, String), ImageId> = BTreeMap::new();
        while let Some(image) = below.pop() {
            let next = children.get(&image.id).map(Vec::as_slice).unwrap_or_default();
            if next.is_empty() && !image.snapshot_image {
                let newest = live_leaf.entry(&image.disk).or_insert(image.id);
                *newest = (*newest).max(image.id);
            }
            for child in next {
                if !clone_overlays.contains(&child.path) && seen.insert(child.id) {
                    below.push(child);
                }
            }
        }
        if live_leaf.is_empty() {
            return self.last_snapshot(env, None);
        }

        // Up from each live image: the snapshots of `env` on the way.
        let by_id: BTreeMap<ImageId, &LiveImage> = images.iter().map(|i| (i.id, i)).collect();
        let mut on_chain: BTreeSet<&str> = BTreeSet::new();
        for &leaf in live_leaf.values() {
            let mut visited = BTreeSet::new();
            let mut at = by_id.get(&leaf).copied();
            while let Some(image) = at.filter(|i| visited.insert(i.id)) {
                on_chain.extend(image.env_snapshots.iter().map(String::as_str));
                at = image.backing.and_then(|b| by_id.get(&b).copied());
            }
        }
        let mut live = self.load_snapshots("e.name = ?1 AND s.state = 'complete'", [env])?;
        live.retain(|s| on_chain.contains(s.name.as_str()));
        Ok(live.pop())
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

/// An image as [`Catalog::live_snapshot`] walks it.
struct LiveImage {
    id: ImageId,
    /// VM and disk target.
    disk: (String, String),
    backing: Option<ImageId>,
    path: String,
    /// Some snapshot (of any environment) pins it.
    snapshot_image: bool,
    /// The snapshots of the environment asked about that pin it.
    env_snapshots: Vec<String>,
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
    use super::super::model::{Consistency, Dependent, ImageFormat, ImageId, ImageKind, NewImage};
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

    /// `prod`'s disk `web/vda` as a snapshot and a restore leave it: a
    /// base, then each snapshot's image pinned by it, each on the one
    /// before; `add` records one more image on `backing`.
    struct Chain<'c> {
        catalog: &'c Catalog,
    }

    impl Chain<'_> {
        fn add(&self, path: &str, backing: Option<ImageId>) -> ImageId {
            let kind = if backing.is_some() { ImageKind::Overlay } else { ImageKind::Base };
            self.catalog
                .add_image(&NewImage {
                    path: path.into(),
                    vm: "web".into(),
                    disk: Some("vda".into()),
                    kind,
                    format: ImageFormat::Qcow2,
                    size_bytes: 1,
                    backing,
                    snapshot: None,
                    created_at: at(0, 0),
                })
                .unwrap()
        }

        /// A complete snapshot `name` at `hour` whose image is `image`.
        fn snapshot(&self, name: &str, hour: u32, image: ImageId) -> SnapshotId {
            let id = self.catalog.create_snapshot(&new_snapshot("prod", name, hour)).unwrap();
            self.catalog.pin(image, &Dependent::snapshot_named(format!("prod/{name}"))).unwrap();
            self.catalog.set_snapshot_state(id, SnapshotState::Complete).unwrap();
            id
        }
    }

    fn live(catalog: &Catalog) -> Option<String> {
        catalog.live_snapshot("prod").unwrap().map(|s| s.name)
    }

    #[test]
    fn the_live_snapshot_after_a_restore_is_the_restored_one_not_the_undo_snapshot() {
        let (_dir, catalog) = catalog();
        let chain = Chain { catalog: &catalog };
        let base = chain.add("/i/web.qcow2", None);
        let s1 = chain.add("/i/s1.qcow2", Some(base));
        chain.snapshot("s1", 1, s1);
        let s2 = chain.add("/i/s2.qcow2", Some(s1));
        chain.snapshot("s2", 2, s2);
        let written = chain.add("/i/active.qcow2", Some(s2));
        assert_eq!(live(&catalog).as_deref(), Some("s2"));

        // restore prod s1: what the disk wrote becomes the undo snapshot,
        // the disk goes on on a new overlay on s1's image.
        chain.snapshot("undo-before-restore-s1", 3, written);
        let restored = chain.add("/i/restore-s1.qcow2", Some(s1));

        assert_eq!(catalog.last_snapshot("prod", None).unwrap().unwrap().name, "undo-before-restore-s1");
        assert_eq!(live(&catalog).as_deref(), Some("s1"));

        // A clone of s2 made afterwards is the clone's, not prod's disk.
        chain.add("/clones/c/web.vda.qcow2", Some(s2));
        catalog
            .add_clone(&crate::catalog::CloneRecord {
                name: "c".into(),
                source_env: "prod".into(),
                snapshot: "s2".into(),
                created_at: at(4, 0),
                disks: "linked".into(),
                network: "isolated".into(),
                environment: serde_json::json!({}),
                resources: crate::catalog::CloneResources {
                    disks: vec![crate::catalog::ClonedDisk {
                        vm: "web".into(),
                        disk: "vda".into(),
                        path: "/clones/c/web.vda.qcow2".into(),
                        backing: "/i/s2.qcow2".into(),
                    }],
                    ..Default::default()
                },
            })
            .unwrap();
        assert_eq!(live(&catalog).as_deref(), Some("s1"));

        // The next snapshot is on the live chain again.
        chain.snapshot("s3", 5, restored);
        chain.add("/i/after-s3.qcow2", Some(restored));
        assert_eq!(live(&catalog).as_deref(), Some("s3"));
    }

    #[test]
    fn the_live_snapshot_after_a_discarding_restore_is_the_restored_one() {
        let (_dir, catalog) = catalog();
        let chain = Chain { catalog: &catalog };
        let base = chain.add("/i/web.qcow2", None);
        let s1 = chain.add("/i/s1.qcow2", Some(base));
        chain.snapshot("s1", 1, s1);
        let s2 = chain.add("/i/s2.qcow2", Some(s1));
        chain.snapshot("s2", 2, s2);
        // `--discard`: no undo snapshot, the overlay on s2 is deleted.
        chain.add("/i/restore-s1.qcow2", Some(s1));

        assert_eq!(live(&catalog).as_deref(), Some("s1"));
        assert_eq!(catalog.live_snapshot("other").unwrap(), None);
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
