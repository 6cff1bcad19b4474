//! One SSH login to a guest, reused for every command: a login costs ~0.4 s
//! under TCG, so callers keep a [`GuestSession`] rather than reconnecting.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ssh2::{Channel, ErrorCode, Session};

use super::{hostkey, netns, GuestError};

/// Where a guest's SSH server is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Network namespace (under /run/netns) the guest is reachable from.
    pub netns: Option<String>,
    /// The name its host key is listed under in known_hosts, when not `host`.
    pub host_key_alias: Option<String>,
}

impl fmt::Display for SshTarget {
    /// `user@host:port via netns X`, the form every error uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)?;
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)?;
        }
        match &self.netns {
            Some(ns) => write!(f, " via netns {ns}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// Private key (OpenSSH format, ed25519) used for public-key login.
    pub key: PathBuf,
    /// OpenSSH known_hosts file the guest's host key must be listed in.
    pub known_hosts: PathBuf,
    /// Bound on the TCP connect and on the SSH handshake, each.
    pub connect_timeout: Duration,
    /// Bound on a whole [`GuestSession::exec`], and on each blocking call
    /// made on a channel from [`GuestSession::open_channel`].
    pub command_timeout: Duration,
}

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit status; 128 + the signal number when a signal killed it.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// An authenticated SSH session with a guest whose host key was verified.
///
/// Calls block, and ssh2 holds the session's lock for each blocking call: a
/// read waiting on one channel stalls every other call on the session (up
/// to the timeout). Drive a session from one thread at a time.
pub struct GuestSession {
    pub(super) session: Session,
    /// A second handle on the session's socket, to poll(2) it when the
    /// session runs non-blocking (see `interactive`).
    pub(super) socket: TcpStream,
    pub(super) label: String,
    pub(super) opts: SshOptions,
}

impl fmt::Debug for GuestSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestSession").field("target", &self.label).finish_non_exhaustive()
    }
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        // A channel released after a timeout still awaits the server's close,
        // and a blocking libssh2_session_free would wait for it, i.e. for the
        // command to end. Non-blocking, libssh2 gives up at once (leaving its
        // session struct behind in that case only) and the socket closes,
        // which ends the session on the server.
        self.session.set_blocking(false);
    }
}

impl GuestSession {
    /// Connects (inside the target's namespace when it names one), checks the
    /// host key against `opts.known_hosts` and logs in with `opts.key`.
    pub fn connect(target: &SshTarget, opts: &SshOptions) -> Result<GuestSession, GuestError> {
        let label = target.to_string();
        let (tcp, addr) = connect_any(target, opts.connect_timeout)?;
        // SSH's small packets (a channel open, a request, an EOF) would
        // each wait out Nagle's algorithm against the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let socket =
            tcp.try_clone().map_err(|source| GuestError::Connect { netns: target.netns.clone(), addr, source })?;

        let mut session = Session::new().map_err(|source| GuestError::Handshake { target: label.clone(), source })?;
        session.set_tcp_stream(tcp);
        session.set_timeout(millis(opts.connect_timeout));
        session.handshake().map_err(|source| GuestError::Handshake { target: label.clone(), source })?;

        let key_name = target.host_key_alias.as_deref().unwrap_or(&target.host);
        hostkey::verify(&session, &label, key_name, target.port, &opts.known_hosts)?;

        session.userauth_pubkey_file(&target.user, None, &opts.key, None).map_err(|source| GuestError::Auth {
            target: label.clone(),
            user: target.user.clone(),
            key: opts.key.clone(),
            source,
        })?;
        session.set_timeout(millis(opts.command_timeout));
        tracing::debug!(target = %label, "ssh session ready");
        Ok(GuestSession { session, socket, label, opts: opts.clone() })
    }

    /// `user@host:port via netns X`.
    pub fn target(&self) -> &str {
        &self.label
    }

