//! The image files a delete reads and changes outside libvirt, behind a
//! small trait so that the operation is unit tested without qemu-img:
//! [`ImageFiles`] reads a backing chain as `qemu-img info` sees it, pulls
//! an image's backing layer into it (offline), measures and removes files.
//! [`QemuImg`] is the real one.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::catalog::ImageFormat;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Tool(#[from] crate::host_tool::ToolError),
    #[error("`{command}` printed what envclone cannot read: {detail}")]
    BadOutput { command: String, detail: String },
    #[error("cannot remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub trait ImageFiles: Sync + std::fmt::Debug {
    /// `path` and its backing files, top first, as `qemu-img info
    /// --backing-chain` reads them (shared: the image may be in use).
    fn backing_chain(&self, path: &Path) -> Result<Vec<PathBuf>, FileError>;
    /// Offline only (no QEMU may use the chain): makes `top` back onto
    /// `backing` (`None`: no backing file), first copying into `top` every
    /// cluster of the layers it stops backing onto, so `top` reads the same
    /// afterwards (`qemu-img rebase` in safe mode). Interrupted, `top` still
    /// reads the same on its old backing file.
    fn pull(&self, top: &Path, backing: Option<(&Path, ImageFormat)>) -> Result<(), FileError>;
    /// The file's size in bytes, if it can be read.
    fn size(&self, path: &Path) -> Option<u64>;
    /// Removes `path`; a file that is already gone is no error.
    fn remove(&self, path: &Path) -> Result<(), FileError>;
}

/// The real [`ImageFiles`]: qemu-img and the file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct QemuImg;

impl QemuImg {
    fn run(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, FileError> {
        Ok(crate::host_tool::run(Command::new("qemu-img").args(args))?)
    }
}

impl ImageFiles for QemuImg {
    fn backing_chain(&self, path: &Path) -> Result<Vec<PathBuf>, FileError> {
        let args = ["info", "-U", "--backing-chain", "--output=json"].map(std::ffi::OsStr::new);
        let mut all: Vec<&std::ffi::OsStr> = args.to_vec();
        all.push(path.as_os_str());
        let stdout = Self::run(&all)?;
        parse_chain(&stdout).map_err(|detail| FileError::BadOutput {
            command: format!("qemu-img info -U --backing-chain --output=json {}", path.display()),
            detail,
        })
    }

    fn pull(&self, top: &Path, backing: Option<(&Path, ImageFormat)>) -> Result<(), FileError> {
        let mut args: Vec<&std::ffi::OsStr> = ["rebase", "-q", "-f", "qcow2"].map(std::ffi::OsStr::new).to_vec();
        match backing {
            Some((path, format)) => {
                args.extend(["-F", format.as_str(), "-b"].map(std::ffi::OsStr::new));
                args.push(path.as_os_str());
            }
            None => args.extend(["-b", ""].map(std::ffi::OsStr::new)),
        }
        args.push(top.as_os_str());
        Self::run(&args).map(drop)
    }

    fn size(&self, path: &Path) -> Option<u64> {
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    fn remove(&self, path: &Path) -> Result<(), FileError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(FileError::Remove { path: path.to_owned(), source: e })
            }
            _ => Ok(()),
        }
    }
}

