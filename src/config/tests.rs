use std::path::Path;
use std::time::Duration;

use super::*;
use crate::error::Failure;

const NO_FILE_CHECKS: ValidateOptions = ValidateOptions { check_files: false };

const FULL: &str = r#"
[controller]
ssh_key = "/etc/envclone/id_ed25519"
known_hosts = "/etc/envclone/known_hosts"
min_free_space = "20GiB"

[environments.demo]
networks = ["demo-net"]
quiesce = "best-effort"

[environments.demo.vms.web]
domain = "demo-web"
agent = { address = "10.77.1.11", netns = "envclone-lab" }

[environments.demo.vms.db]
domain = "demo-db"
agent = { address = "10.77.1.13", port = 2222, user = "envclone" }

[environments.demo.readdress]
pool = "10.90.0.0/16"

[environments.demo.rewrite]
files = ["/etc/demo/*.env"]
[environments.demo.rewrite.map]
"db.prod.example" = "db.clone.example"

[schedules.nightly]
environment = "demo"
cron = "0 2 * * *"
retention = { last = 7, daily = 30 }

[standbys.demo-dr]
primary = "demo"
storage = "/srv/standby/demo"
network = "readdress"
failback_on_manual_snapshot = true

[lab]
domain_type = "kvm"
"#;

fn parse_unchecked(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, Path::new("envclone.toml"), &NO_FILE_CHECKS)
}

/// (key, line) of every diagnostic, in the order reported.
fn located(text: &str) -> Vec<(String, usize)> {
    let error = parse_unchecked(text).unwrap_err();
    error.diagnostics().iter().map(|d| (d.key.clone(), d.line)).collect()
}

fn with_demo(extra: &str) -> String {
    format!("{FULL}{extra}")
}

#[test]
fn full_config_parses_with_defaults_filled_in() {
    let config = parse_unchecked(FULL).unwrap();
    assert_eq!(config.controller.libvirt_uri, "qemu:///system");
    assert_eq!(config.controller.state_dir, Path::new("/var/lib/envclone"));
    assert_eq!(config.controller.connect_timeout.get(), Duration::from_secs(10));
    assert_eq!(config.controller.command_timeout.get(), Duration::from_secs(60));
    assert_eq!(config.controller.min_free_space, HumanSize::from_gib(20));
    let demo = config.environment("demo").unwrap();
    assert_eq!(demo.quiesce, QuiescePolicy::BestEffort);
    assert_eq!(demo.freeze_timeout, HumanDuration::from_secs(5));
    assert_eq!(demo.hook_timeout, HumanDuration::from_secs(30));
    let (_, web) = config.vm("demo", "web").unwrap();
    assert_eq!(web.agent, AgentEndpoint { netns: Some("envclone-lab".into()), ..AgentEndpoint::new("10.77.1.11") });
    let rewrite = demo.rewrite.as_ref().unwrap();
    assert_eq!(rewrite.roots, ["/etc"]);
    let nightly = &config.schedules["nightly"];
    assert!(!nightly.memory);
    assert_eq!(nightly.retention, Retention { last: Some(7), daily: Some(30), ..Retention::default() });
    let standby = config.standby("demo-dr").unwrap();
    assert!(standby.autorestore && standby.failback_on_manual_snapshot);
    assert_eq!(standby.network, StandbyNetwork::Readdress);
    assert_eq!(config.lab.unwrap().domain_type.to_string(), "kvm");
}

#[test]
fn optional_sections_default_to_empty() {
    let text = "[controller]\nssh_key = \"/k\"\nknown_hosts = \"/h\"\n";
    let config = parse_unchecked(text).unwrap();
    assert!(config.environments.is_empty() && config.schedules.is_empty() && config.standbys.is_empty());
    assert_eq!(config.lab, None);
}

#[test]
fn to_toml_round_trips_exactly() {
    let config = parse_unchecked(FULL).unwrap();
    let reparsed = parse_unchecked(&to_toml(&config)).unwrap();
    assert_eq!(reparsed, config);
}

#[test]
fn built_config_round_trips_exactly() {
    let mut vms = BTreeMap::new();
    vms.insert("a".to_owned(), Vm { domain: "lab-a".into(), agent: AgentEndpoint::new("10.0.0.2") });
    let environment = Environment { vms, freeze_timeout: Duration::from_millis(1500).into(), ..Environment::default() };
    let config = Config {
        controller: Controller { min_free_space: HumanSize::from_bytes(1536), ..Controller::new("/k", "/h") },
        environments: BTreeMap::from([("lab".to_owned(), environment)]),
        schedules: BTreeMap::new(),
        standbys: BTreeMap::new(),
        hosts: BTreeMap::new(),
        lab: Some(LabSettings::default()),
    };
    assert_eq!(parse_unchecked(&to_toml(&config)).unwrap(), config);
}

