//! `scan`: every line in the roots that still names one of the needles, as a
//! whole token (the matcher `rewrite` uses). Symlinks are never followed,
//! so nothing outside the roots is read; pseudo filesystems (proc, sysfs,
//! cgroup...) mounted inside a root are left out, as are the agent's own
//! backups, binary files and files over [`MAX_FILE_BYTES`].

use super::error::RewriteError;
use super::paths::{self, Resolved, Roots};
use super::text::{self, Text};
use envclone_agent::matcher::subnets::SubnetMatcher;
use envclone_agent::matcher::{Matcher, MatcherError};
use envclone_agent::{Finding, ScanReport, ScanRequest, ScanSkip, ScanSkipReason, SkipReason, MAX_FILE_BYTES};
use nix::sys::statfs;
use std::collections::HashSet;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Filesystems whose files are the kernel's, not configuration.
const PSEUDO_FILESYSTEMS: &[statfs::FsType] = &[
    statfs::PROC_SUPER_MAGIC,
    statfs::SYSFS_MAGIC,
    statfs::DEVPTS_SUPER_MAGIC,
    statfs::CGROUP_SUPER_MAGIC,
    statfs::CGROUP2_SUPER_MAGIC,
    statfs::DEBUGFS_MAGIC,
    statfs::TRACEFS_MAGIC,
    statfs::SECURITYFS_MAGIC,
    statfs::BPF_FS_MAGIC,
    statfs::SELINUX_MAGIC,
    statfs::SMACK_MAGIC,
    statfs::NSFS_MAGIC,
    statfs::HUGETLBFS_MAGIC,
];

#[derive(Debug, Clone)]
pub struct Settings {
    /// Never scanned: the agent's backups hold the old values on purpose.
    pub backup_base: PathBuf,
}

pub fn scan(request: &ScanRequest, settings: &Settings) -> Result<ScanReport, RewriteError> {
    let bad = |source| RewriteError::BadNeedles { source };
    if request.needles.is_empty() && request.subnets.is_empty() {
        return Err(bad(MatcherError::NoNeedles));
    }
    let matcher = (!request.needles.is_empty()).then(|| Matcher::new(&request.needles)).transpose().map_err(bad)?;
    let subnets =
        (!request.subnets.is_empty()).then(|| SubnetMatcher::new(&request.subnets)).transpose().map_err(bad)?;
    let roots = Roots::new(&request.roots)?;
    let mut exclude = Vec::new();
    for pattern in &request.exclude {
        let compiled =
            glob::Pattern::new(pattern).map_err(|source| RewriteError::BadGlob { pattern: pattern.clone(), source })?;
        exclude.push(compiled);
    }
    let backup_base = settings.backup_base.canonicalize().unwrap_or_else(|_| settings.backup_base.clone());
    let mut scanner = Scanner {
        matcher: matcher.as_ref(),
        subnets: subnets.as_ref(),
        exclude,
        backup_base,
        seen: HashSet::new(),
        report: ScanReport {
            findings: Vec::new(),
            truncated: false,
            files_scanned: 0,
            binary_files: 0,
            skipped: Vec::new(),
            missing_roots: roots.missing().to_vec(),
        },
    };
    match &request.files {
        Some(patterns) => {
            let excluded = |p: &Path| scanner.excluded(p);
            let found = paths::resolve(patterns, &roots, &excluded)?;
            for target in found {
                if let Resolved::Found { path, .. } = target {
                    scanner.visit(&path, None);
                }
            }
        }
        None => {
            for root in roots.resolved() {
                scanner.visit(root, None);
            }
        }
    }
    let mut report = scanner.report;
    report.findings.sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
    // An address both named and inside a subnet is one finding (the
    // needle's: the sort is stable and needles come first).
    report
        .findings
        .dedup_by(|later, first| (&later.path, later.line, later.column) == (&first.path, first.line, first.column));
    Ok(report)
}

