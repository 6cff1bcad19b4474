//! The guest agents port: what the operations ask of `envclone-agent` in
//! their guests, one trait per role, so that every operation is unit tested
//! without SSH. No method has a default body: an implementation says what
//! each call does, even where the answer is "nothing to do".
//!
//! ```text
//!   snapshot, restore (stop) ──> Quiescer ──prepare/arm──> ArmedGuest ──freeze──> FrozenGuest ──thaw
//!   restore, standby         ──> RestoreAgents   wait_ready, thaw, set_clock
//!   clone, failover          ──> CloneAgents     + host_key, hostname, rewrite, scan, readdress, reset_identity
//!   recover                  ──> RecoveryAgents  status, thaw (any environment's VM)
//! ```
//!
//! The real implementations call `envclone-agent` over SSH (`ssh/`):
//! [`SshQuiescer`] holds each freeze as a [`crate::guest::FreezeLease`] on
//! a session logged in beforehand; [`SshAgents`] keeps one session per VM
//! and retries what is safe to retry; [`SshRecoveryAgents`] logs in afresh
//! for each call. Test fakes live in `crate::test_support`.

mod ssh;

use std::net::Ipv4Addr;
use std::time::Duration;

use envclone_agent::{ReaddressReport, ResetIdentityReport, RewritePlan, RewriteReport, ScanReport, ScanRequest};
use ipnet::Ipv4Net;

pub use self::ssh::{SshAgents, SshQuiescer, SshRecoveryAgents};
use super::GuestError;
use crate::config::LookupError;
use crate::error::Failure;

/// What the freeze reported once everything was frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeInfo {
    /// Time the FIFREEZE calls took: subtracted from the moment the answer
    /// arrived to place the first FIFREEZE in the controller's time.
    pub freezing: Duration,
}

/// What the thaw reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThawInfo {
    /// From the first FIFREEZE to the last FITHAW, as the guest measured it.
    pub frozen: Duration,
    /// The agent's lease timeout ended the freeze, not our thaw.
    pub by_lease_timeout: bool,
}

/// One held freeze. Dropping it without [`FrozenGuest::thaw`] must thaw too
/// (the lease closes its channel).
pub trait FrozenGuest: Send {
    /// Thaws the guest (its post-thaw hooks run) and reports how long it
    /// was frozen; the freeze ends either way.
    fn thaw(self: Box<Self>) -> Result<ThawInfo, GuestError>;
}

/// A guest whose pre-freeze hooks ran and whose filesystems are synced,
/// waiting for the go. Dropping it cancels: the hooks are unwound.
pub trait ArmedGuest: Send {
    /// The go: freezes the filesystems at once (the hooks already ran).
    fn freeze(self: Box<Self>) -> Result<(Box<dyn FrozenGuest>, FreezeInfo), GuestError>;
}

/// Freezes guests for a consistent point in time: the snapshot's barrier
/// and the restore's best-effort freeze before the stop.
pub trait Quiescer: Sync {
    /// Logs in to `vm`'s agent ahead of the freeze and checks that it
    /// answers and holds no freeze: the preflight status check.
    fn prepare(&self, vm: &str) -> Result<(), GuestError>;
    /// The first half of a two-phase freeze: the pre-freeze hooks and a
    /// sync, nothing frozen yet. `None`: this quiescer freezes in one step,
    /// [`Quiescer::freeze`] (then called at the go) does everything.
    fn arm(&self, vm: &str) -> Result<Option<Box<dyn ArmedGuest>>, GuestError>;
    /// Runs the pre-freeze hooks and freezes `vm`'s filesystems, on the
    /// session [`Quiescer::prepare`] opened.
    fn freeze(&self, vm: &str) -> Result<(Box<dyn FrozenGuest>, FreezeInfo), GuestError>;
    /// The recovery path for a thaw that failed: `envclone-agent thaw` on a
    /// new session.
    fn recover(&self, vm: &str) -> Result<(), GuestError>;
}