#[test]
fn lookup_of_unknown_environment_lists_known_ones() {
    let config = parse_unchecked(FULL).unwrap();
    let error = config.environment("prod").unwrap_err();
    assert_eq!(error, LookupError::UnknownEnvironment { name: "prod".into(), known: vec!["demo".into()] });
}

#[test]
fn lookup_of_unknown_vm_lists_the_environments_vms() {
    let config = parse_unchecked(FULL).unwrap();
    let error = config.vm("demo", "app").unwrap_err();
    let expected = LookupError::UnknownVm {
        environment: "demo".into(),
        name: "app".into(),
        known: vec!["db".into(), "web".into()],
    };
    assert_eq!(error, expected);
    assert!(matches!(config.vm("prod", "web"), Err(LookupError::UnknownEnvironment { .. })));
}

#[test]
fn semantic_errors_are_all_reported_in_document_order() {
    let text = with_demo(
        r#"
[schedules.hourly]
environment = "prod"
every = "0s"

[standbys.lost]
primary = "nowhere"
storage = "relative/dir"
"#,
    );
    let located = located(&text);
    let keys: Vec<&str> = located.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(
        keys,
        ["schedules.hourly.environment", "schedules.hourly.every", "standbys.lost.primary", "standbys.lost.storage"]
    );
}

#[test]
fn schedule_without_cron_or_every_points_at_its_table() {
    let located = located(&with_demo("\n[schedules.idle]\nenvironment = \"demo\"\n"));
    assert_eq!(located, [("schedules.idle".to_owned(), 41)]);
}

#[test]
fn invalid_names_are_rejected() {
    let text =
        FULL.replace("[environments.demo.vms.db]", "[environments.demo.vms.\"d b\"]").replace("envclone-lab", "../x");
    let keys: Vec<String> = located(&text).into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["environments.demo.vms.web.agent.netns", "environments.demo.vms.\"d b\""]);
}

#[test]
fn empty_domain_is_rejected() {
    let text = FULL.replace("domain = \"demo-db\"", "domain = \"\"");
    assert_eq!(located(&text), [("environments.demo.vms.db.domain".to_owned(), 16)]);
}

#[test]
fn same_domain_twice_in_one_environment_reports_both_vms() {
    let text = FULL.replace("domain = \"demo-db\"", "domain = \"demo-web\"");
    let located = located(&text);
    assert_eq!(
        located,
        [("environments.demo.vms.web.domain".to_owned(), 12), ("environments.demo.vms.db.domain".to_owned(), 16)]
    );
}

#[test]
fn zero_timeouts_are_rejected() {
    let text = FULL.replace("quiesce = \"best-effort\"", "freeze_timeout = \"0s\"");
    assert_eq!(located(&text), [("environments.demo.freeze_timeout".to_owned(), 9)]);
}

#[test]
fn rewrite_files_must_stay_inside_roots() {
    let text =
        FULL.replace("files = [\"/etc/demo/*.env\"]", "files = [\"/etc/ok\", \"/srv/app.env\", \"/etc/../root/x\"]");
    let keys: Vec<String> = located(&text).into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["environments.demo.rewrite.files[1]", "environments.demo.rewrite.files[2]"]);
}

#[test]
fn rewrite_map_with_empty_key_is_rejected() {
    let text = FULL.replace("\"db.prod.example\" =", "\"\" =");
    assert_eq!(located(&text), [("environments.demo.rewrite.map.\"\"".to_owned(), 25)]);
}

#[test]
fn missing_key_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    std::fs::write(&key, "key").unwrap();
    let text = format!(
        "[controller]\nssh_key = {:?}\nknown_hosts = {:?}\n",
        key.display().to_string(),
        dir.path().join("known_hosts").display().to_string()
    );
    let error = parse(&text, Path::new("envclone.toml")).unwrap_err();
    let [diagnostic] = error.diagnostics() else { panic!("expected one diagnostic: {error}") };
    assert_eq!((diagnostic.key.as_str(), diagnostic.line), ("controller.known_hosts", 3));
    assert!(diagnostic.message.contains("known_hosts"));
}

#[test]
fn syntax_errors_have_a_position_but_no_key() {
    let error = parse_unchecked("[controller]\nssh_key = \n").unwrap_err();
    let [diagnostic] = error.diagnostics() else { panic!("expected one diagnostic: {error}") };
    assert_eq!((diagnostic.key.as_str(), diagnostic.line), ("", 2));
}

#[test]
fn missing_controller_section_is_named() {
    let error = parse_unchecked("").unwrap_err();
    let [diagnostic] = error.diagnostics() else { panic!("expected one diagnostic: {error}") };
    assert_eq!((diagnostic.key.as_str(), diagnostic.line), ("controller", 1));
    assert_eq!(diagnostic.hint.as_deref(), Some("add the [controller] section"));
}

