//! End to end on a real lab: `rewrite` and `scan` in the `web` guest, driven
//! over SSH exactly as the controller will (plan on stdin, JSON answer).
//! One lab for the whole binary (booting one costs ~30 s under TCG); the
//! scenarios run in order and each leaves the guest as the next expects.
//! Needs root and scripts/install-deps.sh; scripts/build.sh builds the
//! static agent the guests run. All traffic stays inside the lab's namespace.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{put, run, LabUnderTest};
use envclone::guest::{AgentClient, GuestError, GuestSession};
use envclone_agent::{ExitStatus, FileOutcome, RewritePlan, RewriteReport, ScanReport, ScanRequest, SkipReason};
use std::collections::BTreeMap;

const LAB: &str = "agent-rewrite";
const ROOTS: [&str; 2] = ["/etc", "/srv"];

/// What the lab seeds; the test checks it is still so before relying on it.
const APP_ENV: &str = "# demo app settings\nDATABASE_URL=postgres://demo@10.77.1.12:5432/demo\n";
const HOSTS: &str = "127.0.0.1 localhost\n10.77.1.11 web\n10.77.1.12 db\n";

/// Written by the test.
const UPSTREAM_CONF: &str = "upstream app {\n    server 10.77.1.12:8080;\n    server db-replica:8080 backup;\n}\n";
const SRV_ENV: &str = "DB_HOST=db\nDB_ADMIN_USER=dbadmin\nCACHE_URL=redis://10.77.1.120:6379\nJDBC_URL=jdbc:postgresql://db.prod.example:5432/app\n";
/// Not in the plan's files: left naming production on purpose, for scan to find.
const LEGACY_TXT: &str = "# old primary was 10.77.1.12\n";

const APP_ENV_DIFF: &str = "\
--- a/etc/demo/app.env
+++ b/etc/demo/app.env
@@ -1,2 +1,2 @@
 # demo app settings
-DATABASE_URL=postgres://demo@10.77.1.12:5432/demo
+DATABASE_URL=postgres://demo@10.88.1.12:5432/demo
";
const HOSTS_DIFF: &str = "\
--- a/etc/hosts
+++ b/etc/hosts
@@ -1,3 +1,3 @@
 127.0.0.1 localhost
 10.77.1.11 web
-10.77.1.12 db
+10.88.1.12 db-clone
";
const UPSTREAM_DIFF: &str = "\
--- a/etc/nginx/conf.d/upstream.conf
+++ b/etc/nginx/conf.d/upstream.conf
@@ -1,4 +1,4 @@
 upstream app {
-    server 10.77.1.12:8080;
+    server 10.88.1.12:8080;
     server db-replica:8080 backup;
 }
";
const SRV_ENV_DIFF: &str = "\
--- a/srv/app/.env
+++ b/srv/app/.env
@@ -1,4 +1,4 @@
-DB_HOST=db
+DB_HOST=db-clone
 DB_ADMIN_USER=dbadmin
 CACHE_URL=redis://10.77.1.120:6379
-JDBC_URL=jdbc:postgresql://db.prod.example:5432/app
+JDBC_URL=jdbc:postgresql://db.clone.example:5432/app
";

#[test]
fn rewrite_and_scan_on_a_lab_guest() {
    let lab = LabUnderTest::up(LAB);
    let session = lab.session("web");
    let agent = AgentClient::new(&session);

    web_serves_db_records_through_app_env(&lab);
    write_sample_configs(&session);
    dry_run_returns_exact_diffs_and_changes_nothing(&agent, &session);
    rewrite_changes_whole_tokens_keeps_mode_and_owner_and_backs_up(&agent, &session);
    second_rewrite_changes_nothing(&agent, &session);
    scan_finds_only_the_line_left_on_purpose(&agent);
    paths_outside_the_roots_are_refused(&agent, &session);
    the_app_follows_the_rewritten_connection_string(&lab, &agent);
}

