//! Everything `freeze`, `thaw` and the freeze part of `status` can fail
//! with, one variant per step, and the one mapping to exit status, error
//! kind and hint ([`FreezeError::answer`]).

use std::io;
use std::path::PathBuf;

use envclone_agent::freeze::{error_kind, HookRun};
use envclone_agent::{AgentError, ExitStatus};
use nix::errno::Errno;

use super::mounts::ParseError;
use super::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("{arg}: {problem}")]
    BadArgument { arg: String, problem: String },

    #[error("{}", already_frozen(*pid, *alive, *started_unix_ms, frozen, hooks_run))]
    AlreadyFrozen { pid: u32, alive: bool, started_unix_ms: u64, frozen: Vec<String>, hooks_run: Vec<String> },

    #[error("{}", hook_failed(run, unwound))]
    HookFailed { run: Box<HookRun>, unwound: Vec<HookRun> },

    #[error("cannot read the hooks directory {}", dir.display())]
    HooksDir { dir: PathBuf, source: io::Error },

    #[error("cannot read /proc/self/mountinfo")]
    ReadMountinfo { source: io::Error },

    #[error("cannot parse /proc/self/mountinfo")]
    ParseMountinfo { source: ParseError },

    #[error("freeze state")]
    State { source: StateError },

    #[error("the state directory {} is on {mount}, which would be frozen", dir.display())]
    StateOnFrozenFs { dir: PathBuf, mount: String },

    #[error("cannot watch stdin and signals for the lease")]
    LeaseSetup { source: Errno },

    #[error("{why} before the filesystems were frozen; nothing was frozen{}", unwound_note(unwound))]
    Cancelled { why: String, unwound: Vec<HookRun> },

    #[error("cannot freeze {mount} ({errno}); nothing is frozen{}", unwound_note(unwound))]
    Freeze { mount: String, errno: Errno, unwound: Vec<HookRun> },

    #[error("{}", thaw_failed(failed, thawed, cause))]
    Thaw {
        /// Mount points still frozen, with why FITHAW failed.
        failed: Vec<(String, Errno)>,
        thawed: Vec<String>,
        /// What the thaw was undoing, when it was not a lease's normal end.
        cause: Option<String>,
    },

    #[error("{}", thaw_hooks_failed(failed, thawed))]
    ThawHooks { failed: Vec<HookRun>, thawed: Vec<String> },
}

