//! End to end on a real lab: `set-clock`, `reset-identity`, `readdress` and
//! the forced-command key, driven over SSH exactly as the controller will.
//! One lab for the whole binary (booting one costs ~30 s under TCG), its
//! scenarios run in order and each leaves the lab as the next expects.
//! Needs root and scripts/install-deps.sh; scripts/build.sh builds the
//! static agent the guests run. All traffic stays inside the lab's namespace.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{put, run, LabUnderTest};
use envclone::guest::endpoint::{ssh_options, ssh_target};
use envclone::guest::{
    known_hosts_entry, known_hosts_name, parse_answer, AgentClient, GuestError, GuestSession, SshOptions, SshTarget,
};
use envclone_agent::{ExitStatus, ReaddressReport, ResetIdentityReport, SetClockReport, SshServer, Status};

const LAB: &str = "agent-identity";
const WEB: &str = "10.77.1.11";
const DB: &str = "10.77.1.12";
const DB_MOVED: &str = "10.77.1.42";
const INSTALL_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/agent/install.sh");
const AUTHORIZED_KEYS_LINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/agent/authorized_keys.line");

#[test]
fn identity_subcommands_on_lab_guests() {
    let lab = LabUnderTest::up(LAB);
    let scratch = tempfile::tempdir().unwrap();

    set_clock_steps_the_guest_clock_back_and_forth(&lab);
    forced_command_key_runs_the_agent_and_nothing_else(&lab, scratch.path());
    reset_identity_renews_machine_id_and_host_key(&lab, scratch.path());
    readdress_moves_db_to_a_new_address_and_name(&lab, scratch.path());
}

/// set-clock: back one hour by epoch seconds, then forward to the
/// controller's clock by RFC 3339; `date +%s` in the guest follows. An
/// absurd time is refused as a usage error and changes nothing.
fn set_clock_steps_the_guest_clock_back_and_forth(lab: &LabUnderTest) {
    let session = lab.session("web");
    let agent = AgentClient::new(&session);
    let guest_now = guest_epoch(&session);

    let back = guest_now - 3600;
    let report: SetClockReport = agent.call(&["set-clock", "--epoch-seconds", &back.to_string()], None).unwrap();
    assert!((report.step_ms + 3_600_000).abs() < 5_000, "{report:?}");
    assert_eq!(report.new_unix_ms, back * 1000);
    assert!((guest_epoch(&session) - back).abs() <= 5);

    let stamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let report: SetClockReport = agent.call(&["set-clock", "--now-from-controller", &stamp], None).unwrap();
    assert!((report.step_ms - 3_600_000).abs() < 10_000, "{report:?}");
    assert!((guest_epoch(&session) - host_epoch()).abs() <= 5);

    let refused = agent.call::<SetClockReport>(&["set-clock", "--epoch-seconds", "100"], None).unwrap_err();
    assert!(is_agent_error(&refused, "bad-argument", ExitStatus::Usage), "{refused:?}");
    assert!((guest_epoch(&session) - host_epoch()).abs() <= 5);
}

