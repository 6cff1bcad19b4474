//! [`FakeStorage`]: a host's image files in memory.
//!
//! Each file has a backing file, a content (a description of what was
//! written into it: `full(src)`, `copy(src)`, `+merged`) and a size. What
//! the test did not create is presumed to exist or not as [`Presume`]
//! says, so a test needs to describe only the files its operation makes.
//! Every call is recorded ([`FakeStorage::calls`]) and any method can be
//! made to fail at its n-th call ([`FakeStorage::failing`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::catalog::ImageFormat;
use crate::host::{Copied, CopyProgress, Extent, FileStamp, RangeWriter, Storage, StorageError, ToolError};
use crate::hypervisor::FakeHypervisor;

/// Whether a file the test did not create exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Presume {
    /// Every such file exists (the environment's images), unless removed
    /// or marked missing.
    #[default]
    Everything,
    /// None does: only files made through the fake (or `add`ed) exist.
    Nothing,
    /// Files outside this directory exist; inside it, only those made.
    Outside(PathBuf),
}

#[derive(Debug, Clone, Default)]
struct File {
    /// Made by `create_overlay`.
    overlay: bool,
    backing: Option<PathBuf>,
    content: String,
    len: Option<u64>,
    modified_ns: i64,
}

#[derive(Debug)]
struct State {
    files: BTreeMap<PathBuf, File>,
    presume: Presume,
    /// Never made here, or removed: gone even where presumed.
    gone: BTreeSet<PathBuf>,
    /// Names (file names) that exist only once made, whatever `presume` says.
    made_only: Vec<String>,
    removed: Vec<PathBuf>,
    copied: Vec<PathBuf>,
    calls: Vec<String>,
    counts: BTreeMap<&'static str, usize>,
    failing: Vec<(&'static str, usize)>,
    size: u64,
    copy_size: u64,
    differs: bool,
    corrupting: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            files: BTreeMap::new(),
            presume: Presume::default(),
            gone: BTreeSet::new(),
            made_only: Vec::new(),
            removed: Vec::new(),
            copied: Vec::new(),
            calls: Vec::new(),
            counts: BTreeMap::new(),
            failing: Vec::new(),
            size: 1,
            copy_size: 1000,
            differs: false,
            corrupting: false,
        }
    }
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct FakeStorage<'h> {
    state: Mutex<State>,
    /// Running domains whose disks' live chains `backing_chain` reads.
    follows: Option<(&'h FakeHypervisor, Vec<String>)>,
}

fn checksum(text: &str) -> String {
    format!("{:064x}", text.len())
}

impl<'h> FakeStorage<'h> {
    pub(crate) fn presuming(presume: Presume) -> Self {
        let storage = FakeStorage::default();
        storage.state.lock().unwrap().presume = presume;
        storage
    }

    /// Chains of `domains`' live disks in `hv` while they run, and the
    /// recorded ones otherwise; only recorded files exist.
    pub(crate) fn following(hv: &'h FakeHypervisor, domains: &[&str]) -> Self {
        let storage = FakeStorage {
            state: Mutex::default(),
            follows: Some((hv, domains.iter().map(|d| (*d).to_owned()).collect())),
        };
        storage.state.lock().unwrap().presume = Presume::Nothing;
        storage
    }

    /// Files whose name starts with `prefix` exist only once made.
    pub(crate) fn made_only(self, prefix: &str) -> Self {
        self.state.lock().unwrap().made_only.push(prefix.to_owned());
        self
    }

    /// `method`'s `nth` call (from 1) fails; with `nth` 0, every call.
    pub(crate) fn failing(self, method: &'static str, nth: usize) -> Self {
        self.state.lock().unwrap().failing.push((method, nth));
        self
    }

    /// The size of every file (1 byte unless set).
    pub(crate) fn with_size(self, size: u64) -> Self {
        self.state.lock().unwrap().size = size;
        self
    }

    /// What a full copy returns (1000 unless set).
    pub(crate) fn with_copy_size(self, size: u64) -> Self {
        self.state.lock().unwrap().copy_size = size;
        self
    }

    /// Compares say "different" from now on.
    pub(crate) fn set_differs(&self, differs: bool) {
        self.state.lock().unwrap().differs = differs;
    }

