//! [`LocalStorage`]: the controller's own file system and `qemu-img`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::convert;
use crate::catalog::ImageFormat;
use crate::host::qemu_img::{self, parse_chain, parse_check};
use crate::host::tool;
use crate::host::{Copied, CopyProgress, Extent, FileStamp, RangeWriter, Storage, StorageError};

/// Reads and writes in 1 MiB blocks: large enough that a copy is bound by
/// the disk, small enough to stay out of the way of the guests' memory.
const BLOCK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, Default)]
pub struct LocalStorage;

fn qemu_img(what: &'static str, path: &Path, args: &[OsString]) -> Result<Vec<u8>, StorageError> {
    tool::run(Command::new("qemu-img").args(args)).map_err(StorageError::tool(what, path))
}

fn create_parent(path: &Path) -> Result<(), StorageError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(StorageError::io("create the directory", dir))
        }
        _ => Ok(()),
    }
}

fn sync_file(path: &Path) -> Result<(), StorageError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.sync_all())
        .map_err(StorageError::io("sync", path))
}

impl Storage for LocalStorage {
    fn exists(&self, path: &Path) -> Result<bool, StorageError> {
        path.try_exists().map_err(StorageError::io("look at", path))
    }

    fn size(&self, path: &Path) -> Option<u64> {
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    fn stamp(&self, path: &Path) -> Result<FileStamp, StorageError> {
        let meta = std::fs::metadata(path).map_err(StorageError::io("look at", path))?;
        let modified = meta.modified().map_err(StorageError::io("look at", path))?;
        let since = modified.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(FileStamp { len: meta.len(), modified_ns: i64::try_from(since.as_nanos()).unwrap_or(i64::MAX) })
    }

    fn free_space(&self, dir: &Path) -> Result<u64, StorageError> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(|errno| StorageError::Io {
            what: "measure the free space of",
            path: dir.to_owned(),
            source: errno.into(),
        })?;
        Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    fn create_dir(&self, dir: &Path) -> Result<(), StorageError> {
        std::fs::create_dir_all(dir).map_err(StorageError::io("create the directory", dir))
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            entries => entries
                .and_then(|entries| entries.map(|entry| entry.map(|e| e.path())).collect())
                .map_err(StorageError::io("list", dir)),
        }
    }

    fn remove_dir_if_empty(&self, dir: &Path) {
        let _ = std::fs::remove_dir(dir);
    }

