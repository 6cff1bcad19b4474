//! What deleting a snapshot records: merges of images into their
//! neighbours, and a snapshot's deletion requested, deferred or done.
//!
//! A merge is recorded in one write transaction that re-checks, under the
//! write lock, the rule the delete operation planned with: the image that
//! changes and the image that goes are needed by nothing but the deleted
//! snapshot (and, for the one that goes, later snapshots of the same
//! chain, whose pins move to the image that now holds their data). A
//! catalog that changed since the plan gives [`CatalogError::Refused`] and
//! records nothing.
//!
//! - [`Catalog::record_commit_merge`]: `top` (the child) was committed into
//!   `into` (its backing file) and `top` is gone; `top`'s pins and children
//!   move to `into` (a live block commit, `ops::delete`).
//! - [`Catalog::record_pull_merge`]: `removed`'s data was pulled into its
//!   only child `into`, whose backing file is now `removed`'s backing file
//!   (an offline `qemu-img rebase`).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::error::{Refusal, RefusalReason};
use super::model::{Dependent, DependentKind, ImageId, ImageKind, SnapshotId, SnapshotState};
use super::{Catalog, CatalogError, Timestamp};

/// A commit of `top` into its backing image `into`, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMerge {
    /// The deleted snapshot's pin on `into`; it goes.
    pub released: Dependent,
    /// The image merged away: its data is in `into` now, its file goes.
    pub top: ImageId,
    /// `top`'s backing image, which now holds `top`'s view of the disk.
    pub into: ImageId,
    /// `into`'s file size after the commit.
    pub into_size: u64,
}

/// A pull of `removed` into its only child `into`, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullMerge {
    /// The deleted snapshot's pin on `removed`; it goes.
    pub released: Dependent,
    /// The image merged away: its data is in `into` now, its file goes.
    pub removed: ImageId,
    /// `removed`'s only child; its backing image becomes `removed`'s.
    pub into: ImageId,
    /// `into`'s file size after the pull.
    pub into_size: u64,
}

/// A snapshot's pending or deferred deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    pub snapshot: SnapshotId,
    pub requested_at: DateTime<Utc>,
    /// Why it was deferred, if it was.
    pub deferred: Option<String>,
}

/// The columns of an image a merge checks.
#[derive(Debug)]
struct Node {
    id: ImageId,
    path: String,
    kind: ImageKind,
    backing: Option<ImageId>,
    snapshot: Option<SnapshotId>,
}

impl Catalog {
    /// Records that `merge.top` was committed into `merge.into` and is
    /// gone: the deleted snapshot's pin on `into` goes, `top`'s snapshot
    /// pins and children move to `into`, `top`'s record goes. Returns the
    /// snapshot pins that moved. See the module documentation.
    pub fn record_commit_merge(&self, merge: &CommitMerge) -> Result<Vec<Dependent>, CatalogError> {
        let what = "record a commit of an image into its backing image";
        let tx = self.write(what)?;
        let top = node(&tx, merge.top)?;
        let into = node(&tx, merge.into)?;
        if top.backing != Some(into.id) {
            return Err(CatalogError::Corrupt {
                what,
                detail: format!("image {} whose backing image is not {}", top.path, into.path),
            });
        }
        let mut reasons = only_pinned_by(&tx, &into, &merge.released)?;
        reasons.extend(other_children(&tx, &into, top.id)?);
        refuse_if_any(&into, reasons)?;
        let mut reasons = not_owned(&tx, &top)?;
        let moved = dependents(&tx, top.id)?;
        reasons
            .extend(moved.iter().filter(|d| d.kind != DependentKind::Snapshot).cloned().map(RefusalReason::NeededBy));
        refuse_if_any(&top, reasons)?;

        tx.execute(
            "DELETE FROM image_dependents WHERE image_id = ?1 AND kind = ?2 AND name = ?3",
            params![into.id, merge.released.kind, merge.released.name],
        )
        .map_err(CatalogError::query(what))?;
        tx.execute(
            "INSERT INTO image_dependents (image_id, kind, name) \
             SELECT ?1, kind, name FROM image_dependents WHERE image_id = ?2 ON CONFLICT DO NOTHING",
            params![into.id, top.id],
        )
        .map_err(CatalogError::query(what))?;
        tx.execute("DELETE FROM image_dependents WHERE image_id = ?1", [top.id]).map_err(CatalogError::query(what))?;
        tx.execute("UPDATE images SET backing_image_id = ?1 WHERE backing_image_id = ?2", params![into.id, top.id])
            .map_err(CatalogError::query(what))?;
        set_size(&tx, what, into.id, merge.into_size)?;
        tx.execute("DELETE FROM images WHERE id = ?1", [top.id]).map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(moved)
    }