    /// The underlying session, e.g. to change the timeout that bounds each
    /// blocking call on a channel from [`Self::open_channel`].
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Runs `command` through the guest's shell, feeding it `stdin` (then
    /// EOF), and collects its output. The whole call, including output, is
    /// bounded by `command_timeout`; the session stays usable afterwards,
    /// but a command that timed out is left running in the guest (SSH
    /// servers do not all honour signal requests).
    pub fn exec(&self, command: &str, stdin: Option<&[u8]>) -> Result<ExecOutput, GuestError> {
        self.exec_within(command, stdin, self.opts.command_timeout)
    }

    /// [`Self::exec`] bounded by `timeout` instead of `command_timeout`:
    /// for work whose length is known to differ (a copy of many GiB).
    pub fn exec_within(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, GuestError> {
        let deadline = Instant::now() + timeout;
        let mut channel = self.start(command, deadline)?;
        let result = self.collect(&mut channel, command, stdin, deadline);
        self.release(channel);
        self.session.set_timeout(millis(self.opts.command_timeout));
        result
    }

    /// Frees `channel` without waiting. After a timeout the command still
    /// runs, and a blocking free would wait for the server's close, i.e. for
    /// the command to end. Non-blocking, libssh2 sends our close and keeps
    /// the channel's remains until the session ends.
    pub(super) fn release(&self, channel: Channel) {
        self.session.set_blocking(false);
        drop(channel);
        self.session.set_blocking(true);
    }

    /// Starts `command` and returns its channel for a long-lived exchange
    /// (e.g. a freeze lease opened before freezing). Each blocking call on
    /// the channel is bounded by `command_timeout`.
    pub fn open_channel(&self, command: &str) -> Result<Channel, GuestError> {
        let channel = self.start(command, Instant::now() + self.opts.command_timeout);
        self.session.set_timeout(millis(self.opts.command_timeout));
        channel
    }

    fn start(&self, command: &str, deadline: Instant) -> Result<Channel, GuestError> {
        self.arm(command, deadline)?;
        let mut channel = self.session.channel_session().map_err(|source| {
            self.timeout_or(command, source, |source| GuestError::OpenChannel { target: self.label.clone(), source })
        })?;
        self.arm(command, deadline)?;
        channel.exec(command).map_err(|source| {
            self.timeout_or(command, source, |source| GuestError::Exec {
                target: self.label.clone(),
                command: command.to_string(),
                source,
            })
        })?;
        Ok(channel)
    }

    fn collect(
        &self,
        channel: &mut Channel,
        command: &str,
        stdin: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<ExecOutput, GuestError> {
        // Input first, then output: agent input is small, and libssh2 keeps
        // accepting (and queueing) output meanwhile, so this cannot deadlock
        // on anything but a full window, which the deadline then ends.
        for chunk in stdin.unwrap_or_default().chunks(32 * 1024) {
            self.arm(command, deadline)?;
            channel.write_all(chunk).map_err(|e| self.io_error(command, e))?;
        }
        self.arm(command, deadline)?;
        channel.send_eof().map_err(|e| self.io_error(command, e.into()))?;

        let mut stdout = Vec::new();
        self.read_all(channel, command, deadline, &mut stdout)?;
        let mut stderr = Vec::new();
        self.read_all(&mut channel.stderr(), command, deadline, &mut stderr)?;

        self.arm(command, deadline)?;
        channel.wait_close().map_err(|e| self.io_error(command, e.into()))?;
        Ok(ExecOutput { status: remote_status(channel), stdout, stderr })
    }

    /// `read_to_end`, re-armed before every read so that a command which
    /// trickles output cannot outlive the deadline.
    fn read_all(
        &self,
        from: &mut impl Read,
        command: &str,
        deadline: Instant,
        into: &mut Vec<u8>,
    ) -> Result<(), GuestError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            self.arm(command, deadline)?;
            match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(command, e)),
            }
        }
    }

    /// Sets the session timeout to what is left until `deadline`.
    fn arm(&self, command: &str, deadline: Instant) -> Result<(), GuestError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timeout(command));
        }
        self.session.set_timeout(millis(left));
        Ok(())
    }

    fn timeout(&self, command: &str) -> GuestError {
        GuestError::CommandTimeout {
            target: self.label.clone(),
            command: command.to_string(),
            after: self.opts.command_timeout,
        }
    }

    /// A libssh2 call that ran out of time is a command timeout; anything
    /// else is the step's own error.
    fn timeout_or(&self, command: &str, e: ssh2::Error, step: impl FnOnce(ssh2::Error) -> GuestError) -> GuestError {
        if e.code() == ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) {
            self.timeout(command)
        } else {
            step(e)
        }
    }

    fn io_error(&self, command: &str, e: io::Error) -> GuestError {
        // ssh2 turns LIBSSH2_ERROR_TIMEOUT into io::ErrorKind::TimedOut.
        if e.kind() == io::ErrorKind::TimedOut {
            return self.timeout(command);
        }
        GuestError::ChannelIo { target: self.label.clone(), command: command.to_string(), source: e }
    }
}

