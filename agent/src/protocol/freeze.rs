//! Messages of `freeze` and `thaw`.
//!
//! `freeze` is the one subcommand that prints **two** JSON lines, both
//! [`Envelope`](crate::Envelope)s:
//!
//! 1. as soon as every selected filesystem is frozen, `Envelope<`[`Frozen`]`>`
//!    (mounts in freeze order, pre-freeze hooks with durations, time taken).
//!    The controller waits for this line before it snapshots.
//! 2. after the thaw, `Envelope<`[`FreezeReport`]`>` (why it thawed, how long
//!    it was frozen, the post-thaw hooks). Exit status 0, or 1 when a
//!    post-thaw hook failed (`hook_failures` names them; the filesystems are
//!    thawed all the same).
//!
//! With `--barrier`, one more line comes first: `Envelope<`[`Armed`]`>`,
//! once the pre-freeze hooks ran and the filesystems are synced; the agent
//! then waits for the line `freeze` on stdin before it freezes (and prints
//! line 1). That is how a controller freezes several guests at one moment:
//! it arms them all, then sends `freeze` to each, so no guest sits frozen
//! while another still runs its hooks. `thaw`, EOF, a signal or the lease
//! timeout while armed unwind the hooks and freeze nothing (kind
//! [`error_kind::CANCELLED`]).
//!
//! Between the two lines the freeze is a lease on the channel that started
//! it: the line `thaw` on stdin, EOF or a lost connection, a SIGTERM, SIGHUP,
//! SIGINT or SIGQUIT, or the lease timeout each thaw at once.
//!
//! A freeze that fails prints one error envelope instead of line 1 and
//! leaves nothing frozen; its `kind` is one of [`error_kind`]. A thaw that
//! fails prints an error envelope instead of line 2 (kind
//! [`error_kind::THAW_FAILED`]): the filesystems it names are still frozen
//! and `envclone-agent thaw` is the way out.
//!
//! `thaw` (the recovery path) prints one `Envelope<`[`ThawReport`]`>`.

use serde::{Deserialize, Serialize};

/// Stable `kind`s of the error envelopes of `freeze` and `thaw`.
pub mod error_kind {
    /// An argument was invalid (exit status 2).
    pub const BAD_ARGUMENT: &str = "bad-argument";
    /// A freeze lease is held already, or a dead holder left filesystems
    /// frozen or hooks in `freeze` state (exit status 3). The message names
    /// the pid and since when; `envclone-agent thaw` clears a dead one.
    pub const ALREADY_FROZEN: &str = "already-frozen";
    /// A pre-freeze hook failed or timed out; the message names the hook, its
    /// exit status and the tail of its stderr. Hooks already run got `thaw`;
    /// nothing was frozen.
    pub const HOOK_FAILED: &str = "hook-failed";
    /// The hooks directory could not be read.
    pub const HOOKS_DIR: &str = "hooks-dir";
    /// /proc/self/mountinfo could not be read or parsed.
    pub const MOUNTINFO: &str = "mountinfo";
    /// FIFREEZE failed on a filesystem; those frozen before it were thawed.
    pub const FREEZE_FAILED: &str = "freeze-failed";
    /// FITHAW failed: the filesystems named are STILL FROZEN.
    pub const THAW_FAILED: &str = "thaw-failed";
    /// The agent's state directory could not be used (it must be on a
    /// filesystem that is not frozen, e.g. the tmpfs on /run).
    pub const STATE: &str = "state";
    /// stdin closed or a signal arrived before the filesystems were frozen:
    /// the controller is gone, so nothing was frozen.
    pub const CANCELLED: &str = "cancelled";
    /// `thaw` thawed the filesystems but a post-thaw hook failed.
    pub const THAW_HOOK_FAILED: &str = "thaw-hook-failed";
}

/// First line of `freeze --barrier`: the pre-freeze hooks ran and the
/// filesystems are synced (so that FIFREEZE has little left to write);
/// nothing is frozen until `freeze` arrives on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Armed {
    /// The agent process that will hold the lease.
    pub pid: u32,
    /// Pre-freeze hooks, in the order they ran (all succeeded).
    pub hooks: Vec<HookRun>,
    /// Milliseconds from the start of the command until armed.
    pub took_ms: u64,
    /// Milliseconds the sync took.
    pub sync_ms: u64,
}

/// First line of `freeze` (the second with `--barrier`): everything
/// selected is frozen now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    /// The agent process holding the lease (what `kill` would name).
    pub pid: u32,
    /// Frozen filesystems, in freeze order (they thaw in reverse).
    pub mounts: Vec<FrozenMount>,
    /// Pre-freeze hooks, in the order they ran (all succeeded).
    pub hooks: Vec<HookRun>,
    /// Milliseconds from the start of the command until all was frozen.
    pub took_ms: u64,
    /// Milliseconds, counted from the first FIFREEZE, after which the agent
    /// thaws on its own.
    pub lease_timeout_ms: u64,
}

/// One frozen filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenMount {
    pub mount_point: String,
    pub fstype: String,
    /// What mountinfo names as the source, e.g. `/dev/vda`.
    pub source: String,
    /// How long FIFREEZE took (it syncs the filesystem first).
    pub freeze_ms: u64,
}

