//! The data path of a standby sync, behind [`Transfer`]: what is copied
//! into the standby's storage, how it is checked, how it is merged. The
//! real one, [`QemuImgTransfer`], copies on this host with `qemu-img` and
//! checks with SHA-256; a transfer to another host's storage would be
//! another implementation of the same five operations.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img {what} {}: {detail}", path.display())]
    QemuImg { what: &'static str, path: PathBuf, detail: String },
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
}

/// What one copy moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// SHA-256 of what was read from the source.
    pub sha256: String,
}

pub trait Transfer: Sync + std::fmt::Debug {
    /// Copies what `image` reads (through its whole backing chain) into a
    /// new standalone qcow2 file `copy`, allocated data only; returns the
    /// size of `copy`.
    fn copy_full(&self, image: &Path, copy: &Path) -> Result<u64, TransferError>;
    /// Whether `a` and `b` read the same data (their backing chains included).
    fn same_content(&self, a: &Path, b: &Path) -> Result<bool, TransferError>;
    /// Copies the file `from` byte for byte into a new file `to`.
    fn copy_file(&self, from: &Path, to: &Path) -> Result<Copied, TransferError>;
    /// SHA-256 of the file, in hex.
    fn sha256(&self, path: &Path) -> Result<String, TransferError>;
    /// Writes the data of the qcow2 overlay `overlay` into `into`: its
    /// backing file is set to `into` (without reading anything), then it is
    /// committed. `overlay` keeps its data, so merging it again is harmless.
    fn merge(&self, overlay: &Path, into: &Path) -> Result<(), TransferError>;
    /// Renames `from` over `to`.
    fn install(&self, from: &Path, to: &Path) -> Result<(), TransferError>;
    fn exists(&self, path: &Path) -> bool;
    /// Removes a file; one already gone is no error.
    fn remove(&self, path: &Path) -> Result<(), TransferError>;
}

/// The real [`Transfer`]: files on this host, `qemu-img`, SHA-256.
#[derive(Debug, Clone, Copy, Default)]
pub struct QemuImgTransfer;

fn qemu_img(what: &'static str, path: &Path, args: &[&std::ffi::OsStr]) -> Result<String, TransferError> {
    crate::host_tool::run_text(Command::new("qemu-img").args(args)).map_err(|e| TransferError::QemuImg {
        what,
        path: path.to_owned(),
        detail: crate::error::chain(&e),
    })
}

impl Transfer for QemuImgTransfer {
    fn copy_full(&self, image: &Path, copy: &Path) -> Result<u64, TransferError> {
        if copy.exists() {
            return Err(TransferError::Exists { path: copy.to_owned() });
        }
        // The clone's full copy: flattened, allocated data only, direct I/O.
        crate::ops::clone::FullCopy::copy_full(&crate::ops::clone::QemuImgConvert, image, copy, &|_| {}).map_err(
            |e| TransferError::QemuImg { what: "convert", path: copy.to_owned(), detail: crate::error::chain(&e) },
        )?;
        sync_file(copy)?;
        std::fs::metadata(copy).map(|m| m.len()).map_err(|source| TransferError::Io {
            what: "read",
            path: copy.to_owned(),
            source,
        })
    }

