//! Commands on another host over one SSH login, made when first needed and
//! made again after the link failed, and byte streams on channels of it.
//!
//! The login is the same verified transport the agents use
//! ([`GuestSession`]: the host key must already be in the host's
//! `known_hosts`, never trusted on first use). ssh2 drives a session from
//! one thread at a time, so the login sits behind a lock, held for a whole
//! command or for the life of a stream.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ssh2::Channel;

use crate::guest::{shell_quote, ExecOutput, GuestError, GuestSession, SshOptions, SshTarget};
use crate::host::ToolError;

/// Bound on one command that copies or merges images: far beyond any
/// real one, only there so that a wedged host cannot hang envclone forever.
pub const LONG_WORK: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug)]
pub struct SshShell {
    /// `host NAME (user@address:port)`, for messages.
    label: String,
    target: SshTarget,
    options: SshOptions,
    session: Mutex<Option<GuestSession>>,
}

impl SshShell {
    /// A shell on `target`; nothing is connected before the first command.
    pub fn new(host: &str, target: SshTarget, options: SshOptions) -> Self {
        SshShell { label: format!("host {host} ({target})"), target, options, session: Mutex::new(None) }
    }

    /// Logs in now (if not logged in): what `check --live` asks.
    pub fn reach(&self) -> Result<(), GuestError> {
        self.login().map(drop)
    }

    /// Runs `argv` through the remote shell within `timeout`, whatever its exit status.
    pub fn output(&self, argv: &[OsString], timeout: Duration) -> Result<ExecOutput, ToolError> {
        self.script(&command_line(argv)?, timeout)
    }

    /// Runs `argv` to completion: its stdout when it exits 0.
    pub fn run(&self, argv: &[OsString], timeout: Duration) -> Result<Vec<u8>, ToolError> {
        let line = command_line(argv)?;
        let output = self.script(&line, timeout)?;
        self.ok(&line, output)
    }

    /// Runs the shell `script` (its words quoted by the caller) within `timeout`.
    pub fn script(&self, script: &str, timeout: Duration) -> Result<ExecOutput, ToolError> {
        let mut guard = self.login().map_err(|e| self.unreachable(script, e))?;
        let Some(session) = guard.as_ref() else { return Err(self.not_logged_in(script)) };
        match session.exec_within(script, None, timeout) {
            Ok(output) => Ok(output),
            Err(error) => {
                // The login may be dead (a cut link): the next command logs in again.
                *guard = None;
                Err(self.unreachable(script, error))
            }
        }
    }

    /// `output`'s stdout if it exited 0, else its failure.
    pub fn ok(&self, script: &str, output: ExecOutput) -> Result<Vec<u8>, ToolError> {
        if output.status == 0 {
            Ok(output.stdout)
        } else {
            Err(self.failed(script, &output))
        }
    }

    /// The failure of `script`, which ended as `output` says.
    pub fn failed(&self, script: &str, output: &ExecOutput) -> ToolError {
        ToolError::Failed {
            command: self.describe(script),
            status: Some(output.status),
            stderr: crate::host::tool::tail(&String::from_utf8_lossy(&output.stderr), 800),
        }
    }

    /// Starts `script` on a channel of its own; the login stays held until
    /// the returned stream is dropped. Each blocking call on it waits at
    /// most `stall`.
    pub fn stream(&self, script: &str, stall: Duration) -> Result<RemoteStream<'_>, ToolError> {
        let mut guard = self.login().map_err(|e| self.unreachable(script, e))?;
        let Some(session) = guard.as_ref() else { return Err(self.not_logged_in(script)) };
        match session.open_channel(script) {
            Ok(channel) => {
                session.session().set_timeout(u32::try_from(stall.as_millis()).unwrap_or(u32::MAX).max(1));
                Ok(RemoteStream { shell: self, guard, channel, script: script.to_owned() })
            }
            Err(error) => {
                *guard = None;
                Err(self.unreachable(script, error))
            }
        }
    }

    fn login(&self) -> Result<MutexGuard<'_, Option<GuestSession>>, GuestError> {
        // A panic elsewhere while holding the lock leaves the login in an
        // unknown state: drop it and log in again.
        let mut guard = self.session.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        });
        if guard.is_none() {
            *guard = Some(GuestSession::connect(&self.target, &self.options)?);
        }
        Ok(guard)
    }

    fn describe(&self, script: &str) -> String {
        format!("{script} (on {})", self.label)
    }

    fn not_logged_in(&self, script: &str) -> ToolError {
        ToolError::Spawn { command: self.describe(script), source: std::io::Error::other("not logged in") }
    }

    fn unreachable(&self, script: &str, error: GuestError) -> ToolError {
        ToolError::Spawn { command: self.describe(script), source: std::io::Error::other(crate::error::chain(&error)) }
    }
}

/// The remote command line of `argv`, each word quoted; a word that is not
/// UTF-8 is refused (no host path envclone makes is).
pub fn command_line(argv: &[OsString]) -> Result<String, ToolError> {
    let mut words = Vec::with_capacity(argv.len());
    for word in argv {
        let text = word.to_str().ok_or_else(|| ToolError::Spawn {
            command: format!("{argv:?}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "an argument is not UTF-8"),
        })?;
        words.push(shell_quote(text).into_owned());
    }
    Ok(words.join(" "))
}

/// A command's stdin and stdout on a channel of the shell's login.
pub struct RemoteStream<'s> {
    shell: &'s SshShell,
    /// Held for the stream's life: nothing else may drive the session.
    guard: MutexGuard<'s, Option<GuestSession>>,
    channel: Channel,
    script: String,
}

impl std::fmt::Debug for RemoteStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStream").field("on", &self.shell.label).field("script", &self.script).finish()
    }
}

impl RemoteStream<'_> {
    /// Ends the input, reads what is left and the exit status: an error
    /// unless the command exited 0.
    pub fn finish(mut self) -> Result<(), ToolError> {
        let io = |e: std::io::Error| ToolError::Spawn { command: self.shell.describe(&self.script), source: e };
        self.channel.send_eof().map_err(|e| io(e.into()))?;
        let mut rest = Vec::new();
        self.channel.read_to_end(&mut rest).map_err(io)?;
        self.close()
    }

    /// After the output's end: the rest of stderr and the exit status.
    fn close(&mut self) -> Result<(), ToolError> {
        let io = |e: std::io::Error| ToolError::Spawn { command: self.shell.describe(&self.script), source: e };
        let mut stderr = Vec::new();
        self.channel.stderr().read_to_end(&mut stderr).map_err(io)?;
        self.channel.wait_close().map_err(|e| io(e.into()))?;
        let status = self.channel.exit_status().unwrap_or(255);
        self.shell.ok(&self.script, ExecOutput { status, stdout: Vec::new(), stderr }).map(drop)
    }
}

impl Drop for RemoteStream<'_> {
    fn drop(&mut self) {
        // An abandoned stream's channel would wait for the command to end:
        // the login is dropped instead, which ends the command on the host.
        if !self.channel.eof() {
            if let Some(session) = self.guard.take() {
                drop(session);
            }
        }
    }
}

impl Read for RemoteStream<'_> {
    /// The command's stdout; at its end, an error unless the command
    /// exited 0 (a `dd` that failed half way must not look like a short file).
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.channel.read(buf)?;
        if read == 0 && !buf.is_empty() {
            self.close().map_err(std::io::Error::other)?;
        }
        Ok(read)
    }
}

impl Write for RemoteStream<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.channel.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.channel.flush()
    }
}