/// The plan a clone of `demo` would get: db's address and names change.
fn clone_plan() -> RewritePlan {
    RewritePlan {
        map: BTreeMap::from([
            ("10.77.1.12".to_string(), "10.88.1.12".to_string()),
            ("db".to_string(), "db-clone".to_string()),
            ("db.prod.example".to_string(), "db.clone.example".to_string()),
        ]),
        files: ["/etc/demo/*.env", "/etc/hosts", "/etc/nginx/conf.d/upstream.conf", "/srv/app/.env"]
            .map(String::from)
            .to_vec(),
        roots: ROOTS.map(String::from).to_vec(),
        backup_suffix: None,
    }
}

/// Baseline: web answers with db's records, fetched through app.env's DSN.
fn web_serves_db_records_through_app_env(lab: &LabUnderTest) {
    let page = lab.curl("http://10.77.1.11/");
    assert_eq!(page.trim_end(), envclone::lab::topology::DB_RECORDS.trim_end());
}

/// The lab's app.env and /etc/hosts as seeded, plus an nginx upstream (mode
/// 0640, owned by 101:102), a `.env` under /srv, a note that still names
/// production (outside the plan's files) and a binary file the plan's glob
/// picks up.
fn write_sample_configs(session: &GuestSession) {
    assert_eq!(run(session, "cat /etc/demo/app.env"), APP_ENV);
    assert_eq!(run(session, "cat /etc/hosts"), HOSTS);
    run(session, "mkdir -p /etc/nginx/conf.d /srv/app");
    put(session, "/etc/nginx/conf.d/upstream.conf", UPSTREAM_CONF.as_bytes());
    run(session, "chown 101:102 /etc/nginx/conf.d/upstream.conf && chmod 0640 /etc/nginx/conf.d/upstream.conf");
    put(session, "/srv/app/.env", SRV_ENV.as_bytes());
    put(session, "/etc/demo/legacy.txt", LEGACY_TXT.as_bytes());
    put(session, "/etc/demo/blob.env", b"DB=10.77.1.12\0\x01\x02");
    run(session, "cp /etc/demo/blob.env /root/blob.env.orig");
}

