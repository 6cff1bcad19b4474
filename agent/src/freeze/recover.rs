//! `thaw`: the recovery path. Thaws whatever is frozen, whoever froze it,
//! and is safe to run at any time, any number of times.
//!
//! 1. A live holder is sent SIGTERM: it thaws at once and runs its own
//!    post-thaw hooks. If its filesystems are not thawed within
//!    [`HOLDER_GRACE`], they are thawed here (the holder then finds them
//!    thawed and says so).
//! 2. What a dead holder (SIGKILLed, say) left frozen is thawed in reverse
//!    freeze order, and its hooks that never got `thaw` get it now.
//! 3. Every local filesystem gets FITHAW, in mount order: that thaws
//!    freezes made by anyone else too (fsfreeze, qemu-ga), and changes
//!    nothing on one that is not frozen (EINVAL).

use std::time::Duration;

use envclone_agent::freeze::{FreezeHolder, HookRun, ThawReport};
use nix::errno::Errno;

use super::fsfreeze::Thawed;
use super::mounts::{thaw_candidates, MountEntry};
use super::state::{State, StateDir};
use super::FreezeError;
use crate::wait;

/// How long a live holder gets to thaw after SIGTERM.
pub const HOLDER_GRACE: Duration = Duration::from_secs(5);

/// What recovery does to the world.
pub trait Thawer {
    /// FITHAW on the filesystem mounted at `mount_point` (when `dev` is
    /// given, only if that is still the device there).
    fn thaw(&mut self, mount_point: &str, dev: Option<libc::dev_t>) -> Result<Thawed, Errno>;
    fn run_hook(&mut self, holder: &State, name: &str) -> HookRun;
    fn terminate(&mut self, pid: u32) -> Result<(), Errno>;
}

pub fn recover(dir: &StateDir, mounts: &[MountEntry], thawer: &mut impl Thawer) -> Result<ThawReport, FreezeError> {
    let mut thawed = Vec::new();
    let mut failed = Vec::new();
    let mut hooks = Vec::new();
    let mut holder = None;

    let lock = dir.lock()?;
    match read_or_discard(dir)? {
        Some(state) if state.holder_alive() => {
            drop(lock);
            holder = Some(describe(&state, true));
            if let Err(e) = thawer.terminate(state.pid) {
                note!("cannot signal freeze holder {}: {e}", state.pid);
            }
            let released = wait::until(HOLDER_GRACE, Duration::from_millis(20), || {
                let released = match dir.read() {
                    Ok(None) => true,
                    Ok(Some(s)) => s.frozen.is_empty() || !s.holder_alive(),
                    Err(_) => false,
                };
                released.then_some(())
            })
            .is_some();
            let _lock = dir.lock()?;
            match read_or_discard(dir)? {
                Some(state) if !state.holder_alive() => {
                    holder = Some(describe(&state, false));
                    finish_dead_holder(dir, &state, thawer, &mut thawed, &mut failed, &mut hooks);
                }
                Some(state) if !released => {
                    note!("holder {} did not thaw within {HOLDER_GRACE:?}; thawing here", state.pid);
                    thaw_list(&state.frozen, thawer, &mut thawed, &mut failed);
                }
                _ => {}
            }
        }
        Some(state) => {
            holder = Some(describe(&state, false));
            finish_dead_holder(dir, &state, thawer, &mut thawed, &mut failed, &mut hooks);
        }
        None => {}
    }

    for mount in thaw_candidates(mounts) {
        match thawer.thaw(&mount.mount_point, Some(mount.dev())) {
            Ok(Thawed::Thawed) if !thawed.contains(&mount.mount_point) => thawed.push(mount.mount_point.clone()),
            // Not frozen, cannot be frozen, or not there any more.
            Ok(_) | Err(Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::ENOENT | Errno::EXDEV) => {}
            Err(errno) => failed.push((mount.mount_point.clone(), errno)),
        }
    }

    if !failed.is_empty() {
        return Err(FreezeError::Thaw { failed, thawed, cause: None });
    }
    let hook_failures: Vec<HookRun> = hooks.iter().filter(|r| !r.succeeded()).cloned().collect();
    if !hook_failures.is_empty() {
        return Err(FreezeError::ThawHooks { failed: hook_failures, thawed });
    }
    Ok(ThawReport { thawed, holder, hooks })
}

