//! `rewrite` and `scan`: the plan the controller sends on stdin and the
//! reports it gets back. Matching itself is [`crate::matcher`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where `rewrite` keeps backups unless the plan asks for `<file><suffix>`:
/// one directory per plan (named by a digest of the plan), mirroring paths.
/// `scan` never looks inside it.
pub const BACKUP_DIR: &str = "/var/lib/envclone-agent/backups";

/// Files larger than this are neither rewritten nor scanned (reported).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What `envclone-agent rewrite [--dry-run]` reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewritePlan {
    /// Old value -> new value. Keys and values are IPv4 addresses, IPv6
    /// addresses or host names / FQDNs; keys match as whole tokens only.
    pub map: BTreeMap<String, String>,
    /// Absolute paths or globs of the files to rewrite.
    pub files: Vec<String>,
    /// Absolute directories that every file must lie in, symlinks followed.
    pub roots: Vec<String>,
    /// Keep each backup next to its file as `<file><suffix>` instead of
    /// under [`BACKUP_DIR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_suffix: Option<String>,
}

/// Answer of `rewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteReport {
    /// Nothing was written; changed files carry a diff instead.
    pub dry_run: bool,
    /// This plan's backup directory, when backups go there and any was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<String>,
    /// One entry per file, in the order of the plan's `files`; a pattern
    /// that matched nothing has one `not-found` entry.
    pub files: Vec<FileReport>,
    /// Replacements over all files.
    pub replacements: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// The file as written, symlinks resolved; for a pattern that matched
    /// nothing, the pattern.
    pub path: String,
    /// The entry of the plan's `files` that named it.
    pub pattern: String,
    #[serde(flatten)]
    pub outcome: FileOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum FileOutcome {
    /// Rewritten, or in a dry run: would be.
    Changed {
        /// Per old value (as the plan spells it), only those that matched.
        replacements: BTreeMap<String, u64>,
        bytes_before: u64,
        bytes_after: u64,
        /// Where the original is kept; none in a dry run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
        /// Unified diff (`--- a/<path>` / `+++ b/<path>`), in a dry run only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    /// Names none of the old values.
    Unchanged {
        bytes: u64,
    },
    Skipped {
        reason: SkipReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// No such file, or a pattern that matched nothing.
    NotFound,
    /// A NUL byte in the first 8 KiB.
    Binary,
    /// Not valid UTF-8 text.
    NotUtf8,
    /// A directory, device, socket or FIFO.
    NotARegularFile,
    /// Larger than [`MAX_FILE_BYTES`].
    TooLarge,
    /// Has other hard links, which an atomic rename would leave on the old
    /// content: rewrite it through its other names or by hand.
    HardLinked,
}

/// What `envclone-agent scan` reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// Addresses and host names to look for, as whole tokens.
    pub needles: Vec<String>,
    /// IPv4 subnets (`10.77.1.0/24`): any address inside one is a finding
    /// too, whether or not a needle names it. A finding's `needle` is then
    /// the subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// Absolute directories to walk (symlinks are not followed).
    pub roots: Vec<String>,
    /// Look only at these paths or globs (which must lie in `roots`)
    /// instead of walking the roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    /// Globs of paths to leave out, on top of [`BACKUP_DIR`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Answer of `scan`. Findings are listed, not judged: exit 0 either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    /// In path order, then line order.
    pub findings: Vec<Finding>,
    /// More findings were there than [`ScanReport::MAX_FINDINGS`].
    pub truncated: bool,
    pub files_scanned: u64,
    /// Files with a NUL byte in their first 8 KiB, not scanned.
    pub binary_files: u64,
    /// Files that could not be scanned, and why.
    pub skipped: Vec<ScanSkip>,
    /// Roots that do not exist in this guest.
    pub missing_roots: Vec<String>,
}

impl ScanReport {
    pub const MAX_FINDINGS: usize = 10_000;
}

/// One line that names a needle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub path: String,
    /// 1-based.
    pub line: u64,
    /// 1-based, in bytes.
    pub column: u64,
    /// As given in the request.
    pub needle: String,
    /// The line, trimmed, at most [`Finding::MAX_TEXT`] bytes.
    pub text: String,
}

impl Finding {
    pub const MAX_TEXT: usize = 240;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanSkip {
    pub path: String,
    pub reason: ScanSkipReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanSkipReason {
    /// Larger than [`MAX_FILE_BYTES`].
    TooLarge,
    /// Could not be read or listed.
    Unreadable,
    /// A pseudo filesystem (proc, sysfs, cgroup...) mounted inside a root.
    PseudoFilesystem,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_report_round_trips_with_flat_outcomes() {
        let report = RewriteReport {
            dry_run: true,
            backup_dir: None,
            files: vec![
                FileReport {
                    path: "/etc/hosts".into(),
                    pattern: "/etc/hosts".into(),
                    outcome: FileOutcome::Changed {
                        replacements: BTreeMap::from([("db".to_string(), 2)]),
                        bytes_before: 10,
                        bytes_after: 12,
                        backup: None,
                        diff: Some("--- a/etc/hosts\n".into()),
                    },
                },
                FileReport {
                    path: "/etc/x/*.env".into(),
                    pattern: "/etc/x/*.env".into(),
                    outcome: FileOutcome::Skipped { reason: SkipReason::NotFound },
                },
                FileReport {
                    path: "/etc/a".into(),
                    pattern: "/etc/a".into(),
                    outcome: FileOutcome::Unchanged { bytes: 3 },
                },
            ],
            replacements: 2,
        };
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains(r#""outcome":"changed""#), "{text}");
        assert!(text.contains(r#""outcome":"skipped","reason":"not-found""#), "{text}");
        assert_eq!(serde_json::from_str::<RewriteReport>(&text).unwrap(), report);
    }

    #[test]
    fn plan_refuses_unknown_fields_and_defaults_the_suffix() {
        let plan: RewritePlan =
            serde_json::from_str(r#"{"map":{"db":"pg"},"files":["/etc/hosts"],"roots":["/etc"]}"#).unwrap();
        assert_eq!(plan.backup_suffix, None);
        let err = serde_json::from_str::<RewritePlan>(r#"{"map":{},"files":[],"roots":[],"dryrun":true}"#);
        assert!(err.is_err());
    }

    #[test]
    fn scan_request_defaults() {
        let request: ScanRequest = serde_json::from_str(r#"{"needles":["db"],"roots":["/etc"]}"#).unwrap();
        assert_eq!(request.files, None);
        assert!(request.exclude.is_empty());
    }
}
