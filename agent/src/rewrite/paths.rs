//! Which files a request may touch: absolute paths without `..`, lying in
//! the allowed roots once every symlink is followed. A path or glob match
//! that resolves outside the roots refuses the whole request before anything
//! is read or written.

use super::error::RewriteError;
use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The allowed roots of one request.
#[derive(Debug, Clone)]
pub struct Roots {
    /// As given (absolute, no `..`), for the lexical check of patterns.
    given: Vec<PathBuf>,
    /// Canonical forms of the roots that exist.
    resolved: Vec<PathBuf>,
    /// Roots that do not exist here.
    missing: Vec<String>,
}

impl Roots {
    pub fn new(roots: &[String]) -> Result<Self, RewriteError> {
        if roots.is_empty() {
            return Err(RewriteError::NoRoots);
        }
        let mut given = Vec::new();
        let mut resolved = Vec::new();
        let mut missing = Vec::new();
        for root in roots {
            let path = checked_path(root)?;
            match path.canonicalize() {
                Ok(canonical) => resolved.push(canonical),
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(root.clone()),
                Err(source) => return Err(RewriteError::ResolvePath { path: root.clone(), source }),
            }
            given.push(path);
        }
        Ok(Roots { given, resolved, missing })
    }

    /// Canonical roots that exist, in the order given.
    pub fn resolved(&self) -> &[PathBuf] {
        &self.resolved
    }

    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// Whether a canonical path lies in (or is) one of the roots.
    pub fn contains(&self, canonical: &Path) -> bool {
        self.resolved.iter().any(|root| canonical.starts_with(root))
    }

    /// Whether `path` as written lies in a root, as written or resolved.
    fn lexically_contains(&self, path: &Path) -> bool {
        self.given.iter().chain(&self.resolved).any(|root| path.starts_with(root))
    }

    fn describe(&self) -> Vec<String> {
        self.given.iter().map(|p| p.display().to_string()).collect()
    }
}

/// `path` if it is absolute, has no `..` and no NUL.
pub fn checked_path(path: &str) -> Result<PathBuf, RewriteError> {
    let p = Path::new(path);
    let ok = p.is_absolute() && !path.contains('\0') && !p.components().any(|c| c == Component::ParentDir);
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(RewriteError::BadPath { path: path.to_string() })
    }
}

/// One file a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A file (or something else that exists) at a canonical path in the roots.
    Found { pattern: String, path: PathBuf },
    /// A path that does not exist, or a glob that matched nothing.
    NotFound { pattern: String },
}

/// Expands `patterns` (paths or globs) to canonical paths, each once, in
/// order. Refuses the lot if any pattern or match lies outside the roots.
/// `skip` leaves matches out (the agent's own backups).
pub fn resolve(
    patterns: &[String],
    roots: &Roots,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<Vec<Resolved>, RewriteError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for pattern in patterns {
        let path = checked_path(pattern)?;
        let literal_prefix = literal_prefix(&path);
        if !roots.lexically_contains(&literal_prefix) {
            return Err(outside(pattern, None, roots));
        }
        let candidates: Vec<PathBuf> = if has_glob_meta(pattern) {
            let options = glob::MatchOptions {
                case_sensitive: true,
                require_literal_separator: true,
                require_literal_leading_dot: false,
            };
            let paths = glob::glob_with(pattern, options)
                .map_err(|source| RewriteError::BadGlob { pattern: pattern.clone(), source })?;
            let mut found = Vec::new();
            for entry in paths {
                match entry {
                    Ok(p) => found.push(p),
                    Err(e) => {
                        let path = e.path().display().to_string();
                        return Err(RewriteError::ResolvePath { path, source: e.into() });
                    }
                }
            }
            found
        } else {
            vec![path]
        };
        let mut any = false;
        for candidate in candidates {
            let Some(canonical) = canonical(&candidate)? else { continue };
            if !roots.contains(&canonical) {
                return Err(outside(&candidate.display().to_string(), Some(canonical), roots));
            }
            if skip(&canonical) || skip(&candidate) {
                continue;
            }
            any = true;
            if seen.insert(canonical.clone()) {
                out.push(Resolved::Found { pattern: pattern.clone(), path: canonical });
            }
        }
        if !any {
            out.push(Resolved::NotFound { pattern: pattern.clone() });
        }
    }
    Ok(out)
}

/// The canonical form of `path`, or `None` if it (or a symlink's target)
/// does not exist.
fn canonical(path: &Path) -> Result<Option<PathBuf>, RewriteError> {
    match path.canonicalize() {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RewriteError::ResolvePath { path: path.display().to_string(), source }),
    }
}

fn outside(path: &str, resolved: Option<PathBuf>, roots: &Roots) -> RewriteError {
    RewriteError::OutsideRoots { path: path.to_string(), resolved, roots: roots.describe() }
}

fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The leading components of `path` that hold no glob characters.
fn literal_prefix(path: &Path) -> PathBuf {
    path.components().take_while(|c| !has_glob_meta(&c.as_os_str().to_string_lossy())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        base: PathBuf,
    }

    /// base/etc/{a.env,b.env,sub/c.conf}, base/outside/secret.env
    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("etc/sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        for f in ["etc/a.env", "etc/b.env", "etc/sub/c.conf", "outside/secret.env"] {
            std::fs::write(base.join(f), "x\n").unwrap();
        }
        Tree { _dir: dir, base }
    }

    impl Tree {
        fn p(&self, rel: &str) -> String {
            self.base.join(rel).display().to_string()
        }
        fn roots(&self) -> Roots {
            Roots::new(&[self.p("etc")]).unwrap()
        }
    }

    fn no_skip(_: &Path) -> bool {
        false
    }

    #[test]
    fn resolve_expands_globs_and_literals_in_order_once() {
        let t = tree();
        let patterns = [t.p("etc/*.env"), t.p("etc/sub/c.conf"), t.p("etc/a.env")];
        let got = resolve(&patterns, &t.roots(), &no_skip).unwrap();
        let paths: Vec<_> = got
            .iter()
            .map(|r| match r {
                Resolved::Found { path, .. } => path.strip_prefix(&t.base).unwrap().display().to_string(),
                Resolved::NotFound { pattern } => format!("missing {pattern}"),
            })
            .collect();
        assert_eq!(paths, ["etc/a.env", "etc/b.env", "etc/sub/c.conf"]);
    }

    #[test]
    fn resolve_reports_missing_files_and_empty_globs() {
        let t = tree();
        let got = resolve(&[t.p("etc/none.env"), t.p("etc/*.yaml")], &t.roots(), &no_skip).unwrap();
        assert_eq!(
            got,
            [Resolved::NotFound { pattern: t.p("etc/none.env") }, Resolved::NotFound { pattern: t.p("etc/*.yaml") }]
        );
    }

    #[test]
    fn resolve_refuses_a_path_outside_the_roots() {
        let t = tree();
        let err = resolve(&[t.p("etc/a.env"), t.p("outside/secret.env")], &t.roots(), &no_skip).unwrap_err();
        assert!(matches!(err, RewriteError::OutsideRoots { resolved: None, .. }), "{err:?}");
    }

    #[test]
    fn resolve_refuses_dotdot_and_relative_paths() {
        let t = tree();
        for bad in [t.p("etc/../outside/secret.env"), "etc/a.env".to_string(), t.p("etc/sub/..")] {
            let err = resolve(std::slice::from_ref(&bad), &t.roots(), &no_skip).unwrap_err();
            assert!(matches!(err, RewriteError::BadPath { .. }), "{bad}: {err:?}");
        }
    }

    #[test]
    fn resolve_refuses_a_symlink_that_escapes_the_roots() {
        let t = tree();
        symlink(t.base.join("outside/secret.env"), t.base.join("etc/link.env")).unwrap();
        let err = resolve(&[t.p("etc/link.env")], &t.roots(), &no_skip).unwrap_err();
        let RewriteError::OutsideRoots { resolved: Some(resolved), .. } = err else { panic!("{err:?}") };
        assert_eq!(resolved, t.base.join("outside/secret.env"));
        // A glob that picks the link up is refused just the same.
        let err = resolve(&[t.p("etc/*.env")], &t.roots(), &no_skip).unwrap_err();
        assert!(matches!(err, RewriteError::OutsideRoots { .. }), "{err:?}");
    }

    #[test]
    fn resolve_refuses_a_symlinked_directory_that_escapes_the_roots() {
        let t = tree();
        symlink(t.base.join("outside"), t.base.join("etc/out")).unwrap();
        let err = resolve(&[t.p("etc/out/secret.env")], &t.roots(), &no_skip).unwrap_err();
        assert!(matches!(err, RewriteError::OutsideRoots { resolved: Some(_), .. }), "{err:?}");
    }

    #[test]
    fn resolve_follows_a_symlink_that_stays_inside_to_its_target() {
        let t = tree();
        symlink(t.base.join("etc/sub/c.conf"), t.base.join("etc/alias.conf")).unwrap();
        let got = resolve(&[t.p("etc/alias.conf")], &t.roots(), &no_skip).unwrap();
        assert_eq!(got, [Resolved::Found { pattern: t.p("etc/alias.conf"), path: t.base.join("etc/sub/c.conf") }]);
    }

    #[test]
    fn resolve_leaves_out_what_skip_says() {
        let t = tree();
        let skip = |p: &Path| p.extension().is_some_and(|e| e == "env");
        let got = resolve(&[t.p("etc/*")], &t.roots(), &skip).unwrap();
        assert_eq!(got, [Resolved::Found { pattern: t.p("etc/*"), path: t.base.join("etc/sub") }]);
    }

    #[test]
    fn roots_must_be_absolute_and_may_be_missing() {
        let t = tree();
        assert!(matches!(Roots::new(&[]), Err(RewriteError::NoRoots)));
        assert!(matches!(Roots::new(&["etc".into()]), Err(RewriteError::BadPath { .. })));
        assert!(matches!(Roots::new(&[t.p("etc/../outside")]), Err(RewriteError::BadPath { .. })));
        let roots = Roots::new(&[t.p("etc"), t.p("nowhere")]).unwrap();
        assert_eq!(roots.missing(), [t.p("nowhere")]);
        assert_eq!(roots.resolved(), [t.base.join("etc")]);
    }

    #[test]
    fn a_root_that_is_a_symlink_is_followed() {
        let t = tree();
        symlink(t.base.join("etc"), t.base.join("conf")).unwrap();
        let roots = Roots::new(&[t.p("conf")]).unwrap();
        let got = resolve(&[t.p("conf/a.env")], &roots, &no_skip).unwrap();
        assert_eq!(got, [Resolved::Found { pattern: t.p("conf/a.env"), path: t.base.join("etc/a.env") }]);
    }
}
