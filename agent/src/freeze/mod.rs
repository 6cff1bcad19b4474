//! `freeze` and `thaw`: the freeze lease.
//!
//! `freeze` runs the pre-freeze hooks, freezes every writable local
//! filesystem (FIFREEZE) and holds the freeze as a lease on the SSH channel
//! that started it: `thaw` on stdin, EOF or a lost connection, a
//! termination signal or the lease timeout thaw at once (FITHAW, reverse
//! order), then the post-thaw hooks run. It prints two JSON lines; see
//! [`envclone_agent::freeze`] for the protocol and `envclone-agent freeze
//! --help`. `thaw` is the recovery path ([`recover`]).
//!
//! While anything is frozen the agent writes to stdout, stderr and its
//! record on tmpfs ([`state`]) only.

/// A line on stderr that never panics: during a lease stderr is a pipe to
/// an SSH server that may be gone, and `eprintln!` panics when the write
/// fails, which in the thaw path would skip the rest of the thaw.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "envclone-agent: {}", format_args!($($arg)*));
    }};
}

mod error;
mod flow;
mod fsfreeze;
mod hooks;
mod lease;
mod mounts;
mod options;
mod recover;
mod state;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use envclone_agent::freeze::{Armed, FreezeReport, Frozen, HookAction, HookRun, ThawReport};
use envclone_agent::{AgentError, Envelope, ExitStatus};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use error::FreezeError;
pub use options::FreezeArgs;

use fsfreeze::Thawed;
use lease::{Lease, LeaseEnd};
use mounts::{MountEntry, Skip};
use state::{State, StateDir, StateError, STATE_DIR};

/// `envclone-agent freeze`: prints its lines itself (two on success) and
/// returns the exit status.
pub fn freeze(args: &FreezeArgs) -> ExitStatus {
    match hold_freeze(args) {
        Ok(report) => {
            let status = if report.hook_failures.is_empty() { ExitStatus::Ok } else { ExitStatus::Failed };
            crate::emit(&Envelope::ok(report));
            status
        }
        Err(error) => crate::answer::<()>(Err(error.answer())),
    }
}

/// `envclone-agent thaw`.
pub fn thaw() -> Result<ThawReport, (ExitStatus, AgentError)> {
    let run = || {
        let mounts = read_mountinfo()?;
        recover::recover(&StateDir::new(STATE_DIR), &mounts, &mut RealThawer)
    };
    run().map_err(|e: FreezeError| e.answer())
}

/// For `status`: the mount points a freeze holds frozen (or a dead holder
/// left frozen), and whether a live holder is at work.
pub fn observe() -> Result<(Vec<String>, bool), (ExitStatus, AgentError)> {
    match StateDir::new(STATE_DIR).read() {
        Ok(None) => Ok((Vec::new(), false)),
        Ok(Some(state)) => {
            let alive = state.holder_alive();
            Ok((state.frozen, alive))
        }
        Err(source) => Err(FreezeError::State { source }.answer()),
    }
}

fn hold_freeze(args: &FreezeArgs) -> Result<FreezeReport, FreezeError> {
    let options = options::Options::from_args(args)?;
    // First, before any thread exists: signals go to the lease from now on.
    let lease = Lease::new(libc::STDIN_FILENO).map_err(|source| FreezeError::LeaseSetup { source })?;
    let mounts = read_mountinfo()?;
    let selection = mounts::select(&mounts, &options.include, &options.exclude)
        .map_err(|e| FreezeError::BadArgument { arg: "--include".into(), problem: e.to_string() })?;
    for (entry, skip) in &selection.skipped {
        if matches!(skip, Skip::Excluded | Skip::Shadowed | Skip::SameFilesystem(_)) {
            note!("not freezing {} ({}): {skip:?}", entry.mount_point, entry.fstype);
        }
    }
    let hooks = hooks::discover(&options.hooks_dir)
        .map_err(|source| FreezeError::HooksDir { dir: options.hooks_dir.clone(), source })?;

    let dir = StateDir::new(STATE_DIR);
    dir.ensure()?;
    let state_dev = dir.device()?;
    if let Some(mount) = selection.freeze.iter().find(|m| m.dev() == state_dev) {
        return Err(FreezeError::StateOnFrozenFs { dir: dir.path().to_path_buf(), mount: mount.mount_point.clone() });
    }
    let hook_timeout_ms = u64::try_from(options.hook_timeout.as_millis()).unwrap_or(u64::MAX);
    let state = claim(&dir, &options.hooks_dir, hook_timeout_ms)?;

    let plan = flow::Plan {
        hooks,
        mounts: selection.freeze,
        lease_timeout: options.lease_timeout,
        barrier: options.barrier,
        // The other guests' hooks, then the freeze limit.
        go_within: options.hook_timeout + options.lease_timeout,
    };
    let mut host = RealHost {
        dir: dir.clone(),
        lease,
        fds: Vec::new(),
        hooks_dir: options.hooks_dir.clone(),
        hook_timeout: options.hook_timeout,
    };
    let result = flow::run(&mut host, &plan, state);
    // A failed thaw keeps its record: `status` shows what is still frozen
    // and `thaw` finds it.
    if !matches!(result, Err(FreezeError::Thaw { .. })) {
        if let Err(e) = dir.remove() {
            note!("{e}");
        }
    }
    result
}

