//! `rewrite`: applying a plan to the files it names. Everything is checked
//! before anything is written: the map, the roots and every path, so a
//! refused path leaves every file as it was.

use super::error::RewriteError;
use super::paths::{self, Resolved, Roots};
use super::text::{self, Text};
use crate::atomic::{self, Ownership};
use envclone_agent::matcher::Rewriter;
use envclone_agent::{FileOutcome, FileReport, RewritePlan, RewriteReport, SkipReason};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How to run a plan; the agent uses [`envclone_agent::BACKUP_DIR`], tests a
/// temporary directory.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dry_run: bool,
    pub backup_base: PathBuf,
}

pub fn apply(plan: &RewritePlan, settings: &Settings) -> Result<RewriteReport, RewriteError> {
    let rewriter = Rewriter::new(&plan.map).map_err(|source| RewriteError::BadMap { source })?;
    rewriter.ensure_idempotent().map_err(|source| RewriteError::BadMap { source })?;
    if plan.files.is_empty() {
        return Err(RewriteError::NoFiles);
    }
    let backups = Backups::new(plan, &settings.backup_base)?;
    let roots = Roots::new(&plan.roots)?;
    let targets = paths::resolve(&plan.files, &roots, &|p| backups.holds(p))?;

    let mut report = RewriteReport { dry_run: settings.dry_run, backup_dir: None, files: Vec::new(), replacements: 0 };
    let mut rewritten = Vec::new();
    for target in targets {
        let (path, pattern, outcome) = match target {
            Resolved::NotFound { pattern } => {
                (pattern.clone(), pattern, FileOutcome::Skipped { reason: SkipReason::NotFound })
            }
            Resolved::Found { pattern, path } => {
                let outcome = rewrite_file(&path, &rewriter, &backups, settings.dry_run).map_err(|e| match e {
                    RewriteError::WriteFile { path, source, .. } => {
                        RewriteError::WriteFile { path, source, already_rewritten: rewritten.clone() }
                    }
                    other => other,
                })?;
                (path.display().to_string(), pattern, outcome)
            }
        };
        if let FileOutcome::Changed { replacements, backup, .. } = &outcome {
            report.replacements += replacements.values().sum::<u64>();
            if backup.is_some() {
                rewritten.push(path.clone());
                report.backup_dir = backups.dir().map(|d| d.display().to_string());
            }
        }
        report.files.push(FileReport { path, pattern, outcome });
    }
    Ok(report)
}

fn rewrite_file(
    path: &Path,
    rewriter: &Rewriter,
    backups: &Backups,
    dry_run: bool,
) -> Result<FileOutcome, RewriteError> {
    let (bytes, meta) = match text::read(path)? {
        Text::Skipped(reason) => return Ok(FileOutcome::Skipped { reason }),
        Text::Read { bytes, meta } => (bytes, meta),
    };
    if text::looks_binary(&bytes) {
        return Ok(FileOutcome::Skipped { reason: SkipReason::Binary });
    }
    let Ok(before) = std::str::from_utf8(&bytes) else {
        return Ok(FileOutcome::Skipped { reason: SkipReason::NotUtf8 });
    };
    let out = rewriter.rewrite(before);
    if out.total() == 0 {
        return Ok(FileOutcome::Unchanged { bytes: bytes.len() as u64 });
    }
    if meta.nlink() > 1 {
        return Ok(FileOutcome::Skipped { reason: SkipReason::HardLinked });
    }
    let (bytes_before, bytes_after) = (bytes.len() as u64, out.text.len() as u64);
    if dry_run {
        let diff = unified_diff(path, before, &out.text);
        return Ok(FileOutcome::Changed {
            replacements: out.replacements,
            bytes_before,
            bytes_after,
            backup: None,
            diff: Some(diff),
        });
    }
    let owner = Ownership::of(&meta);
    let backup = backups.path_for(path);
    backups.prepare().map_err(|source| RewriteError::Backup {
        path: path.to_path_buf(),
        backup: backup.clone(),
        source,
    })?;
    // An earlier run of this plan may have kept the original already; keep
    // that one, it is older than what is here now.
    atomic::create_new(&backup, &bytes, owner).map_err(|source| RewriteError::Backup {
        path: path.to_path_buf(),
        backup: backup.clone(),
        source,
    })?;
    atomic::replace(path, out.text.as_bytes(), owner).map_err(|source| RewriteError::WriteFile {
        path: path.to_path_buf(),
        already_rewritten: Vec::new(),
        source,
    })?;
    Ok(FileOutcome::Changed {
        replacements: out.replacements,
        bytes_before,
        bytes_after,
        backup: Some(backup.display().to_string()),
        diff: None,
    })
}

