//! End-to-end tests of the guest transport against a real SSH server
//! (dropbear) running in a network namespace each test creates.
//!
//! Needs root, `ip`, `unshare`, `mount` and `dropbear-bin`. All traffic stays
//! on the loopback interface of the test's own namespace.
//!
//! Dropbear takes root's authorized_keys from root's home in /etc/passwd and
//! has no option to look elsewhere. Rather than touch the real /root/.ssh or
//! create a user on the host, dropbear runs in a private mount namespace in
//! which a temporary directory is bind-mounted over /root, and another over
//! /usr/local/sbin, the first directory of dropbear's PATH for root: that is
//! where the fake `envclone-agent` lives. Nothing outside that mount
//! namespace sees either mount, and they vanish with its last process.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use envclone::error::Failure;
use envclone::guest::netns::connect_tcp;
use envclone::guest::{known_hosts_name, AgentClient, GuestError, GuestSession, SshOptions, SshTarget};
use envclone::wait;
use envclone_agent::{Envelope, Status, PROTOCOL_VERSION};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LISTEN: &str = "127.0.0.1:2222";

/// One dropbear in one namespace; everything is undone on drop, on every
/// path (a failed assertion included).
struct Lab {
    netns: String,
    dir: tempfile::TempDir,
    server: Option<Child>,
    /// `dropbearkey -y` output line: `ssh-ed25519 AAAA... comment`.
    host_public: String,
    host_fingerprint: String,
}

impl Lab {
    fn start() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let netns = format!("envclone-gt-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::tempdir().unwrap();
        // Created before anything that can fail, so that drop cleans up.
        let mut lab = Lab { netns, dir, server: None, host_public: String::new(), host_fingerprint: String::new() };
        run(Command::new("ip").args(["netns", "add", &lab.netns]));
        run(Command::new("ip").args(["netns", "exec", &lab.netns, "ip", "link", "set", "lo", "up"]));

        let home = lab.path("home");
        let bin = lab.path("bin");
        fs::create_dir_all(home.join(".ssh")).unwrap();
        fs::create_dir_all(&bin).unwrap();
        // dropbear refuses authorized_keys under a group/world-writable home.
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();

        run(Command::new("dropbearkey").args(["-t", "ed25519", "-f"]).arg(lab.path("host_key")));
        (lab.host_public, lab.host_fingerprint) = public_key(&lab.path("host_key"));
        run(Command::new("dropbearkey").args(["-t", "ed25519", "-f"]).arg(lab.path("client_key.dropbear")));
        run(Command::new("dropbearconvert")
            .args(["dropbear", "openssh"])
            .arg(lab.path("client_key.dropbear"))
            .arg(lab.path("client_key")));
        let (client_public, _) = public_key(&lab.path("client_key.dropbear"));
        fs::write(home.join(".ssh/authorized_keys"), format!("{client_public}\n")).unwrap();

        let script = format!(
            "mount --bind {home} /root && mount --bind {bin} /usr/local/sbin && \
             exec dropbear -F -E -s -p {LISTEN} -r {key} -P {pid}",
            home = home.display(),
            bin = bin.display(),
            key = lab.path("host_key").display(),
            pid = lab.path("dropbear.pid").display(),
        );
        let server = Command::new("ip")
            .args(["netns", "exec", &lab.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(lab.path("dropbear.log")).unwrap())
            .spawn()
            .unwrap();
        lab.server = Some(server);

        let addr: SocketAddr = LISTEN.parse().unwrap();
        let netns = lab.netns.clone();
        wait::until("dropbear to listen", Duration::from_secs(10), Duration::from_millis(20), || {
            connect_tcp(Some(&netns), addr, Duration::from_secs(1)).map(Some)
        })
        .unwrap_or_else(|e| panic!("{e}; dropbear said: {}", lab.log()));
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("dropbear.log")).unwrap_or_default()
    }

    fn target(&self) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "root".into(),
            netns: Some(self.netns.clone()),
            host_key_alias: None,
        }
    }

    /// Options trusting the server's real host key.
    fn options(&self) -> SshOptions {
        let known_hosts = self.path("known_hosts");
        let key = self.host_public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        fs::write(&known_hosts, format!("{} {key}\n", known_hosts_name("127.0.0.1", 2222))).unwrap();
        SshOptions {
            key: self.path("client_key"),
            known_hosts,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(20),
        }
    }

    fn connect(&self) -> GuestSession {
        GuestSession::connect(&self.target(), &self.options())
            .unwrap_or_else(|e| panic!("{e}; dropbear said: {}", self.log()))
    }

    /// Installs `envclone-agent` for the server's sessions as a script.
    fn fake_agent(&self, script: &str) {
        let path = self.path("bin/envclone-agent");
        fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Every process in the namespace is ours: the server and whatever
        // its sessions left running (the `sleep 30` of the timeout test).
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.netns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
                // Already gone is fine: that is what we want.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        match Command::new("ip").args(["netns", "delete", &self.netns]).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("cannot delete network namespace {}: {other:?}", self.netns),
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The public key line and fingerprint `dropbearkey -y` prints for `key`.
fn public_key(key: &Path) -> (String, String) {
    let out = Command::new("dropbearkey").arg("-y").arg("-f").arg(key).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("ssh-")).unwrap().to_string();
    let fingerprint = text.lines().find_map(|l| l.strip_prefix("Fingerprint: ")).unwrap().to_string();
    (line, fingerprint)
}