    fn remove(&self, path: &Path) -> Result<(), StorageError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::Io { what: "remove", path: path.to_owned(), source: e })
            }
            _ => Ok(()),
        }
    }

    fn install(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        std::fs::rename(from, to).map_err(StorageError::io("rename", from))?;
        if let Some(dir) = to.parent() {
            // The rename reaches the disk with the directory.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    fn copy_file(&self, from: &Path, to: &Path) -> Result<Copied, StorageError> {
        create_parent(to)?;
        let mut source = std::fs::File::open(from).map_err(StorageError::io("open", from))?;
        let mut target = std::fs::OpenOptions::new().write(true).create_new(true).open(to).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StorageError::Exists { path: to.to_owned() }
            } else {
                StorageError::Io { what: "create", path: to.to_owned(), source: e }
            }
        })?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; BLOCK];
        let mut bytes = 0u64;
        loop {
            let read = source.read(&mut buffer).map_err(StorageError::io("read", from))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            target.write_all(&buffer[..read]).map_err(StorageError::io("write", to))?;
            bytes += read as u64;
        }
        target.sync_all().map_err(StorageError::io("sync", to))?;
        Ok(Copied { bytes, sha256: hex::encode(hasher.finalize()) })
    }

    fn sha256(&self, path: &Path) -> Result<String, StorageError> {
        let mut file = std::fs::File::open(path).map_err(StorageError::io("open", path))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; BLOCK];
        loop {
            let read = file.read(&mut buffer).map_err(StorageError::io("read", path))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    fn create_overlay(&self, overlay: &Path, backing: &Path, format: ImageFormat) -> Result<(), StorageError> {
        if overlay.exists() {
            return Err(StorageError::Exists { path: overlay.to_owned() });
        }
        create_parent(overlay)?;
        qemu_img("create", overlay, &qemu_img::create_overlay(overlay, backing, format)).map(drop)
    }

    fn copy_full(&self, image: &Path, copy: &Path, progress: CopyProgress<'_>) -> Result<u64, StorageError> {
        if copy.exists() {
            return Err(StorageError::Exists { path: copy.to_owned() });
        }
        create_parent(copy)?;
        convert::flatten(image, copy, progress)?;
        sync_file(copy)?;
        std::fs::metadata(copy).map(|m| m.len()).map_err(StorageError::io("read the size of", copy))
    }

    fn backing_chain(&self, path: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let stdout = qemu_img("info", path, &qemu_img::info_chain(path))?;
        parse_chain(&stdout).map_err(|detail| StorageError::BadOutput {
            command: format!("qemu-img info -U --backing-chain --output=json {}", path.display()),
            detail,
        })
    }

    fn set_backing(&self, image: &Path, backing: &Path, format: ImageFormat) -> Result<(), StorageError> {
        qemu_img("rebase", image, &qemu_img::set_backing(image, backing, format)).map(drop)
    }

    fn pull(&self, top: &Path, backing: Option<(&Path, ImageFormat)>) -> Result<(), StorageError> {
        qemu_img("rebase", top, &qemu_img::pull(top, backing)).map(drop)
    }

    fn merge(&self, overlay: &Path, into: &Path) -> Result<(), StorageError> {
        self.set_backing(overlay, into, ImageFormat::Qcow2)?;
        qemu_img("commit", into, &qemu_img::commit(overlay))?;
        sync_file(into)
    }

    fn same_content(&self, a: &Path, b: &Path) -> Result<bool, StorageError> {
        let mut command = Command::new("qemu-img");
        command.args(qemu_img::compare(a, b));
        let output = tool::output(&mut command).map_err(StorageError::tool("compare", b))?;
        // qemu-img compare answers with its status: 0 same, 1 different.
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => {
                Err(StorageError::Tool { what: "compare", path: b.to_owned(), source: tool::failed(&command, &output) })
            }
        }
    }

    fn data_extents(&self, path: &Path) -> Result<Vec<Extent>, StorageError> {
        let file = std::fs::File::open(path).map_err(StorageError::io("open", path))?;
        let len = file.metadata().map_err(StorageError::io("look at", path))?.len();
        seek_extents(&file, len).map_err(StorageError::io("map the data of", path))
    }

    fn read_range(&self, path: &Path, offset: u64, len: u64) -> Result<Box<dyn Read + '_>, StorageError> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(path).map_err(StorageError::io("open", path))?;
        file.seek(SeekFrom::Start(offset)).map_err(StorageError::io("seek in", path))?;
        Ok(Box::new(file.take(len)))
    }

    fn write_range(&self, path: &Path, offset: u64) -> Result<Box<dyn RangeWriter + '_>, StorageError> {
        use std::io::{Seek, SeekFrom};
        create_parent(path)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(StorageError::io("open", path))?;
        file.seek(SeekFrom::Start(offset)).map_err(StorageError::io("seek in", path))?;
        Ok(Box::new(LocalRangeWriter { file, path: path.to_owned() }))
    }

    fn finish_file(&self, path: &Path, len: u64) -> Result<(), StorageError> {
        create_parent(path)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(StorageError::io("open", path))?;
        file.set_len(len).map_err(StorageError::io("set the length of", path))?;
        file.sync_all().map_err(StorageError::io("sync", path))
    }

    fn check(&self, image: &Path) -> Result<Vec<String>, StorageError> {
        let mut command = Command::new("qemu-img");
        command.args(qemu_img::check(image));
        let output = tool::output(&mut command).map_err(StorageError::tool("check", image))?;
        // Exit 2: corruptions, 3: leaked clusters; both print their report.
        match output.status.code() {
            Some(0 | 2 | 3) => parse_check(&output.stdout)
                .map_err(|detail| StorageError::BadOutput { command: tool::describe(&command), detail }),
            _ => Err(StorageError::Tool {
                what: "check",
                path: image.to_owned(),
                source: tool::failed(&command, &output),
            }),
        }
    }
}

