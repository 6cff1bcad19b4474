//! The record of a freeze, on tmpfs (`/run/envclone-agent/freeze.json`), so
//! that `status` and `thaw` know what a holder froze, and whether it is
//! still alive, without touching a frozen filesystem. Written atomically
//! (temporary file + rename) after every step; removed after the thaw.
//!
//! Liveness is the recorded pid plus its start time (field 22 of
//! /proc/PID/stat), so a reused pid is not taken for the holder. There is
//! no non-destructive way to ask the kernel whether a filesystem is frozen
//! (FITHAW would thaw it), so a holder that was SIGKILLed leaves its
//! filesystems listed here as frozen by a dead holder: what `status`
//! reports and what `thaw` recovers. A freeze made by something else
//! (fsfreeze, qemu-ga) is not seen by `status`; `thaw` thaws it anyway.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub const STATE_DIR: &str = "/run/envclone-agent";
const STATE_FILE: &str = "freeze.json";
const LOCK_FILE: &str = "lock";

/// Where a freeze stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Running pre-freeze hooks; nothing frozen yet.
    Hooks,
    /// Freezing; `frozen` lists what is frozen so far.
    Freezing,
    /// Everything frozen; the lease is held.
    Frozen,
    /// Thawed or thawing; post-thaw hooks still to run are in `hooks_run`.
    Thawing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot.
    pub pid_start: u64,
    pub started_unix_ms: u64,
    /// When the lease runs out, once the freeze began.
    pub lease_deadline_unix_ms: Option<u64>,
    pub phase: Phase,
    pub hooks_dir: PathBuf,
    pub hook_timeout_ms: u64,
    /// Hooks that ran `freeze` and have not run `thaw` yet, in run order.
    pub hooks_run: Vec<String>,
    /// Mount points frozen now, in freeze order.
    pub frozen: Vec<String>,
}

impl State {
    /// A state for this process, starting now.
    pub fn begin(hooks_dir: &Path, hook_timeout_ms: u64) -> io::Result<State> {
        let pid = std::process::id();
        Ok(State {
            pid,
            pid_start: start_time(pid)?.ok_or_else(|| io::Error::other("this process has no /proc entry"))?,
            started_unix_ms: unix_ms(),
            lease_deadline_unix_ms: None,
            phase: Phase::Hooks,
            hooks_dir: hooks_dir.to_path_buf(),
            hook_timeout_ms,
            hooks_run: Vec::new(),
            frozen: Vec::new(),
        })
    }

    /// Whether the process that wrote this state is still running.
    pub fn holder_alive(&self) -> bool {
        matches!(start_time(self.pid), Ok(Some(start)) if start == self.pid_start)
    }

    /// Whether a dead holder left anything to undo.
    pub fn left_work(&self) -> bool {
        !self.frozen.is_empty() || !self.hooks_run.is_empty()
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Field 22 of /proc/PID/stat; `None` when there is no such process.
fn start_time(pid: u32) -> io::Result<Option<u64>> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(parse_start_time(&stat))
}

/// The command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`. A zombie counts as gone.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // rest starts at field 3 (state); starttime is field 22.
    fields.get(22 - 3)?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("{} is not a freeze record", path.display())]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// The directory holding the state file and the lock that serializes
/// check-and-record between `freeze` and `thaw`.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn io(&self, action: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> StateError {
        move |source| StateError::Io { action, path, source }
    }

    /// Creates the directory (mode 0700) when missing.
    pub fn ensure(&self) -> Result<(), StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(self.io("create", self.dir.clone()))
    }

    /// The device the state lives on, to check it is not being frozen.
    pub fn device(&self) -> Result<u64, StateError> {
        Ok(std::fs::metadata(&self.dir).map_err(self.io("stat", self.dir.clone()))?.dev())
    }

    /// An exclusive lock, held for a short check-and-record step, released
    /// on drop (or when the process dies).
    pub fn lock(&self) -> Result<Flock<File>, StateError> {
        self.ensure()?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(self.io("open", path.clone()))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StateError::Io {
            action: "lock",
            path,
            source: errno.into(),
        })
    }

    pub fn read(&self) -> Result<Option<State>, StateError> {
        let path = self.file();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::Io { action: "read", path, source: e }),
        };
        serde_json::from_slice(&text).map(Some).map_err(|source| StateError::Corrupt { path, source })
    }

    pub fn write(&self, state: &State) -> Result<(), StateError> {
        let path = self.file();
        let temporary = self.dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let text = serde_json::to_vec(state).map_err(|e| StateError::Io {
            action: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(self.io("create", temporary.clone()))?;
        file.write_all(&text).map_err(self.io("write", temporary.clone()))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(self.io("replace", path))
    }

    pub fn remove(&self) -> Result<(), StateError> {
        let path = self.file();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::Io { action: "remove", path, source: e }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        assert_eq!(dir.read().unwrap(), None);
        let mut state = State::begin(Path::new("/etc/envclone/hooks.d"), 30_000).unwrap();
        state.hooks_run.push("10-db".into());
        state.frozen.push("/".into());
        state.phase = Phase::Frozen;
        let _lock = dir.lock().unwrap();
        dir.write(&state).unwrap();
        assert_eq!(dir.read().unwrap(), Some(state));
        dir.remove().unwrap();
        dir.remove().unwrap();
        assert_eq!(dir.read().unwrap(), None);
    }

    #[test]
    fn corrupt_state_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        std::fs::write(dir.file(), "{\"pid\":").unwrap();
        assert!(matches!(dir.read(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let state = State::begin(Path::new("/h"), 1).unwrap();
        assert!(state.holder_alive());
        assert!(!State { pid_start: state.pid_start + 1, ..state.clone() }.holder_alive());
        assert!(!State { pid: u32::MAX - 1, ..state }.holder_alive());
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let fields = |state: &str| {
            let mut f: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
            f[0] = state.to_string();
            f.join(" ")
        };
        assert_eq!(parse_start_time(&format!("123 (a) b (c)) {}", fields("S"))), Some(22));
        assert_eq!(parse_start_time(&format!("123 (x) {}", fields("Z"))), None);
        assert_eq!(parse_start_time("123 (x) S 1 2"), None);
    }
}
