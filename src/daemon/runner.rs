//! What a scheduled run does, behind [`ScheduledRunner`], and the real
//! runner, [`CliRunner`].
//!
//! # Why the real runner runs the CLI in a child process
//!
//! [`CliRunner`] takes each scheduled snapshot by running this same binary
//! (`envclone snapshot ENV --scheduled SCHEDULE --json`) and applies
//! retention by running `envclone delete-snapshot ENV SNAP --json`, rather
//! than calling the operations in the daemon's process. That is deliberate:
//!
//! - isolation: a panic, an abort, a leaked file descriptor, a libvirt or
//!   libssh2 handle left in a bad state, or memory growth in one run ends
//!   with that run's process; the daemon only sees a failed run, counts it
//!   and goes on (a failure never kills the daemon);
//! - one code path: a scheduled snapshot is exactly what an administrator
//!   gets by hand, with the same journal, lock, exit codes and JSON report;
//! - the environment lock is taken by the child (`EnvLock` is per process
//!   and close-on-exec), so a run that overlaps another operation gets the
//!   same typed `busy` refusal (exit code 3) as any other caller;
//! - the timeout is enforceable: a hung run is terminated (SIGTERM, then
//!   SIGKILL) and the daemon's own threads are never stuck in libvirt.
//!
//! Autorestore (a standby's sync after a snapshot of its primary) runs the
//! same way, as `envclone standby sync SB --json`; while the standby
//! serves its primary that is the home sync, whose report says `mode`
//! `home`.
//!
//! The binary's path is resolved once at start-up, so a package upgrade
//! that replaces it while the daemon runs makes the next run use the new
//! binary instead of failing on a deleted path.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::retention::{self, DeleteOutcome, RetentionResult};
use super::{DaemonError, RunError};
use crate::catalog::{Catalog, Snapshot};
use crate::config::Retention;
use crate::exit::ExitCode;

/// How often the runner looks whether its child has exited.
const POLL: Duration = Duration::from_millis(100);
/// How long a child gets to stop after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(30);

/// What a scheduled run does: take the snapshot, then apply retention.
/// The daemon holds one as `Arc<dyn ScheduledRunner>` and calls it on
/// blocking threads, never on the async runtime.
pub trait ScheduledRunner: Send + Sync + std::fmt::Debug {
    /// Takes one snapshot of `env` for `schedule`, recorded in the catalog
    /// with that schedule's name. The environment being held by another
    /// operation is [`RunError::Busy`].
    fn snapshot(&self, env: &str, schedule: &str) -> Result<RunResult, RunError>;

    /// Deletes the snapshots of `schedule` that `policy` does not keep
    /// (see [`retention::apply`]).
    fn apply_retention(&self, env: &str, schedule: &str, policy: &Retention) -> Result<RetentionResult, RunError>;

    /// Brings standby `standby` to its primary's newest complete snapshot
    /// (autorestore); the standby being held is [`RunError::Busy`].
    fn sync_standby(&self, standby: &str) -> Result<StandbySynced, RunError>;

    /// Runs the fence guard over every role switch in force (see
    /// `ops::failover::fence`); returns a line per thing it did (an old
    /// primary fenced again, a fence confirmed), empty when all is well.
    fn guard_fences(&self) -> Result<Vec<String>, RunError>;

    /// Renews the start gate's leases on every host of `[hosts]` (see
    /// `host::gate`); returns a line per host that holds no gate, empty
    /// when all is well. A host that does not answer is an error.
    fn renew_leases(&self) -> Result<Vec<String>, RunError>;
}

/// What a successful autorestore sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbySynced {
    /// The snapshot the standby is at now; for a home sync, the newest
    /// snapshot of the primary all home (empty when none is yet).
    pub snapshot: String,
    /// `full`, `incremental` or `up-to-date`; `home` for a home sync.
    pub mode: String,
    pub bytes: u64,
}

/// What a successful scheduled snapshot produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunResult {
    /// The new snapshot's name.
    pub snapshot: String,
}

/// The real runner: see the module documentation.
#[derive(Debug, Clone)]
pub struct CliRunner {
    exe: PathBuf,
    /// Global flags every child gets: the config file and libvirt URI
    /// the daemon itself was started with.
    global: Vec<String>,
    state_dir: PathBuf,
    timeout: Duration,
}

