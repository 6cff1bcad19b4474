//! Config files on disk: each broken fixture must be rejected with a
//! diagnostic naming the right key and line; the valid ones must load.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use envclone::config::{self, ConfigError, HumanDuration, HumanSize, ValidateOptions};
use proptest::prelude::*;

const NO_FILE_CHECKS: ValidateOptions = ValidateOptions { check_files: false };

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(relative)
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/envclone.example.toml")
}

struct Broken {
    fixture: &'static str,
    key: &'static str,
    line: usize,
    /// How many diagnostics in total; the (key, line) above is the first.
    count: usize,
    check_files: bool,
}

const fn broken(fixture: &'static str, key: &'static str, line: usize) -> Broken {
    Broken { fixture, key, line, count: 1, check_files: false }
}

const BROKEN: &[Broken] = &[
    broken("unknown_top_level_key", "logging", 6),
    broken("unknown_nested_key", "environments.demo.vms.web.agent.prot", 11),
    broken("bad_duration", "environments.demo.freeze_timeout", 7),
    broken("bad_size", "controller.min_free_space", 5),
    broken("schedule_unknown_environment", "schedules.nightly.environment", 11),
    broken("standby_unknown_environment", "standbys.prod-dr.primary", 11),
    broken("standby_readdress_without_pool", "standbys.dr.network", 17),
    Broken { count: 2, ..broken("domain_in_two_environments", "environments.demo.vms.web.domain", 7) },
    Broken { count: 2, check_files: true, ..broken("missing_key_file", "controller.ssh_key", 3) },
    broken("cron_and_every", "schedules.nightly.every", 13),
    broken("bad_cron", "schedules.nightly.cron", 12),
    broken("bad_quiesce", "environments.demo.quiesce", 7),
    broken("port_zero", "environments.demo.vms.web.agent.port", 8),
    broken("port_out_of_range", "environments.demo.vms.web.agent.port", 11),
    broken("port_as_string", "environments.demo.vms.web.agent.port", 11),
    broken("environment_without_vms", "environments.empty", 10),
    broken("missing_domain", "environments.demo.vms.web.domain", 6),
    broken("invalid_environment_name", "environments.\"demo env\"", 6),
    broken("invalid_netns", "environments.demo.vms.web.agent.netns", 8),
    broken("zero_freeze_timeout", "environments.demo.freeze_timeout", 7),
    broken("empty_rewrite_key", "environments.demo.rewrite.map.\"\"", 12),
    broken("missing_controller", "controller", 1),
    broken("not_toml", "", 4),
];

#[test]
fn broken_fixtures_name_the_offending_key_and_line() {
    for case in BROKEN {
        let path = fixture(&format!("broken/{}.toml", case.fixture));
        let options = ValidateOptions { check_files: case.check_files };
        let error = config::load_with(&path, &options).expect_err(case.fixture);
        let diagnostics = error.diagnostics();
        let located: Vec<(&str, usize)> = diagnostics.iter().map(|d| (d.key.as_str(), d.line)).collect();
        assert_eq!(located.first(), Some(&(case.key, case.line)), "{}: {error}", case.fixture);
        assert_eq!(diagnostics.len(), case.count, "{}: {error}", case.fixture);
        assert!(diagnostics.iter().all(|d| d.file == path), "{}", case.fixture);
    }
}

#[test]
fn every_broken_fixture_is_in_the_table() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixture("broken"))
        .unwrap()
        .map(|entry| entry.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let in_table: BTreeSet<String> = BROKEN.iter().map(|case| case.fixture.to_owned()).collect();
    assert_eq!(on_disk, in_table);
}

#[test]
fn broken_fixtures_give_a_hint_for_semantic_and_key_errors() {
    for name in ["unknown_nested_key", "bad_quiesce", "schedule_unknown_environment", "missing_domain"] {
        let path = fixture(&format!("broken/{name}.toml"));
        let error = config::load_with(&path, &NO_FILE_CHECKS).unwrap_err();
        assert!(error.diagnostics()[0].hint.is_some(), "{name}: {error}");
    }
}