/// Records this process as the holder, unless another freeze is held or a
/// dead holder left something to undo.
fn claim(dir: &StateDir, hooks_dir: &std::path::Path, hook_timeout_ms: u64) -> Result<State, FreezeError> {
    let _lock = dir.lock()?;
    if let Some(existing) = dir.read()? {
        let alive = existing.holder_alive();
        if alive || existing.left_work() {
            return Err(FreezeError::AlreadyFrozen {
                pid: existing.pid,
                alive,
                started_unix_ms: existing.started_unix_ms,
                frozen: existing.frozen,
                hooks_run: existing.hooks_run,
            });
        }
        // A holder that died before it did anything left a stale record.
    }
    let state = State::begin(hooks_dir, hook_timeout_ms).map_err(|source| StateError::Io {
        action: "read the start time of",
        path: "/proc/self/stat".into(),
        source,
    })?;
    dir.write(&state)?;
    Ok(state)
}

fn read_mountinfo() -> Result<Vec<MountEntry>, FreezeError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| FreezeError::ReadMountinfo { source })?;
    mounts::parse_mountinfo(&text).map_err(|source| FreezeError::ParseMountinfo { source })
}

/// The real world of a freeze: hooks on disk, ioctls, the record on tmpfs,
/// the lease on stdin.
struct RealHost {
    dir: StateDir,
    lease: Lease,
    /// Descriptors of the frozen mount points, in freeze order: the thaw
    /// goes to the very superblock that was frozen, with no path lookup.
    fds: Vec<(String, OwnedFd)>,
    hooks_dir: PathBuf,
    hook_timeout: Duration,
}

impl flow::Host for RealHost {
    fn run_hook(&mut self, name: &str, action: HookAction) -> HookRun {
        hooks::run(&self.hooks_dir, name, action, self.hook_timeout)
    }

    fn freeze(&mut self, mount: &MountEntry) -> Result<(), Errno> {
        let fd = fsfreeze::open_mount(&mount.mount_point, Some(mount.dev()))?;
        fsfreeze::freeze(&fd)?;
        self.fds.push((mount.mount_point.clone(), fd));
        Ok(())
    }

    fn thaw(&mut self, mount_point: &str) -> Result<Thawed, Errno> {
        match self.fds.iter().position(|(m, _)| m == mount_point) {
            Some(index) => fsfreeze::thaw(&self.fds.remove(index).1),
            None => fsfreeze::thaw(&fsfreeze::open_mount(mount_point, None)?),
        }
    }

    fn record(&mut self, state: &State) -> Result<(), StateError> {
        self.dir.write(state)
    }

    fn lease_ended(&mut self) -> Option<LeaseEnd> {
        self.lease.check()
    }

    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn armed(&mut self, event: &Armed) {
        crate::emit(&Envelope::ok(event.clone()));
    }

    fn await_go(&mut self, deadline: Instant) -> Result<(), LeaseEnd> {
        self.lease.await_go(deadline)
    }

    fn frozen(&mut self, event: &Frozen) {
        crate::emit(&Envelope::ok(event.clone()));
    }

    fn hold(&mut self, deadline: Instant) -> LeaseEnd {
        self.lease.hold(deadline)
    }
}

impl Drop for RealHost {
    /// The safety net: should anything panic while frozen, unwinding lands
    /// here and thaws what is still frozen, in reverse freeze order.
    fn drop(&mut self) {
        while let Some((mount_point, fd)) = self.fds.pop() {
            match fsfreeze::thaw(&fd) {
                Ok(_) => note!("thawed {mount_point} while unwinding"),
                Err(e) => note!("CANNOT THAW {mount_point} while unwinding: {e}"),
            }
        }
    }
}

struct RealThawer;

impl recover::Thawer for RealThawer {
    fn thaw(&mut self, mount_point: &str, dev: Option<libc::dev_t>) -> Result<Thawed, Errno> {
        fsfreeze::thaw(&fsfreeze::open_mount(mount_point, dev)?)
    }

    fn run_hook(&mut self, holder: &State, name: &str) -> HookRun {
        hooks::run(&holder.hooks_dir, name, HookAction::Thaw, Duration::from_millis(holder.hook_timeout_ms))
    }

    fn terminate(&mut self, pid: u32) -> Result<(), Errno> {
        let pid = i32::try_from(pid).map_err(|_| Errno::ESRCH)?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)
    }
}
