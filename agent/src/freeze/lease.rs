//! The lease: while frozen, the agent waits on stdin (the SSH channel that
//! started it), on termination signals (through a signalfd) and on the lease
//! deadline, whichever comes first. One poll(2) over two descriptors: no
//! handler runs in signal context and nothing is written anywhere. Before a
//! `--barrier` freeze, the same watch waits for the line `freeze`.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use envclone_agent::freeze::ThawReason;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Signals that end a lease: SIGTERM (`thaw`, kill), SIGHUP (the SSH
/// server hangs up a session), SIGINT/SIGQUIT (a terminal).
const LEASE_SIGNALS: [Signal; 4] = [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT, Signal::SIGQUIT];

/// How a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEnd {
    pub reason: ThawReason,
    pub signal: Option<String>,
}

impl LeaseEnd {
    fn because(reason: ThawReason) -> LeaseEnd {
        LeaseEnd { reason, signal: None }
    }
}

#[derive(Debug)]
pub struct Lease {
    input: RawFd,
    signals: SignalFd,
    line: Vec<u8>,
    /// Sticky: once stdin ended, the lease is over whenever asked.
    ended: Option<LeaseEnd>,
    /// The line `freeze` arrived (the go of a `--barrier` freeze).
    go: bool,
}

impl Lease {
    /// Blocks the lease signals in the calling thread (call it before any
    /// thread starts: threads inherit the mask, so the signals reach the
    /// signalfd whichever thread they are sent to) and watches `input`.
    pub fn new(input: RawFd) -> Result<Lease, Errno> {
        let mut mask = SigSet::empty();
        for signal in LEASE_SIGNALS {
            mask.add(signal);
        }
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Lease { input, signals, line: Vec::new(), ended: None, go: false })
    }

    /// Whether the lease ended already, without waiting.
    pub fn check(&mut self) -> Option<LeaseEnd> {
        self.poll(0)
    }

    /// Waits until the lease ends; `deadline` passing ends it too.
    pub fn hold(&mut self, deadline: Instant) -> LeaseEnd {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return LeaseEnd::because(ThawReason::LeaseTimeout);
            }
            // Rounded up, so that the deadline has passed when poll returns.
            let timeout = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
            if let Some(end) = self.poll(timeout) {
                return end;
            }
        }
    }

    /// Waits for the line `freeze` (the barrier's go); anything that would
    /// end a lease, or `deadline` passing, is returned instead.
    pub fn await_go(&mut self, deadline: Instant) -> Result<(), LeaseEnd> {
        loop {
            if self.go {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LeaseEnd::because(ThawReason::LeaseTimeout));
            }
            let timeout = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
            if let Some(end) = self.poll(timeout) {
                return Err(end);
            }
        }
    }

    /// One poll; `None` when nothing ended the lease within `timeout_ms`.
    fn poll(&mut self, timeout_ms: i32) -> Option<LeaseEnd> {
        if let Some(end) = &self.ended {
            return Some(end.clone());
        }
        let mut fds = [
            libc::pollfd { fd: self.signals.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.input, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            // EINTR (a stop/continue): the caller polls again.
            return None;
        }
        if fds[0].revents != 0 {
            if let Ok(Some(info)) = self.signals.read_signal() {
                let name = Signal::try_from(info.ssi_signo as i32)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {}", info.ssi_signo));
                return self.end(LeaseEnd { reason: ThawReason::Signal, signal: Some(name) });
            }
        }
        if fds[1].revents & libc::POLLNVAL != 0 {
            // No stdin at all: nobody can ever ask for the thaw.
            return self.end(LeaseEnd::because(ThawReason::Eof));
        }
        if fds[1].revents != 0 {
            return self.read_input();
        }
        None
    }

    fn read_input(&mut self) -> Option<LeaseEnd> {
        let mut buf = [0u8; 512];
        match nix::unistd::read(self.input, &mut buf) {
            Ok(0) | Err(Errno::EBADF | Errno::EIO) => {
                // A last line without its newline still counts.
                let last = std::mem::take(&mut self.line);
                let reason = if is_thaw(&last) { ThawReason::StdinThaw } else { ThawReason::Eof };
                self.end(LeaseEnd::because(reason))
            }
            Ok(n) => {
                self.line.extend_from_slice(&buf[..n]);
                while let Some(newline) = self.line.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.line.drain(..=newline).collect();
                    if is_thaw(&line) {
                        return self.end(LeaseEnd::because(ThawReason::StdinThaw));
                    }
                    if line.trim_ascii() == b"freeze" {
                        // The caller's loop sees it once this read is done.
                        self.go = true;
                        continue;
                    }
                    if !line.trim_ascii().is_empty() {
                        note!(
                            "ignoring {:?} on stdin (only `freeze` and `thaw` are understood)",
                            String::from_utf8_lossy(line.trim_ascii())
                        );
                    }
                }
                None
            }
            Err(_) => None,
        }
    }

    fn end(&mut self, end: LeaseEnd) -> Option<LeaseEnd> {
        self.ended = Some(end.clone());
        Some(end)
    }
}

