//! Errors of the hypervisor adapter: one variant per step, with context.

use std::fmt;
use std::path::PathBuf;

#[cfg(test)]
use super::fake::FakeStep;
use crate::error::Failure;
use crate::exit::ExitCode;

/// What libvirt said, kept as plain data so that the error is `Clone` and so
/// that the fake can produce the same errors the real driver would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LibvirtError {
    pub code: LibvirtCode,
    pub message: String,
}

#[cfg(test)]
impl LibvirtError {
    /// An error libvirt might have said, for tests.
    pub(crate) fn test(message: &str) -> Self {
        LibvirtError { code: LibvirtCode::Other(1), message: message.to_owned() }
    }
}

/// The libvirt error numbers callers may want to act on; the rest are `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LibvirtCode {
    NoDomain,
    NoNetwork,
    /// `VIR_ERR_OPERATION_INVALID`: wrong state (e.g. "domain is not running").
    OperationInvalid,
    OperationFailed,
    /// `VIR_ERR_BLOCK_COPY_ACTIVE`: a block job isn't ready to pivot yet.
    BlockJobNotReady,
    /// Any of libvirt's "not supported" numbers: the driver can't do this.
    Unsupported,
    InvalidArg,
    Xml,
    NoConnect,
    System,
    /// Any other libvirt error number (the raw value).
    Other(i32),
}

