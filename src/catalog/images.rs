//! Images, their backing chains, and what needs them.
//!
//! The rule that keeps data safe lives here, in [`Catalog::can_delete`]: an
//! image is kept while anything needs it, and [`Catalog::remove_image`]
//! applies the same rule inside its write transaction, so no caller can
//! forget it. The schema backs it up with `ON DELETE RESTRICT` foreign keys.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::error::{Refusal, RefusalReason};
use super::model::{Dependent, Image, ImageId, ImageKind, NewImage, SnapshotId, SnapshotState};
use super::{path_text, Catalog, CatalogError, Timestamp};

const IMAGE_COLUMNS: &str = "id, path, vm, disk, kind, format, size_bytes, backing_image_id, snapshot_id, created_at";

impl Catalog {
    /// Records an image. Its backing image and snapshot, when given, must
    /// already be in the catalog; its path must not.
    pub fn add_image(&self, new: &NewImage) -> Result<ImageId, CatalogError> {
        let what = "record an image";
        let path = path_text(&new.path)?;
        let tx = self.write(what)?;
        if let Some(backing) = new.backing {
            image(&tx, backing)?;
        }
        if let Some(snapshot) = new.snapshot {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM snapshots WHERE id = ?1", [snapshot], |row| row.get(0))
                .optional()
                .map_err(CatalogError::query(what))?;
            if exists.is_none() {
                return Err(CatalogError::NotFound { what: format!("snapshot {snapshot}") });
            }
        }
        tx.execute(
            &format!("INSERT INTO images ({IMAGE_COLUMNS}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                path,
                new.vm,
                new.disk,
                new.kind,
                new.format,
                i64::try_from(new.size_bytes).unwrap_or(i64::MAX),
                new.backing,
                new.snapshot,
                Timestamp(new.created_at),
            ],
        )
        .map_err(CatalogError::insert(what, format!("image {path}")))?;
        let id = ImageId(tx.last_insert_rowid());
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(id)
    }

    pub fn image(&self, id: ImageId) -> Result<Image, CatalogError> {
        image(&self.conn, id)
    }

