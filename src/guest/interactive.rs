//! An interactive command or login shell in a guest (`envclone ssh`): a pty
//! sized like the local terminal, the local tty in raw mode, bytes pumped
//! both ways until the remote side ends.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use ssh2::{BlockDirections, Channel, ErrorCode, Session};

use super::ssh::{millis, remote_status};
use super::{GuestError, GuestSession};

/// How long one wait for input may last; also how often a change of the
/// local window size is noticed.
const POLL_MS: libc::c_int = 100;

/// From libssh2.h; ssh2 0.9 does not re-export libssh2-sys.
const LIBSSH2_ERROR_EAGAIN: libc::c_int = -37;

impl GuestSession {
    /// Runs `command` (or a login shell) with the process's own stdin,
    /// stdout and stderr, and returns its exit status.
    pub fn interactive(&self, command: Option<&str>) -> Result<i32, GuestError> {
        self.interactive_with(command, io::stdin().as_fd(), &mut io::stdout(), &mut io::stderr())
    }

    /// [`Self::interactive`] over any input descriptor and outputs. A pty is
    /// requested, and `input` put in raw mode, only when `input` is a tty;
    /// otherwise stdout and stderr stay apart and input EOF reaches the
    /// remote command.
    pub fn interactive_with(
        &self,
        command: Option<&str>,
        input: BorrowedFd<'_>,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<i32, GuestError> {
        let what = command.unwrap_or("login shell");
        let tty = nix::unistd::isatty(input.as_raw_fd()).unwrap_or(false);
        let mut size = if tty { window_size(input) } else { None };

        self.session.set_timeout(millis(self.opts.command_timeout));
        let mut channel = self
            .session
            .channel_session()
            .map_err(|source| GuestError::OpenChannel { target: self.label.clone(), source })?;
        if tty {
            let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
            let dim = size.map(|(cols, rows)| (u32::from(cols), u32::from(rows), 0, 0));
            channel
                .request_pty(&term, None, dim)
                .map_err(|source| GuestError::Pty { target: self.label.clone(), source })?;
        }
        match command {
            Some(c) => channel.exec(c),
            None => channel.shell(),
        }
        .map_err(|source| GuestError::Exec { target: self.label.clone(), command: what.into(), source })?;

        let mut pump = Pump { session: self, channel: &mut channel, what, input, tty, size: &mut size };
        let result = pump.run_guarded(out, err);
        let status = result.map(|()| remote_status(&channel));
        self.release(channel);
        status
    }
}

/// The state of one interactive exchange, with the session non-blocking.
struct Pump<'a, 'fd> {
    session: &'a GuestSession,
    channel: &'a mut Channel,
    what: &'a str,
    input: BorrowedFd<'fd>,
    tty: bool,
    size: &'a mut Option<(u16, u16)>,
}

impl Pump<'_, '_> {
    /// [`Self::run`] with the local tty raw (if it is one) and the session
    /// non-blocking; both are undone on every way out, panics included.
    fn run_guarded(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), GuestError> {
        let _raw = if self.tty { Some(RawMode::enter(self.input)?) } else { None };
        let _nonblocking = NonBlocking::enter(&self.session.session, self.session.opts.command_timeout);
        self.run(out, err)
    }

    fn run(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), GuestError> {
        let mut pending = Vec::new();
        let mut input_open = true;
        let mut eof_sent = false;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            self.drain(0, out, &mut buf)?;
            self.drain(1, err, &mut buf)?;
            if !pending.is_empty() {
                match self.channel.write(&pending) {
                    Ok(n) => drop(pending.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(self.io_error(e)),
                }
            }
            if !input_open && pending.is_empty() && !eof_sent {
                eof_sent = again(self.channel.send_eof()).map_err(|e| self.io_error(e))?;
            }
            if self.channel.eof() {
                break;
            }
            self.follow_window_size()?;

            let wants_input = input_open && pending.is_empty();
            if self.wait(wants_input)? {
                let n = read_input(self.input, &mut buf).map_err(|e| self.io_error(e.into()))?;
                pending.extend_from_slice(&buf[..n]);
                input_open = n > 0;
            }
        }
        // Our side closes too; then libssh2 has the exit status.
        while !again(self.channel.close()).map_err(|e| self.io_error(e))? {
            self.wait(false)?;
        }
        while !again(self.channel.wait_close()).map_err(|e| self.io_error(e))? {
            self.wait(false)?;
        }
        Ok(())
    }

