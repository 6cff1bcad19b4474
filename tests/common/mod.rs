//! Shared by the end-to-end test binaries: a lab of real TCG guests under a
//! private libvirtd in a network namespace, brought up once per test binary
//! under its own name and taken down when dropped (whatever the test did).
//! Needs root and scripts/install-deps.sh; scripts/build.sh builds the
//! static agent the guests run.
#![allow(dead_code)] // each test binary uses a different part

pub mod traffic;

use envclone::config::Config;
use envclone::guest::endpoint::{ssh_options, ssh_target};
use envclone::guest::{GuestSession, SshTarget};
use envclone::hypervisor::LibvirtHypervisor;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// The lab `demo` environment's web page, at the web VM's address.
pub const DEMO_WEB_URL: &str = "http://10.77.1.11/";

/// Generous: the lab's TCG guests are slow when other labs run too.
const PAGE_WITHIN: Duration = Duration::from_secs(180);

pub struct LabUnderTest {
    /// `<base>-<pid>`: two runs of the suite at once (a developer's and
    /// CI's, say) never share a namespace or a bridge.
    pub name: String,
    labs_dir: tempfile::TempDir,
}

impl LabUnderTest {
    /// A lab that is not up yet.
    pub fn new(base: &str) -> Self {
        let name = format!("{base}-{}", std::process::id());
        LabUnderTest { name, labs_dir: tempfile::tempdir().expect("temporary labs dir") }
    }

    /// A lab that is up, with both agents answering.
    pub fn up(name: &str) -> Self {
        let lab = LabUnderTest::new(name);
        lab.json(&["lab", "up", "--json"]);
        lab
    }

    /// A lab with `hosts` hosts (`lab up --hosts N`): with 2, hosts `a`
    /// (demo) and `b`, both reached over SSH only; both agents answering.
    /// The `lab up` report.
    pub fn up_hosts(name: &str, hosts: u8) -> (Self, Value) {
        let lab = LabUnderTest::new(name);
        let report = lab.json(&["lab", "up", "--json", "--hosts", &hosts.to_string()]);
        (lab, report)
    }

    /// The network namespace of a two-host lab's host (`a` or `b`).
    pub fn host_netns(&self, host: &str) -> String {
        format!("envclone-{}-{host}", self.name)
    }

    /// An SSH session to a two-host lab's host, as its `[hosts.NAME.ssh]`
    /// settings say (the host key checked against their known_hosts).
    pub fn host_session(&self, host: &str) -> GuestSession {
        let config = self.config();
        let ssh = &config.hosts[host].ssh;
        let target = SshTarget {
            host: ssh.address.clone(),
            port: ssh.port,
            user: ssh.user.clone(),
            netns: None,
            host_key_alias: None,
        };
        let mut options = ssh_options(&config.controller);
        options.key = ssh.key.clone();
        options.known_hosts = ssh.known_hosts.clone();
        GuestSession::connect(&target, &options).expect("SSH into the lab host")
    }

    /// Runs the real `envclone` binary against this lab.
    pub fn envclone(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run envclone")
    }

