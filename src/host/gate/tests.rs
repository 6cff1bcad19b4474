//! The hook run with `sh` against temporary files, as libvirt runs it; the
//! install, renew and inspect scripts run with `sh` on a temporary "host".

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::config::{AgentEndpoint, Environment, Vm};

/// A domain's XML as libvirt 9.0 hands it to the hook: the fence stamp as
/// `virsh dumpxml` shows it after envclone fenced the domain (seen on the lab).
const FENCED_XML: &str = r#"<domain type='qemu'>
  <name>demo-web</name>
  <uuid>e5c8f5ec-95ca-47ba-a758-4568f3f3a561</uuid>
  <metadata>
    <envclone:fence xmlns:envclone="https://envclone.dev/xmlns/fence/1" epoch="3" fenced-at="2026-01-01T00:00:00Z" autostart="yes"/>
  </metadata>
  <memory unit='KiB'>262144</memory>
</domain>
"#;

const PLAIN_XML: &str =
    "<domain type='qemu'>\n  <name>demo-web</name>\n  <memory unit='KiB'>262144</memory>\n</domain>\n";

/// A host's gate directory and hook directory, in a temporary directory.
struct FakeHost {
    _dir: tempfile::TempDir,
    layout: Layout,
}

impl FakeHost {
    fn new() -> FakeHost {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout { hooks_dir: dir.path().join("hooks"), gate_dir: dir.path().join("gate") };
        FakeHost { _dir: dir, layout }
    }

    /// A gate directory listing demo's two domains.
    fn protecting_demo() -> FakeHost {
        let host = FakeHost::new();
        std::fs::create_dir_all(&host.layout.gate_dir).unwrap();
        std::fs::write(host.layout.protected_path(), "demo-web demo\ndemo-db demo\n").unwrap();
        host
    }

    fn lease(&self, env: &str, expiry: u64) {
        std::fs::write(self.layout.lease_path(env), lease_text(expiry)).unwrap();
    }