/// packaging/agent/install.sh installs the agent and pins a second key to
/// it; over that key `envclone-agent status` answers, anything else is
/// refused by the agent (kind forced-command-refused, exit 2), and
/// `restrict` leaves no port forwarding. Running the script again changes
/// nothing.
fn forced_command_key_runs_the_agent_and_nothing_else(lab: &LabUnderTest, scratch: &Path) {
    let (key, public_line) = client_key(scratch, "forced");
    let admin = lab.session("web");
    put(&admin, "/tmp/install.sh", &std::fs::read(INSTALL_SH).unwrap());
    put(&admin, "/tmp/controller.pub", format!("{public_line}\n").as_bytes());
    // A copy that differs from the installed binary (trailing bytes do not
    // change what an ELF runs), so the first run really installs.
    run(&admin, "cp /usr/bin/envclone-agent /tmp/envclone-agent && printf x >> /tmp/envclone-agent");
    let install = "sh /tmp/install.sh --binary /tmp/envclone-agent --authorized-key /tmp/controller.pub";

    let first = run(&admin, install);
    let second = run(&admin, install);

    assert!(first.contains("installed /usr/bin/envclone-agent"), "{first}");
    assert!(first.contains("created /etc/envclone/hooks.d"), "{first}");
    assert!(first.contains("authorized ssh-ed25519 key"), "{first}");
    assert!(second.lines().all(|l| l.starts_with("unchanged ")), "second run changed something: {second}");
    let mode = run(&admin, "stat -c '%a %u %g' /usr/bin/envclone-agent /etc/envclone/hooks.d");
    assert_eq!(mode, "755 0 0\n755 0 0\n");
    let expected_line =
        template_line().replace("ssh-ed25519 AAAA...", &public_line.split(' ').take(2).collect::<Vec<_>>().join(" "));
    let authorized = run(&admin, "cat /root/.ssh/authorized_keys");
    assert_eq!(authorized.lines().filter(|l| *l == expected_line).count(), 1, "{authorized}");

    let config = lab.config();
    let (_, web) = config.vm("demo", "web").unwrap();
    let options = SshOptions { key, ..ssh_options(&config.controller) };
    let forced = GuestSession::connect(&ssh_target(&web.agent), &options).unwrap();

    let status = AgentClient::new(&forced).status().unwrap();
    assert_eq!(status.hostname, "web");
    for command in ["cat /etc/shadow", "envclone-agent status; id", "sh", "envclone-agent status | nc 10.77.1.1 1"] {
        let output = forced.exec(command, None).unwrap();
        assert_eq!(output.status, 2, "{command}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("root:"), "{command} leaked output");
        let refused = parse_answer::<Status>(forced.target(), command, &output).unwrap_err();
        assert!(is_agent_error(&refused, "forced-command-refused", ExitStatus::Usage), "{command}: {refused:?}");
    }
    assert!(admin.session().channel_direct_tcpip("127.0.0.1", 22, None).is_ok(), "the admin key may forward");
    assert!(forced.session().channel_direct_tcpip("127.0.0.1", 22, None).is_err(), "restrict allowed forwarding");
}

/// reset-identity: a new machine-id; with --ssh-host-keys a new host key
/// that new connections get (the old known_hosts entry is refused, one for
/// the returned key accepted), while the session that asked lives on.
fn reset_identity_renews_machine_id_and_host_key(lab: &LabUnderTest, scratch: &Path) {
    let session = lab.session("web");
    let agent = AgentClient::new(&session);
    let before = run(&session, "cat /etc/machine-id").trim().to_string();

    let report: ResetIdentityReport = agent.call(&["reset-identity"], None).unwrap();

    assert_eq!(report.previous_machine_id.as_deref(), Some(before.as_str()));
    assert_ne!(report.machine_id, before);
    assert!(report.machine_id.len() == 32 && report.machine_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(run(&session, "cat /etc/machine-id").trim(), report.machine_id);
    assert!(report.host_keys.is_empty() && report.ssh_servers.is_empty(), "{report:?}");

    let report: ResetIdentityReport = agent.call(&["reset-identity", "--ssh-host-keys"], None).unwrap();

    let [key] = report.host_keys.as_slice() else { panic!("one host key expected: {report:?}") };
    assert_eq!((key.server, key.path.as_str()), (SshServer::Dropbear, "/etc/dropbear/dropbear_ed25519_host_key"));
    assert!(key.public_key.starts_with("ssh-ed25519 AAAA"), "{key:?}");
    let [listener] = report.ssh_servers.as_slice() else { panic!("one listener expected: {report:?}") };
    assert!(listener.serves_new_keys && listener.pid.is_some_and(|p| p != listener.previous_pid), "{listener:?}");
    assert_eq!(run(&session, "echo still here"), "still here\n", "the asking session must survive");

    let config = lab.config();
    let (_, web) = config.vm("demo", "web").unwrap();
    let stale = GuestSession::connect(&ssh_target(&web.agent), &ssh_options(&config.controller)).unwrap_err();
    assert!(matches!(stale, GuestError::HostKeyMismatch { .. }), "{stale:?}");

    let name = known_hosts_name(WEB, 22);
    let known_hosts = scratch.join("known_hosts.web");
    std::fs::write(&known_hosts, format!("{name} {}\n", key.public_key)).unwrap();
    let options = SshOptions { known_hosts: known_hosts.clone(), ..ssh_options(&config.controller) };
    let fresh = GuestSession::connect(&ssh_target(&web.agent), &options).unwrap();
    let (offered, _) = fresh.session().host_key().unwrap();
    assert_eq!(known_hosts_entry(&name, offered), format!("{name} {}", key.public_key));

    // What the controller will do with the answer: trust the new key.
    replace_known_host(&lab.dir().join("keys/known_hosts"), &name, &key.public_key);
    assert_eq!(lab.sh("web", "hostname"), "web\n");
}

/// readdress: db moves from .12 to .42 on the same lab network and becomes
/// db2. The answer comes back over the old address (its removal waits for
/// the answer), SSH to the new address finds db's own host key, hostname,
/// /etc/hostname and /etc/hosts follow, and web's app, whose app.env still
/// names .12, now fails: proof that db really moved.
fn readdress_moves_db_to_a_new_address_and_name(lab: &LabUnderTest, scratch: &Path) {
    let session = lab.session("db");
    let agent = AgentClient::new(&session);
    let mac = run(&session, "for d in /sys/class/net/*; do [ \"${d##*/}\" = lo ] || cat \"$d/address\"; done");
    let mac = mac.lines().next().unwrap().to_string();

    // Refusals first: nothing may change on a bad request.
    let unknown =
        agent.call::<ReaddressReport>(&["readdress", "--mac", "52:54:00:ff:ff:fe", "--address", "10.77.1.42/24"], None);
    assert!(is_agent_error(&unknown.unwrap_err(), "no-such-interface", ExitStatus::Failed));
    for bad in [
        ["--address", "10.77.1.42/24", "--gateway", "10.99.0.1"],
        ["--address", "10.77.1.255/24", "--gateway", "10.77.1.1"],
        ["--address", "10.77.1.42/24", "--hostname", "db_2"],
    ] {
        let mut args = vec!["readdress", "--mac", &mac];
        args.extend(bad);
        let refused = agent.call::<ReaddressReport>(&args, None).unwrap_err();
        assert!(is_agent_error(&refused, "bad-argument", ExitStatus::Usage), "{bad:?}: {refused:?}");
    }
    assert_eq!(global_v4(&session), [format!("{DB}/24")]);

    let move_args = [
        "readdress",
        "--mac",
        &mac,
        "--address",
        "10.77.1.42/24",
        "--gateway",
        "10.77.1.1",
        "--hostname",
        "db2",
        "--old-address",
        DB,
    ];
    let report: ReaddressReport = agent.call(&move_args, None).unwrap();

    assert_eq!(report.mac, mac);
    assert_eq!(report.address, "10.77.1.42/24");
    assert!(report.address_added && report.removed.is_empty(), "{report:?}");
    assert_eq!(report.removal_deferred, [format!("{DB}/24")], "the asking session's address goes last");
    assert_eq!(report.hostname.as_ref().map(|h| (h.previous.as_str(), h.new.as_str())), Some(("db", "db2")));
    assert!(report.hosts_file_changed);
    assert!(!report.persisted);
    assert!(report.not_persisted_reason.as_deref().unwrap_or("").contains("envclone.ip="), "{report:?}");
    drop(session);

    // db keeps its host key: trust it under the new address.
    let lab_known_hosts = std::fs::read_to_string(lab.dir().join("keys/known_hosts")).unwrap();
    let db_key = lab_known_hosts.lines().find_map(|l| l.strip_prefix(&format!("{DB} "))).unwrap();
    let known_hosts = scratch.join("known_hosts.db2");
    std::fs::write(&known_hosts, format!("{} {db_key}\n", known_hosts_name(DB_MOVED, 22))).unwrap();
    let config = lab.config();
    let options = SshOptions { known_hosts, ..ssh_options(&config.controller) };
    let moved = SshTarget {
        host: DB_MOVED.into(),
        port: 22,
        user: "root".into(),
        netns: Some(lab.netns()),
        host_key_alias: None,
    };
    let session =
        envclone::wait::until("db at its new address", Duration::from_secs(30), Duration::from_millis(500), || {
            GuestSession::connect(&moved, &options).map(Some)
        })
        .unwrap();

    assert_eq!(run(&session, "hostname"), "db2\n");
    assert_eq!(run(&session, "cat /etc/hostname"), "db2\n");
    let hosts = run(&session, "cat /etc/hosts");
    assert_eq!(hosts, format!("127.0.0.1 localhost\n{WEB} web\n{DB_MOVED} db2\n"));
    let only_new =
        envclone::wait::until("the old address to go", Duration::from_secs(15), Duration::from_millis(300), || {
            Ok::<_, GuestError>((global_v4(&session) == [format!("{DB_MOVED}/24")]).then_some(()))
        });
    assert!(only_new.is_ok(), "still has {:?}", global_v4(&session));
    assert_eq!(
        run(&session, "ip route | grep ^default").split_whitespace().take(3).collect::<Vec<_>>(),
        ["default", "via", "10.77.1.1"]
    );
    let old = SshTarget { host: DB.into(), ..moved.clone() };
    let gone = GuestSession::connect(&old, &SshOptions { connect_timeout: Duration::from_secs(3), ..options.clone() });
    assert!(matches!(gone, Err(GuestError::Connect { .. })), "{gone:?}");

    // Once more with the same request: nothing left to do.
    let again: ReaddressReport = AgentClient::new(&session).call(&move_args, None).unwrap();
    assert!(!again.address_added && again.removed.is_empty() && again.removal_deferred.is_empty(), "{again:?}");
    assert!(!again.hosts_file_changed, "{again:?}");

    // db serves at its new address, but web's app still dials the old one.
    let records = lab.sh("web", &format!("nc -w 3 {DB_MOVED} 5432 </dev/null"));
    assert_eq!(records, envclone::lab::topology::DB_RECORDS);
    let page = lab.curl(&format!("http://{WEB}/"));
    assert!(page.contains(&format!("no answer from {DB}:5432")), "{page}");
}

#[test]
fn install_script_refuses_to_run_as_non_root() {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", INSTALL_SH, "--binary", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must run as root"), "{output:?}");
}