fn is_thaw(line: &[u8]) -> bool {
    line.trim_ascii() == b"thaw"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        (read, std::fs::File::from(write))
    }

    #[test]
    fn thaw_line_ends_the_lease_and_other_lines_do_not() {
        let (read, mut write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        assert_eq!(lease.check(), None);
        write.write_all(b"hello\n\n").unwrap();
        assert_eq!(lease.check(), None);
        write.write_all(b" thaw \n").unwrap();
        assert_eq!(lease.hold(Instant::now() + Duration::from_secs(10)).reason, ThawReason::StdinThaw);
        // Sticky: asking again gives the same answer.
        assert_eq!(lease.check().unwrap().reason, ThawReason::StdinThaw);
    }

    #[test]
    fn freeze_line_is_the_go_and_thaw_before_it_cancels() {
        let (read, mut write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        write.write_all(b"freeze\n").unwrap();
        assert_eq!(lease.await_go(Instant::now() + Duration::from_secs(10)), Ok(()));
        // The go does not end the lease that follows it.
        assert_eq!(lease.check(), None);

        let (read, mut write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        write.write_all(b"thaw\n").unwrap();
        let end = lease.await_go(Instant::now() + Duration::from_secs(10)).unwrap_err();
        assert_eq!(end.reason, ThawReason::StdinThaw);

        let (read, _write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        let end = lease.await_go(Instant::now() + Duration::from_millis(30)).unwrap_err();
        assert_eq!(end.reason, ThawReason::LeaseTimeout);
    }

    #[test]
    fn eof_ends_the_lease() {
        let (read, write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        drop(write);
        assert_eq!(lease.hold(Instant::now() + Duration::from_secs(10)).reason, ThawReason::Eof);
    }

    #[test]
    fn thaw_without_newline_before_eof_counts() {
        let (read, mut write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        write.write_all(b"thaw").unwrap();
        drop(write);
        assert_eq!(lease.hold(Instant::now() + Duration::from_secs(10)).reason, ThawReason::StdinThaw);
    }

    #[test]
    fn deadline_ends_the_lease() {
        let (read, _write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        let started = Instant::now();
        assert_eq!(lease.hold(started + Duration::from_millis(50)).reason, ThawReason::LeaseTimeout);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_closed_stdin_descriptor_ends_the_lease() {
        // Far above anything this process opens, so never reused meanwhile.
        let mut lease = Lease::new(999_999).unwrap();
        assert_eq!(lease.check().unwrap().reason, ThawReason::Eof);
    }

    #[test]
    fn a_signal_ends_the_lease() {
        let (read, _write) = pipe();
        let mut lease = Lease::new(read.as_raw_fd()).unwrap();
        // Directed at this thread, where the lease blocked it: the test
        // harness's other threads never see it.
        // SAFETY: pthread_self is always valid for the calling thread.
        assert_eq!(unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) }, 0);
        let end = lease.hold(Instant::now() + Duration::from_secs(10));
        assert_eq!(end, LeaseEnd { reason: ThawReason::Signal, signal: Some("SIGHUP".into()) });
    }
}