    /// Copies what the remote stream `id` (0 stdout, 1 stderr) has buffered.
    fn drain(&mut self, id: i32, to: &mut dyn Write, buf: &mut [u8]) -> Result<(), GuestError> {
        let mut stream = self.channel.stream(id);
        loop {
            match stream.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    to.write_all(&buf[..n]).and_then(|()| to.flush()).map_err(|e| self.io_error(e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// Waits until the socket (or, if `wants_input`, the input) is ready, or
    /// a poll period passes. Returns whether input is readable.
    fn wait(&self, wants_input: bool) -> Result<bool, GuestError> {
        let mut socket_events = libc::POLLIN;
        if matches!(self.session.session.block_directions(), BlockDirections::Outbound | BlockDirections::Both) {
            socket_events |= libc::POLLOUT;
        }
        let mut fds = vec![pollfd(self.session.socket.as_fd(), socket_events)];
        if wants_input {
            fds.push(pollfd(self.input, libc::POLLIN));
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs whose
        // descriptors stay open (borrowed) for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if rc < 0 && Errno::last() != Errno::EINTR {
            return Err(self.io_error(io::Error::last_os_error()));
        }
        Ok(wants_input && rc > 0 && fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0)
    }

    /// Resizes the remote pty when the local terminal changed size.
    fn follow_window_size(&mut self) -> Result<(), GuestError> {
        if !self.tty {
            return Ok(());
        }
        let now = window_size(self.input);
        if let (Some((cols, rows)), true) = (now, now != *self.size) {
            let resized = again(self.channel.request_pty_size(u32::from(cols), u32::from(rows), None, None));
            if resized.map_err(|e| self.io_error(e))? {
                *self.size = now;
            }
        }
        Ok(())
    }

    fn io_error(&self, source: io::Error) -> GuestError {
        GuestError::ChannelIo { target: self.session.label.clone(), command: self.what.into(), source }
    }
}

/// `Ok(true)` when a non-blocking libssh2 call completed, `Ok(false)` when
/// it must be retried.
fn again(result: Result<(), ssh2::Error>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.code() == ErrorCode::Session(LIBSSH2_ERROR_EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn read_input(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

// libc's poll(2) rather than nix's: the workspace builds nix without its
// `poll` feature.
fn pollfd(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 }
}

/// Columns and rows of the terminal on `fd`, if it is one.
fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively
    // borrowed `ws`; `fd` is open for the duration of the borrow.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The local tty in raw mode for as long as this lives, restored on every
/// exit path (error and panic included).
struct RawMode<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Termios,
}

impl<'fd> RawMode<'fd> {
    fn enter(fd: BorrowedFd<'fd>) -> Result<Self, GuestError> {
        let saved = tcgetattr(fd).map_err(|source| GuestError::LocalTerminal { source })?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSADRAIN, &raw).map_err(|source| GuestError::LocalTerminal { source })?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved) {
            tracing::error!(error = %e, "cannot restore the terminal; run `reset`");
        }
    }
}

/// The session non-blocking for as long as this lives; afterwards blocking
/// again with the usual timeout, as every other method expects it.
struct NonBlocking<'s> {
    session: &'s Session,
    timeout: std::time::Duration,
}

impl<'s> NonBlocking<'s> {
    fn enter(session: &'s Session, timeout: std::time::Duration) -> Self {
        session.set_blocking(false);
        NonBlocking { session, timeout }
    }
}

impl Drop for NonBlocking<'_> {
    fn drop(&mut self) {
        self.session.set_blocking(true);
        self.session.set_timeout(millis(self.timeout));
    }
}