    /// Checksums of copies read back other than their source's.
    pub(crate) fn corrupting(self) -> Self {
        self.state.lock().unwrap().corrupting = true;
        self
    }

    /// Records `path` as an image backed by `backing`.
    pub(crate) fn add(&self, path: &Path, backing: Option<&Path>) {
        let mut state = self.state.lock().unwrap();
        state.gone.remove(path);
        state.files.insert(path.to_owned(), File { backing: backing.map(Path::to_owned), ..File::default() });
    }

    pub(crate) fn set_size(&self, path: &Path, size: u64) {
        self.state.lock().unwrap().files.entry(path.to_owned()).or_default().len = Some(size);
    }

    pub(crate) fn set_stamp(&self, path: &Path, stamp: FileStamp) {
        let mut state = self.state.lock().unwrap();
        let file = state.files.entry(path.to_owned()).or_default();
        file.len = Some(stamp.len);
        file.modified_ns = stamp.modified_ns;
    }

    pub(crate) fn is_there(&self, path: &Path) -> bool {
        self.state.lock().unwrap().exists(path)
    }

    pub(crate) fn backing_of(&self, path: &Path) -> Option<PathBuf> {
        self.state.lock().unwrap().files.get(path).and_then(|f| f.backing.clone())
    }

    pub(crate) fn content(&self, path: &Path) -> Option<String> {
        self.state.lock().unwrap().files.get(path).map(|f| f.content.clone())
    }

