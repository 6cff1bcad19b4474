//! What can go wrong in `readdress`, `set-clock` and `reset-identity`, one
//! variant per step. [`IdentityError::into_answer`] is the one place that
//! turns them into the protocol's kind, exit status and hint.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use envclone_agent::{AgentError, ExitStatus};
use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{option} {value:?}: {reason}")]
    BadArgument { option: &'static str, value: String, reason: String },

    #[error("no network interface has MAC {mac}")]
    NoSuchInterface { mac: String },

    #[error("MAC {mac} belongs to more than one interface ({})", interfaces.join(", "))]
    AmbiguousMac { mac: String, interfaces: Vec<String> },

    #[error("cannot list network interfaces in {}", dir.display())]
    ListInterfaces { dir: PathBuf, source: io::Error },

    #[error("`{tool}` is not installed (looked in {})", searched.join(", "))]
    ToolMissing { tool: &'static str, searched: Vec<String> },

    #[error("cannot run `{command}`")]
    Spawn { command: String, source: io::Error },

    #[error("`{command}` failed (exit status {}): {stderr}", status.map_or("none".to_string(), |s| s.to_string()))]
    CommandFailed { command: String, status: Option<i32>, stderr: String },

    #[error("{address} vanished from {interface} after the old addresses were removed")]
    AddressLost { interface: String, address: String },

    #[error("cannot set {}", path.display())]
    SetSysctl { path: PathBuf, source: io::Error },

    #[error("cannot set the hostname to {hostname}")]
    SetHostname { hostname: String, source: Errno },

    #[error("cannot read the hostname")]
    GetHostname { source: Errno },

    #[error("cannot read {}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },

    #[error("cannot write {}", path.display())]
    WriteFile { path: PathBuf, source: io::Error },

    #[error("cannot replace {}", path.display())]
    ReplaceFile { path: PathBuf, source: crate::atomic::AtomicWriteError },

    #[error("cannot detach the deferred removal of the old addresses")]
    Detach { source: Errno },

    #[error("cannot detach the deferred removal of the old addresses: the agent runs {threads} threads")]
    NotSingleThreaded { threads: usize },

    #[error("cannot read the clock")]
    ReadClock { source: Errno },

    #[error("cannot set the clock")]
    SetClock { source: Errno },

    #[error("cannot read random bytes from /dev/urandom")]
    Random { source: io::Error },

    #[error("no SSH server with host keys was found (looked for dropbear and OpenSSH)")]
    NoSshServer,

    #[error("cannot read the public half of {} from `{command}`", path.display())]
    PublicKey { path: PathBuf, command: String },

    #[error("cannot signal the {server} listener (pid {pid})")]
    Signal { server: &'static str, pid: i32, source: Errno },

    #[error("the {server} listener (pid {pid}) did not exit within {waited:?}")]
    ListenerStuck { server: &'static str, pid: i32, waited: Duration },

    #[error("the restarted {server} listener is not accepting connections on {address} after {waited:?}")]
    ListenerNotBack { server: &'static str, address: String, waited: Duration },
}

impl IdentityError {
    pub fn bad(option: &'static str, value: &str, reason: impl Into<String>) -> Self {
        IdentityError::BadArgument { option, value: value.to_string(), reason: reason.into() }
    }

    fn status(&self) -> ExitStatus {
        match self {
            IdentityError::BadArgument { .. } => ExitStatus::Usage,
            _ => ExitStatus::Failed,
        }
    }

    /// Stable machine-readable kind; part of the protocol.
    fn kind(&self) -> &'static str {
        use IdentityError::*;
        match self {
            BadArgument { .. } => "bad-argument",
            NoSuchInterface { .. } => "no-such-interface",
            AmbiguousMac { .. } => "ambiguous-mac",
            ListInterfaces { .. } => "read-interfaces",
            ToolMissing { .. } => "tool-missing",
            Spawn { .. } | CommandFailed { .. } => "command-failed",
            AddressLost { .. } => "address-lost",
            SetSysctl { .. } => "set-sysctl",
            SetHostname { .. } | GetHostname { .. } => "hostname",
            ReadFile { .. } => "read-file",
            WriteFile { .. } | ReplaceFile { .. } => "write-file",
            Detach { .. } | NotSingleThreaded { .. } => "detach",
            ReadClock { .. } | SetClock { .. } => "clock",
            Random { .. } => "random",
            NoSshServer => "no-ssh-server",
            PublicKey { .. } => "public-key",
            Signal { .. } | ListenerStuck { .. } | ListenerNotBack { .. } => "ssh-listener",
        }
    }

    fn hint(&self) -> Option<String> {
        use IdentityError::*;
        let permission = |e: Option<Errno>| matches!(e, Some(Errno::EPERM | Errno::EACCES));
        match self {
            NoSuchInterface { .. } => Some("the MAC is the one in the domain XML; see /sys/class/net/*/address".into()),
            AmbiguousMac { .. } => Some("the address belongs on the bond or bridge master; detach the others".into()),
            ToolMissing { tool, .. } => Some(format!("install the package that ships `{tool}`")),
            SetHostname { source, .. } | SetClock { source } | Signal { source, .. } if permission(Some(*source)) => {
                Some("the agent must run as root".into())
            }
            WriteFile { source, .. } | SetSysctl { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Some("the agent must run as root".into())
            }
            NoSshServer => Some("omit --ssh-host-keys on a guest without an SSH server".into()),
            ListenerNotBack { .. } | ListenerStuck { .. } => {
                Some("the guest may need its SSH server restarted from its console".into())
            }
            _ => None,
        }
    }

    /// The protocol answer: kind, the whole error chain once, and a hint.
    pub fn into_answer(self) -> (ExitStatus, AgentError) {
        let message = crate::error_chain(&self);
        (self.status(), AgentError { kind: self.kind().to_string(), message, hint: self.hint() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_usage_errors_and_the_rest_fail_in_the_guest() {
        let (status, answer) = IdentityError::bad("--mac", "xx", "not a MAC").into_answer();
        assert_eq!((status, answer.kind.as_str()), (ExitStatus::Usage, "bad-argument"));
        assert_eq!(answer.message, "--mac \"xx\": not a MAC");

        let (status, answer) = IdentityError::NoSuchInterface { mac: "52:54:00:00:00:01".into() }.into_answer();
        assert_eq!((status, answer.kind.as_str()), (ExitStatus::Failed, "no-such-interface"));
        assert!(answer.hint.is_some());
    }

    #[test]
    fn answer_carries_the_source_chain_once() {
        let error = IdentityError::WriteFile {
            path: "/etc/hostname".into(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        };
        let (_, answer) = error.into_answer();
        assert_eq!(answer.message, "cannot write /etc/hostname: denied");
        assert_eq!(answer.hint.as_deref(), Some("the agent must run as root"));
    }
}
