//! The freeze lease from pre-freeze hooks to post-thaw hooks, over a
//! [`Host`] so that every abort path is unit tested with a recording fake.
//!
//! Steps, each recorded in the state file before the next one:
//! 1. hooks with `freeze`, in name order; a failure (or the lease ending)
//!    gives the hooks already run `thaw`, in reverse, and stops;
//! 2. sync(2), so that FIFREEZE finds little left to write and the freeze
//!    window stays short; with a barrier, the `armed` line, then wait for
//!    the go (`freeze` on stdin) — anything else unwinds the hooks;
//! 3. FIFREEZE in plan order; a failure thaws what was frozen, in reverse,
//!    then unwinds the hooks, and stops;
//! 4. the [`Frozen`] line, then hold the lease;
//! 5. FITHAW in reverse freeze order, at once;
//! 6. hooks with `thaw`, in reverse name order.

use std::time::{Duration, Instant};

use envclone_agent::freeze::{Armed, FreezeReport, Frozen, FrozenMount, HookAction, HookRun};
use nix::errno::Errno;

use super::fsfreeze::Thawed;
use super::lease::LeaseEnd;
use super::mounts::MountEntry;
use super::state::{unix_ms, Phase, State, StateError};
use super::FreezeError;

/// What the flow does to the world.
pub trait Host {
    fn run_hook(&mut self, name: &str, action: HookAction) -> HookRun;
    fn freeze(&mut self, mount: &MountEntry) -> Result<(), Errno>;
    fn thaw(&mut self, mount_point: &str) -> Result<Thawed, Errno>;
    fn record(&mut self, state: &State) -> Result<(), StateError>;
    /// Whether the lease ended already (stdin closed, `thaw`, a signal).
    fn lease_ended(&mut self) -> Option<LeaseEnd>;
    /// Writes dirty data back (sync(2)).
    fn sync(&mut self);
    /// Prints the `armed` line of a barrier freeze.
    fn armed(&mut self, event: &Armed);
    /// Waits for the barrier's go; what ended the lease instead otherwise.
    fn await_go(&mut self, deadline: Instant) -> Result<(), LeaseEnd>;
    /// Prints the `frozen` line.
    fn frozen(&mut self, event: &Frozen);
    /// Waits until the lease ends or `deadline` passes.
    fn hold(&mut self, deadline: Instant) -> LeaseEnd;
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub hooks: Vec<String>,
    /// In freeze order.
    pub mounts: Vec<MountEntry>,
    pub lease_timeout: Duration,
    /// Arm, then wait for the go before freezing (`--barrier`).
    pub barrier: bool,
    /// How long an armed freeze waits for its go: the controller arms
    /// every guest first, each running its own hooks.
    pub go_within: Duration,
}