    /// Records that `merge.removed` was pulled into its only child
    /// `merge.into` and is gone: the deleted snapshot's pin goes, `into`
    /// backs onto `removed`'s backing image, `removed`'s record goes.
    pub fn record_pull_merge(&self, merge: &PullMerge) -> Result<(), CatalogError> {
        let what = "record a pull of an image into its child";
        let tx = self.write(what)?;
        let removed = node(&tx, merge.removed)?;
        let into = node(&tx, merge.into)?;
        if into.backing != Some(removed.id) {
            return Err(CatalogError::Corrupt {
                what,
                detail: format!("image {} whose backing image is not {}", into.path, removed.path),
            });
        }
        let mut reasons = only_pinned_by(&tx, &removed, &merge.released)?;
        reasons.extend(other_children(&tx, &removed, into.id)?);
        reasons.extend(not_owned(&tx, &removed)?);
        refuse_if_any(&removed, reasons)?;
        let outside: Vec<RefusalReason> = dependents(&tx, into.id)?
            .into_iter()
            .filter(|d| d.kind != DependentKind::Snapshot)
            .map(RefusalReason::NeededBy)
            .collect();
        refuse_if_any(&into, outside)?;

        tx.execute(
            "DELETE FROM image_dependents WHERE image_id = ?1 AND kind = ?2 AND name = ?3",
            params![removed.id, merge.released.kind, merge.released.name],
        )
        .map_err(CatalogError::query(what))?;
        tx.execute("UPDATE images SET backing_image_id = ?1 WHERE id = ?2", params![removed.backing, into.id])
            .map_err(CatalogError::query(what))?;
        set_size(&tx, what, into.id, merge.into_size)?;
        tx.execute("DELETE FROM images WHERE id = ?1", [removed.id]).map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Records an image's file size as measured now.
    pub fn set_image_size(&self, id: ImageId, size: u64) -> Result<(), CatalogError> {
        let what = "record an image's size";
        let tx = self.write(what)?;
        node(&tx, id)?;
        set_size(&tx, what, id, size)?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Marks a complete or failed snapshot `deleted` at `at` and forgets
    /// any pending request to delete it. Its pins stay until its images
    /// are merged or released.
    pub fn mark_snapshot_deleted(&self, id: SnapshotId, at: DateTime<Utc>) -> Result<(), CatalogError> {
        let what = "mark a snapshot deleted";
        let tx = self.write(what)?;
        let from: SnapshotState = tx
            .query_row("SELECT state FROM snapshots WHERE id = ?1", [id], |row| row.get(0))
            .optional()
            .map_err(CatalogError::query(what))?
            .ok_or_else(|| CatalogError::NotFound { what: format!("snapshot {id}") })?;
        if !from.valid_transition(SnapshotState::Deleted) {
            return Err(CatalogError::InvalidTransition {
                what: format!("snapshot {id}"),
                from: from.as_str(),
                to: SnapshotState::Deleted.as_str(),
            });
        }
        tx.execute(
            "UPDATE snapshots SET state = ?2, deleted_at = ?3, delete_requested_at = NULL, delete_deferred = NULL \
             WHERE id = ?1",
            params![id, SnapshotState::Deleted, Timestamp(at)],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// When the snapshot was marked deleted, if it was.
    pub fn deleted_at(&self, id: SnapshotId) -> Result<Option<DateTime<Utc>>, CatalogError> {
        let time: Option<Option<Timestamp>> = self
            .conn
            .query_row("SELECT deleted_at FROM snapshots WHERE id = ?1", [id], |row| row.get(0))
            .optional()
            .map_err(CatalogError::query("read when a snapshot was deleted"))?;
        match time {
            Some(time) => Ok(time.map(|t| t.0)),
            None => Err(CatalogError::NotFound { what: format!("snapshot {id}") }),
        }
    }

    /// Records that deleting the snapshot was asked for at `at` and
    /// deferred because of `reason`; the first request's time is kept.
    pub fn defer_snapshot_delete(&self, id: SnapshotId, at: DateTime<Utc>, reason: &str) -> Result<(), CatalogError> {
        let changed = self
            .conn
            .execute(
                "UPDATE snapshots SET delete_requested_at = COALESCE(delete_requested_at, ?2), \
                 delete_deferred = ?3 WHERE id = ?1",
                params![id, Timestamp(at), reason],
            )
            .map_err(CatalogError::query("record a deferred delete"))?;
        if changed == 0 {
            return Err(CatalogError::NotFound { what: format!("snapshot {id}") });
        }
        Ok(())
    }

    /// The pending (deferred) request to delete the snapshot, if any.
    pub fn delete_request(&self, id: SnapshotId) -> Result<Option<DeleteRequest>, CatalogError> {
        let row: Option<(Option<Timestamp>, Option<String>)> = self
            .conn
            .query_row("SELECT delete_requested_at, delete_deferred FROM snapshots WHERE id = ?1", [id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
            .map_err(CatalogError::query("read a snapshot's delete request"))?;
        match row {
            None => Err(CatalogError::NotFound { what: format!("snapshot {id}") }),
            Some((None, _)) => Ok(None),
            Some((Some(at), deferred)) => Ok(Some(DeleteRequest { snapshot: id, requested_at: at.0, deferred })),
        }
    }

    /// Snapshots of `env` whose deletion is not finished, oldest first:
    /// complete ones whose delete was deferred, and deleted ones that
    /// still pin images or own memory images (an interrupted delete).
    pub fn unfinished_deletes(&self, env: &str) -> Result<Vec<SnapshotId>, CatalogError> {
        let what = "list unfinished deletes";
        let mut statement = self
            .conn
            .prepare(
                "SELECT s.id FROM snapshots s JOIN environments e ON e.id = s.env_id WHERE e.name = ?1 AND ( \
                 (s.state = 'complete' AND s.delete_requested_at IS NOT NULL) OR \
                 (s.state = 'deleted' AND (EXISTS (SELECT 1 FROM images i WHERE i.snapshot_id = s.id) OR \
                  EXISTS (SELECT 1 FROM image_dependents d WHERE d.kind = 'snapshot' AND d.name = e.name || '/' || s.name)))) \
                 ORDER BY s.created_at, s.id",
            )
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([env], |row| row.get(0)).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }
}

fn node(conn: &Connection, id: ImageId) -> Result<Node, CatalogError> {
    conn.query_row("SELECT id, path, kind, backing_image_id, snapshot_id FROM images WHERE id = ?1", [id], |row| {
        Ok(Node { id: row.get(0)?, path: row.get(1)?, kind: row.get(2)?, backing: row.get(3)?, snapshot: row.get(4)? })
    })
    .optional()
    .map_err(CatalogError::query("look up an image"))?
    .ok_or_else(|| CatalogError::NotFound { what: format!("image {id}") })
}

fn dependents(conn: &Connection, image: ImageId) -> Result<Vec<Dependent>, CatalogError> {
    let what = "list what needs an image";
    let mut statement = conn
        .prepare("SELECT kind, name FROM image_dependents WHERE image_id = ?1 ORDER BY kind, name")
        .map_err(CatalogError::query(what))?;
    let rows = statement
        .query_map([image], |row| Ok(Dependent { kind: row.get(0)?, name: row.get(1)? }))
        .map_err(CatalogError::query(what))?;
    rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
}

/// Why `image` may not change: a base image, or pinned by anything but `released`.
fn only_pinned_by(conn: &Connection, image: &Node, released: &Dependent) -> Result<Vec<RefusalReason>, CatalogError> {
    let mut reasons = Vec::new();
    if matches!(image.kind, ImageKind::Base | ImageKind::FullCopy | ImageKind::Memory) {
        reasons.push(RefusalReason::BaseImage);
    }
    reasons.extend(dependents(conn, image.id)?.into_iter().filter(|d| d != released).map(RefusalReason::NeededBy));
    Ok(reasons)
}

/// Children of `image` other than `child`.
fn other_children(conn: &Connection, image: &Node, child: ImageId) -> Result<Vec<RefusalReason>, CatalogError> {
    let what = "list an image's children";
    let mut statement = conn
        .prepare("SELECT id, path FROM images WHERE backing_image_id = ?1 AND id <> ?2 ORDER BY id")
        .map_err(CatalogError::query(what))?;
    let rows = statement
        .query_map(params![image.id, child], |row| {
            Ok(RefusalReason::BacksImage {
                child: row.get(0)?,
                path: std::path::PathBuf::from(row.get::<_, String>(1)?),
            })
        })
        .map_err(CatalogError::query(what))?;
    rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
}

/// An image owned by a snapshot that still exists goes with that snapshot only.
fn not_owned(conn: &Connection, image: &Node) -> Result<Vec<RefusalReason>, CatalogError> {
    let Some(snapshot) = image.snapshot else { return Ok(Vec::new()) };
    let (name, state): (String, SnapshotState) = conn
        .query_row("SELECT name, state FROM snapshots WHERE id = ?1", [snapshot], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(CatalogError::query("look up an image's snapshot"))?;
    Ok(if matches!(state, SnapshotState::InProgress | SnapshotState::Complete) {
        vec![RefusalReason::PartOfSnapshot { snapshot, name }]
    } else {
        Vec::new()
    })
}

fn refuse_if_any(image: &Node, reasons: Vec<RefusalReason>) -> Result<(), CatalogError> {
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Refusal { image: image.id, path: image.path.clone().into(), reasons }.into())
    }
}

fn set_size(conn: &Connection, what: &'static str, id: ImageId, size: u64) -> Result<(), CatalogError> {
    conn.execute(
        "UPDATE images SET size_bytes = ?2 WHERE id = ?1",
        params![id, i64::try_from(size).unwrap_or(i64::MAX)],
    )
    .map_err(CatalogError::query(what))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::model::{ImageFormat, NewImage, NewSnapshot};
    use super::super::testing::*;
    use super::*;

    /// base <- o1 (pinned by s2) <- o2 (pinned by s3) <- active; s1 pins base.
    struct Chain {
        base: ImageId,
        o1: ImageId,
        o2: ImageId,
        active: ImageId,
        snapshots: Vec<SnapshotId>,
    }

    fn pin_of(name: &str) -> Dependent {
        Dependent::snapshot_named(format!("prod/{name}"))
    }

    fn image(catalog: &Catalog, path: &str, kind: ImageKind, backing: Option<ImageId>) -> ImageId {
        catalog
            .add_image(&NewImage {
                path: PathBuf::from(path),
                vm: "web".into(),
                disk: Some("vda".into()),
                kind,
                format: ImageFormat::Qcow2,
                size_bytes: 1 << 20,
                backing,
                snapshot: None,
                created_at: at(1, 0),
            })
            .unwrap()
    }

    fn chain(catalog: &Catalog) -> Chain {
        let snapshots: Vec<SnapshotId> = (1..=3)
            .map(|n| {
                let id = catalog
                    .create_snapshot(&NewSnapshot {
                        env: "prod".into(),
                        name: format!("s{n}"),
                        label: None,
                        schedule: None,
                        created_at: at(n, 0),
                        memory: false,
                    })
                    .unwrap();
                catalog.set_snapshot_state(id, SnapshotState::Complete).unwrap();
                id
            })
            .collect();
        let base = image(catalog, "/img/web.qcow2", ImageKind::Base, None);
        let o1 = image(catalog, "/img/s1.vda.qcow2", ImageKind::Overlay, Some(base));
        let o2 = image(catalog, "/img/s2.vda.qcow2", ImageKind::Overlay, Some(o1));
        let active = image(catalog, "/img/s3.vda.qcow2", ImageKind::Overlay, Some(o2));
        catalog.pin(base, &pin_of("s1")).unwrap();
        catalog.pin(o1, &pin_of("s2")).unwrap();
        catalog.pin(o2, &pin_of("s3")).unwrap();
        Chain { base, o1, o2, active, snapshots }
    }

    fn ids(images: Vec<super::super::Image>) -> Vec<ImageId> {
        images.into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn commit_merge_moves_the_later_snapshots_pin_and_the_child() {
        let (_dir, catalog) = catalog();
        let c = chain(&catalog);
        catalog.mark_snapshot_deleted(c.snapshots[1], at(5, 0)).unwrap();

        let moved = catalog
            .record_commit_merge(&CommitMerge { released: pin_of("s2"), top: c.o2, into: c.o1, into_size: 7 })
            .unwrap();

        assert_eq!(moved, [pin_of("s3")]);
        assert_eq!(ids(catalog.chain(c.active).unwrap()), [c.active, c.o1, c.base]);
        assert_eq!(catalog.dependents_of(c.o1).unwrap(), [pin_of("s3")]);
        assert_eq!(catalog.image(c.o1).unwrap().size_bytes, 7);
        assert!(matches!(catalog.image(c.o2), Err(CatalogError::NotFound { .. })));
        assert_eq!(catalog.deleted_at(c.snapshots[1]).unwrap(), Some(at(5, 0)));
    }

    #[test]
    fn commit_merge_refuses_an_image_a_clone_needs_and_records_nothing() {
        let (_dir, catalog) = catalog();
        let c = chain(&catalog);
        catalog.pin(c.o2, &Dependent::clone_named("copy")).unwrap();

        let error = catalog
            .record_commit_merge(&CommitMerge { released: pin_of("s2"), top: c.o2, into: c.o1, into_size: 7 })
            .unwrap_err();

        let CatalogError::Refused(refusal) = error else { panic!("{error:?}") };
        assert_eq!(refusal.reasons, [RefusalReason::NeededBy(Dependent::clone_named("copy"))]);
        assert_eq!(ids(catalog.chain(c.active).unwrap()), [c.active, c.o2, c.o1, c.base]);
        assert_eq!(catalog.dependents_of(c.o1).unwrap(), [pin_of("s2")]);
    }

    #[test]
    fn commit_merge_never_changes_a_base_or_a_shared_image() {
        let (_dir, catalog) = catalog();
        let c = chain(&catalog);
        catalog.pin(c.o1, &Dependent::standby_named("dr")).unwrap();

        let into_base =
            catalog.record_commit_merge(&CommitMerge { released: pin_of("s1"), top: c.o1, into: c.base, into_size: 1 });
        let into_shared =
            catalog.record_commit_merge(&CommitMerge { released: pin_of("s2"), top: c.o2, into: c.o1, into_size: 1 });

        assert!(matches!(into_base, Err(CatalogError::Refused(r)) if r.reasons.contains(&RefusalReason::BaseImage)));
        assert!(matches!(into_shared, Err(CatalogError::Refused(r))
            if r.reasons == [RefusalReason::NeededBy(Dependent::standby_named("dr"))]));
    }

    #[test]
    fn pull_merge_removes_the_image_and_rebases_its_child() {
        let (_dir, catalog) = catalog();
        let c = chain(&catalog);

        catalog
            .record_pull_merge(&PullMerge { released: pin_of("s2"), removed: c.o1, into: c.o2, into_size: 9 })
            .unwrap();

        assert_eq!(ids(catalog.chain(c.active).unwrap()), [c.active, c.o2, c.base]);
        assert_eq!(catalog.dependents_of(c.o2).unwrap(), [pin_of("s3")]);
        assert_eq!(catalog.image(c.o2).unwrap().size_bytes, 9);
        assert!(matches!(catalog.image(c.o1), Err(CatalogError::NotFound { .. })));
    }

    #[test]
    fn pull_merge_refuses_an_image_with_another_child() {
        let (_dir, catalog) = catalog();
        let c = chain(&catalog);
        let branch = image(&catalog, "/img/branch.qcow2", ImageKind::Overlay, Some(c.o1));

        let error = catalog
            .record_pull_merge(&PullMerge { released: pin_of("s2"), removed: c.o1, into: c.o2, into_size: 9 })
            .unwrap_err();

        assert!(matches!(error, CatalogError::Refused(r)
            if r.reasons == [RefusalReason::BacksImage { child: branch, path: PathBuf::from("/img/branch.qcow2") }]));
    }

    #[test]
    fn deferred_deletes_are_kept_until_the_snapshot_is_deleted() {
        let (_dir, catalog) = catalog();
        let c = chain(&catalog);
        let s3 = c.snapshots[2];

        catalog.defer_snapshot_delete(s3, at(6, 0), "clone 'copy' uses it").unwrap();
        catalog.defer_snapshot_delete(s3, at(7, 0), "clone 'copy' still uses it").unwrap();

        let request = catalog.delete_request(s3).unwrap().unwrap();
        assert_eq!((request.requested_at, request.deferred.as_deref()), (at(6, 0), Some("clone 'copy' still uses it")));
        assert_eq!(catalog.unfinished_deletes("prod").unwrap(), [s3]);
        catalog.mark_snapshot_deleted(c.snapshots[0], at(8, 0)).unwrap();
        // s1 is deleted but still pins the base: unfinished too.
        assert_eq!(catalog.unfinished_deletes("prod").unwrap(), [c.snapshots[0], s3]);
        catalog.unpin(c.base, &pin_of("s1")).unwrap();
        catalog.mark_snapshot_deleted(s3, at(9, 0)).unwrap();
        catalog.unpin(c.o2, &pin_of("s3")).unwrap();
        assert_eq!(catalog.delete_request(s3).unwrap(), None);
        assert_eq!(catalog.unfinished_deletes("prod").unwrap(), Vec::<SnapshotId>::new());
    }

    #[test]
    fn mark_deleted_refuses_a_snapshot_in_progress() {
        let (_dir, catalog) = catalog();
        let id = catalog
            .create_snapshot(&NewSnapshot {
                env: "prod".into(),
                name: "taking".into(),
                label: None,
                schedule: None,
                created_at: at(1, 0),
                memory: false,
            })
            .unwrap();

        let error = catalog.mark_snapshot_deleted(id, at(2, 0)).unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "in-progress", .. }), "{error:?}");
    }
}
