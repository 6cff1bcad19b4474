//! What a restore leaves in the catalog, written in one transaction so the
//! catalog never shows half a restore: each disk's new overlay as its
//! active image, backed by the restored snapshot's image; and, unless the
//! discarded state is thrown away, the undo snapshot made complete with
//! the images the VMs wrote to until the restore as its own (pinned by it,
//! recorded as `base` first when the catalog has never seen them, like a
//! snapshot does).

use rusqlite::{params, OptionalExtension};

use super::model::{Dependent, ImageId, ImageKind, NewImage, SnapshotId, SnapshotState};
use super::{path_text, Catalog, CatalogError, Timestamp};

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRecord {
    /// The new overlays: kind `overlay`, each with its backing image.
    pub overlays: Vec<NewImage>,
    pub undo: Option<UndoSnapshotRecord>,
}

/// The undo snapshot of a restore: in progress until [`Catalog::record_restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoSnapshotRecord {
    pub snapshot: SnapshotId,
    /// What pins its images (`snapshot <env>/<name>`).
    pub dependent: Dependent,
    /// The images the VMs wrote to until the restore, as they are recorded
    /// if the catalog does not know them yet (kind `base`).
    pub images: Vec<NewImage>,
}

impl Catalog {
    /// Records a restore; see the module documentation. Returns the new
    /// overlays' ids, in the order given.
    pub fn record_restore(&self, record: &RestoreRecord) -> Result<Vec<ImageId>, CatalogError> {
        let what = "record a restore";
        let tx = self.write(what)?;
        if let Some(undo) = &record.undo {
            for image in &undo.images {
                let id = match image_id(&tx, image)? {
                    Some(id) => id,
                    None => insert_image(&tx, &NewImage { kind: ImageKind::Base, ..image.clone() })?,
                };
                tx.execute(
                    "INSERT INTO image_dependents (image_id, kind, name) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![id, undo.dependent.kind, undo.dependent.name],
                )
                .map_err(CatalogError::query(what))?;
            }
            let state: SnapshotState = tx
                .query_row("SELECT state FROM snapshots WHERE id = ?1", [undo.snapshot], |row| row.get(0))
                .optional()
                .map_err(CatalogError::query(what))?
                .ok_or_else(|| CatalogError::NotFound { what: format!("snapshot {}", undo.snapshot) })?;
            if !state.valid_transition(SnapshotState::Complete) {
                return Err(CatalogError::InvalidTransition {
                    what: format!("snapshot {}", undo.snapshot),
                    from: state.as_str(),
                    to: SnapshotState::Complete.as_str(),
                });
            }
            tx.execute(
                "UPDATE snapshots SET state = ?2 WHERE id = ?1",
                params![undo.snapshot, SnapshotState::Complete],
            )
            .map_err(CatalogError::query(what))?;
        }
        let mut ids = Vec::new();
        for overlay in &record.overlays {
            if let Some(backing) = overlay.backing {
                let exists: Option<i64> = tx
                    .query_row("SELECT 1 FROM images WHERE id = ?1", [backing], |row| row.get(0))
                    .optional()
                    .map_err(CatalogError::query(what))?;
                if exists.is_none() {
                    return Err(CatalogError::NotFound { what: format!("image {backing}") });
                }
            }
            ids.push(insert_image(&tx, overlay)?);
        }
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(ids)
    }
}

fn image_id(tx: &rusqlite::Transaction<'_>, image: &NewImage) -> Result<Option<ImageId>, CatalogError> {
    tx.query_row("SELECT id FROM images WHERE path = ?1", [path_text(&image.path)?], |row| row.get(0))
        .optional()
        .map_err(CatalogError::query("look up an image by path"))
}

