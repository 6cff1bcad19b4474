//! One operation per environment at a time: an exclusive, non-blocking
//! flock(2) on `<state_dir>/locks/<env>.lock`.
//!
//! The kernel decides who holds the lock, so a holder that dies (even by
//! SIGKILL) frees it at once, and stale content left by a dead holder means
//! nothing. After locking, the holder writes what it is doing (operation,
//! start time, pid) into the file as one JSON line, so that a second caller
//! can be told "busy: snapshot started at 2024-05-01T02:00:00Z by pid 4242".
//! The file is never removed: removing a lock file races with a process
//! that has just opened it. It is opened close-on-exec, so the lock is
//! never inherited by the helper processes an operation spawns.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Failure;
use crate::exit::ExitCode;
use chrono::{DateTime, SecondsFormat, Utc};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// How long a refused caller waits for the holder to finish writing who it is.
const HOLDER_WRITE_GRACE: Duration = Duration::from_millis(500);

/// What the holder of an environment's lock is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub operation: String,
    pub started_at: DateTime<Utc>,
    pub pid: u32,
}

/// Another operation holds the environment: exit code 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub env: String,
    /// `None` when the lock file does not say (a holder other than
    /// envclone, e.g. an administrator's `flock`).
    pub holder: Option<LockHolder>,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.holder {
            Some(holder) => write!(
                f,
                "busy: {} started at {} by pid {}",
                holder.operation,
                holder.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                holder.pid
            ),
            None => write!(f, "busy: another process holds environment '{}'", self.env),
        }
    }
}

impl std::error::Error for Busy {}

impl Failure for Busy {
    fn exit_code(&self) -> ExitCode {
        ExitCode::Busy
    }

    fn hint(&self) -> Option<String> {
        Some(match &self.holder {
            Some(holder) => format!("wait for the {} to finish, then run the command again", holder.operation),
            None => "wait for it to finish, then run the command again".to_owned(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error("invalid environment name {env:?} for a lock file")]
    BadName { env: String },
    #[error("cannot create the lock directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the lock file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot record the lock holder in {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Failure for LockError {
    /// A lock another operation holds is "busy"; one that cannot be taken
    /// at all is a failure.
    fn exit_code(&self) -> ExitCode {
        match self {
            LockError::Busy(_) => ExitCode::Busy,
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            LockError::Busy(busy) => busy.hint(),
            LockError::BadName { .. } => Some("use only letters, digits, '_', '.' and '-'".into()),
            LockError::CreateDir { .. } | LockError::Open { .. } | LockError::Lock { .. } | LockError::Write { .. } => {
                Some("check `controller.state_dir` in the config and that envclone runs as root".into())
            }
        }
    }
}

/// Holds an environment for one operation; released on drop, or by the
/// kernel when the process dies.
#[derive(Debug)]
pub struct EnvLock {
    _file: Flock<File>,
    path: PathBuf,
    env: String,
    holder: LockHolder,
}

impl EnvLock {
    /// Takes `env` for `operation` at once, or says who holds it.
    pub fn acquire(state_dir: &Path, env: &str, operation: &str) -> Result<EnvLock, LockError> {
        let path = Self::path_for(state_dir, env)?;
        let dir = state_dir.join("locks");
        fs::create_dir_all(&dir).map_err(|source| LockError::CreateDir { path: dir, source })?;
        // No truncation on open: the content belongs to whoever holds the lock.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|source| LockError::Open { path: path.clone(), source })?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => file,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Busy(Busy { env: env.to_owned(), holder: read_holder(&path) }))
            }
            Err((_, source)) => return Err(LockError::Lock { path, source }),
        };
        let holder = LockHolder { operation: operation.to_owned(), started_at: Utc::now(), pid: std::process::id() };
        write_holder(&file, &holder).map_err(|source| LockError::Write { path: path.clone(), source })?;
        Ok(EnvLock { _file: file, path, env: env.to_owned(), holder })
    }

    /// `<state_dir>/locks/<env>.lock`, for an environment name that is a
    /// plain file name.
    /// Takes `env`'s lock, waiting up to `within` while another operation
    /// holds it; then busy, naming the last holder seen.
    pub fn acquire_waiting(
        state_dir: &Path,
        env: &str,
        operation: &str,
        within: std::time::Duration,
    ) -> Result<EnvLock, LockError> {
        let mut last_busy = None;
        let waited = crate::wait::until::<_, LockError, _>(
            &format!("the lock of environment '{env}'"),
            within,
            std::time::Duration::from_millis(200),
            || match EnvLock::acquire(state_dir, env, operation) {
                Ok(lock) => Ok(Some(Ok(lock))),
                Err(LockError::Busy(busy)) => {
                    last_busy = Some(busy);
                    Ok(None)
                }
                Err(other) => Ok(Some(Err(other))),
            },
        );
        match waited {
            Ok(result) => result,
            Err(_) => Err(LockError::Busy(last_busy.unwrap_or(Busy { env: env.to_owned(), holder: None }))),
        }
    }

    pub fn path_for(state_dir: &Path, env: &str) -> Result<PathBuf, LockError> {
        let plain = env.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if env.is_empty() || !plain || env.chars().all(|c| c == '.') {
            return Err(LockError::BadName { env: env.to_owned() });
        }
        Ok(state_dir.join("locks").join(format!("{env}.lock")))
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }
}

fn write_holder(file: &File, holder: &LockHolder) -> std::io::Result<()> {
    let mut line = serde_json::to_string(holder).map_err(std::io::Error::other)?;
    line.push('\n');
    file.set_len(0)?;
    file.write_all_at(line.as_bytes(), 0)?;
    file.sync_data()
}

/// What the holder wrote, waiting briefly for a holder that has just taken
/// the lock and not written yet.
fn read_holder(path: &Path) -> Option<LockHolder> {
    crate::wait::until::<_, std::io::Error, _>(
        "the lock holder to say who it is",
        HOLDER_WRITE_GRACE,
        Duration::from_millis(10),
        || Ok(serde_json::from_str(&fs::read_to_string(path)?).ok()),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    const HELPER_DIR: &str = "ENVCLONE_TEST_LOCK_HOLDER_DIR";
    const HELPER_READY: &str = "ENVCLONE-TEST-LOCK-HELD";

    fn busy(result: Result<EnvLock, LockError>) -> Busy {
        match result {
            Err(LockError::Busy(busy)) => busy,
            other => panic!("expected busy, got {other:?}"),
        }
    }

    #[test]
    fn busy_message_names_operation_time_and_pid() {
        let busy = Busy {
            env: "prod".into(),
            holder: Some(LockHolder {
                operation: "snapshot".into(),
                started_at: Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap(),
                pid: 4242,
            }),
        };

        assert_eq!(busy.to_string(), "busy: snapshot started at 2024-05-01T02:00:00Z by pid 4242");
    }

    #[test]
    fn second_caller_is_refused_with_the_holders_details() {
        let dir = tempfile::tempdir().unwrap();
        let held = EnvLock::acquire(dir.path(), "prod", "snapshot").unwrap();

        let busy = busy(EnvLock::acquire(dir.path(), "prod", "restore"));

        let holder = held.holder();
        assert_eq!(busy.holder.as_ref(), Some(holder));
        assert_eq!(
            busy.to_string(),
            format!(
                "busy: snapshot started at {} by pid {}",
                holder.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                std::process::id()
            )
        );
        assert_eq!(held.path(), dir.path().join("locks/prod.lock"));
    }

    #[test]
    fn other_environments_are_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let _prod = EnvLock::acquire(dir.path(), "prod", "snapshot").unwrap();

        let test = EnvLock::acquire(dir.path(), "test", "snapshot").unwrap();

        assert_eq!(test.env(), "test");
    }

    #[test]
    fn lock_is_free_again_after_drop_despite_stale_content() {
        let dir = tempfile::tempdir().unwrap();
        drop(EnvLock::acquire(dir.path(), "prod", "snapshot").unwrap());

        let again = EnvLock::acquire(dir.path(), "prod", "prune").unwrap();

        assert_eq!(again.holder().operation, "prune");
        let content = fs::read_to_string(again.path()).unwrap();
        assert_eq!(serde_json::from_str::<LockHolder>(&content).unwrap(), *again.holder());
    }

    #[test]
    fn holder_that_does_not_say_who_it_is_still_makes_callers_busy() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("locks")).unwrap();
        let path = dir.path().join("locks/prod.lock");
        let foreign = Flock::lock(File::create(&path).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();

        let busy = busy(EnvLock::acquire(dir.path(), "prod", "snapshot"));

        assert_eq!(busy.holder, None);
        assert_eq!(busy.to_string(), "busy: another process holds environment 'prod'");
        drop(foreign);
    }