/// What a finished child printed.
#[derive(Debug)]
struct ChildOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl CliRunner {
    pub fn new(exe: PathBuf, global: Vec<String>, state_dir: PathBuf, timeout: Duration) -> Self {
        Self { exe, global, state_dir, timeout }
    }

    /// A runner that runs this very binary, with `--config config` and,
    /// when given, `--libvirt-uri`.
    pub fn current(
        config: &Path,
        libvirt_uri: Option<&str>,
        state_dir: PathBuf,
        timeout: Duration,
    ) -> Result<Self, DaemonError> {
        let exe = std::env::current_exe().map_err(|source| DaemonError::CurrentExe { source })?;
        let mut global = vec!["--config".to_owned(), config.to_string_lossy().into_owned()];
        if let Some(uri) = libvirt_uri {
            global.extend(["--libvirt-uri".to_owned(), uri.to_owned()]);
        }
        Ok(Self::new(exe, global, state_dir, timeout))
    }

    /// Runs `envclone <global> <args>` to its end or the timeout.
    fn run(&self, args: &[&str]) -> Result<ChildOutput, RunError> {
        let command = format!("envclone {}", args.join(" "));
        let mut child = Command::new(&self.exe)
            .args(&self.global)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn { command: command.clone(), source })?;
        // Both pipes are drained while the child runs, so it never blocks on a full pipe.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = match wait_for(&mut child, &command, self.timeout) {
            Ok(status) => status,
            Err(error) => {
                terminate(&mut child, &command);
                return Err(error);
            }
        };
        Ok(ChildOutput { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
    }

    /// `envclone delete-snapshot ENV SNAP --json`.
    fn delete(&self, env: &str, snapshot: &Snapshot) -> Result<DeleteOutcome, RunError> {
        // The report is `ops::delete::DeleteReport`: a non-empty `deferred`
        // means pins forbid the delete for now (not a failure); anything
        // else on exit code 0 means deleted.
        let args = ["delete-snapshot", env, snapshot.name.as_str(), "--json"];
        let output = self.run(&args)?;
        let report = check(&output, &args, env)?;
        Ok(match deferred_reason(&report) {
            Some(reason) => DeleteOutcome::Deferred { reason },
            None => DeleteOutcome::Deleted,
        })
    }
}

/// What `standby sync SB --json` printed. A home sync (`mode` `home`: SB
/// serves its primary) may have no snapshot all home yet (`null`).
fn synced(report: &Value, args: &[&str]) -> Result<StandbySynced, RunError> {
    let text = |key: &str| report.get(key).and_then(Value::as_str).map(str::to_owned);
    let mode = text("mode").unwrap_or_default();
    let snapshot = match text("snapshot") {
        Some(snapshot) => snapshot,
        None if mode == "home" && report.get("snapshot").is_some_and(Value::is_null) => String::new(),
        None => {
            return Err(RunError::BadOutput { command: format!("envclone {}", args.join(" ")), what: "the snapshot" })
        }
    };
    Ok(StandbySynced { snapshot, mode, bytes: report.get("bytes").and_then(Value::as_u64).unwrap_or(0) })
}

impl ScheduledRunner for CliRunner {
    fn sync_standby(&self, standby: &str) -> Result<StandbySynced, RunError> {
        // A child like every scheduled run: a slow transfer holds only its
        // own process and the standby's lock, never the scheduler.
        let args = ["standby", "sync", standby, "--json"];
        let output = self.run(&args)?;
        let report = check(&output, &args, standby)?;
        synced(&report, &args)
    }

    fn guard_fences(&self) -> Result<Vec<String>, RunError> {
        // `status` runs the guard first and reports what it did per switch.
        let args = ["status", "--json"];
        let output = self.run(&args)?;
        let report = check(&output, &args, "-")?;
        Ok(guard_actions(&report))
    }

    fn renew_leases(&self) -> Result<Vec<String>, RunError> {
        // A child like the guard: a host that does not answer holds only it.
        let args = ["gate", "renew", "--json"];
        let output = self.run(&args)?;
        let report = check(&output, &args, "-")?;
        Ok(hosts_without_gate(&report))
    }

