//! `envclone daemon --once`, `envclone schedule run` and `envclone status`
//! through the real binary, against a config whose environment does not
//! exist in libvirt (libvirt's in-process test driver: no daemon, no lab).
//! Every run must be recorded as failed with its error, exit non-zero, and
//! show up in `status --json`.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// A config with environment `ghost` (its domain exists nowhere) and
    /// schedule `often` (every hour, so a first run is due at once).
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temporary directory");
        for file in ["id_ed25519", "known_hosts"] {
            std::fs::write(dir.path().join(file), "").expect("write a key file");
        }
        let config = format!(
            r#"
[controller]
libvirt_uri = "test:///default"
state_dir = "{state}"
ssh_key = "{dir}/id_ed25519"
known_hosts = "{dir}/known_hosts"
connect_timeout = "1s"

[environments.ghost.vms.web]
domain = "envclone-test-no-such-domain"
agent = {{ address = "192.0.2.1" }}

[schedules.often]
environment = "ghost"
every = "1h"

[schedules.often.retention]
last = 2
"#,
            state = dir.path().join("state").display(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("envclone.toml"), config).expect("write the config");
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("envclone.toml")
    }

    fn envclone(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_envclone"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("ENVCLONE_CONFIG")
            .env_remove("ENVCLONE_LIBVIRT_URI")
            .env_remove("ENVCLONE_LOG")
            .output()
            .expect("run envclone")
    }

    fn status(&self) -> Value {
        let output = self.envclone(&["status", "--json"]);
        assert!(output.status.success(), "status failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("status prints one JSON document")
    }
}

/// The first JSON document on stdout (an error report may follow it).
fn first_json(output: &Output) -> Value {
    let mut documents = serde_json::Deserializer::from_slice(&output.stdout).into_iter::<Value>();
    documents.next().expect("a JSON document on stdout").expect("valid JSON")
}

fn only_schedule(status: &Value) -> &Value {
    let environments = status["environments"].as_array().expect("environments");
    assert_eq!(environments.len(), 1, "{status:#}");
    assert_eq!(environments[0]["name"], "ghost");
    &environments[0]["schedules"][0]
}

fn assert_one_failure(status: &Value, origin: &str) {
    let schedule = only_schedule(status);
    assert_eq!(schedule["name"], "often");
    assert_eq!(schedule["counters"]["failures"], 1, "{status:#}");
    assert_eq!(schedule["counters"]["runs"], 1);
    assert_eq!(schedule["last_run"]["result"], "failed");
    assert_eq!(schedule["last_run"]["origin"], origin);
    let error = schedule["last_run"]["error"].as_str().expect("the run's error");
    assert!(!error.is_empty());
    assert_eq!(schedule["counters"]["last_error"].as_str(), Some(error));
    assert_eq!(status["environments"][0]["failures"], 1);
    assert_eq!(status["environments"][0]["last_snapshot"], Value::Null);
}