/// Second line of `freeze`: the lease ended and everything is thawed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeReport {
    pub reason: ThawReason,
    /// The signal that ended the lease, when `reason` is `signal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Milliseconds from the first FIFREEZE to the last FITHAW.
    pub frozen_ms: u64,
    /// Thawed mount points, in thaw order.
    pub thawed: Vec<String>,
    /// Mount points somebody else thawed first (e.g. `envclone-agent thaw`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub already_thawed: Vec<String>,
    /// Post-thaw hooks, in the order they ran (reverse name order).
    pub hooks: Vec<HookRun>,
    /// Names of the post-thaw hooks that failed; non-empty means exit 1.
    pub hook_failures: Vec<String>,
}

/// Why a freeze lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThawReason {
    /// The controller wrote `thaw` on stdin.
    StdinThaw,
    /// stdin closed: the controller closed the channel or the connection
    /// was lost.
    Eof,
    /// The lease timeout passed.
    LeaseTimeout,
    /// SIGTERM, SIGHUP, SIGINT or SIGQUIT (e.g. from `envclone-agent thaw`).
    Signal,
}

/// Answer of `thaw`, the recovery path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThawReport {
    /// Mount points this call thawed, in thaw order. Empty when nothing was
    /// frozen.
    pub thawed: Vec<String>,
    /// The freeze that was recorded, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<FreezeHolder>,
    /// `thaw` hooks run for a holder that died before it could run them.
    pub hooks: Vec<HookRun>,
}

/// A recorded freeze, as `thaw` found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeHolder {
    pub pid: u32,
    /// Whether the holder was alive; a live one was sent SIGTERM and thawed
    /// (and runs its own post-thaw hooks).
    pub alive: bool,
    /// When the freeze started, milliseconds since the epoch.
    pub started_unix_ms: u64,
    /// Mount points it had frozen.
    pub frozen: Vec<String>,
}

/// One run of one hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    /// File name in the hooks directory.
    pub name: String,
    pub action: HookAction,
    pub outcome: HookOutcome,
    pub duration_ms: u64,
    /// Last bytes (at most 2 KiB) of what the hook wrote.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
}

impl HookRun {
    pub fn succeeded(&self) -> bool {
        self.outcome == HookOutcome::Ok
    }
}

/// The argument a hook is called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookAction {
    Freeze,
    Thaw,
}

impl HookAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HookAction::Freeze => "freeze",
            HookAction::Thaw => "thaw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum HookOutcome {
    /// Exited 0.
    Ok,
    /// Exited with another status.
    Exited { code: i32 },
    /// Killed by a signal (not ours).
    Signalled { signal: String },
    /// Did not finish in time; its process group was killed.
    TimedOut { after_ms: u64 },
    /// Could not be started at all.
    SpawnFailed { message: String },
}

impl std::fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookOutcome::Ok => write!(f, "succeeded"),
            HookOutcome::Exited { code } => write!(f, "exited with status {code}"),
            HookOutcome::Signalled { signal } => write!(f, "was killed by {signal}"),
            HookOutcome::TimedOut { after_ms } => write!(f, "did not finish within {after_ms} ms and was killed"),
            HookOutcome::SpawnFailed { message } => write!(f, "could not be started: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    fn hook(outcome: HookOutcome) -> HookRun {
        HookRun {
            name: "10-db".into(),
            action: HookAction::Freeze,
            outcome,
            duration_ms: 12,
            stdout_tail: String::new(),
            stderr_tail: "x".into(),
        }
    }

    #[test]
    fn both_freeze_lines_round_trip() {
        let frozen = Envelope::ok(Frozen {
            pid: 42,
            mounts: vec![FrozenMount {
                mount_point: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/vda".into(),
                freeze_ms: 3,
            }],
            hooks: vec![hook(HookOutcome::Ok)],
            took_ms: 20,
            lease_timeout_ms: 30_000,
        });
        let text = serde_json::to_string(&frozen).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Envelope<Frozen>>(&text).unwrap(), frozen);

        let report = Envelope::ok(FreezeReport {
            reason: ThawReason::LeaseTimeout,
            signal: None,
            frozen_ms: 2000,
            thawed: vec!["/".into()],
            already_thawed: vec![],
            hooks: vec![hook(HookOutcome::TimedOut { after_ms: 5 })],
            hook_failures: vec!["10-db".into()],
        });
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains(r#""reason":"lease-timeout""#), "{text}");
        assert!(text.contains(r#""status":"timed-out""#), "{text}");
        assert_eq!(serde_json::from_str::<Envelope<FreezeReport>>(&text).unwrap(), report);
    }

    #[test]
    fn thaw_reasons_have_their_documented_names() {
        let names: Vec<String> = [ThawReason::StdinThaw, ThawReason::Eof, ThawReason::LeaseTimeout, ThawReason::Signal]
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(names, [r#""stdin-thaw""#, r#""eof""#, r#""lease-timeout""#, r#""signal""#]);
    }
}