/// The record, or `None` when it is unreadable (removed, and said on
/// stderr: the sweep below thaws everything regardless).
fn read_or_discard(dir: &StateDir) -> Result<Option<State>, FreezeError> {
    match dir.read() {
        Ok(state) => Ok(state),
        Err(e @ super::state::StateError::Corrupt { .. }) => {
            note!("discarding {e}");
            dir.remove()?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn describe(state: &State, alive: bool) -> FreezeHolder {
    FreezeHolder { pid: state.pid, alive, started_unix_ms: state.started_unix_ms, frozen: state.frozen.clone() }
}

/// Thaws what a dead holder left frozen and gives its hooks `thaw`; the
/// record goes once nothing is left frozen.
fn finish_dead_holder(
    dir: &StateDir,
    state: &State,
    thawer: &mut impl Thawer,
    thawed: &mut Vec<String>,
    failed: &mut Vec<(String, Errno)>,
    hooks: &mut Vec<HookRun>,
) {
    let before = failed.len();
    thaw_list(&state.frozen, thawer, thawed, failed);
    for name in state.hooks_run.iter().rev() {
        hooks.push(thawer.run_hook(state, name));
    }
    let still_frozen: Vec<String> = failed[before..].iter().map(|(m, _)| m.clone()).collect();
    let result = if still_frozen.is_empty() {
        dir.remove()
    } else {
        dir.write(&State { frozen: still_frozen, hooks_run: Vec::new(), ..state.clone() })
    };
    if let Err(e) = result {
        note!("cannot update the freeze record: {e}");
    }
}

/// FITHAW on `frozen` in reverse (freeze order is in the record).
fn thaw_list(frozen: &[String], thawer: &mut impl Thawer, thawed: &mut Vec<String>, failed: &mut Vec<(String, Errno)>) {
    for mount in frozen.iter().rev() {
        match thawer.thaw(mount, None) {
            Ok(Thawed::Thawed) => thawed.push(mount.clone()),
            Ok(Thawed::WasNotFrozen) => {}
            Err(errno) => failed.push((mount.clone(), errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freeze::mounts::parse_mountinfo;
    use crate::freeze::state::Phase;
    use envclone_agent::freeze::{HookAction, HookOutcome};
    use std::path::Path;

    const MOUNTINFO: &str = "\
17 1 254:0 / / rw,relatime - ext4 /dev/vda rw
18 17 0:4 / /proc rw,relatime - proc proc rw
22 17 0:19 / /run rw,relatime - tmpfs tmpfs rw,mode=755
24 17 254:16 / /var rw,relatime - ext4 /dev/vdb rw
";

    /// Filesystems in `frozen` are frozen; FITHAW on any other fails with
    /// EINVAL (reported as WasNotFrozen). Records every step.
    #[derive(Default)]
    struct FakeThawer {
        frozen: Vec<String>,
        steps: Vec<String>,
        failing: Option<String>,
        /// What `terminate` does to the record (the holder thawing).
        on_terminate: Option<Box<dyn FnMut()>>,
    }

    impl Thawer for FakeThawer {
        fn thaw(&mut self, mount_point: &str, _dev: Option<libc::dev_t>) -> Result<Thawed, Errno> {
            self.steps.push(format!("thaw {mount_point}"));
            if self.failing.as_deref() == Some(mount_point) {
                return Err(Errno::EIO);
            }
            let was = self.frozen.iter().any(|m| m == mount_point);
            self.frozen.retain(|m| m != mount_point);
            Ok(if was { Thawed::Thawed } else { Thawed::WasNotFrozen })
        }

        fn run_hook(&mut self, _holder: &State, name: &str) -> HookRun {
            self.steps.push(format!("hook {name} thaw"));
            HookRun {
                name: name.into(),
                action: HookAction::Thaw,
                outcome: HookOutcome::Ok,
                duration_ms: 0,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            }
        }

        fn terminate(&mut self, pid: u32) -> Result<(), Errno> {
            self.steps.push(format!("terminate {pid}"));
            if let Some(f) = self.on_terminate.as_mut() {
                f();
            }
            Ok(())
        }
    }

    fn dead_holder(frozen: &[&str], hooks: &[&str]) -> State {
        let mut state = State::begin(Path::new("/etc/envclone/hooks.d"), 1000).unwrap();
        state.pid_start += 1; // this pid, but another process: dead
        state.phase = Phase::Frozen;
        state.frozen = frozen.iter().map(|s| s.to_string()).collect();
        state.hooks_run = hooks.iter().map(|s| s.to_string()).collect();
        state
    }

    #[test]
    fn thaw_with_nothing_frozen_changes_nothing_and_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let mut thawer = FakeThawer::default();
        let report = recover(&dir, &parse_mountinfo(MOUNTINFO).unwrap(), &mut thawer).unwrap();
        assert_eq!(report, ThawReport { thawed: vec![], holder: None, hooks: vec![] });
        assert_eq!(thawer.steps, ["thaw /", "thaw /var"]);
    }

    #[test]
    fn thaw_recovers_what_a_dead_holder_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.write(&dead_holder(&["/var", "/"], &["10-app", "20-db"])).unwrap();
        let mut thawer = FakeThawer { frozen: vec!["/var".into(), "/".into()], ..FakeThawer::default() };

        let report = recover(&dir, &parse_mountinfo(MOUNTINFO).unwrap(), &mut thawer).unwrap();

        assert_eq!(thawer.steps, ["thaw /", "thaw /var", "hook 20-db thaw", "hook 10-app thaw", "thaw /", "thaw /var"]);
        assert_eq!(report.thawed, ["/", "/var"]);
        assert!(matches!(report.holder, Some(FreezeHolder { alive: false, .. })));
        assert_eq!(dir.read().unwrap(), None);
    }

    #[test]
    fn thaw_sweep_catches_freezes_nobody_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let mut thawer = FakeThawer { frozen: vec!["/var".into()], ..FakeThawer::default() };
        let report = recover(&dir, &parse_mountinfo(MOUNTINFO).unwrap(), &mut thawer).unwrap();
        assert_eq!(report.thawed, ["/var"]);
    }

    #[test]
    fn thaw_asks_a_live_holder_to_thaw() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let mut live = dead_holder(&["/"], &[]);
        live.pid_start -= 1; // this very process: alive
        dir.write(&live).unwrap();
        let holder_dir = dir.clone();
        let mut thawer =
            FakeThawer { on_terminate: Some(Box::new(move || holder_dir.remove().unwrap())), ..FakeThawer::default() };

        let report = recover(&dir, &parse_mountinfo(MOUNTINFO).unwrap(), &mut thawer).unwrap();

        assert_eq!(thawer.steps[0], format!("terminate {}", std::process::id()));
        assert!(matches!(report.holder, Some(FreezeHolder { alive: true, .. })));
    }

    #[test]
    fn thaw_failure_is_a_hard_error_and_keeps_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.write(&dead_holder(&["/var", "/"], &[])).unwrap();
        let mut thawer = FakeThawer {
            frozen: vec!["/var".into(), "/".into()],
            failing: Some("/var".into()),
            ..FakeThawer::default()
        };

        let err = recover(&dir, &parse_mountinfo(MOUNTINFO).unwrap(), &mut thawer).unwrap_err();

        assert!(matches!(&err, FreezeError::Thaw { failed, .. } if failed.iter().all(|(m, _)| m == "/var")), "{err:?}");
        assert_eq!(dir.read().unwrap().unwrap().frozen, ["/var"]);
    }

    #[test]
    fn thaw_discards_an_unreadable_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        std::fs::write(dir.file(), "garbage").unwrap();
        let report = recover(&dir, &parse_mountinfo(MOUNTINFO).unwrap(), &mut FakeThawer::default()).unwrap();
        assert_eq!(report.holder, None);
        assert_eq!(dir.read().unwrap(), None);
    }
}
