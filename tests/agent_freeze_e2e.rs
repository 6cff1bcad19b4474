//! End to end: the freeze lease in a real lab guest (`web`: busybox,
//! dropbear, root on /dev/vda ext4, /run and /tmp on tmpfs), driven over
//! SSH through `envclone::guest::FreezeLease`. Needs root and the packages
//! of scripts/install-deps.sh; the static agent is built by scripts/build.sh.
//! All traffic stays inside the lab's namespace.
//!
//! One lab for the whole binary (booting one costs ~30 s): the scenarios run
//! one after the other in a single test, each leaving the guest thawed and
//! without hooks. Every session a scenario uses while the guest is frozen
//! is logged in BEFORE the freeze: new logins may block on a frozen root.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use common::{run, LabUnderTest};
use envclone::guest::{AgentClient, FreezeLease, FreezeRequest, GuestError, GuestSession};
use envclone::wait;
use envclone_agent::freeze::{FreezeHolder, HookAction, HookOutcome, ThawReason, ThawReport};
use envclone_agent::{ExitStatus, Status};

const LAB: &str = "agent-freeze";
const VM: &str = "web";

/// What the issue demands of a lost connection.
const THAW_AFTER_CONNECTION_LOSS: Duration = Duration::from_secs(1);

/// Generous: the lab's TCG guests are slow when other labs run too.
const SLOW: Duration = Duration::from_secs(60);

#[test]
fn freeze_lease_end_to_end() {
    let lab = LabUnderTest::up(LAB);

    frozen_root_blocks_a_write_until_thaw_and_status_shows_it(&lab);
    lost_connection_thaws_within_a_second(&lab);
    lease_timeout_thaws(&lab);
    second_freeze_is_refused_and_thaw_recovers_a_killed_holder(&lab);
    thaw_ends_a_live_lease(&lab);
    hooks_run_around_a_freeze_and_a_failing_hook_freezes_nothing(&lab);
    barrier_arms_with_hooks_run_and_nothing_frozen_then_freezes_at_the_go(&lab);
}

/// Scenarios 1 and 6: a write started in another (pre-opened) session while
/// the root is frozen has not finished ~1 s later and finishes after the
/// thaw; `status` lists the frozen root meanwhile.
fn frozen_root_blocks_a_write_until_thaw_and_status_shows_it(lab: &LabUnderTest) {
    let lease_session = lab.session(VM);
    let other = lab.session(VM);
    run(&other, "rm -f /root/blocked");
    // Opened and started before the freeze; it writes once told to.
    let mut writer = other.open_channel("read go; echo x > /root/blocked; echo written").expect("start the writer");

    let (lease, frozen) = FreezeLease::start(lease_session, &FreezeRequest::default()).expect("freeze");

    let mounts: Vec<(&str, &str)> = frozen.mounts.iter().map(|m| (m.mount_point.as_str(), m.fstype.as_str())).collect();
    assert_eq!(mounts, [("/", "ext4")]);
    assert_eq!(frozen.pid, lease.pid());
    let during = status(&other);
    assert_eq!(during.frozen, ["/"]);
    assert!(during.freeze_in_progress);

    // (No flush: on an ssh2 channel it discards unread incoming data.)
    writer.write_all(b"go\n").expect("tell the writer to write");
    other.session().set_timeout(1000);
    let mut buf = [0u8; 64];
    let early = writer.read(&mut buf);
    assert!(matches!(&early, Err(e) if e.kind() == ErrorKind::TimedOut), "the write did not block: {early:?}");
    assert!(!writer.eof());

    let report = lease.thaw().expect("thaw");

    assert_eq!(report.reason, ThawReason::StdinThaw);
    assert_eq!(report.thawed, ["/"]);
    other.session().set_timeout(millis(SLOW));
    let mut out = String::new();
    writer.read_to_string(&mut out).expect("the writer's output");
    assert_eq!(out, "written\n");
    writer.wait_close().expect("the writer's end");
    assert_eq!(writer.exit_status().unwrap(), 0);
    assert_eq!(run(&other, "cat /root/blocked"), "x\n");
    assert_nothing_frozen(&other);
}

/// Scenario 2: the lease's TCP connection dies while frozen; the guest is
/// thawed within 1 s, seen by polling `status` on a pre-opened session.
fn lost_connection_thaws_within_a_second(lab: &LabUnderTest) {
    let lease_session = lab.session(VM);
    let watcher = lab.session(VM);
    let request = FreezeRequest { lease_timeout: Duration::from_secs(120), ..FreezeRequest::default() };
    let (lease, _) = FreezeLease::start(lease_session, &request).expect("freeze");
    let probe = Instant::now();
    assert_eq!(status(&watcher).frozen, ["/"]);
    eprintln!("one `status` round trip while frozen: {:?}", probe.elapsed());

    let severed = Instant::now();
    lease.sever();
    let thawed_after = wait::until(
        "the guest to thaw after its lease's connection dropped",
        THAW_AFTER_CONNECTION_LOSS,
        Duration::from_millis(10),
        || AgentClient::new(&watcher).status().map(|s| s.frozen.is_empty().then(|| severed.elapsed())),
    )
    .expect("thawed within 1 s of the connection loss");

    eprintln!("guest thawed {thawed_after:?} after the lease's connection dropped");
    wait_for_holder_to_end(&watcher);
    assert_nothing_frozen(&watcher);
}

