//! The freeze lease, controller side: `envclone-agent freeze` on a channel
//! of its own, held open while the guest's filesystems are frozen.
//!
//! ```text
//! FreezeLease::start(session, &request)  -> first line: Frozen
//!     ... snapshot ...
//! lease.thaw()                           -> writes `thaw`, EOF; second line: FreezeReport
//!
//! FreezeLease::arm(session, &request)    -> first line: Armed (hooks run, synced)
//! armed.freeze()                         -> writes `freeze`; next line: Frozen
//! ```
//!
//! Arming every guest of an environment before any freezes is what keeps
//! the group's freeze window short (see `ops::snapshot::barrier`).
//!
//! The lease lives on the channel: dropping a [`FreezeLease`] without
//! [`FreezeLease::thaw`] closes it and the agent thaws at once (EOF), as it
//! does when the connection is lost or the lease timeout passes.
//!
//! A lease owns its [`GuestSession`]: ssh2 locks the session for each
//! blocking call, so a lease waiting for its line must not share it with
//! other work. Open every other channel the caller needs while the guest is
//! frozen (a second session, say) BEFORE starting the lease: new SSH logins
//! can block while the root filesystem is frozen. Channels on an already
//! open session keep working ([`FreezeLease::session`] gives one).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use envclone_agent::freeze::{Armed, FreezeReport, Frozen};
use ssh2::Channel;

use super::agent::{parse_answer, AGENT_PROGRAM};
use super::quote::command_line;
use super::ssh::{millis, remote_status};
use super::{ExecOutput, GuestError, GuestSession};

/// How much of the agent's stderr an error keeps.
const TAIL_BYTES: usize = 400;

/// Bound on collecting the rest of a channel once its answer line is in.
const FINISH_WITHIN: Duration = Duration::from_secs(10);

/// What `envclone-agent freeze` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeRequest {
    /// The agent thaws on its own this long after its first FIFREEZE.
    pub lease_timeout: Duration,
    /// Time limit of each hook run.
    pub hook_timeout: Duration,
    /// Hooks directory; the agent's default (/etc/envclone/hooks.d) if `None`.
    pub hooks_dir: Option<String>,
    /// Mount points to freeze even if their type is normally skipped.
    pub include: Vec<String>,
    /// Mount points never to freeze.
    pub exclude: Vec<String>,
    /// How long [`FreezeLease::start`] waits for the first line (all the
    /// pre-freeze hooks plus the freeze itself).
    pub ready_within: Duration,
    /// How long [`FreezeLease::thaw`] waits for the final report (the
    /// thaw plus all the post-thaw hooks).
    pub report_within: Duration,
    /// The agent program in the guest.
    pub program: String,
    /// `--barrier`: set by [`FreezeLease::arm`], cleared by
    /// [`FreezeLease::start`].
    pub barrier: bool,
}

impl Default for FreezeRequest {
    fn default() -> Self {
        FreezeRequest {
            lease_timeout: Duration::from_secs(30),
            hook_timeout: Duration::from_secs(30),
            hooks_dir: None,
            include: Vec::new(),
            exclude: Vec::new(),
            ready_within: Duration::from_secs(120),
            report_within: Duration::from_secs(120),
            program: AGENT_PROGRAM.to_string(),
            barrier: false,
        }
    }
}

impl FreezeRequest {
    /// The agent's arguments, durations in milliseconds.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "freeze".to_string(),
            "--timeout".into(),
            format!("{}ms", self.lease_timeout.as_millis()),
            "--hook-timeout".into(),
            format!("{}ms", self.hook_timeout.as_millis()),
        ];
        if let Some(dir) = &self.hooks_dir {
            args.extend(["--hooks-dir".to_string(), dir.clone()]);
        }
        for mount in &self.include {
            args.extend(["--include".to_string(), mount.clone()]);
        }
        for mount in &self.exclude {
            args.extend(["--exclude".to_string(), mount.clone()]);
        }
        if self.barrier {
            args.push("--barrier".into());
        }
        args
    }
}