    pub fn image_by_path(&self, path: &Path) -> Result<Option<Image>, CatalogError> {
        let path = path_text(path)?;
        self.conn
            .query_row(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE path = ?1"), [path], image_row)
            .optional()
            .map_err(CatalogError::query("look up an image by path"))
    }

    /// The images and memory files a snapshot made, by VM and disk.
    pub fn images_of_snapshot(&self, snapshot: SnapshotId) -> Result<Vec<Image>, CatalogError> {
        images_where(&self.conn, "list a snapshot's images", "snapshot_id = ?1 ORDER BY vm, disk, id", snapshot)
    }

    /// Images whose backing file is `id`.
    pub fn children_of(&self, id: ImageId) -> Result<Vec<Image>, CatalogError> {
        images_where(&self.conn, "list an image's children", "backing_image_id = ?1 ORDER BY id", id)
    }

    /// `id` first, then its backing image, and so on down to the image with
    /// no backing file.
    pub fn chain(&self, id: ImageId) -> Result<Vec<Image>, CatalogError> {
        let mut chain = vec![image(&self.conn, id)?];
        let mut seen = BTreeSet::from([id]);
        while let Some(backing) = chain.last().and_then(|image| image.backing) {
            if !seen.insert(backing) {
                return Err(CatalogError::Corrupt {
                    what: "walk a backing chain",
                    detail: format!("a backing cycle through image {backing}"),
                });
            }
            chain.push(image(&self.conn, backing)?);
        }
        Ok(chain)
    }

    /// Records that `dependent` needs `image`. Recording it twice is harmless.
    pub fn pin(&self, image_id: ImageId, dependent: &Dependent) -> Result<(), CatalogError> {
        let what = "record what needs an image";
        let tx = self.write(what)?;
        image(&tx, image_id)?;
        tx.execute(
            "INSERT INTO image_dependents (image_id, kind, name) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![image_id, dependent.kind, dependent.name],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Forgets that `dependent` needs `image`; false if it was not recorded.
    pub fn unpin(&self, image: ImageId, dependent: &Dependent) -> Result<bool, CatalogError> {
        let changed = self
            .conn
            .execute(
                "DELETE FROM image_dependents WHERE image_id = ?1 AND kind = ?2 AND name = ?3",
                params![image, dependent.kind, dependent.name],
            )
            .map_err(CatalogError::query("forget what needs an image"))?;
        Ok(changed > 0)
    }

    /// Who needs `image`, by kind and name.
    pub fn dependents_of(&self, image: ImageId) -> Result<Vec<Dependent>, CatalogError> {
        dependents_of(&self.conn, image)
    }

    /// The images `dependent` needs, e.g. before deleting a clone.
    pub fn images_needed_by(&self, dependent: &Dependent) -> Result<Vec<Image>, CatalogError> {
        let what = "list the images something needs";
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT {IMAGE_COLUMNS} FROM images WHERE id IN \
                 (SELECT image_id FROM image_dependents WHERE kind = ?1 AND name = ?2) ORDER BY id"
            ))
            .map_err(CatalogError::query(what))?;
        let rows = statement
            .query_map(params![dependent.kind, dependent.name], image_row)
            .map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// Whether `image` may be deleted now, and if not every reason why: a
    /// clone, standby or snapshot needs it, another image backs onto it (a
    /// parent is never deleted), it belongs to a snapshot that is not
    /// deleted or failed, or it is a VM's base image.
    pub fn can_delete(&self, image: ImageId) -> Result<Result<(), Refusal>, CatalogError> {
        can_delete(&self.conn, image)
    }

    /// Forgets an image after checking [`Catalog::can_delete`] in the same
    /// write transaction; a refusal is [`CatalogError::Refused`]. Remove the
    /// record before the file: a crash in between then leaves an orphan
    /// file, never a record of a file that is gone.
    pub fn remove_image(&self, id: ImageId) -> Result<Image, CatalogError> {
        let what = "forget an image";
        let tx = self.write(what)?;
        let image = image(&tx, id)?;
        can_delete(&tx, id)??;
        tx.execute("DELETE FROM images WHERE id = ?1", [id]).map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(image)
    }
}

/// Where an image is now, as [`Catalog::move_images`] records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageMove {
    pub id: ImageId,
    pub path: PathBuf,
    pub kind: ImageKind,
    pub backing: Option<ImageId>,
}

impl Catalog {
    /// Records images as moved (a failback carries the images a standby
    /// wrote home): each one's path, kind and backing image, in one
    /// transaction; its id, snapshot and pins stay. Returns what each was
    /// before, which moved back is the undo.
    pub fn move_images(&self, moves: &[ImageMove]) -> Result<Vec<ImageMove>, CatalogError> {
        let what = "record images as moved";
        let tx = self.write(what)?;
        let mut before = Vec::with_capacity(moves.len());
        for moved in moves {
            let found = image(&tx, moved.id)?;
            if let Some(backing) = moved.backing {
                image(&tx, backing)?;
            }
            before.push(ImageMove { id: found.id, path: found.path, kind: found.kind, backing: found.backing });
        }
        // Two passes: a path may move onto one another image leaves.
        for moved in moves {
            tx.execute("UPDATE images SET path = ?1 WHERE id = ?2", params![format!("moving:{}", moved.id), moved.id])
                .map_err(CatalogError::query(what))?;
        }
        for moved in moves {
            tx.execute(
                "UPDATE images SET path = ?1, kind = ?2, backing_image_id = ?3 WHERE id = ?4",
                params![path_text(&moved.path)?, moved.kind, moved.backing, moved.id],
            )
            .map_err(CatalogError::insert(what, format!("image {}", moved.path.display())))?;
        }
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(before)
    }
}

fn image(conn: &Connection, id: ImageId) -> Result<Image, CatalogError> {
    conn.query_row(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?1"), [id], image_row)
        .optional()
        .map_err(CatalogError::query("look up an image"))?
        .ok_or_else(|| CatalogError::NotFound { what: format!("image {id}") })
}

fn images_where(
    conn: &Connection,
    what: &'static str,
    condition: &str,
    param: impl rusqlite::ToSql,
) -> Result<Vec<Image>, CatalogError> {
    let mut statement = conn
        .prepare(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE {condition}"))
        .map_err(CatalogError::query(what))?;
    let rows = statement.query_map([param], image_row).map_err(CatalogError::query(what))?;
    rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
}

fn dependents_of(conn: &Connection, image: ImageId) -> Result<Vec<Dependent>, CatalogError> {
    let what = "list what needs an image";
    let mut statement = conn
        .prepare("SELECT kind, name FROM image_dependents WHERE image_id = ?1 ORDER BY kind, name")
        .map_err(CatalogError::query(what))?;
    let rows = statement
        .query_map([image], |row| Ok(Dependent { kind: row.get(0)?, name: row.get(1)? }))
        .map_err(CatalogError::query(what))?;
    rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
}

fn can_delete(conn: &Connection, id: ImageId) -> Result<Result<(), Refusal>, CatalogError> {
    let what = "check whether an image is needed";
    let target = image(conn, id)?;
    let mut reasons = Vec::new();
    if target.kind == ImageKind::Base {
        reasons.push(RefusalReason::BaseImage);
    }
    if let Some(snapshot) = target.snapshot {
        let (name, state): (String, SnapshotState) = conn
            .query_row("SELECT name, state FROM snapshots WHERE id = ?1", [snapshot], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(CatalogError::query(what))?;
        if matches!(state, SnapshotState::InProgress | SnapshotState::Complete) {
            reasons.push(RefusalReason::PartOfSnapshot { snapshot, name });
        }
    }
    reasons.extend(dependents_of(conn, id)?.into_iter().map(RefusalReason::NeededBy));
    for child in images_where(conn, what, "backing_image_id = ?1 ORDER BY id", id)? {
        reasons.push(RefusalReason::BacksImage { child: child.id, path: child.path });
    }
    if reasons.is_empty() {
        Ok(Ok(()))
    } else {
        Ok(Err(Refusal { image: id, path: target.path, reasons }))
    }
}

fn image_row(row: &Row<'_>) -> rusqlite::Result<Image> {
    let path: String = row.get(1)?;
    let size: i64 = row.get(6)?;
    Ok(Image {
        id: row.get(0)?,
        path: PathBuf::from(path),
        vm: row.get(2)?,
        disk: row.get(3)?,
        kind: row.get(4)?,
        format: row.get(5)?,
        size_bytes: u64::try_from(size).unwrap_or(0),
        backing: row.get(7)?,
        snapshot: row.get(8)?,
        created_at: row.get::<_, Timestamp>(9)?.0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::model::{DependentKind, ImageFormat, NewSnapshot};
    use super::super::testing::*;
    use super::*;

    fn new_image(path: &str, kind: ImageKind, backing: Option<ImageId>) -> NewImage {
        NewImage {
            path: PathBuf::from(path),
            vm: "web".into(),
            disk: Some("vda".into()),
            kind,
            format: ImageFormat::Qcow2,
            size_bytes: 1 << 20,
            backing,
            snapshot: None,
            created_at: at(1, 0),
        }
    }

    /// base <- snap (owned by a complete snapshot s1) <- active overlay.
    struct Chain {
        base: ImageId,
        snap: ImageId,
        active: ImageId,
        snapshot: SnapshotId,
    }

    fn chain_of_three(catalog: &Catalog) -> Chain {
        let snapshot = catalog
            .create_snapshot(&NewSnapshot {
                env: "prod".into(),
                name: "s1".into(),
                label: None,
                schedule: None,
                created_at: at(2, 0),
                memory: false,
            })
            .unwrap();
        catalog.set_snapshot_state(snapshot, SnapshotState::Complete).unwrap();
        let base = catalog.add_image(&new_image("/img/web.qcow2", ImageKind::Base, None)).unwrap();
        let snap = catalog
            .add_image(&NewImage {
                snapshot: Some(snapshot),
                ..new_image("/img/web.s1.qcow2", ImageKind::Overlay, Some(base))
            })
            .unwrap();
        let active = catalog.add_image(&new_image("/img/web.active.qcow2", ImageKind::Overlay, Some(snap))).unwrap();
        Chain { base, snap, active, snapshot }
    }

    fn reasons(catalog: &Catalog, image: ImageId) -> Vec<RefusalReason> {
        catalog.can_delete(image).unwrap().unwrap_err().reasons
    }

    #[test]
    fn chain_walks_from_the_image_down_to_the_base() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);

        let ids: Vec<ImageId> = catalog.chain(chain.active).unwrap().iter().map(|image| image.id).collect();

        assert_eq!(ids, [chain.active, chain.snap, chain.base]);
        assert_eq!(catalog.chain(chain.base).unwrap().len(), 1);
    }

    #[test]
    fn chain_reports_a_backing_cycle_as_corrupt() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);
        catalog
            .conn
            .execute("UPDATE images SET backing_image_id = ?1 WHERE id = ?2", [chain.active, chain.base])
            .unwrap();

        let error = catalog.chain(chain.active).unwrap_err();

        assert!(matches!(error, CatalogError::Corrupt { .. }), "{error:?}");
    }

    #[test]
    fn children_and_snapshot_images_are_listed() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);

        let children: Vec<ImageId> = catalog.children_of(chain.snap).unwrap().iter().map(|i| i.id).collect();
        let owned: Vec<ImageId> = catalog.images_of_snapshot(chain.snapshot).unwrap().iter().map(|i| i.id).collect();

        assert_eq!(children, [chain.active]);
        assert_eq!(owned, [chain.snap]);
        assert_eq!(catalog.snapshot(chain.snapshot).unwrap().size_bytes, 1 << 20);
        let by_path = catalog.image_by_path(Path::new("/img/web.s1.qcow2")).unwrap().unwrap();
        assert_eq!(by_path, catalog.image(chain.snap).unwrap());
    }