struct Scanner<'a> {
    matcher: Option<&'a Matcher>,
    subnets: Option<&'a SubnetMatcher>,
    exclude: Vec<glob::Pattern>,
    backup_base: PathBuf,
    /// (device, inode) of everything visited, so overlapping roots and
    /// bind mounts are scanned once.
    seen: HashSet<(u64, u64)>,
    report: ScanReport,
}

impl Scanner<'_> {
    fn excluded(&self, path: &Path) -> bool {
        path.starts_with(&self.backup_base) || self.exclude.iter().any(|p| p.matches_path(path))
    }

    fn skip(&mut self, path: &Path, reason: ScanSkipReason, detail: Option<String>) {
        self.report.skipped.push(ScanSkip { path: path.display().to_string(), reason, detail });
    }

    /// Scans `path`: a file, or a directory walked depth first. `parent_dev`
    /// is the device of the directory it was found in.
    fn visit(&mut self, path: &Path, parent_dev: Option<u64>) {
        if self.excluded(path) {
            return;
        }
        let meta = match path.symlink_metadata() {
            Ok(meta) => meta,
            Err(e) => return self.skip(path, ScanSkipReason::Unreadable, Some(e.to_string())),
        };
        if !self.seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            self.walk_dir(path, &meta, parent_dev);
        } else if kind.is_file() {
            self.scan_file(path);
        }
        // Symlinks are not followed: what they point to inside the roots is
        // scanned under its own name, and what lies outside is not ours.
    }

    fn walk_dir(&mut self, dir: &Path, meta: &Metadata, parent_dev: Option<u64>) {
        if parent_dev != Some(meta.dev()) && is_pseudo_filesystem(dir) {
            return self.skip(dir, ScanSkipReason::PseudoFilesystem, None);
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return self.skip(dir, ScanSkipReason::Unreadable, Some(e.to_string())),
        };
        let mut children: Vec<PathBuf> = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => children.push(entry.path()),
                Err(e) => self.skip(dir, ScanSkipReason::Unreadable, Some(e.to_string())),
            }
        }
        children.sort();
        for child in children {
            self.visit(&child, Some(meta.dev()));
        }
    }

    fn scan_file(&mut self, path: &Path) {
        let bytes = match text::read(path) {
            Ok(Text::Read { bytes, .. }) => bytes,
            Ok(Text::Skipped(SkipReason::TooLarge)) => {
                return self.skip(path, ScanSkipReason::TooLarge, Some(format!("over {MAX_FILE_BYTES} bytes")))
            }
            // Gone or replaced by something else since it was listed.
            Ok(Text::Skipped(_)) => return,
            Err(e) => return self.skip(path, ScanSkipReason::Unreadable, Some(crate::error_chain(&e))),
        };
        if text::looks_binary(&bytes) {
            self.report.binary_files += 1;
            return;
        }
        self.report.files_scanned += 1;
        let named = self.matcher.map(|m| (m.find_lines(&bytes), m.needles().to_vec()));
        let in_subnets = self.subnets.map(|m| (m.find_lines(&bytes), m.subnets()));
        for (matches, needles) in named.into_iter().chain(in_subnets) {
            for m in matches {
                if self.report.findings.len() >= ScanReport::MAX_FINDINGS {
                    self.report.truncated = true;
                    return;
                }
                self.report.findings.push(Finding {
                    path: path.display().to_string(),
                    line: m.line as u64,
                    column: m.column as u64,
                    needle: needles[m.needle].clone(),
                    text: excerpt(&bytes[m.line_start..m.line_end]),
                });
            }
        }
    }
}

