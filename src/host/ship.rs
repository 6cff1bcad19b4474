//! Shipping one image file from one host's storage to another's.
//!
//! The channel is the two hosts' own [`Storage`]: for a host reached over
//! SSH, `dd` reading or writing at an offset on a channel of its login (see
//! `docs/multi-host.md` for why SSH rather than libvirt volume streams). The
//! controller relays the bytes, so neither host needs to reach the other
//! or to trust it.
//!
//! - **Sparse**: only the sending host's data extents travel; the file is
//!   then given its length, so holes stay holes on arrival.
//! - **Verified**: the receiving host computes the SHA-256 of what arrived
//!   and the sending host that of its file; they must match.
//! - **Never half used**: bytes go to `<file>.part`, renamed over the
//!   target only once verified. A cut link leaves at most the `.part`,
//!   which the next attempt removes first (a clean restart).
//! - **Bounded**: at most `limit` bytes per second, the host's
//!   `bandwidth`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Extent, Storage, StorageError};

/// Holes shorter than this are shipped as zeros: one range (one `dd` on a
/// remote host) costs more than a megabyte of a fast link.
const MIN_HOLE: u64 = 1 << 20;
/// The relay's buffer.
const CHUNK: usize = 1 << 20;

/// One end of a shipment: a file on a host.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    /// The host's name, for messages.
    pub host: &'a str,
    pub storage: &'a dyn Storage,
    pub path: &'a Path,
}

/// How far a shipment is: bytes relayed, of the bytes to relay.
pub type ShipProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// Bytes that crossed the link (the data extents).
    pub bytes: u64,
    /// The file's length, holes included.
    pub len: u64,
    /// SHA-256 of the file, the same on both hosts.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot read {} on host {host}", path.display())]
    Read {
        host: String,
        path: PathBuf,
        #[source]
        source: Box<StorageError>,
    },
    #[error("cannot write {} on host {host}", path.display())]
    Write {
        host: String,
        path: PathBuf,
        #[source]
        source: Box<StorageError>,
    },
    #[error("{} arrived on host {host} with SHA-256 {arrived}, but its source on host {from} has {sent}", path.display())]
    Verify { host: String, path: PathBuf, from: String, sent: String, arrived: String },
    #[error("{} already exists on host {host}", path.display())]
    Exists { host: String, path: PathBuf },
}

impl ShipError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ShipError::Read { host, .. } | ShipError::Write { host, .. } => format!(
                "is the link to host {host} up? `envclone check --live` tries every host; nothing half shipped is \
                 used, and the next attempt starts the file again"
            ),
            ShipError::Verify { .. } => {
                "the copy was removed; try again, and if it happens twice check both hosts' disks and memory".into()
            }
            ShipError::Exists { path, host } => format!(
                "a file left by an interrupted operation is in the way: `envclone recover` removes it, or remove {} \
                 on host {host} if nothing uses it",
                path.display()
            ),
        })
    }
}