    fn same_content(&self, a: &Path, b: &Path) -> Result<bool, TransferError> {
        let fail = |e: crate::host_tool::ToolError| TransferError::QemuImg {
            what: "compare",
            path: b.to_owned(),
            detail: crate::error::chain(&e),
        };
        let mut command = Command::new("qemu-img");
        command.args(["compare", "-U", "-q"]).arg(a).arg(b);
        let output = crate::host_tool::output(&mut command).map_err(fail)?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(fail(crate::host_tool::failed(&command, &output))),
        }
    }

    fn copy_file(&self, from: &Path, to: &Path) -> Result<Copied, TransferError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| TransferError::Io { what, path, source }
        };
        let mut source = std::fs::File::open(from).map_err(io("open", from))?;
        let mut target = std::fs::OpenOptions::new().write(true).create_new(true).open(to).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                TransferError::Exists { path: to.to_owned() }
            } else {
                TransferError::Io { what: "create", path: to.to_owned(), source: e }
            }
        })?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let read = source.read(&mut buffer).map_err(io("read", from))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            target.write_all(&buffer[..read]).map_err(io("write", to))?;
            bytes += read as u64;
        }
        target.sync_all().map_err(io("sync", to))?;
        Ok(Copied { bytes, sha256: hex::encode(hasher.finalize()) })
    }

    fn sha256(&self, path: &Path) -> Result<String, TransferError> {
        let io = |what| move |source| TransferError::Io { what, path: path.to_owned(), source };
        let mut file = std::fs::File::open(path).map_err(io("open"))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = file.read(&mut buffer).map_err(io("read"))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    fn merge(&self, overlay: &Path, into: &Path) -> Result<(), TransferError> {
        qemu_img(
            "rebase",
            overlay,
            &[
                "rebase".as_ref(),
                "-u".as_ref(),
                "-F".as_ref(),
                "qcow2".as_ref(),
                "-b".as_ref(),
                into.as_ref(),
                overlay.as_ref(),
            ],
        )?;
        // -d: the overlay keeps its data, so a merge interrupted half way can run again.
        qemu_img("commit", into, &["commit".as_ref(), "-q".as_ref(), "-d".as_ref(), overlay.as_ref()])?;
        sync_file(into)
    }

    fn install(&self, from: &Path, to: &Path) -> Result<(), TransferError> {
        std::fs::rename(from, to).map_err(|source| TransferError::Io {
            what: "rename",
            path: from.to_owned(),
            source,
        })?;
        if let Some(dir) = to.parent() {
            // The rename reaches the disk with the directory.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn remove(&self, path: &Path) -> Result<(), TransferError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(|source| TransferError::Io { what: "remove", path: path.to_owned(), source }),
        }
    }
}

fn sync_file(path: &Path) -> Result<(), TransferError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.sync_all())
        .map_err(|source| TransferError::Io { what: "sync", path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) {
        let output = Command::new("qemu-img").args(args).output().unwrap();
        assert!(output.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn write_at(image: &Path, offset: &str, byte: &str) {
        let command = format!("write -P {byte} {offset} 64k");
        let output =
            Command::new("qemu-io").args(["-f", "qcow2", "-c", &command, image.to_str().unwrap()]).output().unwrap();
        assert!(output.status.success(), "qemu-io {command}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// base <- o1 <- o2 on the "primary"; the standby copies base+o1 in
    /// full, then merges a copy of o2 and reads like o2's chain.
    #[test]
    fn a_full_copy_then_a_merged_overlay_read_like_the_primary() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let base = path("base.qcow2");
        run(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "4M"]);
        write_at(&base, "0", "0x11");
        let overlay = |name: &str, backing: &Path| {
            run(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                backing.to_str().unwrap(),
                path(name).to_str().unwrap(),
            ]);
            path(name)
        };
        let o1 = overlay("o1.qcow2", &base);
        write_at(&o1, "1M", "0x22");
        let o2 = overlay("o2.qcow2", &o1);
        write_at(&o2, "0", "0x33");
        let standby = path("sb.qcow2");
        let t = QemuImgTransfer;

        let full = t.copy_full(&o1, &standby).unwrap();
        assert!(full > 0);
        assert!(t.same_content(&o1, &standby).unwrap());
        let copy = path("o2.copy.qcow2");
        let copied = t.copy_file(&o2, &copy).unwrap();
        assert_eq!(copied.sha256, t.sha256(&o2).unwrap());
        assert_eq!(copied.bytes, std::fs::metadata(&o2).unwrap().len());
        t.merge(&copy, &standby).unwrap();
        t.merge(&copy, &standby).unwrap();

        assert!(t.same_content(&o2, &standby).unwrap());
        assert!(!t.same_content(&o1, &standby).unwrap());
        assert!(matches!(t.copy_file(&o2, &copy), Err(TransferError::Exists { .. })));
    }
}