/// The line trimmed, at most [`Finding::MAX_TEXT`] bytes, cut at a char boundary.
fn excerpt(line: &[u8]) -> String {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let mut end = line.len().min(Finding::MAX_TEXT);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

fn is_pseudo_filesystem(dir: &Path) -> bool {
    statfs::statfs(dir).is_ok_and(|fs| PSEUDO_FILESYSTEMS.contains(&fs.filesystem_type()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        base: PathBuf,
    }

    impl Tree {
        fn new(files: &[(&str, &[u8])]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().canonicalize().unwrap();
            for (rel, content) in files {
                let path = base.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, content).unwrap();
            }
            Tree { _dir: dir, base }
        }
        fn p(&self, rel: &str) -> String {
            self.base.join(rel).display().to_string()
        }
        fn request(&self, needles: &[&str], roots: &[&str]) -> ScanRequest {
            ScanRequest {
                needles: needles.iter().map(|s| s.to_string()).collect(),
                subnets: Vec::new(),
                roots: roots.iter().map(|r| self.p(r)).collect(),
                files: None,
                exclude: Vec::new(),
            }
        }
        fn settings(&self) -> Settings {
            Settings { backup_base: self.base.join("var/backups") }
        }
        /// (path relative to the tree, line, needle, text) of each finding.
        fn findings(&self, report: &ScanReport) -> Vec<(String, u64, String, String)> {
            report
                .findings
                .iter()
                .map(|f| {
                    let rel = Path::new(&f.path).strip_prefix(&self.base).unwrap().display().to_string();
                    (rel, f.line, f.needle.clone(), f.text.clone())
                })
                .collect()
        }
    }

    fn row(path: &str, line: u64, needle: &str, text: &str) -> (String, u64, String, String) {
        (path.to_string(), line, needle.to_string(), text.to_string())
    }

    #[test]
    fn scan_reports_whole_tokens_with_lines_and_skips_near_misses() {
        let tree = Tree::new(&[
            ("etc/hosts", b"127.0.0.1 localhost\n10.77.1.12 db\n"),
            ("etc/demo/app.env", b"# app\nDATABASE_URL=postgres://demo@10.77.1.12:5432/demo\n"),
            ("etc/demo/other.env", b"ADMIN=dbadmin\nREPLICA=db-replica\nOLD=10.77.1.120\n"),
            ("srv/app/config.yaml", b"database:\n    host:   db   \n"),
        ]);
        let report = scan(&tree.request(&["10.77.1.12", "db"], &["etc", "srv"]), &tree.settings()).unwrap();
        assert_eq!(
            tree.findings(&report),
            [
                row("etc/demo/app.env", 2, "10.77.1.12", "DATABASE_URL=postgres://demo@10.77.1.12:5432/demo"),
                row("etc/hosts", 2, "10.77.1.12", "10.77.1.12 db"),
                row("etc/hosts", 2, "db", "10.77.1.12 db"),
                row("srv/app/config.yaml", 2, "db", "host:   db"),
            ]
        );
        assert_eq!(report.files_scanned, 4);
        assert!(!report.truncated);
    }

    #[test]
    fn scan_finds_any_address_of_a_subnet_once_even_when_also_named() {
        let tree = Tree::new(&[
            (
                "etc/demo/app.env",
                b"DATABASE_URL=postgres://demo@10.90.1.12:5432/demo
CACHE=10.77.1.50:11211
",
            ),
            (
                "etc/hosts",
                b"10.77.1.12 db
10.770.1.5 typo
",
            ),
        ]);
        let mut request = tree.request(&["10.77.1.12"], &["etc"]);
        request.subnets = vec!["10.77.1.0/24".into()];
        let report = scan(&request, &tree.settings()).unwrap();
        assert_eq!(
            tree.findings(&report),
            [
                row("etc/demo/app.env", 2, "10.77.1.0/24", "CACHE=10.77.1.50:11211"),
                row("etc/hosts", 1, "10.77.1.12", "10.77.1.12 db"),
            ]
        );

        request.needles.clear();
        let report = scan(&request, &tree.settings()).unwrap();
        assert_eq!(report.findings.len(), 2, "{report:?}");
        request.subnets.clear();
        assert!(scan(&request, &tree.settings()).is_err(), "nothing to look for");
    }

    #[test]
    fn scan_skips_binary_files_backups_and_excluded_paths() {
        let tree = Tree::new(&[
            ("etc/blob", b"db\0\x01\x02 10.77.1.12"),
            ("etc/keep.conf", b"host=db\n"),
            ("etc/skip.conf", b"host=db\n"),
            ("var/backups/plan-1/files/etc/keep.conf", b"host=db\n"),
        ]);
        let mut request = tree.request(&["db"], &["etc", "var"]);
        request.exclude = vec![tree.p("etc/skip.*")];
        let report = scan(&request, &tree.settings()).unwrap();
        assert_eq!(tree.findings(&report), [row("etc/keep.conf", 1, "db", "host=db")]);
        assert_eq!(report.binary_files, 1);
    }

    #[test]
    fn scan_never_follows_symlinks_out_of_the_roots() {
        let tree = Tree::new(&[("etc/a.conf", b"x\n"), ("outside/secret.conf", b"host=db\n")]);
        symlink(tree.base.join("outside/secret.conf"), tree.base.join("etc/link.conf")).unwrap();
        symlink(tree.base.join("outside"), tree.base.join("etc/outdir")).unwrap();
        let report = scan(&tree.request(&["db"], &["etc"]), &tree.settings()).unwrap();
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(report.files_scanned, 1);
    }

    #[test]
    fn scan_of_overlapping_roots_reports_each_line_once() {
        let tree = Tree::new(&[("etc/demo/app.env", b"HOST=db\n")]);
        let report = scan(&tree.request(&["db"], &["etc", "etc/demo"]), &tree.settings()).unwrap();
        assert_eq!(report.findings.len(), 1);
    }

    #[test]
    fn scan_notes_missing_roots() {
        let tree = Tree::new(&[("etc/a", b"db\n")]);
        let report = scan(&tree.request(&["db"], &["etc", "srv"]), &tree.settings()).unwrap();
        assert_eq!(report.missing_roots, [tree.p("srv")]);
        assert_eq!(report.findings.len(), 1);
    }

    #[test]
    fn scan_of_listed_files_refuses_files_outside_the_roots() {
        let tree = Tree::new(&[("etc/a.env", b"db\n"), ("etc/b.conf", b"db\n"), ("outside/c.env", b"db\n")]);
        let mut request = tree.request(&["db"], &["etc"]);
        request.files = Some(vec![tree.p("etc/*.env")]);
        let report = scan(&request, &tree.settings()).unwrap();
        assert_eq!(tree.findings(&report), [row("etc/a.env", 1, "db", "db")]);

        request.files = Some(vec![tree.p("outside/c.env")]);
        let err = scan(&request, &tree.settings()).unwrap_err();
        assert!(matches!(err, RewriteError::OutsideRoots { .. }), "{err:?}");
    }

    #[test]
    fn scan_refuses_invalid_needles() {
        let tree = Tree::new(&[]);
        std::fs::create_dir_all(tree.base.join("etc")).unwrap();
        let err = scan(&tree.request(&["db:5432"], &["etc"]), &tree.settings()).unwrap_err();
        assert!(matches!(err, RewriteError::BadNeedles { .. }), "{err:?}");
    }

    #[test]
    fn scan_leaves_out_pseudo_filesystems() {
        // /proc is a pseudo filesystem on every Linux this runs on.
        let request = ScanRequest {
            needles: vec!["db".into()],
            subnets: Vec::new(),
            roots: vec!["/proc".into()],
            files: None,
            exclude: Vec::new(),
        };
        let report = scan(&request, &Settings { backup_base: "/nonexistent".into() }).unwrap();
        assert_eq!(report.files_scanned, 0);
        assert!(
            matches!(report.skipped.as_slice(), [ScanSkip { reason: ScanSkipReason::PseudoFilesystem, .. }]),
            "{:?}",
            report.skipped
        );
    }

    #[test]
    fn excerpt_trims_and_cuts_at_a_char_boundary() {
        assert_eq!(excerpt(b"  host = db \r"), "host = db");
        let long = "é".repeat(200);
        let cut = excerpt(long.as_bytes());
        assert!(cut.len() <= Finding::MAX_TEXT && cut.chars().all(|c| c == 'é'));
    }
}