/// Runs the whole lease. `state` is already recorded (phase `hooks`).
pub fn run(host: &mut impl Host, plan: &Plan, mut state: State) -> Result<FreezeReport, FreezeError> {
    let started = Instant::now();
    let mut hook_runs = Vec::new();
    for name in &plan.hooks {
        if let Some(end) = host.lease_ended() {
            let unwound = unwind_hooks(host, &mut state);
            return Err(FreezeError::Cancelled { why: describe(&end), unwound });
        }
        let run = host.run_hook(name, HookAction::Freeze);
        if !run.succeeded() {
            let unwound = unwind_hooks(host, &mut state);
            return Err(FreezeError::HookFailed { run: Box::new(run), unwound });
        }
        state.hooks_run.push(name.clone());
        host.record(&state)?;
        hook_runs.push(run);
    }
    if let Some(end) = host.lease_ended() {
        let unwound = unwind_hooks(host, &mut state);
        return Err(FreezeError::Cancelled { why: describe(&end), unwound });
    }
    let syncing = Instant::now();
    host.sync();
    if plan.barrier {
        host.armed(&Armed {
            pid: state.pid,
            hooks: hook_runs.clone(),
            took_ms: millis(started.elapsed()),
            sync_ms: millis(syncing.elapsed()),
        });
        if let Err(end) = host.await_go(Instant::now() + plan.go_within) {
            let unwound = unwind_hooks(host, &mut state);
            return Err(FreezeError::Cancelled { why: describe(&end), unwound });
        }
    }

    let first_freeze = Instant::now();
    let deadline = first_freeze + plan.lease_timeout;
    state.phase = Phase::Freezing;
    state.lease_deadline_unix_ms = Some(unix_ms() + millis(plan.lease_timeout));
    host.record(&state)?;
    let mut frozen = Vec::new();
    for mount in &plan.mounts {
        let began = Instant::now();
        if let Err(errno) = host.freeze(mount) {
            let failure = FreezeError::Freeze { mount: mount.mount_point.clone(), errno, unwound: Vec::new() };
            let (thawed, _, failed) = thaw_all(host, &mut state);
            if !failed.is_empty() {
                // Hooks stay in `freeze` state: what is still frozen must
                // not see its services resume writing.
                return Err(FreezeError::Thaw { failed, thawed, cause: Some(failure.to_string()) });
            }
            let unwound = unwind_hooks(host, &mut state);
            return Err(FreezeError::Freeze { mount: mount.mount_point.clone(), errno, unwound });
        }
        state.frozen.push(mount.mount_point.clone());
        record_logged(host, &state);
        frozen.push(FrozenMount {
            mount_point: mount.mount_point.clone(),
            fstype: mount.fstype.clone(),
            source: mount.source.clone(),
            freeze_ms: millis(began.elapsed()),
        });
    }
    state.phase = Phase::Frozen;
    record_logged(host, &state);
    host.frozen(&Frozen {
        pid: state.pid,
        mounts: frozen,
        hooks: hook_runs,
        took_ms: millis(started.elapsed()),
        lease_timeout_ms: millis(plan.lease_timeout),
    });

    let end = host.hold(deadline);
    state.phase = Phase::Thawing;
    let (thawed, already_thawed, failed) = thaw_all(host, &mut state);
    let frozen_ms = millis(first_freeze.elapsed());
    // Post-thaw hooks run even when a thaw failed: the services on the
    // thawed filesystems must resume, and each hook is time-limited.
    let hooks = unwind_hooks(host, &mut state);
    if !failed.is_empty() {
        return Err(FreezeError::Thaw { failed, thawed, cause: None });
    }
    let hook_failures = hooks.iter().filter(|r| !r.succeeded()).map(|r| r.name.clone()).collect();
    Ok(FreezeReport { reason: end.reason, signal: end.signal, frozen_ms, thawed, already_thawed, hooks, hook_failures })
}

fn describe(end: &LeaseEnd) -> String {
    use envclone_agent::freeze::ThawReason::*;
    match (&end.reason, &end.signal) {
        (Signal, Some(signal)) => format!("{signal} arrived"),
        (StdinThaw, _) => "`thaw` arrived on stdin".into(),
        (LeaseTimeout, _) => "the lease timed out".into(),
        _ => "stdin closed".into(),
    }
}