#[test]
fn install_script_refuses_a_key_it_would_leave_unpinned() {
    let root = tempfile::tempdir().unwrap();
    let (_, public_line) = client_key(root.path(), "plain");
    let key_file = root.path().join("plain.pub");
    std::fs::write(&key_file, format!("{public_line}\n")).unwrap();
    std::fs::create_dir_all(root.path().join("root/.ssh")).unwrap();
    std::fs::write(root.path().join("root/.ssh/authorized_keys"), format!("{public_line}\n")).unwrap();
    let install = |key: &Path| {
        Command::new("sh")
            .args([INSTALL_SH, "--binary", "/bin/true", "--root"])
            .arg(root.path())
            .arg("--authorized-key")
            .arg(key)
            .output()
            .unwrap()
    };

    let unpinned = install(&key_file);
    std::fs::write(&key_file, format!("no-pty {public_line}\n")).unwrap();
    let with_options = install(&key_file);

    assert_eq!(unpinned.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unpinned.stderr).contains("without the forced command"), "{unpinned:?}");
    assert_eq!(with_options.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&with_options.stderr).contains("unsupported key type"), "{with_options:?}");
    let authorized = std::fs::read_to_string(root.path().join("root/.ssh/authorized_keys")).unwrap();
    assert_eq!(authorized, format!("{public_line}\n"), "a refused run must not touch authorized_keys");
}

