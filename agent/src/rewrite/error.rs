//! Errors of `rewrite` and `scan`, and the one place that maps them to exit
//! statuses and stable kinds.

use envclone_agent::matcher::MatcherError;
use envclone_agent::{AgentError, ExitStatus};
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("cannot read the request from stdin")]
    ReadRequest { source: io::Error },
    #[error("the request on stdin is not valid")]
    ParseRequest { source: serde_json::Error },
    #[error("invalid map")]
    BadMap { source: MatcherError },
    #[error("invalid needles")]
    BadNeedles { source: MatcherError },
    #[error("no roots given")]
    NoRoots,
    #[error("no files given")]
    NoFiles,
    #[error("`{path}` is not an absolute path without `..`")]
    BadPath { path: String },
    #[error("backup suffix `{suffix}` must be non-empty and hold no `/`")]
    BadBackupSuffix { suffix: String },
    #[error("invalid glob `{pattern}`")]
    BadGlob { pattern: String, source: glob::PatternError },
    #[error("`{path}`{} is outside the roots {roots:?}", resolved.as_ref().map(|r| format!(" (resolves to {})", r.display())).unwrap_or_default())]
    OutsideRoots { path: String, resolved: Option<PathBuf>, roots: Vec<String> },
    #[error("cannot resolve `{path}`")]
    ResolvePath { path: String, source: io::Error },
    #[error("cannot read `{path}`")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("`{path}` changed while being read")]
    FileReplaced { path: PathBuf },
    #[error("cannot back up `{path}` to `{backup}`")]
    Backup { path: PathBuf, backup: PathBuf, source: crate::atomic::AtomicWriteError },
    #[error("cannot write `{path}`")]
    WriteFile { path: PathBuf, already_rewritten: Vec<String>, source: crate::atomic::AtomicWriteError },
}

impl RewriteError {
    /// Exit status and stable kind, for the envelope. Bad requests and
    /// refused paths are usage errors; I/O in the guest is a failure.
    pub fn status_and_kind(&self) -> (ExitStatus, &'static str) {
        use RewriteError::*;
        match self {
            ReadRequest { .. } => (ExitStatus::Failed, "read-request"),
            ParseRequest { .. } => (ExitStatus::Usage, "bad-request"),
            BadMap { .. } | BadNeedles { .. } | NoRoots | NoFiles | BadBackupSuffix { .. } | BadGlob { .. } => {
                (ExitStatus::Usage, "bad-plan")
            }
            BadPath { .. } => (ExitStatus::Usage, "bad-path"),
            OutsideRoots { .. } => (ExitStatus::Usage, "path-outside-roots"),
            ResolvePath { .. } => (ExitStatus::Failed, "resolve-path"),
            ReadFile { .. } | FileReplaced { .. } => (ExitStatus::Failed, "read-file"),
            Backup { .. } => (ExitStatus::Failed, "backup"),
            WriteFile { .. } => (ExitStatus::Failed, "write-file"),
        }
    }

    fn hint(&self) -> Option<String> {
        use RewriteError::*;
        match self {
            OutsideRoots { .. } | BadPath { .. } => {
                Some("list only files inside the environment's rewrite roots, or widen the roots".into())
            }
            BadMap { source: MatcherError::NotIdempotent { .. } } => {
                Some("rewrite in two plans, or map to values the plan does not rewrite".into())
            }
            WriteFile { already_rewritten, .. } if !already_rewritten.is_empty() => Some(format!(
                "already rewritten: {}; the plan is idempotent, so running it again after fixing the cause is safe",
                already_rewritten.join(", ")
            )),
            WriteFile { .. } | Backup { .. } => {
                Some("nothing was changed in this file; running the plan again after fixing the cause is safe".into())
            }
            _ => None,
        }
    }
}

impl From<RewriteError> for (ExitStatus, AgentError) {
    fn from(error: RewriteError) -> Self {
        let (status, kind) = error.status_and_kind();
        (status, AgentError { kind: kind.to_string(), message: crate::error_chain(&error), hint: error.hint() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_usage_errors_and_io_is_a_failure() {
        let outside = RewriteError::OutsideRoots { path: "/root/x".into(), resolved: None, roots: vec!["/etc".into()] };
        assert_eq!(outside.status_and_kind(), (ExitStatus::Usage, "path-outside-roots"));
        assert_eq!(
            RewriteError::BadPath { path: "/etc/../x".into() }.status_and_kind(),
            (ExitStatus::Usage, "bad-path")
        );
        assert_eq!(
            RewriteError::BadMap { source: MatcherError::EmptyKey }.status_and_kind(),
            (ExitStatus::Usage, "bad-plan")
        );
        let read = RewriteError::ReadFile { path: "/etc/x".into(), source: io::Error::other("disk") };
        assert_eq!(read.status_and_kind(), (ExitStatus::Failed, "read-file"));
    }

    #[test]
    fn message_carries_the_chain_once() {
        let error = RewriteError::BadMap { source: MatcherError::EmptyKey };
        let (status, answer) = <(ExitStatus, AgentError)>::from(error);
        assert_eq!(status, ExitStatus::Usage);
        assert_eq!(answer.message, "invalid map: empty key");
        let outside = RewriteError::OutsideRoots {
            path: "/etc/link".into(),
            resolved: Some("/root/secret".into()),
            roots: vec!["/etc".into()],
        };
        assert_eq!(outside.to_string(), "`/etc/link` (resolves to /root/secret) is outside the roots [\"/etc\"]");
    }
}