#[test]
fn exec_returns_stdout_stderr_and_status() {
    let lab = Lab::start();
    let guest = lab.connect();

    let out = guest.exec("echo out; echo err >&2; exit 7", None).unwrap();

    assert_eq!((out.status, out.stdout.as_slice(), out.stderr.as_slice()), (7, &b"out\n"[..], &b"err\n"[..]));
}

#[test]
fn exec_delivers_stdin_and_reuses_the_session() {
    let lab = Lab::start();
    let guest = lab.connect();
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();

    let first = guest.exec("wc -c", Some(&input)).unwrap();
    let second = guest.exec("cat", Some(b"line one\nline two\n")).unwrap();

    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), "200000");
    assert_eq!(second.stdout, b"line one\nline two\n");
}

#[test]
fn connect_refuses_unknown_host_key() {
    let lab = Lab::start();
    let opts = SshOptions { known_hosts: lab.path("empty_known_hosts"), ..lab.options() };
    fs::write(&opts.known_hosts, "").unwrap();

    let err = GuestSession::connect(&lab.target(), &opts).unwrap_err();

    let GuestError::UnknownHostKey { fingerprint, entry, .. } = &err else { panic!("{err:?}") };
    assert_eq!(fingerprint, &lab.host_fingerprint);
    assert!(entry.starts_with("[127.0.0.1]:2222 ssh-ed25519 "), "{entry}");
    assert!(err.hint().unwrap().contains(entry.as_str()));
}

#[test]
fn connect_refuses_missing_known_hosts_file_as_unknown_key() {
    let lab = Lab::start();
    let opts = SshOptions { known_hosts: lab.path("no_such_known_hosts"), ..lab.options() };

    let err = GuestSession::connect(&lab.target(), &opts).unwrap_err();

    assert!(matches!(err, GuestError::UnknownHostKey { .. }), "{err:?}");
}

#[test]
fn connect_refuses_changed_host_key() {
    let lab = Lab::start();
    let opts = lab.options();
    run(Command::new("dropbearkey").args(["-t", "ed25519", "-f"]).arg(lab.path("other_key")));
    let (other, _) = public_key(&lab.path("other_key"));
    let other = other.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    fs::write(&opts.known_hosts, format!("[127.0.0.1]:2222 {other}\n")).unwrap();

    let err = GuestSession::connect(&lab.target(), &opts).unwrap_err();

    assert!(
        matches!(&err, GuestError::HostKeyMismatch { fingerprint, .. } if *fingerprint == lab.host_fingerprint),
        "{err:?}"
    );
}

#[test]
fn connect_refuses_key_known_only_for_another_port() {
    let lab = Lab::start();
    let opts = lab.options();
    let key = lab.host_public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    fs::write(&opts.known_hosts, format!("127.0.0.1 {key}\n")).unwrap();

    let err = GuestSession::connect(&lab.target(), &opts).unwrap_err();

    assert!(matches!(err, GuestError::UnknownHostKey { .. }), "{err:?}");
}

#[test]
fn connect_refuses_unauthorized_client_key() {
    let lab = Lab::start();
    run(Command::new("dropbearkey").args(["-t", "ed25519", "-f"]).arg(lab.path("stranger.dropbear")));
    run(Command::new("dropbearconvert")
        .args(["dropbear", "openssh"])
        .arg(lab.path("stranger.dropbear"))
        .arg(lab.path("stranger")));
    let opts = SshOptions { key: lab.path("stranger"), ..lab.options() };

    let err = GuestSession::connect(&lab.target(), &opts).unwrap_err();

    assert!(matches!(err, GuestError::Auth { .. }), "{err:?}");
}