fn insert_image(tx: &rusqlite::Transaction<'_>, new: &NewImage) -> Result<ImageId, CatalogError> {
    let what = "record an image";
    let path = path_text(&new.path)?;
    tx.execute(
        "INSERT INTO images (path, vm, disk, kind, format, size_bytes, backing_image_id, snapshot_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
    Ok(ImageId(tx.last_insert_rowid()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::model::{ImageFormat, NewSnapshot};
    use super::super::testing::*;
    use super::*;

    fn image(path: &str, kind: ImageKind, backing: Option<ImageId>) -> NewImage {
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

    fn snapshot(catalog: &Catalog, name: &str) -> SnapshotId {
        catalog
            .create_snapshot(&NewSnapshot {
                env: "prod".into(),
                name: name.into(),
                label: None,
                schedule: None,
                created_at: at(2, 0),
                memory: false,
            })
            .unwrap()
    }

    #[test]
    fn restore_records_the_overlay_on_the_snapshot_image_and_completes_the_undo_snapshot() {
        let (_dir, catalog) = catalog();
        let base = catalog.add_image(&image("/img/base.qcow2", ImageKind::Base, None)).unwrap();
        let active = catalog.add_image(&image("/img/active.qcow2", ImageKind::Overlay, Some(base))).unwrap();
        let undo = snapshot(&catalog, "undo");
        let dependent = Dependent::snapshot_named("prod/undo");
        let record = RestoreRecord {
            overlays: vec![image("/img/restore.qcow2", ImageKind::Overlay, Some(base))],
            undo: Some(UndoSnapshotRecord {
                snapshot: undo,
                dependent: dependent.clone(),
                images: vec![
                    image("/img/active.qcow2", ImageKind::Overlay, None),
                    NewImage { disk: Some("vdb".into()), ..image("/img/unknown.qcow2", ImageKind::Overlay, None) },
                ],
            }),
        };

        let ids = catalog.record_restore(&record).unwrap();

        let overlay = catalog.image(ids[0]).unwrap();
        assert_eq!((overlay.kind, overlay.backing), (ImageKind::Overlay, Some(base)));
        let held: Vec<PathBuf> = catalog.images_needed_by(&dependent).unwrap().into_iter().map(|i| i.path).collect();
        assert_eq!(held, [PathBuf::from("/img/active.qcow2"), PathBuf::from("/img/unknown.qcow2")]);
        assert_eq!(catalog.image(active).unwrap().kind, ImageKind::Overlay, "a known image keeps its kind");
        let unknown = catalog.image_by_path(std::path::Path::new("/img/unknown.qcow2")).unwrap().unwrap();
        assert_eq!(unknown.kind, ImageKind::Base, "an image never seen is recorded as a base");
        assert_eq!(catalog.snapshot(undo).unwrap().state, SnapshotState::Complete);
    }

    #[test]
    fn a_failing_restore_record_leaves_nothing_behind() {
        let (_dir, catalog) = catalog();
        let base = catalog.add_image(&image("/img/base.qcow2", ImageKind::Base, None)).unwrap();
        catalog.add_image(&image("/img/taken.qcow2", ImageKind::Overlay, Some(base))).unwrap();
        let undo = snapshot(&catalog, "undo");
        let dependent = Dependent::snapshot_named("prod/undo");
        let record = RestoreRecord {
            overlays: vec![
                image("/img/new.qcow2", ImageKind::Overlay, Some(base)),
                image("/img/taken.qcow2", ImageKind::Overlay, Some(base)),
            ],
            undo: Some(UndoSnapshotRecord {
                snapshot: undo,
                dependent: dependent.clone(),
                images: vec![image("/img/old.qcow2", ImageKind::Overlay, None)],
            }),
        };

        let error = catalog.record_restore(&record).unwrap_err();

        assert!(matches!(error, CatalogError::AlreadyExists { .. }), "{error:?}");
        assert!(catalog.image_by_path(std::path::Path::new("/img/new.qcow2")).unwrap().is_none());
        assert!(catalog.image_by_path(std::path::Path::new("/img/old.qcow2")).unwrap().is_none());
        assert!(catalog.images_needed_by(&dependent).unwrap().is_empty());
        assert_eq!(catalog.snapshot(undo).unwrap().state, SnapshotState::InProgress);
    }

    #[test]
    fn restore_record_refuses_an_undo_snapshot_that_is_not_in_progress() {
        let (_dir, catalog) = catalog();
        let undo = snapshot(&catalog, "undo");
        catalog.set_snapshot_state(undo, SnapshotState::Failed).unwrap();
        let record = RestoreRecord {
            overlays: vec![],
            undo: Some(UndoSnapshotRecord {
                snapshot: undo,
                dependent: Dependent::snapshot_named("prod/undo"),
                images: vec![],
            }),
        };

        let error = catalog.record_restore(&record).unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "failed", to: "complete", .. }), "{error:?}");
    }
}