#[test]
fn invalid_config_display_is_the_user_facing_format() {
    let text = std::fs::read_to_string(fixture("broken/schedule_unknown_environment.toml")).unwrap();
    let error = config::parse_with(&text, Path::new("envclone.toml"), &NO_FILE_CHECKS).unwrap_err();
    let expected = "\
invalid config file envclone.toml (1 problem):
envclone.toml:11:15: schedules.nightly.environment: no environment named \"prod\"
  hint: define [environments.prod] or use one of: demo";
    assert_eq!(error.to_string(), expected);
}

#[test]
fn minimal_fixture_loads() {
    let config = config::load_with(&fixture("valid/minimal.toml"), &NO_FILE_CHECKS).unwrap();
    let (_, web) = config.vm("demo", "web").unwrap();
    assert_eq!(web.domain, "demo-web");
}

#[test]
fn example_config_parses_and_round_trips() {
    let config = config::load_with(&example_path(), &NO_FILE_CHECKS).unwrap();
    assert_eq!(config.environment("shop").unwrap().vms.len(), 3);
    assert!(!config.schedules.is_empty() && !config.standbys.is_empty());
    let text = config::to_toml(&config);
    assert_eq!(config::parse_with(&text, Path::new("generated.toml"), &NO_FILE_CHECKS).unwrap(), config);
}

/// The example names key files under /etc that this host may lack; those are
/// the only problems file checks may find in it.
#[test]
fn example_config_fails_file_checks_only_for_missing_key_files() {
    let allowed = ["controller.ssh_key", "controller.known_hosts", "hosts.kvm2.ssh.key", "hosts.kvm2.ssh.known_hosts"];
    match config::load(&example_path()) {
        Ok(_) => {}
        Err(ConfigError::Invalid { diagnostics, .. }) => {
            let keys: Vec<&str> = diagnostics.iter().map(|d| d.key.as_str()).collect();
            assert!(keys.iter().all(|key| allowed.contains(key)), "{keys:?}");
        }
        Err(error) => panic!("{error}"),
    }
}

fn parse_quietly(text: &str) {
    // Errors are expected; only a panic fails the property.
    let _ = config::parse_with(text, Path::new("fuzz.toml"), &NO_FILE_CHECKS);
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        parse_quietly(&text);
    }

    #[test]
    fn toml_like_text_never_panics(text in r#"(\[[a-z."]{0,20}\]\n|[a-z_."]{1,12} = ("[^"\n]{0,12}"|[0-9]{1,6}|\[\]|\{\})\n){0,12}"#) {
        parse_quietly(&text);
    }

    #[test]
    fn mangled_example_never_panics(start in 0usize..4000, len in 0usize..40, insert in ".{0,10}") {
        let example = std::fs::read_to_string(example_path()).unwrap();
        let chars: Vec<char> = example.chars().collect();
        let start = start.min(chars.len());
        let end = (start + len).min(chars.len());
        let mangled: String = chars[..start].iter().chain(insert.chars().collect::<Vec<_>>().iter()).chain(&chars[end..]).collect();
        parse_quietly(&mangled);
    }

    #[test]
    fn durations_round_trip_through_text(secs in 0u64..10_000_000, nanos in 0u32..1_000_000_000) {
        let duration = HumanDuration(std::time::Duration::new(secs, nanos));
        prop_assert_eq!(duration.to_string().parse::<HumanDuration>().unwrap(), duration);
    }

    #[test]
    fn sizes_round_trip_through_text(bytes in 0u64..u64::MAX) {
        let size = HumanSize::from_bytes(bytes);
        prop_assert_eq!(size.to_string().parse::<HumanSize>().unwrap(), size);
    }
}