    fn snapshot(&self, env: &str, schedule: &str) -> Result<RunResult, RunError> {
        // `snapshot --scheduled` records the snapshot with `schedule =
        // SCHEDULE` (retention chooses among those) and takes the schedule's
        // `memory` setting; see the module docs for why a child process.
        let started = Utc::now();
        let args = ["snapshot", env, "--scheduled", schedule, "--json"];
        let output = self.run(&args)?;
        let report = check(&output, &args, env)?;
        if let Some(name) = snapshot_name(&report) {
            return Ok(RunResult { snapshot: name });
        }
        // The report did not name it: the schedule's newest complete
        // snapshot, if this run made it.
        let catalog = Catalog::open(&self.state_dir).map_err(|e| RunError::Catalog(Box::new(e)))?;
        match catalog.last_snapshot(env, Some(schedule)).map_err(|e| RunError::Catalog(Box::new(e)))? {
            Some(snapshot) if made_since(snapshot.created_at, started) => Ok(RunResult { snapshot: snapshot.name }),
            _ => Err(RunError::BadOutput {
                command: format!("envclone {}", args.join(" ")),
                what: "the snapshot's name",
            }),
        }
    }

    fn apply_retention(&self, env: &str, schedule: &str, policy: &Retention) -> Result<RetentionResult, RunError> {
        let catalog = Catalog::open(&self.state_dir).map_err(|e| RunError::Catalog(Box::new(e)))?;
        let snapshots = catalog.snapshots(env).map_err(|e| RunError::Catalog(Box::new(e)))?;
        drop(catalog);
        retention::apply(&snapshots, schedule, policy, Utc::now(), &mut |snapshot| self.delete(env, snapshot))
    }
}

/// What the guard did, from a `status --json` report: one line per action.
fn guard_actions(report: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for switch in report.get("failovers").and_then(Value::as_array).into_iter().flatten() {
        for action in switch.get("actions").and_then(Value::as_array).into_iter().flatten() {
            let text = |key: &str| action.get(key).and_then(Value::as_str).unwrap_or("?").to_owned();
            lines.push(format!(
                "{} domain {} of {} (standby {} serves epoch {}): {}",
                text("action"),
                text("domain"),
                text("env"),
                switch.get("active").and_then(Value::as_str).unwrap_or("?"),
                action.get("epoch").and_then(Value::as_i64).unwrap_or(0),
                text("detail")
            ));
        }
    }
    lines
}

/// The hosts `gate renew --json` found without the start gate.
fn hosts_without_gate(report: &Value) -> Vec<String> {
    let hosts = report.get("hosts").and_then(Value::as_array).into_iter().flatten();
    hosts
        .filter(|host| host.get("installed").and_then(Value::as_bool) == Some(false))
        .map(|host| {
            let name = host.get("host").and_then(Value::as_str).unwrap_or("?");
            format!(
                "host {name} has no start gate: its leases were not renewed (`envclone gate install --host {name}`)"
            )
        })
        .collect()
}

/// A snapshot's catalog time is truncated to the millisecond and may be
/// taken a moment before the runner's own clock read.
fn made_since(created_at: DateTime<Utc>, started: DateTime<Utc>) -> bool {
    created_at >= started - chrono::Duration::seconds(1)
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buffer = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends the output early; the exit status still decides.
            let _ = pipe.read_to_end(&mut buffer);
        }
        buffer
    })
}

fn wait_for(child: &mut Child, command: &str, timeout: Duration) -> Result<ExitStatus, RunError> {
    // try_wait errors end the wait (as a value) instead of counting as "not yet".
    let waited = crate::wait::until::<_, std::io::Error, _>(command, timeout, POLL, || match child.try_wait() {
        Ok(status) => Ok(status.map(Ok)),
        Err(error) => Ok(Some(Err(error))),
    });
    match waited {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(source)) => Err(RunError::Wait { command: command.to_owned(), source }),
        Err(crate::wait::WaitError::Timeout { .. }) => {
            Err(RunError::Timeout { command: command.to_owned(), after: timeout })
        }
    }
}