/// --dry-run: one exact unified diff per changed file, the binary file
/// skipped, and nothing written (no file changed, no backup directory).
fn dry_run_returns_exact_diffs_and_changes_nothing(agent: &AgentClient, session: &GuestSession) {
    let report: RewriteReport = agent.call(&["rewrite", "--dry-run"], Some(&json(&clone_plan()))).unwrap();

    assert!(report.dry_run);
    assert_eq!(report.backup_dir, None);
    let diffs: Vec<(&str, &str)> = report
        .files
        .iter()
        .filter_map(|f| match &f.outcome {
            FileOutcome::Changed { diff: Some(diff), backup: None, .. } => Some((f.path.as_str(), diff.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        diffs,
        [
            ("/etc/demo/app.env", APP_ENV_DIFF),
            ("/etc/hosts", HOSTS_DIFF),
            ("/etc/nginx/conf.d/upstream.conf", UPSTREAM_DIFF),
            ("/srv/app/.env", SRV_ENV_DIFF),
        ]
    );
    assert_eq!(skip_reason(&report, "/etc/demo/blob.env"), Some(SkipReason::Binary));
    // app.env 1, hosts 2, upstream 1, .env 2
    assert_eq!(report.replacements, 6);
    assert_eq!(run(session, "cat /etc/demo/app.env"), APP_ENV);
    assert_eq!(run(session, "cat /etc/nginx/conf.d/upstream.conf"), UPSTREAM_CONF);
    assert_eq!(run(session, "test -e /var/lib/envclone-agent/backups && echo exists || echo none"), "none\n");
}

/// The real rewrite: contents as the dry run said, mode and owner kept,
/// every original in the plan's backup directory, counts per key.
fn rewrite_changes_whole_tokens_keeps_mode_and_owner_and_backs_up(agent: &AgentClient, session: &GuestSession) {
    let report: RewriteReport = agent.call(&["rewrite"], Some(&json(&clone_plan()))).unwrap();

    assert!(!report.dry_run);
    assert_eq!(report.replacements, 6);
    assert_eq!(run(session, "cat /etc/demo/app.env"), APP_ENV.replace("10.77.1.12", "10.88.1.12"));
    assert_eq!(run(session, "cat /etc/hosts"), "127.0.0.1 localhost\n10.77.1.11 web\n10.88.1.12 db-clone\n");
    assert_eq!(run(session, "cat /etc/nginx/conf.d/upstream.conf"), UPSTREAM_CONF.replace("10.77.1.12", "10.88.1.12"));
    assert_eq!(
        run(session, "cat /srv/app/.env"),
        SRV_ENV.replace("=db\n", "=db-clone\n").replace("db.prod.example", "db.clone.example")
    );
    assert_eq!(run(session, "stat -c '%a %u %g' /etc/nginx/conf.d/upstream.conf"), "640 101 102\n");
    assert_eq!(run(session, "stat -c '%a %u %g' /etc/demo/app.env"), "644 0 0\n");
    assert_eq!(run(session, "cmp /etc/demo/blob.env /root/blob.env.orig && echo same"), "same\n");

    let backup_dir = report.backup_dir.clone().expect("backup directory");
    assert!(backup_dir.starts_with("/var/lib/envclone-agent/backups/plan-"), "{backup_dir}");
    for (path, original) in [
        ("/etc/demo/app.env", APP_ENV),
        ("/etc/hosts", HOSTS),
        ("/etc/nginx/conf.d/upstream.conf", UPSTREAM_CONF),
        ("/srv/app/.env", SRV_ENV),
    ] {
        let backup = format!("{backup_dir}/files{path}");
        let file = report.files.iter().find(|f| f.path == path).unwrap();
        assert!(
            matches!(&file.outcome, FileOutcome::Changed { backup: Some(b), diff: None, .. } if *b == backup),
            "{file:?}"
        );
        assert_eq!(run(session, &format!("cat {backup}")), original, "backup of {path}");
    }
    assert_eq!(
        run(session, &format!("stat -c '%a %u %g' {backup_dir}/files/etc/nginx/conf.d/upstream.conf")),
        "640 101 102\n"
    );
    let hosts = report.files.iter().find(|f| f.path == "/etc/hosts").unwrap();
    let FileOutcome::Changed { replacements, .. } = &hosts.outcome else { panic!("{hosts:?}") };
    assert_eq!(replacements, &BTreeMap::from([("10.77.1.12".to_string(), 1), ("db".to_string(), 1)]));
    // No temporary file is left next to what was rewritten.
    assert_eq!(run(session, "ls -a /etc/demo /etc/nginx/conf.d | grep envclone-tmp || true"), "");
}

/// Running the same plan again is harmless: nothing matches any more, and
/// the first run's backups stay as they were.
fn second_rewrite_changes_nothing(agent: &AgentClient, session: &GuestSession) {
    let report: RewriteReport = agent.call(&["rewrite"], Some(&json(&clone_plan()))).unwrap();

    assert_eq!(report.replacements, 0);
    assert_eq!(report.backup_dir, None);
    for file in report.files.iter().filter(|f| f.path != "/etc/demo/blob.env") {
        assert!(matches!(file.outcome, FileOutcome::Unchanged { .. }), "{file:?}");
    }
    let backups = run(session, "cat /var/lib/envclone-agent/backups/plan-*/files/etc/hosts");
    assert_eq!(backups, HOSTS);
}

/// scan for the old address and name over the roots: only the note left on
/// purpose is reported (not `db-replica`, `dbadmin`, `10.77.1.120`, nor the
/// binary file, nor the backups); a scan for the new values finds every
/// rewritten file.
fn scan_finds_only_the_line_left_on_purpose(agent: &AgentClient) {
    let old = ScanRequest {
        needles: vec!["10.77.1.12".into(), "db".into(), "db.prod.example".into()],
        subnets: Vec::new(),
        roots: ROOTS.map(String::from).to_vec(),
        files: None,
        exclude: Vec::new(),
    };
    let report: ScanReport = agent.call(&["scan"], Some(&json(&old))).unwrap();

    let findings: Vec<(&str, u64, &str, &str)> =
        report.findings.iter().map(|f| (f.path.as_str(), f.line, f.needle.as_str(), f.text.as_str())).collect();
    assert_eq!(findings, [("/etc/demo/legacy.txt", 1, "10.77.1.12", "# old primary was 10.77.1.12")]);
    assert!(report.binary_files >= 1, "{report:?}");
    assert!(report.files_scanned >= 5, "{report:?}");
    assert!(!report.truncated);

    let new = ScanRequest { needles: vec!["10.88.1.12".into(), "db-clone".into(), "db.clone.example".into()], ..old };
    let report: ScanReport = agent.call(&["scan"], Some(&json(&new))).unwrap();
    let mut paths: Vec<&str> = report.findings.iter().map(|f| f.path.as_str()).collect();
    paths.dedup();
    assert_eq!(paths, ["/etc/demo/app.env", "/etc/hosts", "/etc/nginx/conf.d/upstream.conf", "/srv/app/.env"]);
}

/// A file outside the roots, a symlink inside them whose target is outside,
/// and a path with `..` are refused as usage errors before anything is
/// written.
fn paths_outside_the_roots_are_refused(agent: &AgentClient, session: &GuestSession) {
    put(session, "/root/outside.env", b"DB=10.77.1.12\n");
    run(session, "ln -sf /root/outside.env /etc/escape.env");
    let refused = |files: &[&str]| {
        let plan = RewritePlan { files: files.iter().map(|f| f.to_string()).collect(), ..clone_plan() };
        agent.call::<RewriteReport>(&["rewrite"], Some(&json(&plan))).unwrap_err()
    };

    let outside = refused(&["/root/outside.env"]);
    let escaping = refused(&["/etc/hosts", "/etc/escape.env"]);
    let dotdot = refused(&["/etc/../root/outside.env"]);

    assert!(is_agent_error(&outside, "path-outside-roots"), "{outside:?}");
    assert!(is_agent_error(&escaping, "path-outside-roots"), "{escaping:?}");
    assert!(is_agent_error(&dotdot, "bad-path"), "{dotdot:?}");
    assert_eq!(run(session, "cat /root/outside.env"), "DB=10.77.1.12\n");
    run(session, "rm /etc/escape.env /root/outside.env");
}

/// app.env now names 10.88.1.12, where nothing listens: web answers 502
/// naming it. Rewriting it back brings db's records again.
fn the_app_follows_the_rewritten_connection_string(lab: &LabUnderTest, agent: &AgentClient) {
    let page = lab.curl("http://10.77.1.11/");
    assert_eq!(page.trim_end(), "no answer from 10.88.1.12:5432");

    let back = RewritePlan {
        map: BTreeMap::from([("10.88.1.12".to_string(), "10.77.1.12".to_string())]),
        files: vec!["/etc/demo/app.env".into()],
        roots: vec!["/etc".into()],
        backup_suffix: None,
    };
    let report: RewriteReport = agent.call(&["rewrite"], Some(&json(&back))).unwrap();
    assert_eq!(report.replacements, 1);

    let page = lab.curl("http://10.77.1.11/");
    assert_eq!(page.trim_end(), envclone::lab::topology::DB_RECORDS.trim_end());
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn skip_reason(report: &RewriteReport, path: &str) -> Option<SkipReason> {
    report.files.iter().find(|f| f.path == path).and_then(|f| match f.outcome {
        FileOutcome::Skipped { reason } => Some(reason),
        _ => None,
    })
}

fn is_agent_error(error: &GuestError, expected_kind: &str) -> bool {
    matches!(error, GuestError::Agent { kind, exit: Some(ExitStatus::Usage), .. } if kind == expected_kind)
}