#[test]
fn unknown_key_suggests_the_closest_valid_one() {
    let text = FULL.replace("port = 2222", "prot = 2222");
    let error = parse_unchecked(&text).unwrap_err();
    let [diagnostic] = error.diagnostics() else { panic!("expected one diagnostic: {error}") };
    assert_eq!((diagnostic.key.as_str(), diagnostic.line), ("environments.demo.vms.db.agent.prot", 17));
    assert!(diagnostic.hint.as_deref().unwrap().starts_with("did you mean `port`?"));
}

#[test]
fn read_error_names_the_file() {
    let error = load(Path::new("/nonexistent/envclone.toml")).unwrap_err();
    assert!(matches!(&error, ConfigError::Read { path, .. } if path == Path::new("/nonexistent/envclone.toml")));
    assert!(error.hint().is_some());
}

/// `[hosts.NAME]` and the `host` of environments and standbys.
mod hosts {
    use super::*;

    const WITH_HOSTS: &str = r#"
[controller]
ssh_key = "/k"
known_hosts = "/h"

[hosts.b]
libvirt_uri = "qemu+libssh2://root@10.0.9.2/system?keyfile=/k&known_hosts=/kh&sshauth=privkey"
storage = "/srv/envclone"
bandwidth = "50MiB/s"
ssh = { address = "10.0.9.2", key = "/k", known_hosts = "/kh" }

[environments.demo]
host = "b"

[environments.demo.vms.web]
domain = "demo-web"
agent = { address = "10.0.0.2" }

[standbys.sb]
primary = "demo"
storage = "/srv/sb"
host = "local"
"#;

    #[test]
    fn a_host_entry_parses_with_defaults_and_round_trips() {
        let config = parse_unchecked(WITH_HOSTS).unwrap();
        let b = &config.hosts["b"];
        assert_eq!((b.ssh.port, b.ssh.user.as_str()), (22, "root"));
        assert_eq!(b.bandwidth.unwrap().bytes_per_second(), 50 << 20);
        assert_eq!(config.host_of("demo"), "b");
        assert_eq!(config.host_of("unknown"), crate::host::LOCAL);
        assert_eq!(parse_unchecked(&to_toml(&config)).unwrap(), config);
    }

    #[test]
    fn unknown_hosts_a_host_named_local_and_bad_settings_are_each_reported() {
        let text = WITH_HOSTS
            .replace("host = \"b\"", "host = \"c\"")
            .replace("host = \"local\"", "host = \"d\"")
            .replace("storage = \"/srv/envclone\"", "storage = \"srv\"")
            .replace("libvirt_uri = \"qemu+libssh2", "libvirt_uri = \"b\"\n#")
            + "\n[hosts.local]\nlibvirt_uri = \"qemu:///system\"\nstorage = \"/x\"\n\
               ssh = { address = \"h\", key = \"/k\", known_hosts = \"/kh\" }\n";
        let error = parse_unchecked(&text).unwrap_err();
        let mut keys: Vec<String> = error.diagnostics().iter().map(|d| d.key.clone()).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["environments.demo.host", "hosts.b.libvirt_uri", "hosts.b.storage", "hosts.local", "standbys.sb.host"]
        );
        let unknown = error.diagnostics().iter().find(|d| d.key == "environments.demo.host").unwrap();
        assert!(unknown.hint.as_deref().unwrap().contains("local, b"), "{unknown:?}");
    }

    #[test]
    fn the_start_gate_settings_default_and_are_taken_as_given() {
        let config = parse_unchecked(WITH_HOSTS).unwrap();
        let b = &config.hosts["b"];
        assert_eq!(b.gate_dir(), Path::new(HostSettings::DEFAULT_GATE_DIR));
        assert_eq!(b.lease(), std::time::Duration::from_secs(600));
        assert!(!to_toml(&config).contains("gate_dir"), "defaults are not written out");

        let text = WITH_HOSTS.replace("bandwidth = ", "gate_dir = \"/srv/gate\"\nlease = \"20s\"\nbandwidth = ");
        let config = parse_unchecked(&text).unwrap();
        let b = &config.hosts["b"];
        assert_eq!((b.gate_dir(), b.lease()), (PathBuf::from("/srv/gate"), std::time::Duration::from_secs(20)));
        assert_eq!(parse_unchecked(&to_toml(&config)).unwrap(), config);
    }

    #[test]
    fn a_relative_gate_dir_and_a_zero_lease_are_refused() {
        let text = WITH_HOSTS.replace("bandwidth = ", "gate_dir = \"gate\"\nlease = \"0s\"\nbandwidth = ");
        let error = parse_unchecked(&text).unwrap_err();
        let keys: Vec<String> = error.diagnostics().iter().map(|d| d.key.clone()).collect();
        assert_eq!(keys, ["hosts.b.gate_dir", "hosts.b.lease"]);
    }

    #[test]
    fn a_config_without_hosts_keeps_everything_on_local_and_writes_no_hosts_table() {
        let config = parse_unchecked(FULL).unwrap();
        assert!(config.hosts.is_empty());
        assert!(!to_toml(&config).contains("[hosts"));
        assert_eq!(config.host_of("demo"), crate::host::LOCAL);
    }
}