    /// Runs the hook as libvirt does: `envclone DOMAIN PHASE SUB -`, the
    /// XML on stdin. (exit status, stderr)
    fn hook(&self, domain: &str, phase: &str, sub: &str, xml: &str) -> (i32, String) {
        let mut child = Command::new("sh")
            .args(["-c", &hook_script(&self.layout.gate_dir), "envclone", domain, phase, sub, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The hook may exit without reading (other phases): a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(xml.as_bytes());
        let output = child.wait_with_output().unwrap();
        (output.status.code().unwrap(), String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Gate scripts run with `sh` here.
struct Sh;

impl HostShell for Sh {
    fn run_script(&self, script: &str, _timeout: Duration) -> Result<ExecOutput, ToolError> {
        let output = Command::new("sh").args(["-c", script]).output().unwrap();
        Ok(ExecOutput { status: output.status.code().unwrap_or(255), stdout: output.stdout, stderr: output.stderr })
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn wanted(grant: &[&str], withhold: &[&str]) -> Wanted {
    Wanted {
        host: "a".into(),
        protected: vec![
            Protected { domain: "demo-db".into(), env: "demo".into() },
            Protected { domain: "demo-web".into(), env: "demo".into() },
        ],
        grant: grant.iter().map(|s| s.to_string()).collect(),
        withhold: withhold.iter().map(|s| s.to_string()).collect(),
        lease: Duration::from_secs(600),
    }
}

#[test]
fn the_hook_refuses_a_fenced_domain_naming_envclone_the_epoch_and_status() {
    let host = FakeHost::new();

    let (status, stderr) = host.hook("demo-web", "prepare", "begin", FENCED_XML);

    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.starts_with("envclone start gate: refusing to start domain demo-web:"), "{stderr}");
    assert!(stderr.contains("failover epoch 3") && stderr.contains("`envclone status`"), "{stderr}");
}

#[test]
fn the_hook_refuses_a_fenced_domain_even_with_a_fresh_lease() {
    let host = FakeHost::protecting_demo();
    host.lease("demo", now() + 600);

    let (status, stderr) = host.hook("demo-web", "prepare", "begin", FENCED_XML);

    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("epoch 3"), "{stderr}");
}

#[test]
fn the_hook_refuses_a_protected_domain_without_a_lease() {
    let host = FakeHost::protecting_demo();

    let (status, stderr) = host.hook("demo-db", "prepare", "begin", PLAIN_XML);

    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("holds no lease for environment demo"), "{stderr}");
    assert!(stderr.contains("`envclone status demo`"), "{stderr}");
}

#[test]
fn the_hook_refuses_a_protected_domain_whose_lease_expired() {
    let host = FakeHost::protecting_demo();
    host.lease("demo", now() - 30);

    let (status, stderr) = host.hook("demo-web", "prepare", "begin", PLAIN_XML);

    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("lease for environment demo expired"), "{stderr}");
}

#[test]
fn the_hook_refuses_a_protected_domain_whose_lease_is_not_a_number() {
    let host = FakeHost::protecting_demo();
    std::fs::write(host.layout.lease_path("demo"), "tomorrow\n").unwrap();

    let (status, _) = host.hook("demo-web", "prepare", "begin", PLAIN_XML);

    assert_eq!(status, 1);
}

#[test]
fn the_hook_starts_a_protected_domain_under_a_fresh_lease() {
    let host = FakeHost::protecting_demo();
    host.lease("demo", now() + 600);

    assert_eq!(host.hook("demo-web", "prepare", "begin", PLAIN_XML), (0, String::new()));
    assert_eq!(host.hook("demo-db", "prepare", "begin", PLAIN_XML), (0, String::new()));
}

#[test]
fn the_hook_passes_other_domains_and_every_other_phase() {
    let host = FakeHost::protecting_demo();

    assert_eq!(host.hook("other", "prepare", "begin", PLAIN_XML), (0, String::new()));
    for (phase, sub) in [("start", "begin"), ("started", "begin"), ("stopped", "end"), ("release", "end")] {
        assert_eq!(host.hook("demo-web", phase, sub, FENCED_XML), (0, String::new()), "{phase} {sub}");
    }
    assert_eq!(host.hook("demo-web", "prepare", "end", PLAIN_XML), (0, String::new()));
}

#[test]
fn the_hook_passes_everything_unfenced_on_a_host_without_a_gate_directory() {
    let host = FakeHost::new();

    assert_eq!(host.hook("demo-web", "prepare", "begin", PLAIN_XML), (0, String::new()));
}

#[test]
fn the_hook_is_marked_as_the_gates_and_names_its_directory_quoted() {
    let hook = hook_script(Path::new("/var/lib/my gate"));

    assert!(hook.starts_with("#!/bin/sh\n") && hook.contains(MARKER), "{hook}");
    assert!(hook.contains("gate='/var/lib/my gate'\n"), "{hook}");
    assert!(!hook.contains(GATE_DIR_PLACEHOLDER));
    assert!(!hook.lines().any(|line| line == "ENVCLONE_GATE_EOF"));
}

#[test]
fn install_creates_the_hook_protects_and_grants_then_keeps_it_unchanged() {
    let host = FakeHost::new();

    let first = install(&Sh, &host.layout, &wanted(&["demo"], &[])).unwrap();
    let second = install(&Sh, &host.layout, &wanted(&["demo"], &[])).unwrap();

    assert_eq!((first.hook, second.hook), (HookChange::Created, HookChange::Unchanged));
    assert_eq!(std::fs::read_to_string(host.layout.hook_path()).unwrap(), hook_script(&host.layout.gate_dir));
    assert_eq!(std::fs::read_to_string(host.layout.protected_path()).unwrap(), "demo-db demo\ndemo-web demo\n");
    let lease = &second.renewed.granted[0];
    assert_eq!((lease.env.as_str(), lease.expires_in_seconds), ("demo", 600));
    let expiry: u64 = std::fs::read_to_string(host.layout.lease_path("demo")).unwrap().trim().parse().unwrap();
    assert_eq!(expiry, lease.expires_at);
    assert_eq!(host.hook("demo-web", "prepare", "begin", PLAIN_XML).0, 0, "the lease it granted lets demo start");
}

#[test]
fn install_replaces_an_older_gate_hook() {
    let host = FakeHost::new();
    std::fs::create_dir_all(host.layout.hook_path().parent().unwrap()).unwrap();
    std::fs::write(host.layout.hook_path(), format!("#!/bin/sh\n{MARKER} (format 0)\nexit 0\n")).unwrap();

    let installed = install(&Sh, &host.layout, &wanted(&["demo"], &[])).unwrap();

    assert_eq!(installed.hook, HookChange::Updated);
    assert_eq!(std::fs::read_to_string(host.layout.hook_path()).unwrap(), hook_script(&host.layout.gate_dir));
}

#[test]
fn install_refuses_to_overwrite_another_tools_hook_and_writes_nothing() {
    let host = FakeHost::new();
    std::fs::create_dir_all(host.layout.hook_path().parent().unwrap()).unwrap();
    std::fs::write(host.layout.hook_path(), "#!/bin/sh\n# someone's own\nexit 0\n").unwrap();

    let refused = install(&Sh, &host.layout, &wanted(&["demo"], &[]));

    assert!(matches!(refused, Err(GateError::ForeignHook { ref host, .. }) if host == "a"), "{refused:?}");
    assert_eq!(std::fs::read_to_string(host.layout.hook_path()).unwrap(), "#!/bin/sh\n# someone's own\nexit 0\n");
    assert!(!host.layout.gate_dir.exists());
}

#[test]
fn renew_writes_nothing_where_the_gate_is_not_installed() {
    let host = FakeHost::new();

    let renewed = renew(&Sh, &host.layout, &wanted(&["demo"], &[])).unwrap();

    assert_eq!(renewed, Renewed { installed: false, granted: vec![], withheld: vec![] });
    assert!(!host.layout.gate_dir.exists());
}

#[test]
fn renew_withholds_the_lease_of_a_failed_over_environment() {
    let host = FakeHost::protecting_demo();
    host.lease("demo", now() + 600);

    let renewed = renew(&Sh, &host.layout, &wanted(&[], &["demo"])).unwrap();

    assert_eq!(renewed.withheld, ["demo"]);
    assert!(renewed.granted.is_empty());
    assert!(!host.layout.lease_path("demo").exists());
    assert_eq!(host.hook("demo-web", "prepare", "begin", PLAIN_XML).0, 1);
}

#[test]
fn grant_writes_one_lease_and_leaves_the_protected_list_alone() {
    let host = FakeHost::protecting_demo();

    let lease = grant_on(&Sh, &host.layout, "a", "demo", Duration::from_secs(60)).unwrap().unwrap();

    assert_eq!((lease.env.as_str(), lease.expires_in_seconds), ("demo", 60));
    assert_eq!(std::fs::read_to_string(host.layout.protected_path()).unwrap(), "demo-web demo\ndemo-db demo\n");
    assert_eq!(host.hook("demo-web", "prepare", "begin", PLAIN_XML).0, 0);
    let nowhere = FakeHost::new();
    assert_eq!(grant_on(&Sh, &nowhere.layout, "a", "demo", Duration::from_secs(60)).unwrap(), None);
    assert!(!nowhere.layout.gate_dir.exists());
}

#[test]
fn inspect_reports_a_missing_hook_then_a_current_one_with_its_leases() {
    let host = FakeHost::new();
    let before = inspect(&Sh, "a", &host.layout).unwrap();
    assert_eq!((before.hook, before.gate_dir_exists), (HookState::Missing, false));

    install(&Sh, &host.layout, &wanted(&["demo"], &[])).unwrap();
    host.lease("old", now() - 5);
    let after = inspect(&Sh, "a", &host.layout).unwrap();

    assert_eq!((after.hook, after.gate_dir_exists), (HookState::Current, true));
    assert_eq!(after.protected, wanted(&[], &[]).protected);
    let demo = after.lease("demo").unwrap();
    assert!(demo.fresh() && demo.expires_in_seconds <= 600, "{demo:?}");
    assert!(demo.age_seconds.unwrap() < 5, "{demo:?}");
    assert!(!after.lease("old").unwrap().fresh());
}

#[test]
fn inspect_finds_an_edited_hook_stale_and_another_tools_foreign() {
    let host = FakeHost::new();
    install(&Sh, &host.layout, &wanted(&["demo"], &[])).unwrap();
    let hook = host.layout.hook_path();
    std::fs::write(&hook, hook_script(&host.layout.gate_dir) + "# edited\n").unwrap();
    assert_eq!(inspect(&Sh, "a", &host.layout).unwrap().hook, HookState::Stale);

    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();

    assert_eq!(inspect(&Sh, "a", &host.layout).unwrap().hook, HookState::Foreign);
}

#[test]
fn a_script_that_fails_on_the_host_is_an_error_with_its_stderr() {
    let host = FakeHost::new();
    std::fs::create_dir_all(host.layout.hooks_dir.parent().unwrap()).unwrap();
    // A file where the hook directory should be: mkdir fails.
    std::fs::write(&host.layout.hooks_dir, "").unwrap();

    let failed = install(&Sh, &host.layout, &wanted(&["demo"], &[]));

    assert!(matches!(failed, Err(GateError::Script { status, ref stderr, .. }) if status != 0 && !stderr.is_empty()));
}

#[test]
fn the_wanted_state_protects_every_domain_of_the_hosts_environments_and_withholds_the_failed_over() {
    let mut config = crate::config::Config {
        controller: crate::config::Controller::new("/k", "/kh"),
        environments: Default::default(),
        schedules: Default::default(),
        standbys: Default::default(),
        hosts: Default::default(),
        lab: None,
    };
    let env = |host: Option<&str>, domains: &[&str]| Environment {
        host: host.map(str::to_owned),
        vms: domains
            .iter()
            .map(|d| (d.to_string(), Vm { domain: d.to_string(), agent: AgentEndpoint::new("10.0.0.1") }))
            .collect(),
        ..Environment::default()
    };
    config.environments.insert("demo".into(), env(Some("a"), &["demo-web", "demo-db"]));
    config.environments.insert("shop".into(), env(Some("a"), &["shop-1"]));
    config.environments.insert("other".into(), env(Some("b"), &["other-1"]));
    config.environments.insert("home".into(), env(None, &["home-1"]));

    let wanted = Wanted::for_host(&config, "a", &BTreeSet::from(["shop".to_owned()]));

    let domains: Vec<&str> = wanted.protected.iter().map(|p| p.domain.as_str()).collect();
    assert_eq!(domains, ["demo-db", "demo-web", "shop-1"]);
    assert_eq!((wanted.grant, wanted.withhold), (vec!["demo".to_owned()], vec!["shop".to_owned()]));
    assert_eq!(wanted.lease, HostSettings::DEFAULT_LEASE);
}

#[test]
fn gate_errors_map_to_their_documented_codes() {
    let unreachable = GateError::Unreachable {
        host: "a".into(),
        source: Box::new(ToolError::Spawn { command: "sh".into(), source: std::io::Error::other("down") }),
    };
    assert_eq!(unreachable.exit_code(), ExitCode::Unreachable);
    assert_eq!(GateError::ForeignHook { host: "a".into(), path: "/h".into() }.exit_code(), ExitCode::Failed);
    assert_eq!(GateError::NotAGatedHost { host: "local".into(), known: vec![] }.exit_code(), ExitCode::NotFound);
    assert!(matches!(crate::Error::from(unreachable), crate::Error::Operation(_)));
}
