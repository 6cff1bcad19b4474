use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};

const APP_ENV: &str = "# demo app settings\nDATABASE_URL=postgres://demo@10.77.1.12:5432/demo\n";
const HOSTS: &str = "127.0.0.1 localhost\n10.77.1.11 web\n10.77.1.12 db\n";

struct Guest {
    _dir: tempfile::TempDir,
    base: PathBuf,
}

impl Guest {
    /// base/etc/demo/app.env, base/etc/hosts, base/outside/secret.env
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let guest = Guest { _dir: dir, base };
        guest.write("etc/demo/app.env", APP_ENV.as_bytes());
        guest.write("etc/hosts", HOSTS.as_bytes());
        guest.write("outside/secret.env", b"DB=10.77.1.12\n");
        guest
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let path = self.base.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.base.join(rel)).unwrap()
    }

    fn p(&self, rel: &str) -> String {
        self.base.join(rel).display().to_string()
    }

    fn plan(&self, files: &[&str]) -> RewritePlan {
        RewritePlan {
            map: BTreeMap::from([
                ("10.77.1.12".to_string(), "10.88.1.12".to_string()),
                ("db".to_string(), "db-clone".to_string()),
            ]),
            files: files.iter().map(|f| self.p(f)).collect(),
            roots: vec![self.p("etc")],
            backup_suffix: None,
        }
    }

    fn settings(&self, dry_run: bool) -> Settings {
        Settings { dry_run, backup_base: self.base.join("var/backups") }
    }

    fn run(&self, plan: &RewritePlan, dry_run: bool) -> Result<RewriteReport, RewriteError> {
        apply(plan, &self.settings(dry_run))
    }
}

fn outcome<'a>(report: &'a RewriteReport, path: &str) -> &'a FileOutcome {
    &report
        .files
        .iter()
        .find(|f| f.path == path || f.pattern == path)
        .unwrap_or_else(|| panic!("{path} not in {report:#?}"))
        .outcome
}

#[test]
fn dry_run_returns_the_diff_and_writes_nothing() {
    let guest = Guest::new();
    let report = guest.run(&guest.plan(&["etc/demo/*.env", "etc/hosts"]), true).unwrap();

    let app = guest.p("etc/demo/app.env");
    let FileOutcome::Changed { diff: Some(diff), backup: None, replacements, .. } = outcome(&report, &app) else {
        panic!("{report:#?}")
    };
    assert_eq!(
        diff,
        &format!(
            "--- a{app}\n+++ b{app}\n@@ -1,2 +1,2 @@\n # demo app settings\n\
             -DATABASE_URL=postgres://demo@10.77.1.12:5432/demo\n\
             +DATABASE_URL=postgres://demo@10.88.1.12:5432/demo\n"
        )
    );
    assert_eq!(replacements, &BTreeMap::from([("10.77.1.12".to_string(), 1)]));
    assert!(report.dry_run);
    assert_eq!(report.replacements, 3);
    assert_eq!(report.backup_dir, None);
    assert_eq!(guest.read("etc/demo/app.env"), APP_ENV);
    assert_eq!(guest.read("etc/hosts"), HOSTS);
    assert!(!guest.base.join("var").exists(), "a dry run makes no backup directory");
}

#[test]
fn rewrite_replaces_tokens_keeps_mode_and_backs_up_the_original() {
    let guest = Guest::new();
    let app = guest.base.join("etc/demo/app.env");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o640)).unwrap();

    let report = guest.run(&guest.plan(&["etc/demo/*.env", "etc/hosts"]), false).unwrap();

    assert_eq!(guest.read("etc/demo/app.env"), APP_ENV.replace("10.77.1.12", "10.88.1.12"));
    assert_eq!(guest.read("etc/hosts"), "127.0.0.1 localhost\n10.77.1.11 web\n10.88.1.12 db-clone\n");
    assert_eq!(app.metadata().unwrap().permissions().mode() & 0o7777, 0o640);
    let FileOutcome::Changed { backup: Some(backup), diff: None, bytes_before, bytes_after, .. } =
        outcome(&report, &app.display().to_string())
    else {
        panic!("{report:#?}")
    };
    assert_eq!((bytes_before, bytes_after), (&(APP_ENV.len() as u64), &(APP_ENV.len() as u64)));
    let backup_dir = PathBuf::from(report.backup_dir.as_ref().unwrap());
    assert!(backup_dir.starts_with(guest.base.join("var/backups")), "{backup_dir:?}");
    assert_eq!(*backup, backup_dir.join("files").join(app.strip_prefix("/").unwrap()).display().to_string());
    assert_eq!(std::fs::read_to_string(backup).unwrap(), APP_ENV);
    assert_eq!(std::fs::metadata(backup).unwrap().permissions().mode() & 0o7777, 0o640);
    let saved_plan: RewritePlan =
        serde_json::from_slice(&std::fs::read(backup_dir.join("plan.json")).unwrap()).unwrap();
    assert_eq!(saved_plan, guest.plan(&["etc/demo/*.env", "etc/hosts"]));
    assert_eq!(report.replacements, 3);
}

