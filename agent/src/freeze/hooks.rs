//! Freeze hooks: executables in the hooks directory, each called with
//! `freeze` (in name order) before the freeze and `thaw` (in reverse) after
//! it, each under its own time limit.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envclone_agent::freeze::{HookAction, HookOutcome, HookRun};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How much of each output stream a [`HookRun`] keeps.
pub const TAIL_BYTES: usize = 2048;

/// How long output is still collected after a hook exited, for
/// background children that keep its pipes open.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long a hook killed for its timeout gets to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Names of the hooks in `dir`, in run order (bytewise name order). A
/// missing directory means no hooks. Skipped: hidden files, backups (`*~`),
/// package manager leftovers, anything that is not a regular executable
/// file (those are named on stderr).
pub fn discover(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            note!("skipping hook with a non-UTF-8 name {:?}", entry.file_name());
            continue;
        };
        if ignored_name(&name) {
            continue;
        }
        // Follows symlinks: a link to an executable is a hook.
        match std::fs::metadata(entry.path()) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => names.push(name),
            Ok(_) => note!("skipping {name} in {}: not an executable file", dir.display()),
            Err(e) => note!("skipping {name} in {}: {e}", dir.display()),
        }
    }
    names.sort();
    Ok(names)
}

fn ignored_name(name: &str) -> bool {
    const LEFTOVERS: &[&str] = &[".dpkg-", ".rpmnew", ".rpmsave", ".rpmorig", ".ucf-", ".swp"];
    name.starts_with('.') || name.ends_with('~') || LEFTOVERS.iter().any(|l| name.contains(l))
}

/// Runs `dir/name action` in a process group of its own, stdin from
/// /dev/null, output captured. Never fails: what went wrong is the outcome.
pub fn run(dir: &Path, name: &str, action: HookAction, timeout: Duration) -> HookRun {
    let started = Instant::now();
    let mut command = Command::new(dir.join(name));
    command.arg(action.as_str()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).current_dir("/");
    command.process_group(0);
    let finish = |outcome, stdout_tail, stderr_tail| HookRun {
        name: name.to_string(),
        action,
        outcome,
        duration_ms: millis(started.elapsed()),
        stdout_tail,
        stderr_tail,
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return finish(HookOutcome::SpawnFailed { message: e.to_string() }, String::new(), String::new()),
    };
    let stdout = Tail::collect(child.stdout.take());
    let stderr = Tail::collect(child.stderr.take());
    let pgid = Pid::from_raw(child.id() as i32);

    let (exited_tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited_tx.send(child.wait());
    });
    let outcome = match exited.recv_timeout(timeout) {
        Ok(Ok(status)) => status_outcome(status),
        Ok(Err(e)) => HookOutcome::SpawnFailed { message: format!("cannot wait for it: {e}") },
        Err(_) => {
            if let Err(e) = killpg(pgid, Signal::SIGKILL) {
                note!("cannot kill hook {name} (process group {pgid}): {e}");
            }
            if exited.recv_timeout(REAP_GRACE).is_err() {
                note!("hook {name} did not die within {REAP_GRACE:?} of SIGKILL");
            }
            HookOutcome::TimedOut { after_ms: millis(timeout) }
        }
    };
    finish(outcome, stdout.finish(), stderr.finish())
}