/// SIGTERM, then SIGKILL after [`TERMINATE_GRACE`]; the child is reaped.
fn terminate(child: &mut Child, command: &str) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    if wait_for(child, command, TERMINATE_GRACE).is_err() {
        if let Err(error) = child.kill().and_then(|()| child.wait().map(drop)) {
            tracing::error!("cannot kill `{command}` (pid {}): {error}", child.id());
        }
    }
}

/// The child's JSON report on success; its error as a [`RunError`] otherwise.
fn check(output: &ChildOutput, args: &[&str], env: &str) -> Result<Value, RunError> {
    let command = format!("envclone {}", args.join(" "));
    let report: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    let Some(code) = output.status.code() else {
        use std::os::unix::process::ExitStatusExt;
        return Err(RunError::Killed { command, signal: output.status.signal().unwrap_or(0) });
    };
    if code == 0 {
        return report.ok_or(RunError::BadOutput { command, what: "anything in JSON" });
    }
    let error = report.as_ref().and_then(|r| r.get("error"));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| last_error_line(&output.stderr));
    if code == i32::from(ExitCode::Busy.code()) {
        return Err(RunError::Busy { env: env.to_owned(), detail: message });
    }
    let hint = error.and_then(|e| e.get("hint")).and_then(Value::as_str).map(str::to_owned);
    Err(RunError::Command { command, code, message, hint })
}

fn last_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line =
        text.lines().rev().find(|line| line.trim_start().starts_with("error:")).or_else(|| {
            text.lines().rev().find(|line| !line.trim().is_empty() && !line.trim_start().starts_with("hint:"))
        });
    match line {
        Some(line) => line.trim().trim_start_matches("error:").trim().to_owned(),
        None => "it printed no error message".to_owned(),
    }
}

/// The snapshot's name in `envclone snapshot --json`'s report.
fn snapshot_name(report: &Value) -> Option<String> {
    ["/snapshot/name", "/name", "/snapshot"]
        .iter()
        .find_map(|pointer| report.pointer(pointer).and_then(Value::as_str))
        .map(str::to_owned)
}