/// Ships `from` to `to` (which must not exist); see the [module
/// documentation](self).
pub fn ship(from: End<'_>, to: End<'_>, limit: Option<u64>, progress: ShipProgress<'_>) -> Result<Shipped, ShipError> {
    let read_error =
        |source| ShipError::Read { host: from.host.to_owned(), path: from.path.to_owned(), source: Box::new(source) };
    let part = part_path(to.path);
    let write_error =
        |source| ShipError::Write { host: to.host.to_owned(), path: part.clone(), source: Box::new(source) };
    if to.storage.exists(to.path).map_err(write_error)? {
        return Err(ShipError::Exists { host: to.host.to_owned(), path: to.path.to_owned() });
    }
    to.storage.remove(&part).map_err(write_error)?;

    let len = from.storage.stamp(from.path).map_err(read_error)?.len;
    let extents = coalesce(&from.storage.data_extents(from.path).map_err(read_error)?, MIN_HOLE);
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let mut throttle = Throttle::new(limit);
    let mut sent = 0u64;
    progress(0, total);
    for extent in &extents {
        let mut reader = from.storage.read_range(from.path, extent.offset, extent.len).map_err(read_error)?;
        let mut writer = to.storage.write_range(&part, extent.offset).map_err(write_error)?;
        let mut buffer = vec![0u8; CHUNK];
        let mut left = extent.len;
        while left > 0 {
            let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            let read =
                reader.read(&mut buffer[..want]).map_err(|e| read_error(StorageError::io("read", from.path)(e)))?;
            if read == 0 {
                let short = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ended early");
                return Err(read_error(StorageError::io("read", from.path)(short)));
            }
            writer.write_all(&buffer[..read]).map_err(|e| write_error(StorageError::io("write", &part)(e)))?;
            left -= read as u64;
            sent += read as u64;
            throttle.after(read as u64);
            progress(sent, total);
        }
        // Read to the end: a reader on another host reports its command's
        // exit status there (and keeps its login for the next command).
        let trailing = reader.read(&mut buffer).map_err(|e| read_error(StorageError::io("read", from.path)(e)))?;
        if trailing != 0 {
            let long = std::io::Error::other("the file grew while it was shipped");
            return Err(read_error(StorageError::io("read", from.path)(long)));
        }
        drop(reader);
        writer.finish().map_err(write_error)?;
    }
    to.storage.finish_file(&part, len).map_err(write_error)?;

    // Both hosts read their whole file: side by side, not one after the other.
    let (sent_sha, arrived_sha) = std::thread::scope(|scope| {
        let source = scope.spawn(|| from.storage.sha256(from.path));
        let arrived = to.storage.sha256(&part);
        (source.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), arrived)
    });
    let sent_sha = sent_sha.map_err(read_error)?;
    let arrived_sha = arrived_sha.map_err(write_error)?;
    if sent_sha != arrived_sha {
        let _ = to.storage.remove(&part);
        return Err(ShipError::Verify {
            host: to.host.to_owned(),
            path: to.path.to_owned(),
            from: from.host.to_owned(),
            sent: sent_sha,
            arrived: arrived_sha,
        });
    }
    to.storage.install(&part, to.path).map_err(write_error)?;
    Ok(Shipped { bytes: sent, len, sha256: sent_sha })
}

/// Where a file is written until it is verified.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Joins extents separated by less than `min_hole`.
fn coalesce(extents: &[Extent], min_hole: u64) -> Vec<Extent> {
    let mut joined: Vec<Extent> = Vec::new();
    for extent in extents.iter().filter(|e| e.len > 0) {
        match joined.last_mut() {
            Some(last) if extent.offset.saturating_sub(last.offset + last.len) < min_hole => {
                last.len = (extent.offset + extent.len).max(last.offset + last.len) - last.offset;
            }
            _ => joined.push(*extent),
        }
    }
    joined
}

/// Keeps the average rate since the start at or below `limit` bytes per
/// second by sleeping after each chunk that got ahead of it.
struct Throttle {
    limit: Option<u64>,
    started: Instant,
    sent: u64,
}

impl Throttle {
    fn new(limit: Option<u64>) -> Self {
        Throttle { limit: limit.filter(|&l| l > 0), started: Instant::now(), sent: 0 }
    }

    fn after(&mut self, bytes: u64) {
        let Some(limit) = self.limit else { return };
        self.sent += bytes;
        let due = Duration::from_secs_f64(self.sent as f64 / limit as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::LocalStorage;
    use crate::test_support::FakeStorage;

    fn end<'a>(host: &'a str, storage: &'a dyn Storage, path: &'a Path) -> End<'a> {
        End { host, storage, path }
    }