impl LibvirtError {
    pub fn new(code: LibvirtCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<virt::error::Error> for LibvirtError {
    fn from(e: virt::error::Error) -> Self {
        use virt::sys;
        let raw = e.code().to_raw();
        let code = match raw {
            sys::VIR_ERR_NO_DOMAIN => LibvirtCode::NoDomain,
            sys::VIR_ERR_NO_NETWORK => LibvirtCode::NoNetwork,
            sys::VIR_ERR_OPERATION_INVALID => LibvirtCode::OperationInvalid,
            sys::VIR_ERR_OPERATION_FAILED => LibvirtCode::OperationFailed,
            sys::VIR_ERR_BLOCK_COPY_ACTIVE => LibvirtCode::BlockJobNotReady,
            sys::VIR_ERR_NO_SUPPORT
            | sys::VIR_ERR_OPERATION_UNSUPPORTED
            | sys::VIR_ERR_ARGUMENT_UNSUPPORTED
            | sys::VIR_ERR_CONFIG_UNSUPPORTED => LibvirtCode::Unsupported,
            sys::VIR_ERR_INVALID_ARG => LibvirtCode::InvalidArg,
            sys::VIR_ERR_XML_ERROR | sys::VIR_ERR_XML_DETAIL => LibvirtCode::Xml,
            sys::VIR_ERR_NO_CONNECT => LibvirtCode::NoConnect,
            sys::VIR_ERR_SYSTEM_ERROR => LibvirtCode::System,
            other => LibvirtCode::Other(other as i32),
        };
        let message = e.message().to_owned();
        // Drivers refuse flags they don't know with INVALID_ARG and this
        // text: that is "this driver can't", not a bad argument of ours.
        let code = match code {
            LibvirtCode::InvalidArg if message.contains("unsupported flags") => LibvirtCode::Unsupported,
            code => code,
        };
        Self { code, message }
    }
}

/// Everything the adapter can fail with. Variants are named after the step.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HvError {
    #[error("cannot connect to libvirt at {uri}")]
    Connect { uri: String, source: LibvirtError },
    #[error("no domain named {name}")]
    NoSuchDomain { name: String },
    #[error("no network named {name}")]
    NoSuchNetwork { name: String },
    #[error("domain {domain} has no disk {disk}")]
    NoSuchDisk { domain: String, disk: String },
    #[error("domain {domain} has no interface #{index}")]
    NoSuchInterface { domain: String, index: usize },
    #[error("cannot look up domain {name}")]
    LookupDomain { name: String, source: LibvirtError },
    #[error("cannot look up network {name}")]
    LookupNetwork { name: String, source: LibvirtError },
    #[error("cannot list domains")]
    ListDomains { source: LibvirtError },
    #[error("cannot list networks")]
    ListNetworks { source: LibvirtError },
    #[error("cannot define domain {name}")]
    DefineDomain { name: String, source: LibvirtError },
    #[error("cannot start domain {name}")]
    StartDomain { name: String, source: LibvirtError },
    #[error("cannot destroy domain {name}")]
    DestroyDomain { name: String, source: LibvirtError },
    #[error("cannot undefine domain {name}")]
    UndefineDomain { name: String, source: LibvirtError },
    #[error("cannot set autostart of domain {name}")]
    SetAutostart { name: String, source: LibvirtError },
    #[error("cannot define network {name}")]
    DefineNetwork { name: String, source: LibvirtError },
    #[error("cannot start network {name}")]
    StartNetwork { name: String, source: LibvirtError },
    #[error("cannot destroy network {name}")]
    DestroyNetwork { name: String, source: LibvirtError },
    #[error("cannot undefine network {name}")]
    UndefineNetwork { name: String, source: LibvirtError },
    #[error("cannot take snapshot {snapshot} of domain {domain}")]
    Snapshot { domain: String, snapshot: String, source: LibvirtError },
    #[error("cannot move the interface {mac} of domain {domain} to network {network}")]
    MoveInterface { domain: String, mac: String, network: String, source: LibvirtError },
    #[error("cannot save memory of domain {domain} to {}", path.display())]
    SaveMemory { domain: String, path: PathBuf, source: LibvirtError },
    #[error("cannot restore memory from {}", path.display())]
    RestoreMemory { path: PathBuf, source: LibvirtError },
    #[error("cannot start block commit of {domain} disk {disk}")]
    BlockCommit { domain: String, disk: String, source: LibvirtError },
    #[error("cannot query block job of {domain} disk {disk}")]
    BlockJob { domain: String, disk: String, source: LibvirtError },
    #[error("cannot pivot block job of {domain} disk {disk}")]
    BlockJobPivot { domain: String, disk: String, source: LibvirtError },
    #[error("cannot abort block job of {domain} disk {disk}")]
    BlockJobAbort { domain: String, disk: String, source: LibvirtError },
    #[error("cannot send QMP command to domain {domain}")]
    QmpTransport { domain: String, source: LibvirtError },
    #[error("QMP {class} error from domain {domain}: {desc}")]
    Qmp { domain: String, class: String, desc: String },
    #[error("unexpected QMP reply to {command} from domain {domain}: {detail}")]
    QmpReply { domain: String, command: String, detail: String },
    #[error("invalid {what} XML: {detail}")]
    Xml { what: &'static str, detail: String },
    #[error("{operation} is not supported by this hypervisor")]
    Unsupported { operation: &'static str },
    /// A failure `FakeHypervisor` was told to make (unit tests only).
    #[cfg(test)]
    #[error("injected failure at {step:?}")]
    Injected { step: FakeStep },
}

impl HvError {
    /// The libvirt error carried by this error, if any.
    pub fn libvirt(&self) -> Option<&LibvirtError> {
        use HvError::*;
        match self {
            Connect { source, .. }
            | LookupDomain { source, .. }
            | LookupNetwork { source, .. }
            | ListDomains { source }
            | ListNetworks { source }
            | DefineDomain { source, .. }
            | StartDomain { source, .. }
            | DestroyDomain { source, .. }
            | UndefineDomain { source, .. }
            | SetAutostart { source, .. }
            | DefineNetwork { source, .. }
            | StartNetwork { source, .. }
            | DestroyNetwork { source, .. }
            | UndefineNetwork { source, .. }
            | Snapshot { source, .. }
            | MoveInterface { source, .. }
            | SaveMemory { source, .. }
            | RestoreMemory { source, .. }
            | BlockCommit { source, .. }
            | BlockJob { source, .. }
            | BlockJobPivot { source, .. }
            | BlockJobAbort { source, .. }
            | QmpTransport { source, .. } => Some(source),
            NoSuchDomain { .. }
            | NoSuchNetwork { .. }
            | NoSuchDisk { .. }
            | NoSuchInterface { .. }
            | Qmp { .. }
            | QmpReply { .. }
            | Xml { .. }
            | Unsupported { .. } => None,
            #[cfg(test)]
            Injected { .. } => None,
        }
    }

    /// True when the driver (or the adapter) cannot do this at all, as
    /// opposed to failing this time.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, HvError::Unsupported { .. })
            || self.libvirt().is_some_and(|e| e.code == LibvirtCode::Unsupported)
    }
}

impl Failure for HvError {
    /// A domain or network that does not exist is "not found"; libvirt that
    /// cannot be reached is "unreachable".
    fn exit_code(&self) -> ExitCode {
        match self {
            HvError::NoSuchDomain { .. } | HvError::NoSuchNetwork { .. } => ExitCode::NotFound,
            HvError::Connect { .. } => ExitCode::Unreachable,
            _ => ExitCode::Failed,
        }
    }

    /// A next step for the user, when there is an obvious one.
    fn hint(&self) -> Option<String> {
        use HvError::*;
        let hint = match self {
            Connect { .. } => "is libvirtd running? for the lab run `envclone lab up`; check controller.libvirt_uri",
            NoSuchDomain { .. } | LookupDomain { .. } => "check `virsh list --all` and the domain key in the config",
            NoSuchNetwork { .. } | LookupNetwork { .. } => {
                "check `virsh net-list --all` and the network key in the config"
            }
            NoSuchDisk { .. } => "check `virsh domblklist DOMAIN` and the disk targets in the config",
            StartNetwork { .. } => {
                "another network may already use this bridge or subnet: check `virsh net-list --all`"
            }
            QmpTransport { .. } => "QMP needs a running QEMU domain and a connection to the qemu driver",
            _ if self.is_unsupported() => "this libvirt driver cannot do that; use the qemu driver",
            _ => return None,
        };
        Some(hint.to_owned())
    }
}

impl fmt::Display for LibvirtCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