#[test]
fn exec_times_out_and_session_survives() {
    let lab = Lab::start();
    let opts = SshOptions { command_timeout: Duration::from_secs(1), ..lab.options() };
    let guest = GuestSession::connect(&lab.target(), &opts).unwrap();
    let start = Instant::now();

    let err = guest.exec("sleep 30", None).unwrap_err();

    assert!(matches!(&err, GuestError::CommandTimeout { command, .. } if command == "sleep 30"), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!(guest.exec("echo still here", None).unwrap().stdout, b"still here\n");
}

#[test]
fn dropping_session_after_timeout_does_not_wait_for_the_command() {
    let lab = Lab::start();
    let opts = SshOptions { command_timeout: Duration::from_secs(3), ..lab.options() };
    let guest = GuestSession::connect(&lab.target(), &opts).unwrap();
    guest.exec("sleep 30", None).unwrap_err();
    let start = Instant::now();

    drop(guest);

    assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
}

#[test]
fn exec_times_out_on_trickling_output() {
    let lab = Lab::start();
    let opts = SshOptions { command_timeout: Duration::from_secs(1), ..lab.options() };
    let guest = GuestSession::connect(&lab.target(), &opts).unwrap();

    let err = guest.exec("while :; do echo tick; sleep 0.2; done", None).unwrap_err();

    assert!(matches!(err, GuestError::CommandTimeout { .. }), "{err:?}");
}

#[test]
fn connect_to_closed_port_names_the_namespace() {
    let lab = Lab::start();
    let target = SshTarget { port: 2223, ..lab.target() };

    let err = GuestSession::connect(&target, &lab.options()).unwrap_err();

    assert!(matches!(&err, GuestError::Connect { netns: Some(ns), .. } if *ns == lab.netns), "{err:?}");
    assert!(err.to_string().contains(&lab.netns), "{err}");
    assert!(err.to_string().contains("127.0.0.1:2223"), "{err}");
}

#[test]
fn interactive_without_tty_pumps_both_ways() {
    let lab = Lab::start();
    let guest = lab.connect();
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let mut writer = fs::File::from(write_end);
    writer.write_all(b"hello\nworld\n").unwrap();
    drop(writer);
    let (mut out, mut err) = (Vec::new(), Vec::new());

    let status =
        guest.interactive_with(Some("cat; echo done >&2; exit 4"), read_end.as_fd(), &mut out, &mut err).unwrap();

    assert_eq!((status, out.as_slice(), err.as_slice()), (4, &b"hello\nworld\n"[..], &b"done\n"[..]));
}

#[test]
fn interactive_on_a_tty_gets_a_sized_pty_and_restores_the_terminal() {
    use nix::pty::{openpty, Winsize};
    use nix::sys::termios::{tcgetattr, LocalFlags};
    let lab = Lab::start();
    let guest = lab.connect();
    let size = Winsize { ws_row: 33, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = openpty(Some(&size), None).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());

    let status = guest
        .interactive_with(Some("stty size; test -t 0 && echo on-a-tty; exit 5"), pty.slave.as_fd(), &mut out, &mut err)
        .unwrap();

    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 5);
    assert!(out.contains("33 101") && out.contains("on-a-tty"), "{out:?}");
    assert!(tcgetattr(&pty.slave).unwrap().local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO));
}

#[test]
fn agent_status_parses_canned_envelope() {
    let lab = Lab::start();
    let status =
        Status { hostname: "fake".into(), frozen: vec![], freeze_in_progress: false, guest_time: 42, machine_id: None };
    let json = serde_json::to_string(&Envelope::ok(status.clone())).unwrap();
    // The script also checks that its arguments arrive as one word each.
    lab.fake_agent(&format!("[ \"$1\" = status ] && [ $# = 1 ] || exit 2\ncat <<'EOF'\n{json}\nEOF\n"));
    let guest = lab.connect();

    let got = AgentClient::new(&guest).status().unwrap();

    assert_eq!(got, status);
}

#[test]
fn agent_call_passes_awkward_arguments_intact() {
    let lab = Lab::start();
    // Answers with its arguments joined by '|' as the payload.
    lab.fake_agent(&format!(
        "printf '{{\"protocol\":{PROTOCOL_VERSION},\"agent_version\":\"t\",\"ok\":\"%s\"}}' \"$(printf '%s|' \"$@\")\"\n"
    ));
    let guest = lab.connect();

    let got: String = AgentClient::new(&guest).call(&["it's", "a b", "$HOME", "*"], None).unwrap();

    assert_eq!(got, "it's|a b|$HOME|*|");
}

#[test]
fn agent_refuses_other_protocol() {
    let lab = Lab::start();
    lab.fake_agent("echo '{\"protocol\":999,\"agent_version\":\"9.9.9\",\"ok\":{}}'\n");
    let guest = lab.connect();

    let err = AgentClient::new(&guest).status().unwrap_err();

    assert!(matches!(err, GuestError::ProtocolMismatch { theirs: 999, .. }), "{err:?}");
}

#[test]
fn agent_missing_is_named() {
    let lab = Lab::start();
    let guest = lab.connect();

    let err = AgentClient::new(&guest).status().unwrap_err();

    assert!(matches!(err, GuestError::AgentMissing { .. }), "{err:?}");
}