    #[test]
    fn a_sparse_file_arrives_whole_with_its_holes_and_only_its_data_crosses() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("a/disk.qcow2");
        let target = dir.path().join("b/sb/disk.qcow2");
        let s = LocalStorage;
        for (offset, byte) in [(0u64, 1u8), (8 << 20, 2), (20 << 20, 3)] {
            let mut writer = s.write_range(&source, offset).unwrap();
            writer.write_all(&vec![byte; 256 << 10]).unwrap();
            writer.finish().unwrap();
        }
        s.finish_file(&source, 32 << 20).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());

        let shipped = ship(end("a", &s, &source), end("b", &s, &target), None, &|done, total| {
            seen.lock().unwrap().push((done, total))
        })
        .unwrap();

        assert_eq!(shipped.len, 32 << 20);
        assert!(shipped.bytes >= 3 * (256 << 10) && shipped.bytes < 4 << 20, "{shipped:?}");
        assert_eq!(std::fs::read(&source).unwrap(), std::fs::read(&target).unwrap());
        assert_eq!(shipped.sha256, s.sha256(&target).unwrap());
        let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&target).unwrap()) * 512;
        assert!(allocated < 8 << 20, "holes stay holes: {allocated} bytes allocated");
        assert!(!part_path(&target).exists());
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.last(), Some(&(shipped.bytes, shipped.bytes)));
        let again = ship(end("a", &s, &source), end("b", &s, &target), None, &|_, _| {}).unwrap_err();
        assert!(matches!(again, ShipError::Exists { ref host, .. } if host == "b"), "{again:?}");
    }

    #[test]
    fn a_cut_link_leaves_no_target_and_the_next_attempt_starts_clean() {
        let from = FakeStorage::default();
        let source = Path::new("/a/o1.qcow2");
        from.add(source, None);
        let mut writer = from.write_range(source, 0).unwrap();
        writer.write_all(b"overlay data").unwrap();
        writer.finish().unwrap();
        let to = FakeStorage::default().made_only("o1").failing("finish_range", 1);
        let target = Path::new("/b/o1.qcow2");

        let error = ship(end("a", &from, source), end("b", &to, target), None, &|_, _| {}).unwrap_err();
        assert!(matches!(error, ShipError::Write { ref host, .. } if host == "b"), "{error:?}");
        assert!(error.hint().unwrap().contains("host b"));
        assert!(!to.is_there(target));

        let shipped = ship(end("a", &from, source), end("b", &to, target), None, &|_, _| {}).unwrap();
        assert_eq!(to.content(target).as_deref(), Some("overlay data"));
        assert_eq!(shipped.bytes, 12);
        assert!(to.calls().iter().any(|c| c == "remove /b/o1.qcow2.part"), "{:?}", to.calls());
    }

    #[test]
    fn a_copy_that_reads_back_otherwise_is_removed_and_never_installed() {
        let from = FakeStorage::default();
        let source = Path::new("/a/o1.qcow2");
        from.add(source, None);
        let to = FakeStorage::default().made_only("o1").corrupting();
        let target = Path::new("/b/o1.qcow2");

        let error = ship(end("a", &from, source), end("b", &to, target), None, &|_, _| {}).unwrap_err();

        assert!(matches!(error, ShipError::Verify { .. }), "{error:?}");
        assert!(!to.is_there(target));
        assert!(to.removed().contains(&part_path(target)));
    }

    #[test]
    fn close_extents_are_joined_and_far_ones_kept_apart() {
        let e = |offset, len| Extent { offset, len };
        assert_eq!(coalesce(&[e(0, 10), e(20, 10), e(5 << 20, 1)], 1 << 20), [e(0, 30), e(5 << 20, 1)]);
        assert_eq!(coalesce(&[e(0, 0), e(4, 4)], 1), [e(4, 4)]);
    }

    #[test]
    fn a_limited_shipment_keeps_to_its_rate() {
        let mut throttle = Throttle::new(Some(10 << 20));
        let started = Instant::now();
        for _ in 0..4 {
            throttle.after(1 << 20);
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(390), "4 MiB at 10 MiB/s took {took:?}");
        let mut free = Throttle::new(None);
        free.after(u64::MAX);
    }
}
