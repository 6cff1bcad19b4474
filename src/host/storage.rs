//! A host's image storage: every file operation envclone does on disk
//! images and memory images, as one port.
//!
//! Operations never touch image files through `std::fs` or `qemu-img`
//! themselves: they ask the [`Storage`] of the host the files live on. On
//! the controller's own host that is [`super::LocalStorage`]; a host
//! reached over SSH implements the same operations with the same meaning,
//! so an operation works unchanged whichever host holds its files.
//!
//! No method has a default body: an implementation that cannot do
//! something returns [`StorageError::Unsupported`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tool::ToolError;
use crate::catalog::ImageFormat;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img` (or another of the host's tools) failed on `path`.
    #[error("qemu-img {what} {}", path.display())]
    Tool {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: ToolError,
    },
    #[error("`{command}` printed what envclone cannot read: {detail}")]
    BadOutput { command: String, detail: String },
    /// A file that is only ever created new was found there already.
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
    #[error("this host's storage cannot {what}")]
    Unsupported { what: &'static str },
}

impl StorageError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.to_owned();
        move |source| StorageError::Io { what, path, source }
    }

    pub(crate) fn tool(what: &'static str, path: &Path) -> impl FnOnce(ToolError) -> StorageError {
        let path = path.to_owned();
        move |source| StorageError::Tool { what, path, source }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            StorageError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                Some("the storage is full: free space there, or point the environment's `storage` elsewhere".into())
            }
            StorageError::Exists { path } => Some(format!(
                "a file left by an interrupted operation is in the way: `envclone recover` removes it, or remove {} \
                 yourself if no environment uses it",
                path.display()
            )),
            _ => None,
        }
    }
}

/// What one byte-for-byte copy moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// SHA-256 of what was read from the source, in hex.
    pub sha256: String,
}

/// A file's size and modification time: how an operation tells that a file
/// it copied before changed since (a merge wrote into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub len: u64,
    /// Nanoseconds since the Unix epoch.
    pub modified_ns: i64,
}

/// A byte range of a file that holds data; what lies between two extents,
/// and after the last, reads as zeros (a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// Where [`Storage::write_range`] writes. Dropping it without
/// [`RangeWriter::finish`] abandons the write: what reached the file is
/// not to be trusted.
pub trait RangeWriter: std::io::Write {
    /// Ends the write and reports whether it reached the file whole.
    fn finish(self: Box<Self>) -> Result<(), StorageError>;
}

/// How far a long copy is, in thousandths.
pub type CopyProgress<'a> = &'a (dyn Fn(u16) + Sync);

/// See the [module documentation](self). Paths are the host's own.
pub trait Storage: Send + Sync + std::fmt::Debug {
    // --- files ---
    fn exists(&self, path: &Path) -> Result<bool, StorageError>;
    /// The file's size in bytes, if it can be read (reports only).
    fn size(&self, path: &Path) -> Option<u64>;
    fn stamp(&self, path: &Path) -> Result<FileStamp, StorageError>;
    /// Bytes free for new files in `dir`.
    fn free_space(&self, dir: &Path) -> Result<u64, StorageError>;
    /// Makes `dir` and its parents; one that exists is no error.
    fn create_dir(&self, dir: &Path) -> Result<(), StorageError>;
    /// The entries of `dir`; a directory that does not exist has none.
    fn list_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, StorageError>;
    /// Removes `dir` if it is empty; one that is not, or is gone, stays as
    /// it is without an error (tidying never fails an operation).
    fn remove_dir_if_empty(&self, dir: &Path);
    /// Removes `path`; a file that is already gone is no error.
    fn remove(&self, path: &Path) -> Result<(), StorageError>;
    /// Renames `from` over `to`, durably (the directory is synced).
    fn install(&self, from: &Path, to: &Path) -> Result<(), StorageError>;
    /// Copies the file `from` byte for byte into a new file `to` (its
    /// directory made), synced; [`StorageError::Exists`] if `to` exists.
    fn copy_file(&self, from: &Path, to: &Path) -> Result<Copied, StorageError>;
    /// SHA-256 of the file, in hex.
    fn sha256(&self, path: &Path) -> Result<String, StorageError>;

    // --- images ---
    /// Creates a qcow2 overlay at `overlay` (its directory made; it must not
    /// exist) backed by `backing`, an image in `format`.
    fn create_overlay(&self, overlay: &Path, backing: &Path, format: ImageFormat) -> Result<(), StorageError>;
    /// Copies what `image` reads (through its whole backing chain) into a
    /// new standalone qcow2 file `copy` (which must not exist), allocated
    /// data only, synced; returns the size of `copy`.
    fn copy_full(&self, image: &Path, copy: &Path, progress: CopyProgress<'_>) -> Result<u64, StorageError>;
    /// `path` and its backing files, top first (shared: the image may be in
    /// use by a running guest).
    fn backing_chain(&self, path: &Path) -> Result<Vec<PathBuf>, StorageError>;
    /// `image`'s backing file becomes `backing` (of `format`), reading
    /// nothing: the caller knows both read the same below.
    fn set_backing(&self, image: &Path, backing: &Path, format: ImageFormat) -> Result<(), StorageError>;
    /// Offline only (no QEMU may use the chain): makes `top` back onto
    /// `backing` (`None`: no backing file), first copying into `top` every
    /// cluster of the layers it stops backing onto, so `top` reads the same
    /// afterwards. Interrupted, `top` still reads the same on its old
    /// backing file.
    fn pull(&self, top: &Path, backing: Option<(&Path, ImageFormat)>) -> Result<(), StorageError>;
    /// Writes the data of the qcow2 overlay `overlay` into `into`: its
    /// backing file is set to `into` (without reading anything), then it is
    /// committed. `overlay` keeps its data, so merging it again is harmless.
    fn merge(&self, overlay: &Path, into: &Path) -> Result<(), StorageError>;
    /// Whether `a` and `b` read the same data, backing chains included.
    fn same_content(&self, a: &Path, b: &Path) -> Result<bool, StorageError>;
    /// A consistency check of the image's metadata (`qemu-img check`): the
    /// problems found, empty when clean.
    fn check(&self, image: &Path) -> Result<Vec<String>, StorageError>;

    // --- shipping between hosts (see `super::ship`) ---
    /// The ranges of `path` that hold data, in order; holes left out.
    fn data_extents(&self, path: &Path) -> Result<Vec<Extent>, StorageError>;
    /// Reads the `len` bytes of `path` from `offset`.
    fn read_range(&self, path: &Path, offset: u64, len: u64) -> Result<Box<dyn std::io::Read + '_>, StorageError>;
    /// Writes into `path` from `offset` (the file and its directory made if
    /// missing, never truncated).
    fn write_range(&self, path: &Path, offset: u64) -> Result<Box<dyn RangeWriter + '_>, StorageError>;
    /// Makes `path` exactly `len` bytes long (what it gains reads as zeros,
    /// a hole) and syncs it.
    fn finish_file(&self, path: &Path, len: u64) -> Result<(), StorageError>;
}