#[test]
fn daemon_once_records_a_failed_run_and_exits_non_zero() {
    let setup = Setup::new();

    let output = setup.envclone(&["daemon", "--once", "--json"]);

    assert_eq!(output.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let report = first_json(&output);
    assert_eq!(report["runs"][0]["schedule"], "often");
    assert_eq!(report["runs"][0]["result"], "failed");
    assert!(report["runs"][0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{report:#}");
    assert_one_failure(&setup.status(), "daemon");
}

#[test]
fn daemon_once_at_a_time_when_nothing_is_due_runs_nothing() {
    let setup = Setup::new();
    let first = setup.envclone(&["daemon", "--once", "--now", "2030-01-01T00:00:00Z", "--json"]);
    assert_eq!(first.status.code(), Some(1));

    let again = setup.envclone(&["daemon", "--once", "--now", "2030-01-01T00:30:00Z", "--json"]);

    assert!(again.status.success(), "stderr: {}", String::from_utf8_lossy(&again.stderr));
    let report = first_json(&again);
    assert_eq!(report["runs"], Value::Array(vec![]));
    assert_eq!(report["not_due"][0]["next_run"], "2030-01-01T01:00:00Z");
    assert_eq!(only_schedule(&setup.status())["counters"]["runs"], 1);
}

#[test]
fn schedule_run_records_a_failed_run_and_exits_non_zero() {
    let setup = Setup::new();

    let output = setup.envclone(&["schedule", "run", "often"]);

    // The snapshot's own exit code passes through: 4, its domain does not exist.
    assert_eq!(output.status.code(), Some(4), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("schedule 'often': run 1"), "{stderr}");
    assert_one_failure(&setup.status(), "command");
}

#[test]
fn schedule_run_refuses_an_unknown_schedule() {
    let setup = Setup::new();

    let output = setup.envclone(&["schedule", "run", "weekly"]);

    assert_eq!(output.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&output.stderr).contains("hint: define [schedules.weekly] or use one of: often"));
}

#[test]
fn status_of_a_fresh_catalog_shows_the_schedule_due() {
    let setup = Setup::new();

    let status = setup.status();

    let schedule = only_schedule(&status);
    assert_eq!(schedule["due"], true);
    assert_eq!(schedule["trigger"], "every 1h");
    assert_eq!(schedule["counters"]["runs"], 0);
    assert_eq!(schedule["last_run"], Value::Null);
    let human = setup.envclone(&["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("often") && text.contains("due now"), "{text}");
}

#[test]
fn status_refuses_an_unknown_environment() {
    let setup = Setup::new();

    let output = setup.envclone(&["status", "prod"]);

    assert_eq!(output.status.code(), Some(4));
}

/// The unit files in packaging/systemd pass `systemd-analyze verify` with
/// no warning (ExecStart pointed at the binary under test).
#[test]
fn systemd_units_verify_cleanly() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
    let dir = tempfile::tempdir().unwrap();
    let copies = [
        ("envclone-daemon.service", "envclone-daemon.service"),
        ("envclone-snapshot@.service", "envclone-snapshot@nightly.service"),
        ("envclone-snapshot@.timer", "envclone-snapshot@nightly.timer"),
    ];
    let mut paths = Vec::new();
    for (template, instance) in copies {
        let text = std::fs::read_to_string(units.join(template)).unwrap();
        assert!(text.contains("/usr/bin/envclone") || template.ends_with(".timer"), "{template}");
        let path = dir.path().join(instance);
        std::fs::write(&path, text.replace("/usr/bin/envclone", env!("CARGO_BIN_EXE_envclone"))).unwrap();
        paths.push(path);
    }

    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd, installed with libvirt-daemon-system)");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// A pipe whose reader is already gone: every write to it fails (EPIPE).
fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = nix::unistd::pipe().expect("a pipe");
    drop(reader);
    std::process::Stdio::from(writer)
}

#[test]
fn a_closed_stdout_and_stderr_do_not_stop_a_run() {
    let setup = Setup::new();

    // As `envclone schedule run often 2>&1 | head -0`: nobody reads.
    let status = Command::new(env!("CARGO_BIN_EXE_envclone"))
        .arg("--config")
        .arg(setup.config())
        .args(["schedule", "run", "often"])
        .env_remove("ENVCLONE_CONFIG")
        .env_remove("ENVCLONE_LIBVIRT_URI")
        .env_remove("ENVCLONE_LOG")
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .expect("run envclone");

    // Its own exit code (4, the domain does not exist), not a panic's 101,
    // and the run recorded to its end.
    assert_eq!(status.code(), Some(4));
    assert_one_failure(&setup.status(), "command");
}

#[test]
fn a_closed_stdout_does_not_stop_a_json_report() {
    let setup = Setup::new();

    let status = Command::new(env!("CARGO_BIN_EXE_envclone"))
        .arg("--config")
        .arg(setup.config())
        .args(["daemon", "--once", "--json"])
        .env_remove("ENVCLONE_CONFIG")
        .env_remove("ENVCLONE_LIBVIRT_URI")
        .env_remove("ENVCLONE_LOG")
        .stdout(closed_pipe())
        .status()
        .expect("run envclone");

    assert_eq!(status.code(), Some(1));
    assert_one_failure(&setup.status(), "daemon");
}
