//! Replacing a file so that a crash leaves either the old or the new content,
//! never a mix: a temporary file in the same directory, written, given the
//! original's owner and mode, fsynced, renamed over the original, and the
//! directory fsynced. Backups are written the same way but never replace an
//! existing file.
//!
//! Not preserved: extended attributes (including SELinux labels and ACLs)
//! and other hard links to the original, which keep the old content (the
//! caller refuses hard-linked files for that reason).

use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("`{path}` has no parent directory")]
    NoParent { path: PathBuf },
    #[error("cannot create directory `{dir}`")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot create temporary file `{temp}`")]
    CreateTemp { temp: PathBuf, source: io::Error },
    #[error("cannot write temporary file `{temp}`")]
    WriteTemp { temp: PathBuf, source: io::Error },
    #[error("cannot give `{temp}` owner {uid}:{gid}")]
    SetOwner { temp: PathBuf, uid: u32, gid: u32, source: io::Error },
    #[error("cannot give `{temp}` mode {mode:o}")]
    SetMode { temp: PathBuf, mode: u32, source: io::Error },
    #[error("cannot fsync `{temp}`")]
    SyncTemp { temp: PathBuf, source: io::Error },
    #[error("cannot rename `{temp}` to `{target}`")]
    Rename { temp: PathBuf, target: PathBuf, source: io::Error },
    #[error("cannot link `{temp}` to `{target}`")]
    Link { temp: PathBuf, target: PathBuf, source: io::Error },
    #[error("cannot fsync directory `{dir}`")]
    SyncDir { dir: PathBuf, source: io::Error },
}

/// Owner and permission bits to give a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
}

impl Ownership {
    pub fn of(meta: &Metadata) -> Self {
        Ownership { uid: meta.uid(), gid: meta.gid(), mode: meta.mode() & 0o7777 }
    }
}

/// Replaces `target` with `content`, giving it `owner`.
pub fn replace(target: &Path, content: &[u8], owner: Ownership) -> Result<(), AtomicWriteError> {
    let dir = parent(target)?;
    let temp = write_temp(dir, target, content, owner)?;
    if let Err(source) = std::fs::rename(&temp.path, target) {
        return Err(AtomicWriteError::Rename { temp: temp.path.clone(), target: target.to_path_buf(), source });
    }
    temp.disarm();
    sync_dir(dir)
}

/// Writes `content` to `target` unless something is there already, creating
/// missing parent directories with mode 0700. Returns whether it wrote.
pub fn create_new(target: &Path, content: &[u8], owner: Ownership) -> Result<bool, AtomicWriteError> {
    let dir = parent(target)?;
    if target.symlink_metadata().is_ok() {
        return Ok(false);
    }
    create_dirs(dir)?;
    let temp = write_temp(dir, target, content, owner)?;
    // A hard link, unlike a rename, never replaces what is already there.
    let wrote = match std::fs::hard_link(&temp.path, target) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(source) => {
            return Err(AtomicWriteError::Link { temp: temp.path.clone(), target: target.to_path_buf(), source })
        }
    };
    drop(temp);
    sync_dir(dir)?;
    Ok(wrote)
}

fn parent(target: &Path) -> Result<&Path, AtomicWriteError> {
    target.parent().ok_or_else(|| AtomicWriteError::NoParent { path: target.to_path_buf() })
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_dirs(dir: &Path) -> Result<(), AtomicWriteError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AtomicWriteError::CreateDir { dir: dir.to_path_buf(), source })
}

/// A temporary file that is removed when dropped, unless renamed away.
struct Temp {
    path: PathBuf,
    armed: bool,
}

impl Temp {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = std::fs::remove_file(&self.path) {
                eprintln!("envclone-agent: cannot remove temporary file {}: {e}", self.path.display());
            }
        }
    }
}

/// A fresh file next to `target` holding `content`, owned and moded like
/// `owner`, fsynced.
fn write_temp(dir: &Path, target: &Path, content: &[u8], owner: Ownership) -> Result<Temp, AtomicWriteError> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let path = dir.join(format!(".{name}.envclone-tmp-{}-{nanos}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| AtomicWriteError::CreateTemp { temp: path.clone(), source })?;
    let temp = Temp { path, armed: true };
    let p = || temp.path.clone();
    file.write_all(content).map_err(|source| AtomicWriteError::WriteTemp { temp: p(), source })?;
    set_owner(&file, owner).map_err(|source| AtomicWriteError::SetOwner {
        temp: p(),
        uid: owner.uid,
        gid: owner.gid,
        source,
    })?;
    // After chown, which clears setuid and setgid bits.
    file.set_permissions(Permissions::from_mode(owner.mode)).map_err(|source| AtomicWriteError::SetMode {
        temp: p(),
        mode: owner.mode,
        source,
    })?;
    file.sync_all().map_err(|source| AtomicWriteError::SyncTemp { temp: p(), source })?;
    Ok(temp)
}

/// Gives `file` the owner in `owner`, if it does not have it already (so an
/// unprivileged agent can still rewrite its own files).
fn set_owner(file: &File, owner: Ownership) -> io::Result<()> {
    let meta = file.metadata()?;
    if meta.uid() == owner.uid && meta.gid() == owner.gid {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))
}

fn sync_dir(dir: &Path) -> Result<(), AtomicWriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AtomicWriteError::SyncDir { dir: dir.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_as_root() -> bool {
        // What we create is ours.
        tempfile::tempfile().unwrap().metadata().unwrap().uid() == 0
    }

    #[test]
    fn replace_swaps_content_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.env");
        std::fs::write(&target, "old\n").unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o640)).unwrap();
        let owner = Ownership::of(&target.metadata().unwrap());

        replace(&target, b"new\n", owner).unwrap();

        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        assert_eq!(target.metadata().unwrap().mode() & 0o7777, 0o640);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["app.env"], "no temporary file is left behind");
    }

    #[test]
    fn replace_keeps_setgid_and_sticky_bits() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        std::fs::write(&target, "old").unwrap();
        let owner = Ownership { mode: 0o3751, ..Ownership::of(&target.metadata().unwrap()) };
        replace(&target, b"new", owner).unwrap();
        assert_eq!(target.metadata().unwrap().mode() & 0o7777, 0o3751);
    }

    #[test]
    fn replace_keeps_the_owner() {
        // Only root may give a file away; anyone else checks their own ids.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("owned");
        std::fs::write(&target, "old").unwrap();
        let mine = dir.path().metadata().unwrap();
        let (uid, gid) = if running_as_root() { (4242, 4343) } else { (mine.uid(), mine.gid()) };
        let owner = Ownership { uid, gid, mode: 0o600 };
        replace(&target, b"new", owner).unwrap();
        let meta = target.metadata().unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }

    #[test]
    fn replace_refuses_a_missing_directory_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("gone/x");
        let owner = Ownership { uid: 0, gid: 0, mode: 0o644 };
        let err = replace(&target, b"new", owner).unwrap_err();
        assert!(matches!(err, AtomicWriteError::CreateTemp { .. }), "{err:?}");
    }

    #[test]
    fn create_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("deep/er/backup");
        let owner = Ownership::of(&dir.path().metadata().unwrap());
        let owner = Ownership { mode: 0o600, ..owner };

        assert!(create_new(&target, b"first", owner).unwrap());
        assert!(!create_new(&target, b"second", owner).unwrap());

        assert_eq!(std::fs::read_to_string(&target).unwrap(), "first");
        assert_eq!(dir.path().join("deep").metadata().unwrap().mode() & 0o777, 0o700);
        let left: Vec<_> =
            std::fs::read_dir(target.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["backup"]);
    }
}