/// `--- a/<path>` / `+++ b/<path>`, three lines of context: applies with
/// `patch -p1 -d /`.
pub fn unified_diff(path: &Path, before: &str, after: &str) -> String {
    let path = path.display().to_string();
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string()
}

/// Where the originals go.
#[derive(Debug)]
enum Backups {
    /// `<base>/plan-<digest>/files/<path>`, and the plan itself in
    /// `<base>/plan-<digest>/plan.json`: one directory per plan, so a second
    /// run of the same plan finds (and keeps) the first run's backups.
    Dir { base: PathBuf, dir: PathBuf, plan_json: Vec<u8> },
    /// `<path><suffix>`, next to the file.
    Suffix(String),
}

impl Backups {
    fn new(plan: &RewritePlan, base: &Path) -> Result<Self, RewriteError> {
        match &plan.backup_suffix {
            Some(suffix) if suffix.is_empty() || suffix.contains(['/', '\0']) => {
                Err(RewriteError::BadBackupSuffix { suffix: suffix.clone() })
            }
            Some(suffix) => Ok(Backups::Suffix(suffix.clone())),
            None => {
                let plan_json = serde_json::to_vec_pretty(plan).unwrap_or_default();
                let dir = base.join(format!("plan-{:016x}", fnv1a(&plan_json)));
                Ok(Backups::Dir { base: base.to_path_buf(), dir, plan_json })
            }
        }
    }

    fn dir(&self) -> Option<&Path> {
        match self {
            Backups::Dir { dir, .. } => Some(dir),
            Backups::Suffix(_) => None,
        }
    }

    fn path_for(&self, file: &Path) -> PathBuf {
        match self {
            Backups::Dir { dir, .. } => dir.join("files").join(file.strip_prefix("/").unwrap_or(file)),
            Backups::Suffix(suffix) => {
                let mut name = file.as_os_str().to_os_string();
                name.push(suffix);
                PathBuf::from(name)
            }
        }
    }

    /// Whether `path` is one of the agent's backups, which a plan never rewrites.
    fn holds(&self, path: &Path) -> bool {
        match self {
            Backups::Dir { base, .. } => {
                path.starts_with(base) || base.canonicalize().is_ok_and(|canonical| path.starts_with(canonical))
            }
            Backups::Suffix(suffix) => path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix.as_str())),
        }
    }

    /// Leaves the plan next to its backups, for whoever restores them by hand.
    fn prepare(&self) -> Result<(), atomic::AtomicWriteError> {
        let Backups::Dir { dir, plan_json, .. } = self else { return Ok(()) };
        atomic::create_dirs(dir)?;
        // Owned by whoever runs the agent, as the directory just made is.
        let mine = dir.metadata().map_err(|source| atomic::AtomicWriteError::CreateDir { dir: dir.clone(), source })?;
        let owner = Ownership { mode: 0o600, ..Ownership::of(&mine) };
        atomic::create_new(&dir.join("plan.json"), plan_json, owner).map(|_| ())
    }
}

/// FNV-1a, 64 bits: a stable name for a plan (std's hasher is not stable
/// across Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests;
