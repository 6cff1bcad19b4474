//! Everything that can stop a lab command, each with the step and a hint.

use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::GuestError;
use crate::hypervisor::HvError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("busy: another `envclone lab` command is changing the labs in {}", labs_dir.display())]
    Busy { labs_dir: PathBuf },
    #[error("missing host tools: {}", missing.join(", "))]
    MissingTools { missing: Vec<String> },
    #[error("invalid lab name {name:?}: use 1 to 32 lowercase letters, digits or '-'")]
    BadName { name: String },
    #[error(transparent)]
    Tool(#[from] crate::host::tool::ToolError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the lab's libvirtd did not start: {detail}")]
    DaemonStart { log: PathBuf, detail: String },
    #[error("process {pid} did not exit after SIGKILL")]
    ProcessWontDie { pid: i32 },
    #[error("lab path {} contains a quote", path.display())]
    BadPath { path: PathBuf },
    #[error("dropbearkey printed no ed25519 public key for {}", path.display())]
    KeyParse { path: PathBuf },
    #[error("no kernel with a matching initrd in /boot")]
    NoKernel,
    #[error("no envclone-agent binary found (looked in: {})", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    AgentBinaryNotFound { searched: Vec<PathBuf> },
    #[error("lab step '{step}' failed")]
    Hypervisor {
        step: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("the agent in VM '{vm}' did not answer within {waited:?}")]
    AgentTimeout {
        vm: String,
        waited: std::time::Duration,
        console_log: PathBuf,
        #[source]
        source: Option<Box<GuestError>>,
    },
    #[error("the extra environments' config {} does not load: {detail}", path.display())]
    ExtraConfig { path: PathBuf, detail: String },
    #[error("extra environment '{env}' is already defined in this lab")]
    ExtraExists { env: String },
    #[error(transparent)]
    Bench(Box<super::bench::BenchError>),
    #[error("a lab has 1 or 2 hosts, not {asked}")]
    BadHostCount { asked: u8 },
    #[error("lab '{lab}' was brought up with {has} host(s), not {asked}")]
    HostCountMismatch { lab: String, has: u8, asked: u8 },
    #[error("no host {host:?} in this lab")]
    UnknownHost { host: String, known: Vec<String> },
    #[error("host {host} is down")]
    HostDown { host: String },
    #[error("host {host} of lab '{lab}' does not exist")]
    HostMissing { host: String, lab: String },
    #[error("the lab's link subnet {subnet} is in use: {device} has {address}")]
    SubnetInUse { subnet: String, device: String, address: String },
    #[error("host {host}'s SSH server did not start: {detail}")]
    SshdStart { host: String, log: PathBuf, detail: String },
}

impl From<super::bench::BenchError> for LabError {
    fn from(error: super::bench::BenchError) -> Self {
        LabError::Bench(Box::new(error))
    }
}

impl LabError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        LabError::Io { action, path: path.to_path_buf(), source }
    }

    pub fn hypervisor(step: impl Into<String>) -> impl FnOnce(HvError) -> LabError {
        let step = step.into();
        move |source| LabError::Hypervisor { step, source: Box::new(source) }
    }
}

impl Failure for LabError {
    /// Busy 3; a bad `--hosts` 2 (nothing done); a host the lab does not
    /// have 4; every other failure 1.
    fn exit_code(&self) -> ExitCode {
        match self {
            LabError::Busy { .. } => ExitCode::Busy,
            LabError::BadHostCount { .. } | LabError::HostCountMismatch { .. } => ExitCode::Usage,
            LabError::UnknownHost { .. } | LabError::HostMissing { .. } => ExitCode::NotFound,
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            LabError::MissingTools { .. } => {
                Some("install them: `scripts/install-deps.sh` (Debian packages, run as root)".into())
            }
            LabError::Busy { .. } => Some("wait for it to finish, then run the command again".into()),
            LabError::DaemonStart { log, .. } => Some(format!("see {}", log.display())),
            LabError::Tool(_) => Some("the lab needs root (network namespaces, bind mounts)".into()),
            LabError::NoKernel => Some("install linux-image-amd64 (`scripts/install-deps.sh`)".into()),
            LabError::AgentBinaryNotFound { .. } => {
                Some("build the static agent: `scripts/build.sh`, or pass --agent-bin / ENVCLONE_AGENT_BIN".into())
            }
            LabError::Hypervisor { source, .. } => source.hint(),
            LabError::AgentTimeout { console_log, .. } => Some(format!(
                "the guest's boot log is in {}; `envclone lab status` shows what runs",
                console_log.display()
            )),
            LabError::ExtraConfig { .. } | LabError::ExtraExists { .. } => Some(
                "remove the lab's extra environments (`envclone lab down` then `up`, or the lab's extra/ directory)"
                    .into(),
            ),
            LabError::Bench(e) => e.hint(),
            LabError::BadHostCount { .. } => {
                Some("`--hosts 1` (the default) or `--hosts 2` (hosts a and b, demo on a)".into())
            }
            LabError::HostCountMismatch { has, .. } => Some(format!(
                "`envclone lab down` first, or use another lab (`--lab NAME`); `lab up --hosts {has}` keeps this one"
            )),
            LabError::UnknownHost { known, .. } if known.is_empty() => {
                Some("this lab has no hosts of its own: bring one up with `envclone lab up --hosts 2`".into())
            }
            LabError::UnknownHost { known, .. } => Some(format!("the lab's hosts are: {}", known.join(", "))),
            LabError::HostDown { host } => Some(format!("`envclone lab host-up {host}` powers it back on")),
            LabError::HostMissing { .. } => Some("`envclone lab up --hosts 2` (re)creates the hosts".into()),
            LabError::SubnetInUse { .. } => Some(
                "another lab (or something else) uses it: the subnet comes from the lab name, so use another \
                 `--lab NAME`"
                    .into(),
            ),
            LabError::SshdStart { log, .. } => Some(format!("see {}", log.display())),
            LabError::Io { .. }
            | LabError::BadName { .. }
            | LabError::ProcessWontDie { .. }
            | LabError::BadPath { .. }
            | LabError::KeyParse { .. } => None,
        }
    }
}