/// A freeze held by `envclone-agent freeze` on a channel of this lease's
/// own session. See the module documentation.
pub struct FreezeLease {
    session: GuestSession,
    /// `None` once the channel was handed back (thaw, drop).
    channel: Option<Channel>,
    command: String,
    /// Standard output read past the first line.
    pending: Vec<u8>,
    pid: u32,
    report_within: Duration,
}

impl std::fmt::Debug for FreezeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreezeLease")
            .field("target", &self.session.target())
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl FreezeLease {
    /// Starts `envclone-agent freeze` and waits (up to
    /// `request.ready_within`) until it reports everything frozen. On
    /// error nothing stays frozen: the agent either refused, or thaws when
    /// the channel closes, which dropping the session here does.
    pub fn start(session: GuestSession, request: &FreezeRequest) -> Result<(FreezeLease, Frozen), GuestError> {
        let mut lease = FreezeLease::open(session, &FreezeRequest { barrier: false, ..request.clone() })?;
        let frozen = lease.first_line::<Frozen>(request.ready_within, "the first line (frozen)")?;
        lease.held(frozen.pid, &frozen);
        Ok((lease, frozen))
    }

    /// Starts `envclone-agent freeze --barrier` and waits (up to
    /// `request.ready_within`) until it reports its hooks run and its
    /// filesystems synced: nothing is frozen before [`ArmedLease::freeze`].
    /// Dropping the armed lease cancels it (the agent unwinds its hooks).
    pub fn arm(session: GuestSession, request: &FreezeRequest) -> Result<(ArmedLease, Armed), GuestError> {
        let mut lease = FreezeLease::open(session, &FreezeRequest { barrier: true, ..request.clone() })?;
        let armed = lease.first_line::<Armed>(request.ready_within, "the first line (armed)")?;
        lease.pid = armed.pid;
        tracing::debug!(target = %lease.session.target(), pid = armed.pid, sync_ms = armed.sync_ms, "guest armed");
        Ok((ArmedLease { lease, freeze_within: request.ready_within }, armed))
    }

    fn open(session: GuestSession, request: &FreezeRequest) -> Result<FreezeLease, GuestError> {
        let args = request.args();
        if let Some(arg) = args.iter().find(|a| a.contains('\0')) {
            return Err(GuestError::ArgumentHasNul { arg: arg.clone() });
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let command = command_line(&request.program, &arg_refs);
        let channel = session.open_channel(&command)?;
        Ok(FreezeLease {
            session,
            channel: Some(channel),
            command,
            pending: Vec::new(),
            pid: 0,
            report_within: request.report_within,
        })
    }

    /// The next line, read as a `T` answer while the agent still runs.
    fn first_line<T: serde::de::DeserializeOwned>(
        &mut self,
        within: Duration,
        expected: &'static str,
    ) -> Result<T, GuestError> {
        let deadline = Instant::now() + within;
        let Some(line) = self.read_line(deadline, within)? else {
            return Err(self.ended_early(expected));
        };
        // The agent is still running, so there is no exit status yet: a
        // success line is taken as it is; anything else is read again with
        // the real status once the agent has exited.
        match parse_answer::<T>(self.session.target(), &self.command, &line_output(0, &line, &[])) {
            Ok(answer) => Ok(answer),
            Err(_) => {
                let (status, stderr) = self.finish();
                Err(failure::<T>(self.session.target(), &self.command, status, &line, &stderr))
            }
        }
    }

    fn held(&mut self, pid: u32, frozen: &Frozen) {
        self.pid = pid;
        tracing::info!(target = %self.session.target(), pid, mounts = frozen.mounts.len(), "guest frozen");
    }

    /// Ends the lease: `thaw` on stdin, then EOF, then the final report,
    /// waited for up to the request's `report_within`. A lease that ended on
    /// its own (lease timeout) still yields its report. Post-thaw hooks
    /// that failed are an error ([`GuestError::ThawHooksFailed`]) that
    /// carries the report: the filesystems are thawed all the same.
    pub fn thaw(mut self) -> Result<FreezeReport, GuestError> {
        let within = self.report_within;
        let deadline = Instant::now() + within;
        if let Some(channel) = self.channel.as_mut() {
            // Either may fail when the agent ended the lease itself and
            // closed the channel; its report is waiting then. No flush():
            // libssh2's channel flush DISCARDS unread incoming data, which
            // may be that very report.
            self.session.session().set_timeout(millis(within));
            if let Err(e) = channel.write_all(b"thaw\n") {
                tracing::debug!(target = %self.session.target(), "cannot send `thaw`: {e}");
            }
            if let Err(e) = channel.send_eof() {
                tracing::debug!(target = %self.session.target(), "cannot send EOF: {e}");
            }
        }
        let Some(line) = self.read_line(deadline, within)? else {
            return Err(self.ended_early("the final report"));
        };
        let (status, stderr) = self.finish();
        final_report(self.session.target(), &self.command, status, &line, &stderr)
    }

    /// Drops the connection abruptly (TCP shutdown, no SSH goodbye): what
    /// the agent sees when the controller dies or the link is cut. The
    /// agent thaws as soon as its SSH server notices.
    pub fn sever(mut self) {
        if let Err(e) = self.session.socket.shutdown(Shutdown::Both) {
            tracing::warn!(target = %self.session.target(), "cannot shut the lease's connection down: {e}");
        }
        if let Some(channel) = self.channel.take() {
            self.session.release(channel);
        }
    }

    /// The agent process holding the freeze.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The lease's session, for other commands while frozen (its channels
    /// are already logged in). Not to be used from another thread while
    /// [`Self::thaw`] runs.
    pub fn session(&self) -> &GuestSession {
        &self.session
    }

    /// The next line of standard output, `None` at EOF.
    fn read_line(&mut self, deadline: Instant, budget: Duration) -> Result<Option<Vec<u8>>, GuestError> {
        let Some(channel) = self.channel.as_mut() else { return Ok(None) };
        let mut buf = [0u8; 4096];
        loop {
            if let Some(newline) = self.pending.iter().position(|b| *b == b'\n') {
                return Ok(Some(self.pending.drain(..=newline).collect()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout(&self.session, &self.command, budget));
            }
            self.session.session().set_timeout(millis(left));
            match channel.read(&mut buf) {
                Ok(0) => {
                    return Ok((!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending)));
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(timeout(&self.session, &self.command, budget))
                }
                Err(source) => {
                    return Err(GuestError::ChannelIo {
                        target: self.session.target().to_string(),
                        command: self.command.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// Reads what is left, waits for the close, releases the channel:
    /// (exit status, stderr). Bounded; `None` when it could not be had.
    fn finish(&mut self) -> (Option<i32>, Vec<u8>) {
        let Some(mut channel) = self.channel.take() else { return (None, Vec::new()) };
        let deadline = Instant::now() + FINISH_WITHIN;
        let mut rest = Vec::new();
        let mut stderr = Vec::new();
        let closed = drain(&self.session, &mut channel, deadline, &mut rest)
            .and_then(|()| drain(&self.session, &mut channel.stderr(), deadline, &mut stderr))
            .is_ok()
            && {
                self.session.session().set_timeout(millis(deadline.saturating_duration_since(Instant::now())));
                channel.wait_close().is_ok()
            };
        let status = closed.then(|| remote_status(&channel));
        self.session.release(channel);
        (status, stderr)
    }

    fn ended_early(&mut self, expected: &'static str) -> GuestError {
        let (status, stderr) = self.finish();
        if status == Some(127) {
            return GuestError::AgentMissing { target: self.session.target().to_string() };
        }
        GuestError::LeaseLost {
            target: self.session.target().to_string(),
            expected,
            status,
            stderr_tail: tail(&stderr),
        }
    }
}

impl Drop for FreezeLease {
    /// Without a thaw: EOF on the channel (best effort, never waiting) and
    /// the session closes with it; the agent thaws either way.
    fn drop(&mut self) {
        if let Some(mut channel) = self.channel.take() {
            tracing::warn!(target = %self.session.target(), pid = self.pid, "freeze lease dropped without thaw: closing it");
            self.session.session().set_blocking(false);
            let _ = channel.send_eof();
            self.session.session().set_blocking(true);
            self.session.release(channel);
        }
    }
}

/// A `--barrier` freeze whose agent ran its hooks, synced, and waits for
/// the go: see [`FreezeLease::arm`].
#[derive(Debug)]
pub struct ArmedLease {
    lease: FreezeLease,
    freeze_within: Duration,
}

impl ArmedLease {
    /// The go: `freeze` on stdin, then the [`Frozen`] line (FIFREEZE only:
    /// the hooks and the sync are behind).
    pub fn freeze(mut self) -> Result<(FreezeLease, Frozen), GuestError> {
        let lease = &mut self.lease;
        if let Some(channel) = lease.channel.as_mut() {
            lease.session.session().set_timeout(millis(self.freeze_within));
            // No flush(): see `thaw`.
            if let Err(source) = channel.write_all(b"freeze\n") {
                return Err(GuestError::ChannelIo {
                    target: lease.session.target().to_string(),
                    command: lease.command.clone(),
                    source,
                });
            }
        }
        let frozen = lease.first_line::<Frozen>(self.freeze_within, "the frozen line after the go")?;
        lease.held(frozen.pid, &frozen);
        Ok((self.lease, frozen))
    }
}

fn drain(session: &GuestSession, from: &mut impl Read, deadline: Instant, into: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        session.session().set_timeout(millis(left));
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The final report, from its line and the agent's exit status: 0 with a
/// report, or 1 with a report naming failed post-thaw hooks.
fn final_report(
    target: &str,
    command: &str,
    status: Option<i32>,
    line: &[u8],
    stderr: &[u8],
) -> Result<FreezeReport, GuestError> {
    // The body read as if the exit status agreed with it, then checked
    // against the real one.
    match (status, parse_answer::<FreezeReport>(target, command, &line_output(0, line, stderr))) {
        (Some(0), Ok(report)) => Ok(report),
        (Some(1), Ok(report)) if !report.hook_failures.is_empty() => {
            Err(GuestError::ThawHooksFailed { target: target.to_string(), report: Box::new(report) })
        }
        (_, Ok(_)) => Err(bad_answer(target, command, status, line, stderr)),
        (_, Err(_)) => Err(failure::<FreezeReport>(target, command, status, line, stderr)),
    }
}

/// What a line that is not a success means, read with the real exit
/// status: the agent's error, another protocol, or an unreadable answer.
fn failure<T: serde::de::DeserializeOwned>(
    target: &str,
    command: &str,
    status: Option<i32>,
    line: &[u8],
    stderr: &[u8],
) -> GuestError {
    parse_answer::<T>(target, command, &line_output(status.unwrap_or(-1), line, stderr))
        .err()
        .unwrap_or_else(|| bad_answer(target, command, status, line, stderr))
}

fn bad_answer(target: &str, command: &str, status: Option<i32>, line: &[u8], stderr: &[u8]) -> GuestError {
    GuestError::BadAnswer {
        target: target.to_string(),
        command: command.to_string(),
        status: status.unwrap_or(-1),
        stdout_tail: tail(line),
        stderr_tail: tail(stderr),
        source: None,
    }
}

fn timeout(session: &GuestSession, command: &str, after: Duration) -> GuestError {
    GuestError::CommandTimeout { target: session.target().to_string(), command: command.to_string(), after }
}

fn line_output(status: i32, line: &[u8], stderr: &[u8]) -> ExecOutput {
    ExecOutput { status, stdout: line.to_vec(), stderr: stderr.to_vec() }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envclone_agent::freeze::ThawReason;
    use envclone_agent::{AgentError, Envelope, ExitStatus};

    #[test]
    fn request_args_spell_durations_in_milliseconds_and_repeat_mounts() {
        let request = FreezeRequest {
            lease_timeout: Duration::from_secs(2),
            hook_timeout: Duration::from_millis(1500),
            hooks_dir: Some("/run/hooks".into()),
            include: vec!["/mnt/fuse".into()],
            exclude: vec!["/boot".into(), "/srv".into()],
            ..FreezeRequest::default()
        };
        assert_eq!(
            request.args(),
            [
                "freeze",
                "--timeout",
                "2000ms",
                "--hook-timeout",
                "1500ms",
                "--hooks-dir",
                "/run/hooks",
                "--include",
                "/mnt/fuse",
                "--exclude",
                "/boot",
                "--exclude",
                "/srv"
            ]
        );
    }

    const TARGET: &str = "root@10.77.1.11:22 via netns lab";
    const COMMAND: &str = "envclone-agent freeze --timeout 30000ms";

    fn report(hook_failures: &[&str]) -> FreezeReport {
        FreezeReport {
            reason: ThawReason::StdinThaw,
            signal: None,
            frozen_ms: 120,
            thawed: vec!["/".into()],
            already_thawed: vec![],
            hooks: vec![],
            hook_failures: hook_failures.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn line<T: serde::Serialize>(envelope: &Envelope<T>) -> Vec<u8> {
        format!("{}\n", serde_json::to_string(envelope).unwrap()).into_bytes()
    }

    #[test]
    fn final_report_with_exit_0_is_the_report() {
        let got = final_report(TARGET, COMMAND, Some(0), &line(&Envelope::ok(report(&[]))), b"").unwrap();
        assert_eq!(got, report(&[]));
    }

    #[test]
    fn final_report_with_failed_thaw_hooks_is_an_error_carrying_the_report() {
        let err = final_report(TARGET, COMMAND, Some(1), &line(&Envelope::ok(report(&["10-db"]))), b"").unwrap_err();
        assert!(
            matches!(&err, GuestError::ThawHooksFailed { report, .. } if report.hook_failures == ["10-db"]),
            "{err:?}"
        );
    }

    #[test]
    fn final_report_refuses_a_success_body_with_a_failure_status() {
        for status in [Some(1), Some(3), None] {
            let err = final_report(TARGET, COMMAND, status, &line(&Envelope::ok(report(&[]))), b"").unwrap_err();
            assert!(matches!(err, GuestError::BadAnswer { source: None, .. }), "{status:?}: {err:?}");
        }
    }

    #[test]
    fn final_thaw_failure_is_the_agents_error() {
        let error = AgentError { kind: "thaw-failed".into(), message: "cannot thaw /var".into(), hint: None };
        let err =
            final_report(TARGET, COMMAND, Some(1), &line(&Envelope::<FreezeReport>::error(error)), b"").unwrap_err();
        assert!(
            matches!(&err, GuestError::Agent { kind, exit: Some(ExitStatus::Failed), .. } if kind == "thaw-failed"),
            "{err:?}"
        );
    }

    #[test]
    fn refused_freeze_keeps_its_kind_and_exit() {
        let error = AgentError { kind: "already-frozen".into(), message: "held by pid 7".into(), hint: None };
        let err = failure::<Frozen>(TARGET, COMMAND, Some(3), &line(&Envelope::<Frozen>::error(error)), b"");
        assert!(
            matches!(&err, GuestError::Agent { kind, exit: Some(ExitStatus::Busy), .. } if kind == "already-frozen"),
            "{err:?}"
        );
        let garbage = failure::<Frozen>(TARGET, COMMAND, Some(101), b"thread 'main' panicked\n", b"boom");
        assert!(matches!(garbage, GuestError::BadAnswer { status: 101, .. }), "{garbage:?}");
    }

    #[test]
    fn default_request_leaves_hooks_dir_and_mounts_to_the_agent() {
        assert_eq!(FreezeRequest::default().args(), ["freeze", "--timeout", "30000ms", "--hook-timeout", "30000ms"]);
    }
}
