//! The image files a restore touches, behind a small trait so that the
//! state machine is unit tested without qemu-img: [`ImageFiles`] checks
//! that the snapshot's images exist, creates the new overlays and removes
//! them (a rollback, or `--discard`). [`QemuImg`] is the real one.

use std::path::{Path, PathBuf};

use crate::catalog::ImageFormat;
use crate::ops::snapshot::memory::create_overlay;

#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error(transparent)]
    Create(#[from] crate::ops::snapshot::MemoryError),
    #[error("cannot create {}: {detail}", path.display())]
    Other { path: PathBuf, detail: String },
}

pub trait ImageFiles: Sync + std::fmt::Debug {
    fn exists(&self, path: &Path) -> bool;
    /// Creates a qcow2 overlay at `overlay` (which must not exist) backed by
    /// `backing`, an image in `format`.
    fn create_overlay(&self, overlay: &Path, backing: &Path, format: ImageFormat) -> Result<(), ImageFileError>;
    /// Removes `path`; a file that is already gone is no error.
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// The file's size in bytes, if it can be read.
    fn size(&self, path: &Path) -> Option<u64>;
}

/// The real [`ImageFiles`]: the file system and `qemu-img create`.
#[derive(Debug, Clone, Copy, Default)]
pub struct QemuImg;

impl ImageFiles for QemuImg {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_overlay(&self, overlay: &Path, backing: &Path, format: ImageFormat) -> Result<(), ImageFileError> {
        if overlay.exists() {
            return Err(ImageFileError::Other { path: overlay.to_owned(), detail: "it already exists".into() });
        }
        Ok(create_overlay(overlay, backing, format.as_str())?)
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn size(&self, path: &Path) -> Option<u64> {
        std::fs::metadata(path).ok().map(|m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs qemu-img (scripts/install-deps.sh installs it).
    #[test]
    fn qemu_img_creates_an_overlay_on_its_backing_file_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("vm/restore.vda.qcow2");

        QemuImg.create_overlay(&overlay, &base, ImageFormat::Raw).unwrap();

        assert!(QemuImg.exists(&overlay));
        let info =
            std::process::Command::new("qemu-img").args(["info", "--output=json"]).arg(&overlay).output().unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename"], base.to_string_lossy().as_ref());
        assert_eq!(info["backing-filename-format"], "raw");
        let again = QemuImg.create_overlay(&overlay, &base, ImageFormat::Raw).unwrap_err();
        assert!(matches!(again, ImageFileError::Other { .. }), "{again:?}");
        QemuImg.remove(&overlay).unwrap();
        QemuImg.remove(&overlay).unwrap();
        assert!(!overlay.exists());
    }
}