/// The `filename` of each entry of `qemu-img info --backing-chain --output=json`.
pub fn parse_chain(json: &[u8]) -> Result<Vec<PathBuf>, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let entries = value.as_array().ok_or("not a JSON array")?;
    entries
        .iter()
        .map(|entry| {
            entry
                .get("filename")
                .and_then(|f| f.as_str())
                .map(PathBuf::from)
                .ok_or_else(|| "an entry without a filename".to_owned())
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording [`ImageFiles`] over an in-memory map of backing files
    //! that follows `FakeHypervisor`'s live chains for running domains.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::host_tool::ToolError;
    use crate::hypervisor::FakeHypervisor;

    #[derive(Debug, Default)]
    struct State {
        backing: BTreeMap<PathBuf, Option<PathBuf>>,
        sizes: BTreeMap<PathBuf, u64>,
        calls: Vec<String>,
        fail_pull: bool,
    }

    #[derive(Debug)]
    pub(crate) struct FakeImages<'h> {
        hv: &'h FakeHypervisor,
        domains: Vec<String>,
        state: Mutex<State>,
    }

    impl<'h> FakeImages<'h> {
        /// Files whose chains are those of `domains`' live disks in `hv`
        /// while they run, and the recorded ones otherwise.
        pub(crate) fn following(hv: &'h FakeHypervisor, domains: &[&str]) -> Self {
            FakeImages { hv, domains: domains.iter().map(|d| (*d).to_owned()).collect(), state: Mutex::default() }
        }

        /// Records `path` as an image backed by `backing`.
        pub(crate) fn add(&self, path: &Path, backing: Option<&Path>) {
            self.state.lock().unwrap().backing.insert(path.to_owned(), backing.map(Path::to_owned));
        }

        pub(crate) fn set_size(&self, path: &Path, size: u64) {
            self.state.lock().unwrap().sizes.insert(path.to_owned(), size);
        }

        pub(crate) fn fail_pull(self) -> Self {
            self.state.lock().unwrap().fail_pull = true;
            self
        }

        pub(crate) fn exists(&self, path: &Path) -> bool {
            self.state.lock().unwrap().backing.contains_key(path)
        }

        pub(crate) fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().calls.clone()
        }

        fn live_chain(&self, path: &Path) -> Option<Vec<PathBuf>> {
            for domain in &self.domains {
                let Some(live) = self.hv.peek_domain(domain) else { continue };
                if !live.state.is_active() {
                    continue;
                }
                for disk in live.def.disks() {
                    let chain: Vec<PathBuf> = disk.source.into_iter().chain(disk.backing).collect();
                    if let Some(at) = chain.iter().position(|p| p == path) {
                        return Some(chain[at..].to_vec());
                    }
                }
            }
            None
        }
    }

    impl ImageFiles for FakeImages<'_> {
        fn backing_chain(&self, path: &Path) -> Result<Vec<PathBuf>, FileError> {
            if let Some(chain) = self.live_chain(path) {
                return Ok(chain);
            }
            let state = self.state.lock().unwrap();
            let mut chain = Vec::new();
            let mut next = Some(path.to_owned());
            while let Some(current) = next {
                let Some(backing) = state.backing.get(&current) else {
                    return Err(FileError::Tool(ToolError::Failed {
                        command: format!("qemu-img info {}", path.display()),
                        status: Some(1),
                        stderr: format!("Could not open '{}': No such file or directory", current.display()),
                    }));
                };
                next = backing.clone();
                chain.push(current);
            }
            Ok(chain)
        }

        fn pull(&self, top: &Path, backing: Option<(&Path, ImageFormat)>) -> Result<(), FileError> {
            let mut state = self.state.lock().unwrap();
            state.calls.push(format!("pull {} onto {:?}", top.display(), backing.map(|b| b.0.to_owned())));
            if state.fail_pull {
                return Err(FileError::Tool(ToolError::Failed {
                    command: "qemu-img rebase".into(),
                    status: Some(1),
                    stderr: "injected".into(),
                }));
            }
            state.backing.insert(top.to_owned(), backing.map(|b| b.0.to_owned()));
            Ok(())
        }

        fn size(&self, path: &Path) -> Option<u64> {
            let state = self.state.lock().unwrap();
            state.backing.contains_key(path).then(|| state.sizes.get(path).copied().unwrap_or(1 << 20))
        }

        fn remove(&self, path: &Path) -> Result<(), FileError> {
            let mut state = self.state.lock().unwrap();
            state.calls.push(format!("remove {}", path.display()));
            state.backing.remove(path);
            Ok(())
        }
    }
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

    fn qemu_io(args: &[&str]) {
        tool("qemu-io", args)
    }

    /// Needs qemu-img and qemu-io (qemu-utils, which scripts/install-deps.sh installs).
    #[test]
    fn qemu_img_pulls_a_middle_layer_into_its_child_keeping_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "qcow2", &path("base.qcow2"), "4M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &path("base.qcow2"), &path("mid.qcow2")]);
        qemu_io(&["-c", "write -P 0x5a 0 64k", &path("mid.qcow2")]);
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &path("mid.qcow2"), &path("top.qcow2")]);
        qemu_io(&["-c", "write -P 0x33 1M 64k", &path("top.qcow2")]);
        let top = dir.path().join("top.qcow2");
        let base = dir.path().join("base.qcow2");

        assert_eq!(QemuImg.backing_chain(&top).unwrap(), [top.clone(), dir.path().join("mid.qcow2"), base.clone()]);
        QemuImg.pull(&top, Some((&base, ImageFormat::Qcow2))).unwrap();

        assert_eq!(QemuImg.backing_chain(&top).unwrap(), [top.clone(), base]);
        QemuImg.remove(&dir.path().join("mid.qcow2")).unwrap();
        QemuImg.remove(&dir.path().join("mid.qcow2")).unwrap();
        qemu_io(&["-c", "read -P 0x5a 0 64k", "-c", "read -P 0x33 1M 64k", &path("top.qcow2")]);
        assert!(QemuImg.size(&top).unwrap() > 0);
    }

    #[test]
    fn chain_json_gives_each_filename_top_first() {
        let json = br#"[{"filename": "/a.qcow2", "format": "qcow2"}, {"filename": "/b.raw"}]"#;
        assert_eq!(parse_chain(json).unwrap(), [PathBuf::from("/a.qcow2"), PathBuf::from("/b.raw")]);
        assert!(parse_chain(b"{}").is_err());
        assert!(parse_chain(br#"[{"format": "raw"}]"#).is_err());
    }
}