    /// The files made through the fake or recorded, sorted.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        self.state.lock().unwrap().files.keys().cloned().collect()
    }

    pub(crate) fn removed(&self) -> Vec<PathBuf> {
        self.state.lock().unwrap().removed.clone()
    }

    /// The sources of byte-for-byte copies, in order.
    pub(crate) fn copied(&self) -> Vec<PathBuf> {
        self.state.lock().unwrap().copied.clone()
    }

    pub(crate) fn forget_copied(&self) {
        self.state.lock().unwrap().copied.clear();
    }

    /// The overlays made by `create_overlay` and still there, each with
    /// its backing file.
    pub(crate) fn overlays(&self) -> BTreeMap<PathBuf, PathBuf> {
        let state = self.state.lock().unwrap();
        state
            .files
            .iter()
            .filter(|(_, f)| f.overlay)
            .map(|(path, f)| (path.clone(), f.backing.clone().unwrap_or_default()))
            .collect()
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    fn live_chain(&self, path: &Path) -> Option<Vec<PathBuf>> {
        let (hv, domains) = self.follows.as_ref()?;
        for domain in domains {
            let Some(live) = hv.peek_domain(domain) else { continue };
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

    /// Records the call; its injected failure, if this is the one.
    fn call(&self, method: &'static str, text: String) -> Result<std::sync::MutexGuard<'_, State>, StorageError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(text);
        let count = state.counts.entry(method).or_default();
        *count += 1;
        let nth = *count;
        if state.failing.iter().any(|&(m, n)| m == method && (n == 0 || n == nth)) {
            return Err(StorageError::Tool {
                what: method,
                path: PathBuf::from("(fake)"),
                source: ToolError::Failed {
                    command: format!("fake {method}"),
                    status: Some(1),
                    stderr: "injected".into(),
                },
            });
        }
        Ok(state)
    }
}

impl State {
    fn exists(&self, path: &Path) -> bool {
        if self.files.contains_key(path) {
            return true;
        }
        if self.gone.contains(path) {
            return false;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if self.made_only.iter().any(|prefix| name.starts_with(prefix.as_str())) {
            return false;
        }
        match &self.presume {
            Presume::Everything => true,
            Presume::Nothing => false,
            Presume::Outside(root) => !path.starts_with(root),
        }
    }

    fn size_of(&self, path: &Path) -> Option<u64> {
        self.exists(path).then(|| self.files.get(path).and_then(|f| f.len).unwrap_or(self.size))
    }

    fn make(&mut self, path: &Path, file: File) -> Result<(), StorageError> {
        if self.files.contains_key(path) {
            return Err(StorageError::Exists { path: path.to_owned() });
        }
        self.gone.remove(path);
        self.files.insert(path.to_owned(), file);
        Ok(())
    }
}

impl Storage for FakeStorage<'_> {
    fn exists(&self, path: &Path) -> Result<bool, StorageError> {
        Ok(self.state.lock().unwrap().exists(path))
    }

    fn size(&self, path: &Path) -> Option<u64> {
        self.state.lock().unwrap().size_of(path)
    }

    fn stamp(&self, path: &Path) -> Result<FileStamp, StorageError> {
        let state = self.state.lock().unwrap();
        let len = state.size_of(path).ok_or_else(|| StorageError::Io {
            what: "look at",
            path: path.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let modified_ns = state.files.get(path).map_or(1, |f| if f.modified_ns == 0 { 1 } else { f.modified_ns });
        Ok(FileStamp { len, modified_ns })
    }

    fn free_space(&self, _dir: &Path) -> Result<u64, StorageError> {
        Ok(u64::MAX / 4)
    }

    fn create_dir(&self, _dir: &Path) -> Result<(), StorageError> {
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let state = self.state.lock().unwrap();
        Ok(state.files.keys().filter(|path| path.parent() == Some(dir)).cloned().collect())
    }

    fn remove_dir_if_empty(&self, _dir: &Path) {}

    fn remove(&self, path: &Path) -> Result<(), StorageError> {
        let mut state = self.call("remove", format!("remove {}", path.display()))?;
        state.files.remove(path);
        state.gone.insert(path.to_owned());
        state.removed.push(path.to_owned());
        Ok(())
    }

    fn install(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        let mut state = self.call("install", format!("install {} as {}", from.display(), to.display()))?;
        let file = state.files.remove(from).unwrap_or_default();
        state.gone.insert(from.to_owned());
        state.gone.remove(to);
        state.files.insert(to.to_owned(), file);
        Ok(())
    }

    fn copy_file(&self, from: &Path, to: &Path) -> Result<Copied, StorageError> {
        let mut state = self.call("copy_file", format!("copy {} to {}", from.display(), to.display()))?;
        let content = format!("copy({})", from.display());
        let len = state.size_of(from).unwrap_or(state.size);
        let source = state.files.get(from).cloned().unwrap_or_default();
        let copy = File { backing: source.backing, content: content.clone(), len: Some(len), ..File::default() };
        state.make(to, copy)?;
        state.copied.push(from.to_owned());
        Ok(Copied { bytes: len, sha256: checksum(&content) })
    }

    fn sha256(&self, path: &Path) -> Result<String, StorageError> {
        let state = self.call("sha256", format!("sha256 {}", path.display()))?;
        let text = state.files.get(path).map(|f| f.content.clone()).unwrap_or_default();
        Ok(if state.corrupting { checksum(&format!("{text}!")) } else { checksum(&text) })
    }

    fn create_overlay(&self, overlay: &Path, backing: &Path, _format: ImageFormat) -> Result<(), StorageError> {
        let mut state =
            self.call("create_overlay", format!("create {} on {}", overlay.display(), backing.display()))?;
        state.make(overlay, File { overlay: true, backing: Some(backing.to_owned()), ..File::default() })
    }

    fn copy_full(&self, image: &Path, copy: &Path, progress: CopyProgress<'_>) -> Result<u64, StorageError> {
        let mut state = self.call("copy_full", format!("full copy of {} to {}", image.display(), copy.display()))?;
        let size = state.copy_size;
        state.make(copy, File { content: format!("full({})", image.display()), len: Some(size), ..File::default() })?;
        drop(state);
        progress(500);
        progress(1000);
        Ok(size)
    }

    fn backing_chain(&self, path: &Path) -> Result<Vec<PathBuf>, StorageError> {
        if let Some(chain) = self.live_chain(path) {
            return Ok(chain);
        }
        let state = self.state.lock().unwrap();
        let mut chain = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(current) = next {
            let Some(file) = state.files.get(&current) else {
                return Err(StorageError::Tool {
                    what: "info",
                    path: path.to_owned(),
                    source: ToolError::Failed {
                        command: format!("qemu-img info {}", path.display()),
                        status: Some(1),
                        stderr: format!("Could not open '{}': No such file or directory", current.display()),
                    },
                });
            };
            next = file.backing.clone();
            chain.push(current);
        }
        Ok(chain)
    }

    fn set_backing(&self, image: &Path, backing: &Path, _format: ImageFormat) -> Result<(), StorageError> {
        let mut state =
            self.call("set_backing", format!("set backing of {} to {}", image.display(), backing.display()))?;
        state.files.entry(image.to_owned()).or_default().backing = Some(backing.to_owned());
        Ok(())
    }

    fn pull(&self, top: &Path, backing: Option<(&Path, ImageFormat)>) -> Result<(), StorageError> {
        let mut state =
            self.call("pull", format!("pull {} onto {:?}", top.display(), backing.map(|b| b.0.to_owned())))?;
        state.files.entry(top.to_owned()).or_default().backing = backing.map(|b| b.0.to_owned());
        Ok(())
    }

    fn merge(&self, overlay: &Path, into: &Path) -> Result<(), StorageError> {
        let mut state = self.call("merge", format!("merge {} into {}", overlay.display(), into.display()))?;
        let overlay = state.files.get(overlay).map(|f| f.content.clone()).unwrap_or_default();
        let target = state.files.entry(into.to_owned()).or_default();
        target.content.push('+');
        target.content.push_str(&overlay);
        Ok(())
    }

    fn same_content(&self, a: &Path, b: &Path) -> Result<bool, StorageError> {
        let state = self.call("same_content", format!("compare {} {}", a.display(), b.display()))?;
        Ok(!(state.differs || state.corrupting))
    }

    fn check(&self, image: &Path) -> Result<Vec<String>, StorageError> {
        self.call("check", format!("check {}", image.display())).map(|_| Vec::new())
    }

    /// A file's content is its one extent.
    fn data_extents(&self, path: &Path) -> Result<Vec<Extent>, StorageError> {
        let state = self.call("data_extents", format!("map {}", path.display()))?;
        let len = state.files.get(path).map_or(0, |f| f.content.len() as u64);
        Ok(if len == 0 { Vec::new() } else { vec![Extent { offset: 0, len }] })
    }

    fn read_range(&self, path: &Path, offset: u64, len: u64) -> Result<Box<dyn std::io::Read + '_>, StorageError> {
        let state = self.call("read_range", format!("read {} {offset}+{len}", path.display()))?;
        let content = state.files.get(path).map(|f| f.content.clone().into_bytes()).unwrap_or_default();
        let start = usize::try_from(offset).unwrap().min(content.len());
        let end = usize::try_from(offset + len).unwrap().min(content.len());
        Ok(Box::new(std::io::Cursor::new(content[start..end].to_vec())))
    }

    fn write_range(&self, path: &Path, offset: u64) -> Result<Box<dyn RangeWriter + '_>, StorageError> {
        drop(self.call("write_range", format!("write {} from {offset}", path.display()))?);
        Ok(Box::new(FakeRangeWriter { storage: self, path: path.to_owned(), offset, bytes: Vec::new() }))
    }

    fn finish_file(&self, path: &Path, len: u64) -> Result<(), StorageError> {
        let mut state = self.call("finish_file", format!("finish {} at {len}", path.display()))?;
        state.gone.remove(path);
        state.files.entry(path.to_owned()).or_default().len = Some(len);
        Ok(())
    }
}

/// Writes into a fake file's content when finished (the `finish_range`
/// call, which can be made to fail like a cut link).
struct FakeRangeWriter<'s, 'h> {
    storage: &'s FakeStorage<'h>,
    path: PathBuf,
    offset: u64,
    bytes: Vec<u8>,
}

impl std::io::Write for FakeRangeWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl RangeWriter for FakeRangeWriter<'_, '_> {
    fn finish(self: Box<Self>) -> Result<(), StorageError> {
        let mut state = self.storage.call("finish_range", format!("wrote {}", self.path.display()))?;
        state.gone.remove(&self.path);
        let file = state.files.entry(self.path.clone()).or_default();
        let at = usize::try_from(self.offset).unwrap().min(file.content.len());
        file.content.truncate(at);
        file.content.push_str(&String::from_utf8_lossy(&self.bytes));
        Ok(())
    }
}