fn status_outcome(status: std::process::ExitStatus) -> HookOutcome {
    match (status.code(), status.signal()) {
        (Some(0), _) => HookOutcome::Ok,
        (Some(code), _) => HookOutcome::Exited { code },
        (None, Some(signal)) => HookOutcome::Signalled {
            signal: Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {signal}")),
        },
        (None, None) => HookOutcome::Exited { code: -1 },
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The last [`TAIL_BYTES`] of a stream, read on a thread of its own so
/// that a chatty hook never blocks on a full pipe.
struct Tail {
    buffer: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Tail {
    fn collect(stream: Option<impl Read + Send + 'static>) -> Tail {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel();
        if let Some(mut stream) = stream {
            let shared = Arc::clone(&buffer);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut buffer = shared.lock().unwrap_or_else(|p| p.into_inner());
                            buffer.extend_from_slice(&chunk[..n]);
                            let excess = buffer.len().saturating_sub(TAIL_BYTES);
                            buffer.drain(..excess);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = done_tx.send(());
            });
        }
        Tail { buffer, done }
    }

    /// What was read, waiting briefly for the writer to close the pipe.
    fn finish(self) -> String {
        let _ = self.done.recv_timeout(OUTPUT_GRACE);
        let buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buffer).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait;
    use std::fs;

    fn hook(dir: &Path, name: &str, script: &str) {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn discover_orders_by_name_and_skips_what_is_not_a_hook() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["20-db", "10-app", "9-first", ".hidden", "30-x.dpkg-old", "40-y~", "50-z.rpmnew"] {
            hook(dir.path(), name, "exit 0");
        }
        fs::write(dir.path().join("15-not-executable"), "#!/bin/sh\n").unwrap();
        fs::create_dir(dir.path().join("16-directory")).unwrap();
        std::os::unix::fs::symlink("10-app", dir.path().join("17-link")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("18-dangling")).unwrap();

        assert_eq!(discover(dir.path()).unwrap(), ["10-app", "17-link", "20-db", "9-first"]);
    }

    #[test]
    fn discover_treats_a_missing_directory_as_no_hooks() {
        assert_eq!(discover(Path::new("/nonexistent/envclone/hooks.d")).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn run_passes_the_action_and_keeps_output_tails() {
        let dir = tempfile::tempdir().unwrap();
        hook(dir.path(), "10-ok", "echo \"got $1\"; head -c 5000 /dev/zero | tr '\\0' x >&2; echo END >&2");
        let run = run(dir.path(), "10-ok", HookAction::Thaw, Duration::from_secs(10));
        assert_eq!(run.outcome, HookOutcome::Ok);
        assert_eq!(run.stdout_tail, "got thaw");
        assert!(run.stderr_tail.ends_with("xxEND"), "{}", run.stderr_tail);
        assert!(run.stderr_tail.len() <= TAIL_BYTES);
    }

    #[test]
    fn run_reports_exit_status_signal_and_spawn_failure() {
        let dir = tempfile::tempdir().unwrap();
        hook(dir.path(), "exit3", "echo 'db refused backup mode' >&2; exit 3");
        hook(dir.path(), "killed", "kill -TERM $$");
        fs::write(dir.path().join("bad-format"), "not a script").unwrap();
        fs::set_permissions(dir.path().join("bad-format"), fs::Permissions::from_mode(0o755)).unwrap();

        let exit3 = run(dir.path(), "exit3", HookAction::Freeze, Duration::from_secs(10));
        assert_eq!(exit3.outcome, HookOutcome::Exited { code: 3 });
        assert_eq!(exit3.stderr_tail, "db refused backup mode");
        let killed = run(dir.path(), "killed", HookAction::Freeze, Duration::from_secs(10));
        assert_eq!(killed.outcome, HookOutcome::Signalled { signal: "SIGTERM".into() });
        let bad = run(dir.path(), "bad-format", HookAction::Freeze, Duration::from_secs(10));
        assert!(matches!(bad.outcome, HookOutcome::SpawnFailed { .. }), "{:?}", bad.outcome);
    }

    #[test]
    fn run_kills_a_hook_and_its_children_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        hook(dir.path(), "slow", &format!("sleep 30 & echo $! > {}; echo started; sleep 30", pid_file.display()));
        let started = Instant::now();
        let run = run(dir.path(), "slow", HookAction::Freeze, Duration::from_millis(300));
        assert_eq!(run.outcome, HookOutcome::TimedOut { after_ms: 300 });
        assert_eq!(run.stdout_tail, "started");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let child = fs::read_to_string(&pid_file).unwrap().trim().to_string();
        let gone = wait::until(Duration::from_secs(5), Duration::from_millis(10), || {
            // Dead, or a zombie waiting for init to reap it.
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            (stat.is_empty() || stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))).then_some(())
        })
        .is_some();
        assert!(gone, "the hook's background child {child} outlived the kill");
    }
}