/// A file written from an offset, synced when finished.
struct LocalRangeWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl Write for LocalRangeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl RangeWriter for LocalRangeWriter {
    fn finish(self: Box<Self>) -> Result<(), StorageError> {
        self.file.sync_data().map_err(StorageError::io("sync", &self.path))
    }
}

/// The data ranges of `file` by SEEK_DATA/SEEK_HOLE: a file system
/// without them reports one extent, the whole file.
fn seek_extents(file: &std::fs::File, len: u64) -> std::io::Result<Vec<Extent>> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        let at = i64::try_from(offset).map_err(std::io::Error::other)?;
        let data = match lseek(fd, at, Whence::SeekData) {
            Ok(data) => u64::try_from(data).map_err(std::io::Error::other)?,
            // ENXIO: no data after `offset`, the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(nix::errno::Errno::EINVAL) if offset == 0 => return Ok(vec![Extent { offset: 0, len }]),
            Err(errno) => return Err(errno.into()),
        };
        let at = i64::try_from(data).map_err(std::io::Error::other)?;
        let hole = u64::try_from(lseek(fd, at, Whence::SeekHole)?).map_err(std::io::Error::other)?.min(len);
        extents.push(Extent { offset: data, len: hole - data });
        offset = hole;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(tool: &str, args: &[&str]) {
        let output = Command::new(tool).args(args).output().unwrap();
        assert!(output.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn qemu_img(args: &[&str]) {
        tool("qemu-img", args)
    }

    fn write_at(image: &Path, offset: &str, byte: &str) {
        let command = format!("write -P {byte} {offset} 64k");
        tool("qemu-io", &["-f", "qcow2", "-c", &command, image.to_str().unwrap()]);
    }

    /// Needs qemu-img and qemu-io (qemu-utils, which scripts/install-deps.sh installs).
    #[test]
    fn pull_moves_a_middle_layer_into_its_child_keeping_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let base = path("base.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "4M"]);
        let mid = path("mid.qcow2");
        LocalStorage.create_overlay(&mid, &base, ImageFormat::Qcow2).unwrap();
        write_at(&mid, "0", "0x5a");
        let top = path("top.qcow2");
        LocalStorage.create_overlay(&top, &mid, ImageFormat::Qcow2).unwrap();
        write_at(&top, "1M", "0x33");
        let before = path("before.qcow2");
        LocalStorage.copy_full(&top, &before, &|_| {}).unwrap();

        assert_eq!(LocalStorage.backing_chain(&top).unwrap(), [top.clone(), mid.clone(), base.clone()]);
        LocalStorage.pull(&top, Some((&base, ImageFormat::Qcow2))).unwrap();

        assert_eq!(LocalStorage.backing_chain(&top).unwrap(), [top.clone(), base.clone()]);
        assert!(LocalStorage.same_content(&top, &before).unwrap());
        assert_eq!(LocalStorage.check(&top).unwrap(), Vec::<String>::new());
    }

    /// base <- o1 <- o2 on the "primary"; the standby copies base+o1 in
    /// full, then merges a copy of o2 and reads like o2's chain.
    #[test]
    fn a_full_copy_then_a_merged_overlay_read_like_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let base = path("base.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "4M"]);
        write_at(&base, "0", "0x11");
        let o1 = path("o1.qcow2");
        LocalStorage.create_overlay(&o1, &base, ImageFormat::Qcow2).unwrap();
        write_at(&o1, "1M", "0x22");
        let o2 = path("o2.qcow2");
        LocalStorage.create_overlay(&o2, &o1, ImageFormat::Qcow2).unwrap();
        write_at(&o2, "0", "0x33");
        let standby = path("sb/sb.qcow2");
        let s = LocalStorage;

        assert!(s.copy_full(&o1, &standby, &|_| {}).unwrap() > 0);
        assert!(s.same_content(&o1, &standby).unwrap());
        let copy = path("sb/o2.copy.qcow2");
        let copied = s.copy_file(&o2, &copy).unwrap();
        assert_eq!(copied.sha256, s.sha256(&o2).unwrap());
        assert_eq!(copied.bytes, std::fs::metadata(&o2).unwrap().len());
        s.merge(&copy, &standby).unwrap();
        s.merge(&copy, &standby).unwrap();

        assert!(s.same_content(&o2, &standby).unwrap());
        assert!(!s.same_content(&o1, &standby).unwrap());
        assert!(matches!(s.copy_file(&o2, &copy), Err(StorageError::Exists { .. })));
        assert!(matches!(s.create_overlay(&o2, &o1, ImageFormat::Qcow2), Err(StorageError::Exists { .. })));
        assert!(matches!(s.copy_full(&o1, &standby, &|_| {}), Err(StorageError::Exists { .. })));
    }

    #[test]
    fn set_backing_reads_nothing_and_stamps_and_removes_are_plain() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.raw");
        std::fs::write(&a, vec![0u8; 1 << 16]).unwrap();
        let overlay = dir.path().join("o.qcow2");
        LocalStorage.create_overlay(&overlay, &a, ImageFormat::Raw).unwrap();
        let b = dir.path().join("b.raw");
        std::fs::copy(&a, &b).unwrap();

        LocalStorage.set_backing(&overlay, &b, ImageFormat::Raw).unwrap();

        assert_eq!(LocalStorage.backing_chain(&overlay).unwrap(), [overlay.clone(), b.clone()]);
        assert_eq!(LocalStorage.stamp(&b).unwrap().len, 1 << 16);
        assert!(LocalStorage.free_space(dir.path()).unwrap() > 0);
        let sub = dir.path().join("x/y");
        LocalStorage.create_dir(&sub).unwrap();
        LocalStorage.create_dir(&sub).unwrap();
        assert_eq!(LocalStorage.list_dir(&dir.path().join("x")).unwrap(), std::slice::from_ref(&sub));
        assert!(LocalStorage.list_dir(&dir.path().join("none")).unwrap().is_empty());
        LocalStorage.remove_dir_if_empty(&dir.path().join("x"));
        assert!(sub.exists(), "a directory with entries stays");
        LocalStorage.remove_dir_if_empty(&sub);
        assert!(!sub.exists());
        LocalStorage.remove(&b).unwrap();
        LocalStorage.remove(&b).unwrap();
        assert!(!LocalStorage.exists(&b).unwrap());
    }

    #[test]
    fn extents_leave_out_holes_and_ranges_read_and_write_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let s = LocalStorage;
        let mut writer = s.write_range(&path, 4 << 20).unwrap();
        writer.write_all(&[7u8; 4096]).unwrap();
        writer.finish().unwrap();
        s.finish_file(&path, 16 << 20).unwrap();

        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 << 20);
        let extents = s.data_extents(&path).unwrap();
        assert_eq!(extents.len(), 1, "{extents:?}");
        assert!(extents[0].offset <= 4 << 20 && extents[0].offset + extents[0].len >= (4 << 20) + 4096);
        assert!(extents[0].len < 1 << 20, "a hole is not data: {extents:?}");
        let mut read = Vec::new();
        s.read_range(&path, (4 << 20) + 4000, 200).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, [[7u8; 96].as_slice(), [0u8; 104].as_slice()].concat());
    }
}
