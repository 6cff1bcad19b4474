//! Everything that can go wrong while reaching a guest and calling its agent.
//! One variant per step; `target` reads "user@host:port via netns X" so that a
//! message alone says which VM was meant and how it was reached.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Failure;
use crate::exit::ExitCode;
use envclone_agent::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot resolve {host}:{port}")]
    Resolve { host: String, port: u16, source: io::Error },

    #[error("cannot open network namespace {netns} ({})", path.display())]
    OpenNetns { netns: String, path: PathBuf, source: io::Error },

    #[error("cannot enter network namespace {netns}")]
    EnterNetns { netns: String, source: nix::errno::Errno },

    #[error("cannot start a thread to connect inside network namespace {netns}")]
    NetnsThread { netns: String, source: io::Error },

    #[error("cannot connect to {addr}{}", via(netns))]
    Connect { netns: Option<String>, addr: SocketAddr, source: io::Error },

    #[error("ssh handshake with {target} failed")]
    Handshake { target: String, source: ssh2::Error },

    #[error("{target} offered no host key")]
    NoHostKey { target: String },

    #[error("cannot read known hosts file {}", path.display())]
    KnownHosts { path: PathBuf, source: ssh2::Error },

    #[error("host key of {target} ({fingerprint}) is not in {}", known_hosts.display())]
    UnknownHostKey {
        target: String,
        fingerprint: String,
        known_hosts: PathBuf,
        /// The known_hosts line that would trust the offered key.
        entry: String,
    },

    #[error("HOST KEY MISMATCH: {target} offered {fingerprint}, which differs from its entry in {}", known_hosts.display())]
    HostKeyMismatch {
        target: String,
        fingerprint: String,
        known_hosts: PathBuf,
        /// The name the entry is stored under (`host` or `[host]:port`).
        host_name: String,
    },

    #[error("public key login as {user} on {target} with {} refused", key.display())]
    Auth { target: String, user: String, key: PathBuf, source: ssh2::Error },

    #[error("cannot open an ssh channel to {target}")]
    OpenChannel { target: String, source: ssh2::Error },

    #[error("cannot start `{command}` on {target}")]
    Exec { target: String, command: String, source: ssh2::Error },

    #[error("i/o with `{command}` on {target} failed")]
    ChannelIo { target: String, command: String, source: io::Error },

    #[error("`{command}` on {target} did not finish within {after:?}")]
    CommandTimeout { target: String, command: String, after: Duration },

    #[error("cannot get a terminal on {target}")]
    Pty { target: String, source: ssh2::Error },

    #[error("cannot set up the local terminal")]
    LocalTerminal { source: nix::errno::Errno },

    #[error("agent argument {arg:?} contains a NUL byte")]
    ArgumentHasNul { arg: String },

    #[error("envclone-agent is not installed on {target}")]
    AgentMissing { target: String },

    #[error("envclone-agent {agent_version} on {target} speaks protocol {theirs}, we speak {ours}")]
    ProtocolMismatch { target: String, ours: u32, theirs: u32, agent_version: String },

    #[error("agent on {target}: {message} ({kind})")]
    Agent {
        target: String,
        kind: String,
        message: String,
        hint: Option<String>,
        /// The agent's exit code mapped back, when it is one of the protocol's.
        exit: Option<ExitStatus>,
    },

    #[error(
        "unreadable answer from `{command}` on {target} (exit status {status}); \
         stdout ends {stdout_tail:?}, stderr ends {stderr_tail:?}"
    )]
    BadAnswer {
        target: String,
        command: String,
        status: i32,
        stdout_tail: String,
        stderr_tail: String,
        /// Absent when the JSON parsed but contradicted the exit status.
        source: Option<serde_json::Error>,
    },

    #[error("freeze lease on {target} ended before {expected} (exit status {}); stderr ends {stderr_tail:?}", status.map_or("unknown".to_string(), |s| s.to_string()))]
    LeaseLost {
        target: String,
        /// The line that never came.
        expected: &'static str,
        status: Option<i32>,
        stderr_tail: String,
    },

    #[error("{target} thawed, but post-thaw hooks failed: {}", failed_hooks(report))]
    ThawHooksFailed {
        target: String,
        /// The agent's final report; `hooks` has each hook's stderr.
        report: Box<envclone_agent::freeze::FreezeReport>,
    },
}