/// Whether `envclone delete-snapshot --json`'s report says the delete was
/// deferred, and why.
fn deferred_reason(report: &Value) -> Option<String> {
    let deferred: Vec<&str> = report.get("deferred")?.as_array()?.iter().filter_map(Value::as_str).collect();
    if deferred.is_empty() {
        return None;
    }
    let reason = report.get("reason").and_then(Value::as_str).map_or_else(|| deferred.join("; "), str::to_owned);
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::process::ExitStatusExt;

    fn output(code: i32, stdout: &str, stderr: &str) -> ChildOutput {
        ChildOutput {
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    const ARGS: [&str; 5] = ["snapshot", "prod", "--scheduled", "nightly", "--json"];

    #[test]
    fn the_guards_actions_are_read_from_the_status_report() {
        let report = serde_json::json!({ "failovers": [{ "active": "sb", "actions": [
            { "env": "demo", "epoch": 2, "domain": "web", "action": "returned-refenced", "detail": "stopped" }
        ]}, { "active": "sb2", "actions": [] }]});

        let lines = guard_actions(&report);

        assert_eq!(lines, ["returned-refenced domain web of demo (standby sb serves epoch 2): stopped"]);
        assert!(guard_actions(&serde_json::json!({ "environments": [] })).is_empty());
    }

    #[test]
    fn the_hosts_without_a_start_gate_are_read_from_the_renew_report() {
        let report = json!({ "hosts": [
            { "host": "a", "installed": true, "granted": [], "withheld": [] },
            { "host": "b", "installed": false, "granted": [], "withheld": [] }
        ]});

        let lines = hosts_without_gate(&report);

        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("host b has no start gate") && lines[0].contains("--host b"), "{lines:?}");
    }

    #[test]
    fn a_sync_report_is_read_whether_it_synced_the_standby_or_carried_home() {
        let args = ["standby", "sync", "sb", "--json"];
        let sync = json!({ "snapshot": "s2", "mode": "incremental", "bytes": 1400 });
        let home = json!({ "snapshot": "s3", "mode": "home", "bytes": 2048, "copied": [] });
        let nothing_home = json!({ "snapshot": null, "mode": "home", "bytes": 0 });

        let read = [sync, home, nothing_home].map(|report| synced(&report, &args).unwrap());

        assert_eq!((read[0].snapshot.as_str(), read[0].mode.as_str(), read[0].bytes), ("s2", "incremental", 1400));
        assert_eq!((read[1].snapshot.as_str(), read[1].mode.as_str(), read[1].bytes), ("s3", "home", 2048));
        assert_eq!((read[2].snapshot.as_str(), read[2].mode.as_str()), ("", "home"));
    }

    #[test]
    fn a_sync_report_without_its_snapshot_is_bad_output() {
        let args = ["standby", "sync", "sb", "--json"];

        let error = synced(&json!({ "snapshot": null, "mode": "incremental" }), &args).unwrap_err();

        assert!(matches!(error, RunError::BadOutput { what: "the snapshot", .. }), "{error:?}");
    }

    #[test]
    fn a_child_report_names_the_snapshot() {
        assert_eq!(snapshot_name(&json!({"snapshot": {"name": "prod-1"}})).as_deref(), Some("prod-1"));
        assert_eq!(snapshot_name(&json!({"name": "prod-2"})).as_deref(), Some("prod-2"));
        assert_eq!(snapshot_name(&json!({"snapshot": "prod-3"})).as_deref(), Some("prod-3"));
        assert_eq!(snapshot_name(&json!({"id": 3})), None);
    }

    #[test]
    fn exit_code_3_is_busy_with_the_childs_message() {
        let out = output(3, r#"{"error": {"message": "busy: restore started at x by pid 7", "exit_code": 3}}"#, "");

        let error = check(&out, &ARGS, "prod").unwrap_err();

        assert!(matches!(&error, RunError::Busy { detail, .. } if detail == "busy: restore started at x by pid 7"));
    }

    #[test]
    fn a_failed_child_carries_its_message_code_and_hint() {
        let out = output(4, r#"{"error": {"message": "no domain named prod-web", "hint": "define it"}}"#, "");

        let error = check(&out, &ARGS, "prod").unwrap_err();

        let RunError::Command { code, message, hint, .. } = error else { panic!("{error:?}") };
        assert_eq!((code, message.as_str(), hint.as_deref()), (4, "no domain named prod-web", Some("define it")));
    }

    #[test]
    fn without_json_the_last_error_line_of_stderr_is_the_message() {
        let out = output(2, "", "error: unexpected argument '--scheduled'\nhint: try --help\n");

        let error = check(&out, &ARGS, "prod").unwrap_err();

        assert!(matches!(&error, RunError::Command { message, .. } if message == "unexpected argument '--scheduled'"));
    }

    #[test]
    fn a_child_killed_by_a_signal_is_reported_as_such() {
        let out = ChildOutput { status: ExitStatus::from_raw(9), stdout: vec![], stderr: vec![] };

        let error = check(&out, &ARGS, "prod").unwrap_err();

        assert!(matches!(error, RunError::Killed { signal: 9, .. }), "{error:?}");
    }

    #[test]
    fn deferred_deletes_are_read_from_the_delete_report() {
        assert_eq!(deferred_reason(&json!({"deleted": true, "deferred": []})), None);
        assert_eq!(
            deferred_reason(
                &json!({"deleted": false, "deferred": ["web/vda: needed by clone 'c'"], "reason": "clone 'c' uses it"})
            )
            .as_deref(),
            Some("clone 'c' uses it")
        );
        assert_eq!(deferred_reason(&json!({"deferred": ["a", "b"]})).as_deref(), Some("a; b"));
    }

    #[test]
    fn a_child_that_outlives_its_timeout_is_stopped() {
        let runner =
            CliRunner::new(PathBuf::from("/bin/sh"), vec![], PathBuf::from("/nonexistent"), Duration::from_millis(200));

        let error = runner.run(&["-c", "exec sleep 30"]).unwrap_err();

        assert!(matches!(error, RunError::Timeout { .. }), "{error:?}");
    }

    #[test]
    fn a_missing_binary_cannot_be_spawned() {
        let runner =
            CliRunner::new(PathBuf::from("/nonexistent/envclone"), vec![], PathBuf::from("/x"), Duration::from_secs(1));

        let error = runner.run(&["status"]).unwrap_err();

        assert!(matches!(error, RunError::Spawn { .. }), "{error:?}");
    }
}
