//! What a failover can fail with: one variant per step, with the standby,
//! VM, domain or file concerned. Each picks its exit code
//! ([`Failure::exit_code`]).

use crate::catalog::CatalogError;
use crate::config::LookupError;
use crate::error::Failure;
use crate::exit::ExitCode;
use crate::guest::GuestError;
use crate::host::{HostNetError, StorageError};
use crate::hypervisor::HvError;
use crate::ops::shared::{OperationError, Shared};
use crate::ops::LockError;

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// SIGTERM or SIGINT before a step: the operation rolled back.
    #[error(transparent)]
    Interrupted(#[from] crate::ops::interrupt::Interrupted),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Another operation holds the standby, or a lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Copying an image between the standby's host and home failed.
    #[error("carry home VM '{vm}' disk {disk}")]
    Ship {
        vm: String,
        disk: String,
        #[source]
        source: Box<crate::host::ship::ShipError>,
    },
    /// The primary's or the standby's host cannot be used.
    #[error(transparent)]
    Host(Box<crate::host::HostError>),
    #[error("environment '{env}' has no standby")]
    NoStandby { env: String },
    #[error("environment '{env}' has several standbys ({}): say which", standbys.join(", "))]
    SeveralStandbys { env: String, standbys: Vec<String> },
    #[error("environment '{env}' has no standby named {standby:?}")]
    UnknownStandby { env: String, standby: String, known: Vec<String> },
    #[error("standby {standby} was never synced: it holds no restored point to start from")]
    NotSynced { standby: String },
    #[error("standby {standby} is half way through a sync to snapshot {snapshot}")]
    MergePending { standby: String, snapshot: String },
    /// A drill starts only a standby whose domains are all shut off.
    #[error("domain {domain} of standby {standby} runs")]
    StandbyRunning { standby: String, domain: String },
    #[error("a DR drill of environment '{env}' runs on standby {standby}")]
    DrillRunning { env: String, standby: String },
    /// A planned failover needs a healthy primary.
    #[error("domain {domain} of environment '{env}' does not run")]
    PrimaryDown { env: String, domain: String },
    /// An unplanned failover of a primary whose domains all run.
    #[error("environment '{env}' runs: every domain of it is running")]
    PrimaryHealthy { env: String },
    #[error("final snapshot of environment '{env}'")]
    FinalSnapshot {
        env: String,
        #[source]
        source: Box<crate::ops::snapshot::SnapshotError>,
    },
    #[error("fence domain {domain}")]
    Fence {
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("bring standby {standby} to the final snapshot")]
    Sync {
        standby: String,
        #[source]
        source: Box<crate::ops::standby::StandbyError>,
    },
    #[error("standby {standby} was brought to snapshot {found}, not to the final snapshot {snapshot}")]
    SyncedElsewhere { standby: String, snapshot: String, found: String },
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    #[error("inspect domain {domain}")]
    InspectDomain {
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("inspect network {network}")]
    InspectNetwork {
        network: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("create the drill overlay of VM '{vm}' disk {disk}")]
    Overlay {
        vm: String,
        disk: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error("point domain {domain} at other disks")]
    Redefine {
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("gateway namespace {netns}")]
    Gateway {
        netns: String,
        #[source]
        source: Box<HostNetError>,
    },
    #[error("turn the autostart of domain {domain} on again")]
    Autostart {
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("start domain {domain}")]
    Start {
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("stop domain {domain}")]
    Stop {
        domain: String,
        #[source]
        source: Box<HvError>,
    },
    #[error("the agent of VM '{vm}' of the standby did not answer")]
    AgentNotReady {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    /// Failback: no standby serves the environment.
    #[error("environment '{env}' is not failed over: no standby serves it")]
    NoSwitch { env: String },
    /// Failback: a drill of another standby of the environment runs.
    #[error("a DR drill of environment '{env}' runs on standby {standby}")]
    FailbackDrillRunning { env: String, standby: String },
    /// Failback: a failback of the environment was interrupted.
    #[error("a failback of environment '{env}' from epoch {epoch} was interrupted")]
    FailbackInterrupted { env: String, epoch: i64 },
    /// Failback: a fenced primary domain runs (it must be shut off to get its disks back).
    #[error("domain {domain} of environment '{env}' runs while its standby serves it")]
    PrimaryRunning { env: String, domain: String },
    #[error("snapshot {label} of environment '{env}' on its standby")]
    FailbackSnapshot {
        env: String,
        label: &'static str,
        #[source]
        source: Box<crate::ops::snapshot::SnapshotError>,
    },
    /// The standby's live image of a disk is not in the catalog.
    #[error("VM '{vm}' disk {disk} of the standby runs on {}, which the catalog does not know", path.display())]
    NotRecorded { vm: String, disk: String, path: std::path::PathBuf },
    #[error("carry VM '{vm}' disk {disk} home: {step} {}", path.display())]
    Carry {
        vm: String,
        disk: String,
        step: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: Box<StorageError>,
    },
    /// The chain carried home does not read like the standby's.
    #[error("VM '{vm}' disk {disk}: {} does not read like the standby's {}", home.display(), standby.display())]
    CompareFailed { vm: String, disk: String, standby: std::path::PathBuf, home: std::path::PathBuf },
    #[error("remove {what}: {detail}")]
    Remove { what: String, detail: String },
    /// A standby configured to take over with its own addresses, whose
    /// primary lacks what readdressing needs.
    #[error(
        "standby {standby} takes over with its own addresses (network = \"readdress\"), but environment '{env}' \
         has no [environments.{env}.{missing}] section"
    )]
    ReaddressNotConfigured { env: String, standby: String, missing: &'static str },
    #[error("cannot plan the standby's own addresses: {detail}")]
    AddressPlan { detail: String },
    #[error("create network {network}")]
    DefineNetwork {
        network: String,
        #[source]
        source: Box<HvError>,
    },
    /// An agent call of the readdress steps (either way).
    #[error("{step} in VM '{vm}'")]
    Agent {
        vm: String,
        step: &'static str,
        #[source]
        source: Box<GuestError>,
    },
    /// After the rewrite, a configured file still names an address of the
    /// other side: nothing switches while one is left.
    #[error("{}", crate::ops::clone::remaining(vm, findings, &format!("still names {side} after the rewrite")))]
    AddressesRemain { vm: String, side: &'static str, findings: Vec<envclone_agent::Finding> },
    #[error("trust host keys in {}", path.display())]
    KnownHosts {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("move the interface {mac} of {domain} (VM '{vm}') onto network {network}")]
    MoveInterface {
        vm: String,
        domain: String,
        mac: String,
        network: String,
        #[source]
        source: Box<HvError>,
    },
    /// The home sync: the standby does not serve its primary.
    #[error("standby {standby} does not serve environment '{env}'")]
    NotServing { standby: String, env: String },
    /// The home sync: a copy at home does not read like its source.
    #[error("VM '{vm}' disk {disk}: the copy {} does not read like the standby's {}", to.display(), from.display())]
    HomeCopyDiffers { vm: String, disk: String, from: std::path::PathBuf, to: std::path::PathBuf },
    /// Failback: ENV's home host's start gate would not let its domains
    /// start (its lease is withheld while the switch is in force).
    #[error("grant environment '{env}' its start gate lease on host {host}")]
    StartGate {
        env: String,
        host: String,
        #[source]
        source: Box<crate::host::gate::GateError>,
    },
    #[error("a worker thread panicked")]
    Panicked,
    /// The step failed, and undoing the steps before it failed too.
    #[error("{cause}; undoing it failed too: {}", failures.join("; "))]
    CleanupFailed { cause: Box<FailoverError>, failures: Vec<String> },
}

impl Failure for FailoverError {
    /// No standby (or not the one named) is "not found"; several standbys
    /// without `--standby`, or a mode not built yet, a bad command line.
    fn exit_code(&self) -> ExitCode {
        match self {
            FailoverError::Lookup(_)
            | FailoverError::NoStandby { .. }
            | FailoverError::UnknownStandby { .. }
            | FailoverError::NotSynced { .. } => ExitCode::NotFound,
            FailoverError::Lock(LockError::Busy(_)) => ExitCode::Busy,
            FailoverError::Host(e) if matches!(**e, crate::host::HostError::Unknown(_)) => ExitCode::NotFound,
            FailoverError::Host(_) => ExitCode::Unreachable,
            FailoverError::SeveralStandbys { .. }
            | FailoverError::Unsupported { .. }
            | FailoverError::PrimaryHealthy { .. }
            | FailoverError::NoSwitch { .. }
            | FailoverError::NotServing { .. }
            | FailoverError::FailbackDrillRunning { .. }
            | FailoverError::ReaddressNotConfigured { .. }
            | FailoverError::PrimaryRunning { .. } => ExitCode::Usage,
            FailoverError::AgentNotReady { source, .. } if source.exit_code() == ExitCode::Unreachable => {
                ExitCode::Unreachable
            }
            FailoverError::InspectDomain { source, .. }
            | FailoverError::InspectNetwork { source, .. }
            | FailoverError::Start { source, .. }
                if matches!(**source, HvError::Connect { .. }) =>
            {
                ExitCode::Unreachable
            }
            FailoverError::CleanupFailed { cause, .. } => cause.exit_code(),
            FailoverError::StartGate { source, .. } => source.exit_code(),
            _ => ExitCode::Failed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            FailoverError::Lookup(e) => e.hint(),
            FailoverError::Host(e) => e.hint(),
            FailoverError::Ship { source, .. } => source.hint(),
            FailoverError::Interrupted(_) => Some(crate::ops::interrupt::Interrupted::hint()),
            FailoverError::Lock(e) => e.hint(),
            FailoverError::Catalog(e) => e.hint(),
            FailoverError::NoStandby { env } => {
                Some(format!("make one with `envclone standby create {env} --name SB`, then sync it"))
            }
            FailoverError::SeveralStandbys { .. } => Some("name one with --standby SB".into()),
            FailoverError::UnknownStandby { known, .. } => Some(format!("its standbys: {}", known.join(", "))),
            FailoverError::NotSynced { standby } => {
                Some(format!("take a snapshot of its primary, then run `envclone standby sync {standby}`"))
            }
            FailoverError::MergePending { .. } => Some("run `envclone recover` to finish that sync first".into()),
            FailoverError::StandbyRunning { domain, .. } => Some(format!(
                "a drill already runs? `envclone failover ENV --test --end` ends it; otherwise shut {domain} down"
            )),
            FailoverError::Unsupported { .. } => None,
            FailoverError::DrillRunning { env, .. } => {
                Some(format!("end it first: `envclone failover {env} --test --end`"))
            }
            FailoverError::PrimaryDown { .. } => Some(
                "a planned failover needs the primary running; with the primary down, run `envclone failover ENV` \
                 (unplanned: the standby's newest restored point)"
                    .into(),
            ),
            FailoverError::PrimaryHealthy { env } => Some(format!(
                "an unplanned failover would lose what {env} wrote since the standby's point: use `envclone failover \
                 {env} --planned` (a final snapshot first); `--force` fails over anyway"
            )),
            FailoverError::FinalSnapshot { source, .. } => source.hint(),
            FailoverError::Fence { source, .. } => source.hint(),
            FailoverError::Sync { source, .. } => source.hint(),
            FailoverError::SyncedElsewhere { .. } => Some(
                "a newer snapshot of the primary appeared during the failover; it was rolled back: run it again".into(),
            ),
            FailoverError::InspectDomain { source, .. }
            | FailoverError::InspectNetwork { source, .. }
            | FailoverError::Redefine { source, .. }
            | FailoverError::Start { source, .. }
            | FailoverError::Autostart { source, .. }
            | FailoverError::Stop { source, .. } => source.hint(),
            FailoverError::Overlay { .. } => Some("check free space on the standby's storage".into()),
            FailoverError::Gateway { .. } => {
                Some("check `ip netns list` and controller.libvirt_netns in the config".into())
            }
            FailoverError::AgentNotReady { vm, .. } => Some(format!(
                "the drill was rolled back; look at the console log of the standby's {vm} next to its disks"
            )),
            FailoverError::Remove { .. } => Some("fix the cause, then run the command again".into()),
            FailoverError::NotServing { standby, .. } => Some(format!(
                "`envclone status` shows who serves it; `envclone standby sync {standby}` then brings it to its \
                 primary's newest snapshot"
            )),
            FailoverError::HomeCopyDiffers { .. } => Some(
                "the copies of this sync were deleted and the standby serves on; run `envclone standby sync SB` \
                 again, and if it repeats check the primary's image of the standby's restored point (the copies \
                 hang on it)"
                    .into(),
            ),
            FailoverError::NoSwitch { env } => {
                Some(format!("`envclone status {env}` shows who serves it; failback follows `envclone failover {env}`"))
            }
            FailoverError::FailbackDrillRunning { env, .. } => {
                Some(format!("end it first: `envclone failover {env} --test --end --standby SB`"))
            }
            FailoverError::FailbackInterrupted { env, .. } => Some(format!(
                "run `envclone recover {env}`: it rolls it back (the standby serves again); then run the failback again"
            )),
            FailoverError::PrimaryRunning { env, .. } => {
                Some(format!("`envclone status {env}` fences it again; then run the failback again"))
            }
            FailoverError::FailbackSnapshot { source, .. } => source.hint(),
            FailoverError::NotRecorded { .. } => {
                Some("run `envclone recover ENV`: it records the image in the catalog; then the failback again".into())
            }
            FailoverError::Carry { .. } => {
                Some("nothing switched: the standby serves on; check the space in the environment's storage".into())
            }
            FailoverError::CompareFailed { .. } => Some(
                "nothing switched: the copies were removed and the standby serves on; run the failback again".into(),
            ),
            FailoverError::ReaddressNotConfigured { env, missing: "readdress", .. } => Some(format!(
                "add [environments.{env}.readdress] with `pool = \"10.90.0.0/16\"` (a block no production network \
                 uses), or set the standby's network = \"takeover\""
            )),
            FailoverError::ReaddressNotConfigured { env, .. } => Some(format!(
                "add [environments.{env}.rewrite] with the `files` that hold connection strings (e.g. /etc/app/*.env)"
            )),
            FailoverError::AddressPlan { .. } => Some("give [readdress] pool a larger block".into()),
            FailoverError::DefineNetwork { source, .. } | FailoverError::MoveInterface { source, .. } => source.hint(),
            FailoverError::Agent { source, .. } => source.hint(),
            FailoverError::AddressesRemain { .. } => Some(
                "map each listed value in [rewrite] map, or add its file to [rewrite] files; everything was rolled \
                 back"
                    .into(),
            ),
            FailoverError::KnownHosts { .. } => Some("check that the controller's known_hosts is writable".into()),
            FailoverError::StartGate { source, .. } => source.hint(),
            FailoverError::Panicked => None,
            FailoverError::CleanupFailed { .. } => {
                Some("run `envclone recover`: it finishes or rolls back what is left".into())
            }
        }
    }
}

impl OperationError for FailoverError {
    const OPERATION: &'static str = "failover";

    fn into_shared(self) -> Result<Shared, Self> {
        match self {
            FailoverError::Lock(lock) => Ok(Shared::Lock(lock)),
            FailoverError::Lookup(lookup) => Ok(Shared::Lookup(lookup)),
            own => Err(own),
        }
    }
}

impl From<crate::host::HostError> for FailoverError {
    fn from(error: crate::host::HostError) -> Self {
        FailoverError::Host(Box::new(error))
    }
}