impl From<StateError> for FreezeError {
    fn from(source: StateError) -> Self {
        FreezeError::State { source }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}

fn already_frozen(pid: u32, alive: bool, started_unix_ms: u64, frozen: &[String], hooks_run: &[String]) -> String {
    let age = super::state::unix_ms().saturating_sub(started_unix_ms) / 1000;
    if alive {
        format!(
            "a freeze is held by envclone-agent pid {pid}, started {age}s ago (unix ms {started_unix_ms}); frozen: {}",
            list(frozen)
        )
    } else {
        format!(
            "envclone-agent pid {pid} died {age}s after starting a freeze and left it unfinished: frozen: {}; hooks not thawed: {}",
            list(frozen),
            list(hooks_run)
        )
    }
}

fn unwound_note(unwound: &[HookRun]) -> String {
    if unwound.is_empty() {
        return String::new();
    }
    let runs: Vec<String> = unwound
        .iter()
        .map(|r| if r.succeeded() { r.name.clone() } else { format!("{} (which {})", r.name, r.outcome) })
        .collect();
    format!("; hooks given `thaw`: {}", runs.join(", "))
}

fn hook_failed(run: &HookRun, unwound: &[HookRun]) -> String {
    let mut message = format!("pre-freeze hook {} {}", run.name, run.outcome);
    if !run.stderr_tail.is_empty() {
        message.push_str(&format!("; its stderr ends: {}", run.stderr_tail));
    }
    message.push_str("; nothing was frozen");
    message.push_str(&unwound_note(unwound));
    message
}

fn thaw_failed(failed: &[(String, Errno)], thawed: &[String], cause: &Option<String>) -> String {
    let failed: Vec<String> = failed.iter().map(|(m, e)| format!("{m} ({e})")).collect();
    let mut message = format!("cannot thaw {}: STILL FROZEN; thawed: {}", failed.join(", "), list(thawed));
    if let Some(cause) = cause {
        message.push_str(&format!("; while undoing: {cause}"));
    }
    message
}

fn thaw_hooks_failed(failed: &[HookRun], thawed: &[String]) -> String {
    let runs: Vec<String> = failed
        .iter()
        .map(|r| {
            let tail =
                if r.stderr_tail.is_empty() { String::new() } else { format!(" (stderr ends: {})", r.stderr_tail) };
            format!("{} {}{tail}", r.name, r.outcome)
        })
        .collect();
    format!("filesystems thawed ({}), but thaw hooks failed: {}", list(thawed), runs.join("; "))
}

impl FreezeError {
    /// Exit status, kind and hint: the one place they are chosen.
    pub fn answer(&self) -> (ExitStatus, AgentError) {
        use FreezeError::*;
        let thaw_hint =
            "run `envclone-agent thaw` (it thaws every frozen filesystem and runs the `thaw` hooks left over)";
        let (status, kind, hint) = match self {
            BadArgument { .. } => {
                (ExitStatus::Usage, error_kind::BAD_ARGUMENT, Some("see envclone-agent freeze --help".to_string()))
            }
            AlreadyFrozen { alive: true, .. } => (
                ExitStatus::Busy,
                error_kind::ALREADY_FROZEN,
                Some("wait for that lease to end, or end it with `envclone-agent thaw`".into()),
            ),
            AlreadyFrozen { alive: false, .. } => {
                (ExitStatus::Busy, error_kind::ALREADY_FROZEN, Some(thaw_hint.into()))
            }
            HookFailed { .. } => (
                ExitStatus::Failed,
                error_kind::HOOK_FAILED,
                Some("fix the hook, or move it out of the hooks directory".into()),
            ),
            HooksDir { .. } => (ExitStatus::Failed, error_kind::HOOKS_DIR, None),
            ReadMountinfo { .. } | ParseMountinfo { .. } => (ExitStatus::Failed, error_kind::MOUNTINFO, None),
            State { .. } => (
                ExitStatus::Failed,
                error_kind::STATE,
                Some(format!("{thaw_hint}; it also clears an unreadable record")),
            ),
            StateOnFrozenFs { .. } => (ExitStatus::Failed, error_kind::STATE, Some("mount a tmpfs on /run".into())),
            LeaseSetup { .. } => (ExitStatus::Failed, error_kind::STATE, None),
            Cancelled { .. } => {
                (ExitStatus::Failed, error_kind::CANCELLED, Some("keep stdin open while the freeze is held".into()))
            }
            Freeze { errno: Errno::EBUSY, .. } => (
                ExitStatus::Busy,
                error_kind::ALREADY_FROZEN,
                Some(format!("something else (fsfreeze, qemu-ga) froze it; {thaw_hint}")),
            ),
            Freeze { mount, .. } => (
                ExitStatus::Failed,
                error_kind::FREEZE_FAILED,
                Some(format!("leave it out with `--exclude {mount}` if it cannot be frozen")),
            ),
            Thaw { .. } => {
                (ExitStatus::Failed, error_kind::THAW_FAILED, Some(format!("the guest is partly frozen: {thaw_hint}")))
            }
            ThawHooks { .. } => {
                (ExitStatus::Failed, error_kind::THAW_HOOK_FAILED, Some("check the hooks' services by hand".into()))
            }
        };
        (status, AgentError { kind: kind.to_string(), message: crate::error_chain(self), hint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envclone_agent::freeze::{HookAction, HookOutcome};

    fn run(name: &str, outcome: HookOutcome, stderr: &str) -> HookRun {
        HookRun {
            name: name.into(),
            action: HookAction::Freeze,
            outcome,
            duration_ms: 1,
            stdout_tail: String::new(),
            stderr_tail: stderr.into(),
        }
    }

    #[test]
    fn hook_failure_names_the_hook_its_status_stderr_and_the_unwound_hooks() {
        let err = FreezeError::HookFailed {
            run: Box::new(run("20-fail", HookOutcome::Exited { code: 3 }, "db refused backup mode")),
            unwound: vec![run("10-ok", HookOutcome::Ok, "")],
        };
        let (status, error) = err.answer();
        assert_eq!((status, error.kind.as_str()), (ExitStatus::Failed, "hook-failed"));
        assert_eq!(
            error.message,
            "pre-freeze hook 20-fail exited with status 3; its stderr ends: db refused backup mode; \
             nothing was frozen; hooks given `thaw`: 10-ok"
        );
    }

    #[test]
    fn exit_status_and_kind_per_variant() {
        let cases = [
            (
                FreezeError::BadArgument { arg: "--timeout".into(), problem: "x".into() },
                ExitStatus::Usage,
                "bad-argument",
            ),
            (
                FreezeError::AlreadyFrozen {
                    pid: 7,
                    alive: true,
                    started_unix_ms: 0,
                    frozen: vec!["/".into()],
                    hooks_run: vec![],
                },
                ExitStatus::Busy,
                "already-frozen",
            ),
            (
                FreezeError::AlreadyFrozen {
                    pid: 7,
                    alive: false,
                    started_unix_ms: 0,
                    frozen: vec![],
                    hooks_run: vec!["a".into()],
                },
                ExitStatus::Busy,
                "already-frozen",
            ),
            (
                FreezeError::Freeze { mount: "/".into(), errno: Errno::EBUSY, unwound: vec![] },
                ExitStatus::Busy,
                "already-frozen",
            ),
            (
                FreezeError::Freeze { mount: "/".into(), errno: Errno::EIO, unwound: vec![] },
                ExitStatus::Failed,
                "freeze-failed",
            ),
            (
                FreezeError::Thaw { failed: vec![("/var".into(), Errno::EIO)], thawed: vec!["/".into()], cause: None },
                ExitStatus::Failed,
                "thaw-failed",
            ),
            (FreezeError::Cancelled { why: "stdin closed".into(), unwound: vec![] }, ExitStatus::Failed, "cancelled"),
        ];
        for (err, status, kind) in cases {
            let (got_status, error) = err.answer();
            assert_eq!((got_status, error.kind.as_str()), (status, kind), "{err:?}");
            assert!(error.hint.is_some(), "{err:?}");
        }
    }

    #[test]
    fn messages_carry_their_sources_once() {
        let err = FreezeError::HooksDir {
            dir: "/etc/envclone/hooks.d".into(),
            source: io::Error::other("Permission denied"),
        };
        assert_eq!(err.answer().1.message, "cannot read the hooks directory /etc/envclone/hooks.d: Permission denied");
        let thaw =
            FreezeError::Thaw { failed: vec![("/var".into(), Errno::EIO)], thawed: vec![], cause: Some("x".into()) };
        assert!(thaw.answer().1.message.contains("/var (EIO: I/O error): STILL FROZEN"), "{}", thaw.answer().1.message);
    }
}