/// Scenario 3: nobody asks for the thaw; the lease timeout ends the freeze.
fn lease_timeout_thaws(lab: &LabUnderTest) {
    let lease_session = lab.session(VM);
    let watcher = lab.session(VM);
    let request = FreezeRequest { lease_timeout: Duration::from_secs(2), ..FreezeRequest::default() };

    let (lease, frozen) = FreezeLease::start(lease_session, &request).expect("freeze");
    assert_eq!(frozen.lease_timeout_ms, 2000);
    wait_for_holder_to_end(&watcher);
    let report = lease.thaw().expect("the report of a lease that timed out");

    assert_eq!(report.reason, ThawReason::LeaseTimeout);
    assert_eq!(report.thawed, ["/"]);
    assert!(report.frozen_ms >= 2000, "{report:?}");
    assert_nothing_frozen(&watcher);
}

/// Scenario 5: a second freeze while frozen is refused with Busy; a holder
/// killed with SIGKILL leaves the root frozen, `status` says so, and `thaw`
/// (the recovery path) thaws it, then finds nothing to do.
fn second_freeze_is_refused_and_thaw_recovers_a_killed_holder(lab: &LabUnderTest) {
    let lease_session = lab.session(VM);
    let second = lab.session(VM);
    let rescuer = lab.session(VM);
    let request = FreezeRequest { lease_timeout: Duration::from_secs(300), ..FreezeRequest::default() };
    let (lease, frozen) = FreezeLease::start(lease_session, &request).expect("freeze");

    let refused = FreezeLease::start(second, &request).expect_err("a second freeze");
    assert!(
        matches!(&refused, GuestError::Agent { kind, exit: Some(ExitStatus::Busy), message, .. }
            if kind == "already-frozen" && message.contains(&format!("pid {}", frozen.pid))),
        "{refused:?}"
    );
    assert_eq!(status(&rescuer).frozen, ["/"]);

    run(&rescuer, &format!("kill -9 {}", frozen.pid));
    let orphaned = wait::until("the holder to die", SLOW, Duration::from_millis(50), || {
        AgentClient::new(&rescuer).status().map(|s| (!s.freeze_in_progress).then_some(s))
    })
    .expect("holder gone");
    assert_eq!(orphaned.frozen, ["/"], "a SIGKILLed holder leaves its freeze behind");
    drop(lease);

    let recovered: ThawReport = AgentClient::new(&rescuer).call(&["thaw"], None).expect("thaw");

    assert_eq!(recovered.thawed, ["/"]);
    assert!(
        matches!(&recovered.holder, Some(FreezeHolder { alive: false, pid, .. }) if *pid == frozen.pid),
        "{recovered:?}"
    );
    assert_nothing_frozen(&rescuer);
    assert_eq!(lab.sh(VM, "echo y > /root/after-recovery && cat /root/after-recovery"), "y\n");
    let again: ThawReport = AgentClient::new(&rescuer).call(&["thaw"], None).expect("thaw again");
    assert_eq!(again, ThawReport { thawed: vec![], holder: None, hooks: vec![] });
}

/// Scenario 5b: `thaw` while a live holder has the lease: the holder is
/// told (SIGTERM), thaws at once and still delivers its report.
fn thaw_ends_a_live_lease(lab: &LabUnderTest) {
    let lease_session = lab.session(VM);
    let rescuer = lab.session(VM);
    let (lease, frozen) = FreezeLease::start(lease_session, &FreezeRequest::default()).expect("freeze");

    let recovered: ThawReport = AgentClient::new(&rescuer).call(&["thaw"], None).expect("thaw");

    assert!(
        matches!(&recovered.holder, Some(FreezeHolder { alive: true, pid, .. }) if *pid == frozen.pid),
        "{recovered:?}"
    );
    assert_nothing_frozen(&rescuer);
    let report = lease.thaw().expect("the holder's report");
    assert_eq!((report.reason, report.signal.as_deref()), (ThawReason::Signal, Some("SIGTERM")));
    assert_eq!(report.thawed, ["/"]);
}