/// The agents of one environment after its guests start: a booted guest's
/// agent is waited for, a guest restored from memory is thawed (it resumes
/// frozen if it was captured frozen) and has its clock set (it resumes at
/// the snapshot's time).
pub trait RestoreAgents: Sync {
    /// Waits up to `within` until `vm`'s agent answers (a cold boot).
    fn wait_ready(&self, vm: &str, within: Duration) -> Result<(), GuestError>;
    /// Thaws `vm` (`envclone-agent thaw`, safe when nothing is frozen) and
    /// checks that nothing stays frozen, trying up to `within`.
    fn thaw(&self, vm: &str, within: Duration) -> Result<(), GuestError>;
    /// Sets `vm`'s clock to the controller's; returns the step in ms.
    fn set_clock(&self, vm: &str) -> Result<i64, GuestError>;
}

/// What a clone (and a failover readdressing its standby) asks of its
/// agents beyond a restore's. These calls change the guest: none is
/// retried, a second try is the caller's call.
pub trait CloneAgents: RestoreAgents {
    /// The host key blob the guest's SSH server offers.
    fn host_key(&self, vm: &str) -> Result<Vec<u8>, GuestError>;
    /// The guest's host name, as its agent reports it.
    fn hostname(&self, vm: &str) -> Result<String, GuestError>;
    /// `envclone-agent rewrite`: replaces every key of `plan.map` by its
    /// value, whole tokens only, in the plan's files.
    fn rewrite(&self, vm: &str, plan: &RewritePlan) -> Result<RewriteReport, GuestError>;
    /// `envclone-agent scan`: what of `request`'s needles and subnets is
    /// still found in the guest's files.
    fn scan(&self, vm: &str, request: &ScanRequest) -> Result<ScanReport, GuestError>;
    /// Re-addresses the interface `mac`; the agent drops the old address
    /// only after answering, so the session that asked survives the call.
    fn readdress(
        &self,
        vm: &str,
        mac: &str,
        address: &Ipv4Net,
        gateway: Ipv4Addr,
        hostname: &str,
    ) -> Result<ReaddressReport, GuestError>;
    /// A new machine-id (and new SSH host keys when asked).
    fn reset_identity(&self, vm: &str, host_keys: bool) -> Result<ResetIdentityReport, GuestError>;
}

/// What a guest's agent says about freezes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreezeState {
    /// Mount points frozen now (by a live holder or left by a dead one).
    pub frozen: Vec<String>,
    /// A freeze holder is at work (hooks, or holding the lease).
    pub in_progress: bool,
}

impl FreezeState {
    /// Anything `envclone-agent thaw` would have to end.
    pub fn needs_thaw(&self) -> bool {
        !self.frozen.is_empty() || self.in_progress
    }
}

/// Why a [`RecoveryAgents`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// The journal names a VM the config no longer has: no endpoint to reach.
    #[error(transparent)]
    UnknownVm(#[from] LookupError),
    #[error(transparent)]
    Guest(#[from] GuestError),
}

impl AgentCallError {
    pub fn hint(&self) -> Option<String> {
        match self {
            AgentCallError::UnknownVm(e) => e.hint(),
            AgentCallError::Guest(e) => e.hint(),
        }
    }
}

/// The agents as `recover` needs them, for any environment of the config
/// by VM name: is a guest frozen, and thaw it. Every call stands alone (a
/// journal left by a crash may name any VM, in any order).
pub trait RecoveryAgents: Sync + std::fmt::Debug {
    /// `envclone-agent status`: what is frozen.
    fn status(&self, env: &str, vm: &str) -> Result<FreezeState, AgentCallError>;
    /// `envclone-agent thaw`: thaws whatever is frozen (safe when nothing
    /// is); returns the mount points it thawed.
    fn thaw(&self, env: &str, vm: &str) -> Result<Vec<String>, AgentCallError>;
}