/// The documented line, the one that is not a comment.
fn template_line() -> String {
    let text = std::fs::read_to_string(AUTHORIZED_KEYS_LINE).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{AUTHORIZED_KEYS_LINE} must hold exactly one line");
    lines[0].to_string()
}

/// A client key made like the lab makes its own: dropbearkey, then
/// dropbearconvert for libssh2. Returns the OpenSSH private key's path and
/// the public line.
fn client_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let dropbear = dir.join(format!("{name}.dropbear"));
    let openssh = dir.join(name);
    tool("dropbearkey", &["-t", "ed25519", "-f", &dropbear.to_string_lossy()]);
    let listing = tool("dropbearkey", &["-y", "-f", &dropbear.to_string_lossy()]);
    let public_line = listing.lines().find(|l| l.starts_with("ssh-ed25519 ")).unwrap().to_string();
    tool("dropbearconvert", &["dropbear", "openssh", &dropbear.to_string_lossy(), &openssh.to_string_lossy()]);
    (openssh, public_line)
}

fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn guest_epoch(session: &GuestSession) -> i64 {
    run(session, "date +%s").trim().parse().unwrap()
}

fn host_epoch() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The global IPv4 addresses of the guest's NIC, as `A/P`.
fn global_v4(session: &GuestSession) -> Vec<String> {
    run(session, "ip -o -f inet addr show")
        .lines()
        .filter(|l| l.contains(" scope global "))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_string))
        .collect()
}

fn is_agent_error(error: &GuestError, expected_kind: &str, expected_exit: ExitStatus) -> bool {
    matches!(error, GuestError::Agent { kind, exit: Some(exit), .. } if kind == expected_kind && *exit == expected_exit)
}

fn replace_known_host(path: &Path, name: &str, public_key: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let prefix = format!("{name} ");
    let updated: String = text
        .lines()
        .map(|l| if l.starts_with(&prefix) { format!("{name} {public_key}\n") } else { format!("{l}\n") })
        .collect();
    assert_ne!(updated, text, "no known_hosts entry for {name}");
    std::fs::write(path, updated).unwrap();
}