/// Scenario 4: hooks get `freeze` before and `thaw` after a freeze; a
/// failing hook aborts the freeze: nothing frozen, the answer names it and
/// its stderr, and the hooks already run got `thaw`.
fn hooks_run_around_a_freeze_and_a_failing_hook_freezes_nothing(lab: &LabUnderTest) {
    let setup = lab.session(VM);
    install_logging_hook(&setup);

    // With a good hook: it brackets the freeze.
    let (lease, frozen) = FreezeLease::start(lab.session(VM), &FreezeRequest::default()).expect("freeze with a hook");
    assert_eq!(hook_names(&frozen.hooks), ["10-ok"]);
    let report = lease.thaw().expect("thaw with a hook");
    assert_eq!(hook_names(&report.hooks), ["10-ok"]);
    assert_eq!(report.hooks[0].action, HookAction::Thaw);
    assert_eq!(run(&setup, "cat /run/hook-10-ok.log"), "freeze\nthaw\n");

    // With a failing hook after it.
    run(
        &setup,
        r#"rm -f /run/hook-10-ok.log &&
           printf '#!/bin/sh\necho "db refused backup mode" >&2\nexit 3\n' > /etc/envclone/hooks.d/20-fail &&
           chmod +x /etc/envclone/hooks.d/20-fail"#,
    );

    let failed =
        FreezeLease::start(lab.session(VM), &FreezeRequest::default()).expect_err("a freeze with a failing hook");

    let GuestError::Agent { kind, message, exit, .. } = &failed else { panic!("{failed:?}") };
    assert_eq!((kind.as_str(), *exit), ("hook-failed", Some(ExitStatus::Failed)));
    assert!(message.contains("20-fail") && message.contains("exited with status 3"), "{message}");
    assert!(message.contains("db refused backup mode"), "{message}");
    assert_nothing_frozen(&setup);
    assert_eq!(run(&setup, "cat /run/hook-10-ok.log"), "freeze\nthaw\n");

    run(&setup, "rm -rf /etc/envclone/hooks.d /run/hook-10-ok.log");
}

/// Scenario 7 (the two-phase freeze a group snapshot uses): armed, the
/// hooks ran and a write to the root still goes through; at the go the
/// root is frozen; an armed lease dropped before its go unwinds the hooks
/// and freezes nothing.
fn barrier_arms_with_hooks_run_and_nothing_frozen_then_freezes_at_the_go(lab: &LabUnderTest) {
    let setup = lab.session(VM);
    install_logging_hook(&setup);

    let (armed, ready) = FreezeLease::arm(lab.session(VM), &FreezeRequest::default()).expect("arm");
    assert_eq!(hook_names(&ready.hooks), ["10-ok"]);
    assert_eq!(run(&setup, "cat /run/hook-10-ok.log"), "freeze\n");
    assert!(status(&setup).frozen.is_empty(), "armed is not frozen");
    run(&setup, "echo armed > /root/armed && sync");

    let (lease, frozen) = armed.freeze().expect("freeze at the go");
    assert_eq!(frozen.pid, ready.pid);
    assert_eq!(status(&setup).frozen, ["/"]);
    let report = lease.thaw().expect("thaw");
    assert_eq!(report.thawed, ["/"]);
    assert_eq!(run(&setup, "cat /run/hook-10-ok.log"), "freeze\nthaw\n");

    run(&setup, "rm -f /run/hook-10-ok.log");
    let (armed, _) = FreezeLease::arm(lab.session(VM), &FreezeRequest::default()).expect("arm again");
    drop(armed);
    wait_for_holder_to_end(&setup);
    assert_nothing_frozen(&setup);
    assert_eq!(run(&setup, "cat /run/hook-10-ok.log"), "freeze\nthaw\n", "the dropped arm unwound its hook");

    run(&setup, "rm -rf /etc/envclone/hooks.d /run/hook-10-ok.log /root/armed");
}

/// A hook `10-ok` that logs each action it is given to /run/hook-10-ok.log.
fn install_logging_hook(setup: &GuestSession) {
    run(
        setup,
        r#"mkdir -p /etc/envclone/hooks.d && rm -f /run/hook-10-ok.log &&
           printf '#!/bin/sh\necho "$1" >> /run/hook-10-ok.log\n' > /etc/envclone/hooks.d/10-ok &&
           chmod +x /etc/envclone/hooks.d/10-ok"#,
    );
}

fn hook_names(runs: &[envclone_agent::freeze::HookRun]) -> Vec<&str> {
    assert!(runs.iter().all(|r| r.outcome == HookOutcome::Ok), "{runs:?}");
    runs.iter().map(|r| r.name.as_str()).collect()
}

fn status(session: &GuestSession) -> Status {
    AgentClient::new(session).status().expect("envclone-agent status")
}

fn assert_nothing_frozen(session: &GuestSession) {
    let status = status(session);
    assert!(status.frozen.is_empty() && !status.freeze_in_progress, "{status:?}");
}

/// Until no live holder is recorded: its post-thaw hooks ran and it exited.
fn wait_for_holder_to_end(session: &GuestSession) {
    wait::until("the freeze holder to finish", SLOW, Duration::from_millis(100), || {
        AgentClient::new(session).status().map(|s| (!s.freeze_in_progress).then_some(()))
    })
    .expect("holder finished");
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