    /// Starts the real `envclone` binary against this lab without waiting
    /// for it (stdout and stderr piped): for acting on the lab while it
    /// runs.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start envclone")
    }

    /// The journaled steps of the newest completed `kind` operation on
    /// `env` (from the lab's catalog), each with its start and end.
    pub fn last_steps(&self, kind: envclone::catalog::OperationKind, env: &str) -> Vec<envclone::catalog::Step> {
        let catalog = envclone::catalog::Catalog::open(&self.config().controller.state_dir).expect("open the catalog");
        let operation = catalog
            .operations_in(envclone::catalog::OperationState::Completed)
            .expect("list operations")
            .into_iter()
            .filter(|o| o.kind == kind && o.env == env)
            .max_by_key(|o| o.id)
            .unwrap_or_else(|| panic!("no completed {kind} of {env}"));
        catalog.steps(operation.id).expect("list steps")
    }

    /// Runs `envclone` so that it aborts at the crash point `point`
    /// (`op:step`, see `envclone::ops::crashpoint`).
    pub fn envclone_crashing_at(&self, args: &[&str], point: &str) -> Output {
        self.command(args).env(envclone::ops::crashpoint::VARIABLE, point).output().expect("run envclone")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_envclone"));
        command
            .args(args)
            .env("ENVCLONE_LAB", &self.name)
            .env("ENVCLONE_LABS_DIR", self.labs_dir.path())
            .env("ENVCLONE_CONFIG", self.config_path())
            .env_remove("ENVCLONE_LIBVIRT_URI")
            .env_remove(envclone::ops::crashpoint::VARIABLE);
        command
    }

    /// Runs `envclone` with `--json` among `args`, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let output = self.envclone(args);
        assert!(output.status.success(), "envclone {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("JSON on stdout")
    }

    pub fn dir(&self) -> PathBuf {
        self.labs_dir.path().join(&self.name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("envclone.toml")
    }

    pub fn netns(&self) -> String {
        format!("envclone-{}", self.name)
    }

    pub fn config(&self) -> Config {
        envclone::config::load(&self.config_path()).expect("lab config")
    }

    /// Rewrites the lab's config file with `edit` applied (`lab up` writes
    /// it afresh: edit after it).
    pub fn edit_config(&self, edit: impl FnOnce(&mut Config)) {
        let mut config = self.config();
        edit(&mut config);
        std::fs::write(self.config_path(), envclone::config::to_toml(&config)).expect("write the lab config");
    }

    /// A two-host lab's host's libvirtd log, as the lab (the hardware) keeps it.
    pub fn host_libvirtd_log(&self, host: &str) -> String {
        let path = self.dir().join("hosts").join(host).join("libvirt/log/libvirtd.log");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// A fresh SSH session to a VM of the `demo` environment (`web` or `db`).
    pub fn session(&self, vm: &str) -> GuestSession {
        let config = self.config();
        let (_, vm_config) = config.vm("demo", vm).expect("demo VM");
        GuestSession::connect(&ssh_target(&vm_config.agent), &ssh_options(&config.controller))
            .expect("SSH into the lab VM")
    }

    /// Runs a shell command in a VM (on a fresh session) and returns its stdout.
    pub fn sh(&self, vm: &str, command: &str) -> String {
        run(&self.session(vm), command)
    }

    /// `virsh -c <the lab's libvirtd> ARGS...`; asserts success, returns stdout.
    pub fn virsh(&self, args: &[&str]) -> String {
        let uri = self.config().controller.libvirt_uri;
        let output = Command::new("virsh").arg("-c").arg(&uri).args(args).output().expect("run virsh");
        assert!(output.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        stdout(&output)
    }

    /// The lab's libvirtd, through envclone's own adapter.
    pub fn hypervisor(&self) -> LibvirtHypervisor {
        LibvirtHypervisor::connect(&self.config().controller.libvirt_uri).expect("connect to the lab's libvirtd")
    }

    /// HTTP GET through curl run inside the lab's namespace.
    pub fn curl(&self, url: &str) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.netns(), "curl", "-sS", "--max-time", "10", url])
            .output()
            .expect("run curl");
        assert!(output.status.success(), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for LabUnderTest {
    fn drop(&mut self) {
        // Idempotent: a no-op when the test already took the lab down.
        let output = self.envclone(&["lab", "down"]);
        if !output.status.success() {
            eprintln!("lab down during cleanup failed: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
}

/// Runs a shell command on `session`, asserts it succeeded, returns stdout.
pub fn run(session: &GuestSession, command: &str) -> String {
    let output = session.exec(command, None).expect("exec");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status, 0, "`{command}`: {text} {}", String::from_utf8_lossy(&output.stderr));
    text
}

/// Waits for `child` to end (at most `within`); its output. A child still
/// running then is killed and the test fails.
pub fn wait_for_child(mut child: std::process::Child, within: Duration) -> Output {
    let ended = envclone::wait::until("envclone to end", within, Duration::from_millis(100), || child.try_wait());
    if let Err(e) = ended {
        let _ = child.kill();
        panic!("{e}");
    }
    child.wait_with_output().expect("envclone's output")
}

/// Writes `content` to `path` in the guest.
pub fn put(session: &GuestSession, path: &str, content: &[u8]) {
    let output = session.exec(&format!("cat > {path}"), Some(content)).expect("exec");
    assert_eq!(output.status, 0, "writing {path}: {}", String::from_utf8_lossy(&output.stderr));
}

/// `virsh -c URI ARGS...` with nothing to answer a prompt on stdin.
pub fn virsh_at(uri: &str, args: &[&str]) -> Output {
    Command::new("virsh").arg("-c").arg(uri).args(args).stdin(std::process::Stdio::null()).output().expect("run virsh")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `demo`'s web page as seen from `netns` (the lab's, or a clone's or a
/// drill's gateway namespace); empty when nothing answers.
pub fn web_page(netns: &str) -> String {
    let output =
        Command::new("ip").args(["netns", "exec", netns, "curl", "-sS", "--max-time", "10", DEMO_WEB_URL]).output();
    output.map(|o| stdout(&o)).unwrap_or_default()
}

/// Waits until `demo`'s web page seen from `netns` shows `text`; the page.
pub fn wait_for_web_page(netns: &str, text: &str) -> String {
    envclone::wait::until(
        &format!("web's page in {netns} to show {text:?}"),
        PAGE_WITHIN,
        Duration::from_millis(500),
        || {
            let page = web_page(netns);
            Ok::<_, std::io::Error>(page.contains(text).then_some(page))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