/// The command's exit status, shell-style (128 + n) when a signal ended it.
pub(super) fn remote_status(channel: &Channel) -> i32 {
    let signal = channel.exit_signal().ok().and_then(|s| s.exit_signal);
    match signal {
        Some(name) => format!("SIG{name}").parse::<nix::sys::signal::Signal>().map_or(255, |s| 128 + s as i32),
        None => channel.exit_status().unwrap_or(255),
    }
}

/// From libssh2.h; ssh2 0.9 does not re-export libssh2-sys.
const LIBSSH2_ERROR_TIMEOUT: libc::c_int = -9;

/// libssh2 takes milliseconds as u32, where 0 means "no timeout": a zero or
/// huge duration must never turn into that.
pub(super) fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

fn resolve(target: &SshTarget) -> Result<Vec<SocketAddr>, GuestError> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    let resolve_err = |source| GuestError::Resolve { host: target.host.clone(), port: target.port, source };
    let addrs: Vec<_> = (target.host.as_str(), target.port).to_socket_addrs().map_err(resolve_err)?.collect();
    if addrs.is_empty() {
        return Err(resolve_err(io::Error::new(io::ErrorKind::NotFound, "no address")));
    }
    Ok(addrs)
}

/// Tries each resolved address in turn; the last failure is the one told.
fn connect_any(target: &SshTarget, timeout: Duration) -> Result<(TcpStream, SocketAddr), GuestError> {
    let mut last = None;
    for addr in resolve(target)? {
        match netns::connect_tcp(target.netns.as_deref(), addr, timeout) {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last = Some(e),
        }
    }
    // `resolve` gives at least one address; were it none, that is its own failure.
    Err(last.unwrap_or_else(|| GuestError::Resolve {
        host: target.host.clone(),
        port: target.port,
        source: io::Error::new(io::ErrorKind::NotFound, "no address"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, netns: Option<&str>) -> SshTarget {
        SshTarget {
            host: host.into(),
            port: 2222,
            user: "root".into(),
            netns: netns.map(Into::into),
            host_key_alias: None,
        }
    }

    #[test]
    fn target_reads_user_host_port_and_namespace() {
        assert_eq!(target("10.0.0.5", Some("lab")).to_string(), "root@10.0.0.5:2222 via netns lab");
        assert_eq!(target("10.0.0.5", None).to_string(), "root@10.0.0.5:2222");
        assert_eq!(target("fd00::5", None).to_string(), "root@[fd00::5]:2222");
    }

    #[test]
    fn millis_never_means_forever() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(3)), 3000);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn resolve_takes_ip_literals_as_they_are() {
        assert_eq!(resolve(&target("fd00::5", None)).unwrap(), vec!["[fd00::5]:2222".parse().unwrap()]);
    }
}