    #[test]
    fn can_delete_allows_an_unneeded_leaf() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);

        assert_eq!(catalog.can_delete(chain.active).unwrap(), Ok(()));
    }

    #[test]
    fn can_delete_refuses_a_parent_image() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);
        catalog.set_snapshot_state(chain.snapshot, SnapshotState::Deleted).unwrap();

        let reasons = reasons(&catalog, chain.snap);

        assert_eq!(
            reasons,
            [RefusalReason::BacksImage { child: chain.active, path: PathBuf::from("/img/web.active.qcow2") }]
        );
    }

    #[test]
    fn can_delete_refuses_an_image_pinned_by_a_clone() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);
        catalog.pin(chain.active, &Dependent::clone_named("prod-copy")).unwrap();

        let reasons = reasons(&catalog, chain.active);

        assert_eq!(reasons, [RefusalReason::NeededBy(Dependent::clone_named("prod-copy"))]);
    }

    #[test]
    fn can_delete_refuses_an_image_pinned_by_a_standby() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);
        catalog.pin(chain.active, &Dependent::standby_named("dr")).unwrap();
        catalog.pin(chain.active, &Dependent::standby_named("dr")).unwrap();

        let refusal = catalog.can_delete(chain.active).unwrap().unwrap_err();

        assert_eq!(refusal.reasons, [RefusalReason::NeededBy(Dependent::standby_named("dr"))]);
        assert_eq!(refusal.to_string(), "/img/web.active.qcow2 is still needed: standby 'dr' uses it");
    }

    #[test]
    fn can_delete_refuses_an_image_of_a_live_snapshot_and_a_base_image() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);
        catalog.remove_image(chain.active).unwrap();

        assert_eq!(
            reasons(&catalog, chain.snap),
            [RefusalReason::PartOfSnapshot { snapshot: chain.snapshot, name: "s1".into() }]
        );
        assert!(reasons(&catalog, chain.base).contains(&RefusalReason::BaseImage));
    }

    #[test]
    fn unpinned_image_of_a_deleted_snapshot_can_be_removed() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);
        let clone = Dependent::clone_named("c1");
        catalog.pin(chain.active, &clone).unwrap();
        catalog.set_snapshot_state(chain.snapshot, SnapshotState::Deleted).unwrap();

        assert!(catalog.unpin(chain.active, &clone).unwrap());
        assert!(!catalog.unpin(chain.active, &clone).unwrap());
        catalog.remove_image(chain.active).unwrap();
        let removed = catalog.remove_image(chain.snap).unwrap();

        assert_eq!(removed.id, chain.snap);
        assert!(matches!(catalog.image(chain.snap), Err(CatalogError::NotFound { .. })));
    }

    #[test]
    fn remove_image_refuses_what_can_delete_refuses() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);

        let error = catalog.remove_image(chain.snap).unwrap_err();

        assert!(matches!(&error, CatalogError::Refused(refusal) if refusal.reasons.len() == 2), "{error:?}");
        assert!(catalog.image(chain.snap).is_ok());
    }

    #[test]
    fn dependents_and_needed_images_are_listed() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);
        catalog.pin(chain.snap, &Dependent::standby_named("dr")).unwrap();
        catalog.pin(chain.snap, &Dependent::clone_named("c1")).unwrap();
        catalog.pin(chain.base, &Dependent::clone_named("c1")).unwrap();

        let dependents = catalog.dependents_of(chain.snap).unwrap();
        let needed: Vec<ImageId> =
            catalog.images_needed_by(&Dependent::clone_named("c1")).unwrap().iter().map(|i| i.id).collect();

        assert_eq!(
            dependents.iter().map(|d| d.kind).collect::<Vec<_>>(),
            [DependentKind::Clone, DependentKind::Standby]
        );
        assert_eq!(needed, [chain.base, chain.snap]);
    }

    #[test]
    fn add_image_refuses_a_duplicate_path_and_an_unknown_backing() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);

        let duplicate = catalog.add_image(&new_image("/img/web.qcow2", ImageKind::Base, None)).unwrap_err();
        let orphan = catalog.add_image(&new_image("/img/x.qcow2", ImageKind::Overlay, Some(ImageId(99)))).unwrap_err();
        let unknown_snapshot = catalog
            .add_image(&NewImage {
                snapshot: Some(SnapshotId(99)),
                ..new_image("/img/y.qcow2", ImageKind::Overlay, Some(chain.base))
            })
            .unwrap_err();

        assert!(matches!(duplicate, CatalogError::AlreadyExists { .. }), "{duplicate:?}");
        assert!(matches!(orphan, CatalogError::NotFound { .. }), "{orphan:?}");
        assert!(matches!(unknown_snapshot, CatalogError::NotFound { .. }), "{unknown_snapshot:?}");
    }

    #[test]
    fn the_schema_itself_refuses_to_delete_a_parent() {
        let (_dir, catalog) = catalog();
        let chain = chain_of_three(&catalog);

        let result = catalog.conn.execute("DELETE FROM images WHERE id = ?1", [chain.base]);

        assert!(result.is_err());
    }
}