fn failed_hooks(report: &envclone_agent::freeze::FreezeReport) -> String {
    report
        .hooks
        .iter()
        .filter(|run| !run.succeeded())
        .map(|run| format!("{} {}", run.name, run.outcome))
        .collect::<Vec<_>>()
        .join(", ")
}

fn via(netns: &Option<String>) -> String {
    netns.as_ref().map(|n| format!(" in network namespace {n}")).unwrap_or_default()
}

impl Failure for GuestError {
    /// Exhaustive on purpose: a new transport error must be placed by hand.
    fn exit_code(&self) -> ExitCode {
        use GuestError::*;
        match self {
            // Never got to talk to the agent, or refused to (host key).
            Resolve { .. }
            | OpenNetns { .. }
            | EnterNetns { .. }
            | NetnsThread { .. }
            | Connect { .. }
            | Handshake { .. }
            | NoHostKey { .. }
            | KnownHosts { .. }
            | UnknownHostKey { .. }
            | HostKeyMismatch { .. }
            | Auth { .. }
            | AgentMissing { .. } => ExitCode::Unreachable,
            Agent { exit: Some(ExitStatus::Busy), .. } => ExitCode::Busy,
            OpenChannel { .. }
            | Exec { .. }
            | ChannelIo { .. }
            | CommandTimeout { .. }
            | Pty { .. }
            | LocalTerminal { .. }
            | ArgumentHasNul { .. }
            | ProtocolMismatch { .. }
            | Agent { .. }
            | BadAnswer { .. }
            | LeaseLost { .. }
            | ThawHooksFailed { .. } => ExitCode::Failed,
        }
    }

    /// What the user can do about it, when there is something to say.
    fn hint(&self) -> Option<String> {
        use GuestError::*;
        let lab = "is the lab up? `envclone lab status`";
        match self {
            OpenNetns { .. } => Some(format!("{lab}; `ip netns list` shows existing namespaces")),
            EnterNetns { .. } => Some("entering a network namespace needs root (CAP_SYS_ADMIN)".into()),
            Connect { netns: Some(_), .. } => Some(lab.into()),
            Connect { netns: None, .. } => Some("is the VM running and its ssh server listening?".into()),
            UnknownHostKey { fingerprint, known_hosts, entry, .. } => Some(format!(
                "if {fingerprint} is the guest's key (check its console), trust it with: echo '{entry}' >> {}",
                known_hosts.display()
            )),
            HostKeyMismatch { host_name, known_hosts, .. } => Some(format!(
                "if the guest's key was re-created on purpose, drop the old entry with `ssh-keygen -R '{host_name}' -f {}` \
                 and trust the new one; otherwise someone may be intercepting the connection",
                known_hosts.display()
            )),
            Auth { user, key, .. } => Some(format!(
                "is the public half of {} in ~{user}/.ssh/authorized_keys in the guest?",
                key.display()
            )),
            CommandTimeout { .. } => Some("raise the command timeout, or check that the guest is not stuck".into()),
            AgentMissing { .. } => {
                Some("install envclone-agent in the guest, on the PATH of non-interactive ssh sessions".into())
            }
            ProtocolMismatch { .. } => Some("install the matching envclone-agent in the guest".into()),
            Agent { hint, .. } => hint.clone(),
            Handshake { .. } => Some("is an ssh server (not something else) listening there?".into()),
            LeaseLost { .. } => Some(
                "the agent thaws when its channel closes; check with `envclone-agent status`, \
                 recover with `envclone-agent thaw`"
                    .into(),
            ),
            ThawHooksFailed { .. } => Some("the services those hooks manage may need a hand".into()),
            _ => None,
        }
    }
}