#[test]
fn rewrite_keeps_the_owner() {
    // Run as root (the agent is), the owner of another user is kept;
    // otherwise the file is ours and stays so.
    let guest = Guest::new();
    let app = guest.base.join("etc/demo/app.env");
    let before = app.metadata().unwrap();
    let (uid, gid) = if before.uid() == 0 { (1234, 2345) } else { (before.uid(), before.gid()) };
    std::os::unix::fs::chown(&app, Some(uid), Some(gid)).unwrap();

    guest.run(&guest.plan(&["etc/demo/app.env"]), false).unwrap();

    let after = app.metadata().unwrap();
    assert_eq!((after.uid(), after.gid()), (uid, gid));
}

#[test]
fn rewrite_twice_changes_nothing_the_second_time() {
    let guest = Guest::new();
    let plan = guest.plan(&["etc/demo/*.env", "etc/hosts"]);
    let first = guest.run(&plan, false).unwrap();

    let second = guest.run(&plan, false).unwrap();

    assert_eq!(second.replacements, 0);
    assert!(second.files.iter().all(|f| matches!(f.outcome, FileOutcome::Unchanged { .. })), "{second:#?}");
    assert_eq!(second.backup_dir, None);
    let FileOutcome::Changed { backup: Some(backup), .. } = outcome(&first, &guest.p("etc/hosts")) else { panic!() };
    assert_eq!(std::fs::read_to_string(backup).unwrap(), HOSTS);
}

#[test]
fn rewrite_never_overwrites_an_earlier_backup_of_the_same_plan() {
    let guest = Guest::new();
    let plan = guest.plan(&["etc/hosts"]);
    let first = guest.run(&plan, false).unwrap();
    let FileOutcome::Changed { backup: Some(backup), .. } = outcome(&first, &guest.p("etc/hosts")) else { panic!() };
    // Someone puts an old value back; the plan runs again.
    guest.write("etc/hosts", b"10.77.1.12 db\n");

    guest.run(&plan, false).unwrap();

    assert_eq!(guest.read("etc/hosts"), "10.88.1.12 db-clone\n");
    assert_eq!(std::fs::read_to_string(backup).unwrap(), HOSTS, "the first original is kept");
}

#[test]
fn rewrite_with_a_backup_suffix_keeps_backups_next_to_files_and_never_rewrites_them() {
    let guest = Guest::new();
    let mut plan = guest.plan(&["etc/demo/*"]);
    plan.backup_suffix = Some(".envclone-bak".into());

    let first = guest.run(&plan, false).unwrap();
    let second = guest.run(&plan, false).unwrap();

    assert_eq!(guest.read("etc/demo/app.env.envclone-bak"), APP_ENV);
    assert_eq!(first.backup_dir, None);
    assert_eq!(second.files.len(), 1, "the backup is not picked up by the glob: {second:#?}");
    assert!(matches!(second.files[0].outcome, FileOutcome::Unchanged { .. }));
}

#[test]
fn rewrite_skips_binary_non_utf8_directories_hard_links_and_missing_files() {
    let guest = Guest::new();
    guest.write("etc/demo/blob.env", b"DB=10.77.1.12\0\x01");
    guest.write("etc/demo/latin1.env", b"DB=10.77.1.12 # caf\xe9\n");
    std::fs::create_dir_all(guest.base.join("etc/demo/dir.env")).unwrap();
    guest.write("etc/linked.conf", b"host=db\n");
    std::fs::hard_link(guest.base.join("etc/linked.conf"), guest.base.join("etc/other-name.conf")).unwrap();

    let report =
        guest.run(&guest.plan(&["etc/demo/*.env", "etc/linked.conf", "etc/none.conf", "etc/*.yaml"]), false).unwrap();

    let skipped = |rel: &str| match outcome(&report, &guest.p(rel)) {
        FileOutcome::Skipped { reason } => *reason,
        other => panic!("{rel}: {other:?}"),
    };
    assert_eq!(skipped("etc/demo/blob.env"), SkipReason::Binary);
    assert_eq!(skipped("etc/demo/latin1.env"), SkipReason::NotUtf8);
    assert_eq!(skipped("etc/demo/dir.env"), SkipReason::NotARegularFile);
    assert_eq!(skipped("etc/linked.conf"), SkipReason::HardLinked);
    assert_eq!(skipped("etc/none.conf"), SkipReason::NotFound);
    assert_eq!(skipped("etc/*.yaml"), SkipReason::NotFound);
    assert_eq!(guest.read("etc/linked.conf"), "host=db\n");
    assert!(matches!(outcome(&report, &guest.p("etc/demo/app.env")), FileOutcome::Changed { .. }));
}