/// FITHAW on everything in `state.frozen`, in reverse; what thawed leaves
/// the record. Returns (thawed, thawed by somebody else, failed).
fn thaw_all(host: &mut impl Host, state: &mut State) -> (Vec<String>, Vec<String>, Vec<(String, Errno)>) {
    let (mut thawed, mut already, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for mount in state.frozen.clone().into_iter().rev() {
        match host.thaw(&mount) {
            Ok(Thawed::Thawed) => thawed.push(mount.clone()),
            Ok(Thawed::WasNotFrozen) => already.push(mount.clone()),
            Err(errno) => {
                note!("CANNOT THAW {mount}: {errno}");
                failed.push((mount, errno));
                continue;
            }
        }
        state.frozen.retain(|m| *m != mount);
        record_logged(host, state);
    }
    (thawed, already, failed)
}

/// `thaw` for every hook that ran `freeze`, in reverse; each leaves the
/// record once run, whatever its outcome.
fn unwind_hooks(host: &mut impl Host, state: &mut State) -> Vec<HookRun> {
    let mut runs = Vec::new();
    while let Some(name) = state.hooks_run.last().cloned() {
        let run = host.run_hook(&name, HookAction::Thaw);
        if !run.succeeded() {
            note!("thaw hook {name} {}: {}", run.outcome, run.stderr_tail);
        }
        state.hooks_run.pop();
        record_logged(host, state);
        runs.push(run);
    }
    runs
}

/// Once something is frozen, failing to update the record must not stop
/// the thaw: it is said on stderr instead.
fn record_logged(host: &mut impl Host, state: &State) {
    if let Err(e) = host.record(state) {
        note!("cannot update the freeze record: {e}");
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envclone_agent::freeze::{HookOutcome, ThawReason};
    use std::path::Path;

    /// Records every step, in order; fails where its scenario says.
    #[derive(Debug, Default)]
    struct FakeHost {
        steps: Vec<String>,
        records: Vec<State>,
        fail_hook: Option<(String, HookAction)>,
        fail_freeze: Option<String>,
        fail_thaw: Option<String>,
        already_thawed: Option<String>,
        ended_before_freeze: Option<LeaseEnd>,
        lease_end: Option<LeaseEnd>,
        frozen_events: Vec<Frozen>,
        armed_events: Vec<Armed>,
        /// What the barrier's wait for the go returns.
        go: Option<Result<(), LeaseEnd>>,
    }

    impl FakeHost {
        fn ending_with(reason: ThawReason) -> FakeHost {
            FakeHost { lease_end: Some(LeaseEnd { reason, signal: None }), ..FakeHost::default() }
        }

        fn failing_hook(name: &str, action: HookAction) -> FakeHost {
            FakeHost { fail_hook: Some((name.into(), action)), ..FakeHost::ending_with(ThawReason::StdinThaw) }
        }

        fn failing_freeze_at(mount: &str) -> FakeHost {
            FakeHost { fail_freeze: Some(mount.into()), ..FakeHost::ending_with(ThawReason::StdinThaw) }
        }

        fn failing_thaw_at(mount: &str) -> FakeHost {
            FakeHost { fail_thaw: Some(mount.into()), ..FakeHost::ending_with(ThawReason::Eof) }
        }

        fn cancelled_before_freeze() -> FakeHost {
            FakeHost {
                ended_before_freeze: Some(LeaseEnd { reason: ThawReason::Eof, signal: None }),
                ..FakeHost::default()
            }
        }
    }

    impl Host for FakeHost {
        fn run_hook(&mut self, name: &str, action: HookAction) -> HookRun {
            self.steps.push(format!("hook {name} {}", action.as_str()));
            let fails = self.fail_hook.as_ref().is_some_and(|(n, a)| n == name && *a == action);
            HookRun {
                name: name.into(),
                action,
                outcome: if fails { HookOutcome::Exited { code: 3 } } else { HookOutcome::Ok },
                duration_ms: 0,
                stdout_tail: String::new(),
                stderr_tail: if fails { "db refused backup mode".into() } else { String::new() },
            }
        }

        fn freeze(&mut self, mount: &MountEntry) -> Result<(), Errno> {
            self.steps.push(format!("freeze {}", mount.mount_point));
            if self.fail_freeze.as_deref() == Some(&mount.mount_point) {
                return Err(Errno::EOPNOTSUPP);
            }
            Ok(())
        }

        fn thaw(&mut self, mount_point: &str) -> Result<Thawed, Errno> {
            self.steps.push(format!("thaw {mount_point}"));
            if self.fail_thaw.as_deref() == Some(mount_point) {
                return Err(Errno::EIO);
            }
            if self.already_thawed.as_deref() == Some(mount_point) {
                return Ok(Thawed::WasNotFrozen);
            }
            Ok(Thawed::Thawed)
        }

        fn record(&mut self, state: &State) -> Result<(), StateError> {
            self.records.push(state.clone());
            Ok(())
        }

        fn lease_ended(&mut self) -> Option<LeaseEnd> {
            self.ended_before_freeze.clone()
        }

        fn sync(&mut self) {
            self.steps.push("sync".into());
        }

        fn armed(&mut self, event: &Armed) {
            self.steps.push("armed".into());
            self.armed_events.push(event.clone());
        }

        fn await_go(&mut self, _deadline: Instant) -> Result<(), LeaseEnd> {
            self.steps.push("await go".into());
            self.go.clone().expect("the scenario never arms")
        }

        fn frozen(&mut self, event: &Frozen) {
            self.steps.push("frozen".into());
            self.frozen_events.push(event.clone());
        }

        fn hold(&mut self, _deadline: Instant) -> LeaseEnd {
            self.steps.push("hold".into());
            self.lease_end.clone().expect("the scenario never holds a lease")
        }
    }

    fn mount(point: &str) -> MountEntry {
        MountEntry {
            mount_id: 1,
            major: 254,
            minor: 0,
            mount_point: point.into(),
            mount_options: vec!["rw".into()],
            fstype: "ext4".into(),
            source: "/dev/vda".into(),
            super_options: vec!["rw".into()],
        }
    }

    fn plan() -> Plan {
        Plan {
            hooks: vec!["10-app".into(), "20-db".into()],
            mounts: vec![mount("/var"), mount("/")],
            lease_timeout: Duration::from_secs(30),
            barrier: false,
            go_within: Duration::from_secs(60),
        }
    }

    fn state() -> State {
        State::begin(Path::new("/etc/envclone/hooks.d"), 30_000).unwrap()
    }

    #[test]
    fn lease_runs_hooks_freezes_holds_thaws_in_reverse_then_thaw_hooks_in_reverse() {
        let mut host = FakeHost::ending_with(ThawReason::StdinThaw);
        let report = run(&mut host, &plan(), state()).unwrap();
        assert_eq!(
            host.steps,
            [
                "hook 10-app freeze",
                "hook 20-db freeze",
                "sync",
                "freeze /var",
                "freeze /",
                "frozen",
                "hold",
                "thaw /",
                "thaw /var",
                "hook 20-db thaw",
                "hook 10-app thaw"
            ]
        );
        assert_eq!(report.reason, ThawReason::StdinThaw);
        assert_eq!(report.thawed, ["/", "/var"]);
        assert!(report.hook_failures.is_empty());
        let event = &host.frozen_events[0];
        assert_eq!(event.mounts.iter().map(|m| m.mount_point.as_str()).collect::<Vec<_>>(), ["/var", "/"]);
        assert_eq!(event.hooks.len(), 2);
        assert_eq!(event.lease_timeout_ms, 30_000);
    }

    #[test]
    fn every_step_is_recorded_and_the_last_record_holds_nothing() {
        let mut host = FakeHost::ending_with(ThawReason::LeaseTimeout);
        run(&mut host, &plan(), state()).unwrap();
        let frozen_while_held = host.records.iter().find(|s| s.phase == Phase::Frozen).unwrap();
        assert_eq!(frozen_while_held.frozen, ["/var", "/"]);
        assert_eq!(frozen_while_held.hooks_run, ["10-app", "20-db"]);
        assert!(frozen_while_held.lease_deadline_unix_ms.is_some());
        let last = host.records.last().unwrap();
        assert!(!last.left_work(), "{last:?}");
    }

    #[test]
    fn failing_pre_freeze_hook_unwinds_earlier_hooks_and_freezes_nothing() {
        let mut host = FakeHost::failing_hook("20-db", HookAction::Freeze);
        let err = run(&mut host, &plan(), state()).unwrap_err();
        assert_eq!(host.steps, ["hook 10-app freeze", "hook 20-db freeze", "hook 10-app thaw"]);
        let FreezeError::HookFailed { run, unwound } = err else { panic!("{err:?}") };
        assert_eq!((run.name.as_str(), run.stderr_tail.as_str()), ("20-db", "db refused backup mode"));
        assert_eq!(unwound.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["10-app"]);
        assert!(!host.records.last().unwrap().left_work());
    }

    #[test]
    fn failing_freeze_thaws_what_froze_and_unwinds_hooks() {
        let mut host = FakeHost::failing_freeze_at("/");
        let err = run(&mut host, &plan(), state()).unwrap_err();
        assert_eq!(
            host.steps,
            [
                "hook 10-app freeze",
                "hook 20-db freeze",
                "sync",
                "freeze /var",
                "freeze /",
                "thaw /var",
                "hook 20-db thaw",
                "hook 10-app thaw"
            ]
        );
        assert!(
            matches!(&err, FreezeError::Freeze { mount, errno: Errno::EOPNOTSUPP, unwound } if mount == "/" && unwound.len() == 2),
            "{err:?}"
        );
        assert!(!host.records.last().unwrap().left_work());
    }

    #[test]
    fn failing_thaw_is_a_hard_error_that_keeps_the_record() {
        let mut host = FakeHost::failing_thaw_at("/var");
        let err = run(&mut host, &plan(), state()).unwrap_err();
        assert!(host.steps.ends_with(&[
            "thaw /".into(),
            "thaw /var".into(),
            "hook 20-db thaw".into(),
            "hook 10-app thaw".into()
        ]));
        let FreezeError::Thaw { failed, thawed, cause: None } = &err else { panic!("{err:?}") };
        assert_eq!(
            (failed.as_slice(), thawed.as_slice()),
            (&[("/var".to_string(), Errno::EIO)][..], &["/".to_string()][..])
        );
        assert_eq!(host.records.last().unwrap().frozen, ["/var"]);
    }

    #[test]
    fn failing_thaw_hook_is_reported_after_everything_thawed() {
        let mut host = FakeHost::failing_hook("10-app", HookAction::Thaw);
        let report = run(&mut host, &plan(), state()).unwrap();
        assert_eq!(report.thawed, ["/", "/var"]);
        assert_eq!(report.hook_failures, ["10-app"]);
    }

    #[test]
    fn a_filesystem_thawed_by_someone_else_is_reported_as_such() {
        let mut host = FakeHost { already_thawed: Some("/".into()), ..FakeHost::ending_with(ThawReason::Signal) };
        let report = run(&mut host, &plan(), state()).unwrap();
        assert_eq!((report.thawed, report.already_thawed), (vec!["/var".to_string()], vec!["/".to_string()]));
    }

    #[test]
    fn barrier_arms_after_hooks_and_sync_and_freezes_on_the_go() {
        let mut host = FakeHost { go: Some(Ok(())), ..FakeHost::ending_with(ThawReason::StdinThaw) };
        let plan = Plan { barrier: true, ..plan() };
        run(&mut host, &plan, state()).unwrap();
        assert_eq!(
            host.steps[..7],
            ["hook 10-app freeze", "hook 20-db freeze", "sync", "armed", "await go", "freeze /var", "freeze /"]
        );
        assert_eq!(host.armed_events[0].hooks.len(), 2);
    }

    #[test]
    fn barrier_cancelled_before_the_go_unwinds_the_hooks_and_freezes_nothing() {
        let end = LeaseEnd { reason: ThawReason::Eof, signal: None };
        let mut host = FakeHost { go: Some(Err(end)), ..FakeHost::default() };
        let plan = Plan { barrier: true, ..plan() };
        let err = run(&mut host, &plan, state()).unwrap_err();
        assert_eq!(
            host.steps,
            [
                "hook 10-app freeze",
                "hook 20-db freeze",
                "sync",
                "armed",
                "await go",
                "hook 20-db thaw",
                "hook 10-app thaw"
            ]
        );
        assert!(matches!(&err, FreezeError::Cancelled { why, unwound } if why == "stdin closed" && unwound.len() == 2));
        assert!(!host.records.last().unwrap().left_work());
    }

    #[test]
    fn lease_lost_before_the_freeze_freezes_nothing() {
        let mut host = FakeHost::cancelled_before_freeze();
        let err = run(&mut host, &plan(), state()).unwrap_err();
        assert!(host.steps.is_empty(), "{:?}", host.steps);
        assert!(matches!(&err, FreezeError::Cancelled { why, .. } if why == "stdin closed"), "{err:?}");
    }
}