    #[test]
    fn acquire_refuses_names_that_are_not_plain_file_names() {
        let dir = tempfile::tempdir().unwrap();
        for env in ["", "..", "a/b", "../prod", "a b"] {
            let result = EnvLock::acquire(dir.path(), env, "snapshot");
            assert!(matches!(result, Err(LockError::BadName { .. })), "{env:?}");
        }
    }

    /// Kills the helper if the test fails before it does.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn lock_is_freed_when_its_holder_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["ops::lock::tests::lock_holder_helper", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(HELPER_DIR, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map(KillOnDrop)
            .unwrap();
        let stdout = BufReader::new(child.0.stdout.take().unwrap());
        // The helper prints the marker (after libtest's "test ... ") once it holds
        // the lock; EOF means it died first.
        let ready = stdout.lines().map_while(Result::ok).any(|line| line.contains(HELPER_READY));
        assert!(ready, "the helper process never took the lock");

        let busy = busy(EnvLock::acquire(dir.path(), "prod", "restore"));
        assert_eq!(busy.holder.map(|h| (h.operation, h.pid)), Some(("snapshot".into(), child.0.id())));
        child.0.kill().unwrap();
        child.0.wait().unwrap();

        let lock = EnvLock::acquire(dir.path(), "prod", "restore").unwrap();

        assert_eq!(lock.holder().pid, std::process::id());
    }

    /// Run by `lock_is_freed_when_its_holder_is_killed` in a child process:
    /// takes the lock in the directory it is given and holds it until killed.
    #[test]
    #[ignore = "helper process of lock_is_freed_when_its_holder_is_killed"]
    fn lock_holder_helper() {
        let dir = std::env::var_os(HELPER_DIR).map(PathBuf::from);
        let scratch = tempfile::tempdir().unwrap();
        let lock = EnvLock::acquire(dir.as_deref().unwrap_or(scratch.path()), "prod", "snapshot").unwrap();
        assert_eq!(lock.holder().pid, std::process::id());
        if dir.is_some() {
            println!("{HELPER_READY}");
            // Bounded, in case the parent test dies without killing us.
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}