#[test]
fn rewrite_refuses_a_path_outside_the_roots_and_writes_nothing() {
    let guest = Guest::new();
    let err = guest.run(&guest.plan(&["etc/hosts", "outside/secret.env"]), false).unwrap_err();
    assert!(matches!(err, RewriteError::OutsideRoots { .. }), "{err:?}");
    assert_eq!(guest.read("etc/hosts"), HOSTS);
}

#[test]
fn rewrite_refuses_a_symlink_that_escapes_the_roots() {
    let guest = Guest::new();
    symlink(guest.base.join("outside/secret.env"), guest.base.join("etc/demo/link.env")).unwrap();
    let err = guest.run(&guest.plan(&["etc/demo/*.env"]), false).unwrap_err();
    assert!(matches!(err, RewriteError::OutsideRoots { resolved: Some(_), .. }), "{err:?}");
    assert_eq!(guest.read("outside/secret.env"), "DB=10.77.1.12\n");
    assert_eq!(guest.read("etc/demo/app.env"), APP_ENV);
}

#[test]
fn rewrite_through_a_symlink_inside_the_roots_rewrites_its_target() {
    let guest = Guest::new();
    symlink(guest.base.join("etc/demo/app.env"), guest.base.join("etc/app.env")).unwrap();
    let report = guest.run(&guest.plan(&["etc/app.env"]), false).unwrap();
    assert_eq!(report.files[0].path, guest.p("etc/demo/app.env"));
    assert!(guest.base.join("etc/app.env").symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(guest.read("etc/app.env"), APP_ENV.replace("10.77.1.12", "10.88.1.12"));
}

#[test]
fn rewrite_refuses_bad_plans() {
    let guest = Guest::new();
    let mut chain = guest.plan(&["etc/hosts"]);
    chain.map.insert("10.88.1.12".into(), "10.99.1.12".into());
    assert!(matches!(guest.run(&chain, false), Err(RewriteError::BadMap { .. })));

    let mut bad_value = guest.plan(&["etc/hosts"]);
    bad_value.map.insert("web".into(), "web:80".into());
    assert!(matches!(guest.run(&bad_value, false), Err(RewriteError::BadMap { .. })));

    assert!(matches!(guest.run(&guest.plan(&[]), false), Err(RewriteError::NoFiles)));

    let mut suffix = guest.plan(&["etc/hosts"]);
    suffix.backup_suffix = Some("../x".into());
    assert!(matches!(guest.run(&suffix, false), Err(RewriteError::BadBackupSuffix { .. })));

    let mut dotdot = guest.plan(&["etc/hosts"]);
    dotdot.files = vec![format!("{}/../outside/secret.env", guest.p("etc"))];
    assert!(matches!(guest.run(&dotdot, false), Err(RewriteError::BadPath { .. })));
    assert_eq!(guest.read("etc/hosts"), HOSTS);
}

#[test]
fn plans_differ_in_backup_directory_and_the_name_is_stable() {
    let guest = Guest::new();
    let a = Backups::new(&guest.plan(&["etc/hosts"]), Path::new("/b")).unwrap();
    let b = Backups::new(&guest.plan(&["etc/demo/app.env"]), Path::new("/b")).unwrap();
    let a_again = Backups::new(&guest.plan(&["etc/hosts"]), Path::new("/b")).unwrap();
    assert_ne!(a.dir(), b.dir());
    assert_eq!(a.dir(), a_again.dir());
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn unified_diff_marks_a_missing_final_newline() {
    let diff = unified_diff(Path::new("/etc/x"), "host=db", "host=pg");
    assert_eq!(diff, "--- a/etc/x\n+++ b/etc/x\n@@ -1 +1 @@\n-host=db\n\\ No newline at end of file\n+host=pg\n\\ No newline at end of file\n");
}
