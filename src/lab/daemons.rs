//! The lab's private libvirt: its own virtlogd and libvirtd, started inside
//! the lab's network namespace AND a private mount namespace in which the
//! lab's directories are bind-mounted over /run/libvirt, /etc/libvirt,
//! /var/lib/libvirt... A host whose own libvirtd runs keeps it untouched:
//! the two never share a socket, a config, a domain or a network. The
//! controller reaches the private one through its socket path.
//!
//! The same code runs each host of a two-host lab ([`super::hosts`]): an
//! [`Instance`] is one such libvirt (its directory), and the host adds its
//! own mounts (its storage, its `/root/.ssh`) to the script that starts the
//! daemons, so they land in the daemons' mount namespace and nowhere else.

use super::{host, LabError};
use crate::wait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// libvirtd answers within a second or two here; a slow machine under load
/// gets the rest.
const LIBVIRTD_READY_WITHIN: Duration = Duration::from_secs(30);

/// (directory under the lab's libvirt dir, system path it replaces)
const BIND_MOUNTS: &[(&str, &str)] = &[
    ("run", "/run/libvirt"),
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// QEMU runs as root with no relabelling: lab images sit in a cache shared
/// by several labs, and per-lab chown/restore of a shared backing file by
/// two libvirtds that do not know each other would race. Production hosts
/// keep their own libvirt settings; this file is only the lab's.
const QEMU_CONF: &str =
    "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = \"none\"\n";

/// One private libvirt: the directory holding its config, state, socket,
/// pid files and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    dir: PathBuf,
}

impl Instance {
    pub fn new(dir: PathBuf) -> Self {
        Instance { dir }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt-sock")
    }
    pub fn libvirtd_pid(&self) -> PathBuf {
        self.dir.join("libvirtd.pid")
    }
    pub fn virtlogd_pid(&self) -> PathBuf {
        self.dir.join("virtlogd.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("daemons.log")
    }
    /// What only the lab itself uses: the socket, as a local path.
    pub fn uri(&self) -> String {
        format!("qemu:///system?socket={}", self.socket().display())
    }
    /// The running libvirtd, if any: the process whose namespaces the
    /// instance's other processes (dropbear) join.
    pub fn libvirtd(&self) -> Option<Pid> {
        live_pid(&self.libvirtd_pid(), "libvirtd")
    }
}

pub fn is_running(instance: &Instance) -> bool {
    instance.libvirtd().is_some() && UnixStream::connect(instance.socket()).is_ok()
}

/// Starts virtlogd and libvirtd in `netns` and a private mount namespace,
/// after `setup` (shell lines, run in that mount namespace first).
pub fn start(instance: &Instance, netns: &str, setup: &str) -> Result<(), LabError> {
    if is_running(instance) {
        return Ok(());
    }
    // A half-started instance (crash, killed lab) is cleared first.
    stop(instance)?;
    write_config(instance)?;
    let script = format!("{setup}{}", start_script(instance)?);
    let log_path = instance.log();
    let log = std::fs::File::create(&log_path).map_err(|source| LabError::io("create", &log_path, source))?;
    let log_err = log.try_clone().map_err(|source| LabError::io("open", &log_path, source))?;
    host::run_command(
        Command::new("ip")
            .args(["netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "sh", "-ec", &script])
            .stdout(log)
            .stderr(log_err),
    )?;
    let socket = instance.socket();
    wait::until("the lab's libvirtd to accept connections", LIBVIRTD_READY_WITHIN, Duration::from_millis(100), || {
        UnixStream::connect(&socket).map(Some)
    })
    .map_err(|e| LabError::DaemonStart { log: log_path, detail: e.to_string() })?;
    Ok(())
}

/// Stops and undefines every domain and network of a lab libvirtd (a lab's
/// or a lab host's, before its daemons stop); their names.
pub fn clear(hv: &crate::hypervisor::LibvirtHypervisor) -> Result<(Vec<String>, Vec<String>), LabError> {
    use crate::hypervisor::Hypervisor as _;
    let mut domains = Vec::new();
    for name in hv.domain_names().map_err(LabError::hypervisor("list domains"))? {
        hv.destroy_domain(&name).map_err(LabError::hypervisor(format!("stop {name}")))?;
        hv.undefine_domain(&name).map_err(LabError::hypervisor(format!("undefine {name}")))?;
        domains.push(name);
    }
    let mut networks = Vec::new();
    for name in hv.network_names().map_err(LabError::hypervisor("list networks"))? {
        hv.destroy_network(&name).map_err(LabError::hypervisor(format!("stop network {name}")))?;
        hv.undefine_network(&name).map_err(LabError::hypervisor(format!("undefine network {name}")))?;
        networks.push(name);
    }
    Ok((domains, networks))
}

/// Stops both daemons (SIGTERM, then SIGKILL after a deadline). Guests keep
/// running when libvirtd stops, so callers destroy them first.
pub fn stop(instance: &Instance) -> Result<(), LabError> {
    for (pid_file, name) in [(instance.libvirtd_pid(), "libvirtd"), (instance.virtlogd_pid(), "virtlogd")] {
        if let Some(pid) = live_pid(&pid_file, name) {
            terminate(pid)?;
        }
        let _ = std::fs::remove_file(&pid_file);
    }
    Ok(())
}

/// SIGTERM, wait up to 10 s, then SIGKILL and wait again.
pub fn terminate(pid: Pid) -> Result<(), LabError> {
    for (signal, grace) in [(Signal::SIGTERM, 10), (Signal::SIGKILL, 5)] {
        if kill(pid, signal).is_err() {
            return Ok(()); // already gone
        }
        let gone = wait::until::<(), std::io::Error, _>(
            "a lab process to exit",
            Duration::from_secs(grace),
            Duration::from_millis(50),
            || Ok(process_gone(pid).then_some(())),
        );
        if gone.is_ok() {
            return Ok(());
        }
    }
    Err(LabError::ProcessWontDie { pid: pid.as_raw() })
}

pub fn process_gone(pid: Pid) -> bool {
    // A zombie still answers kill(0); only its state line tells it is dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// The process named in `pid_file` if it still runs as `expected_comm` (a
/// stale file may name a recycled pid).
pub fn live_pid(pid_file: &Path, expected_comm: &str) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == expected_comm && !process_gone(Pid::from_raw(pid))).then(|| Pid::from_raw(pid))
}

fn write_config(instance: &Instance) -> Result<(), LabError> {
    let base = instance.dir();
    for (dir, _) in BIND_MOUNTS {
        let dir = base.join(dir);
        std::fs::create_dir_all(&dir).map_err(|source| LabError::io("create", &dir, source))?;
    }
    for (file, text) in [("etc/qemu.conf", QEMU_CONF), ("etc/libvirtd.conf", ""), ("etc/virtlogd.conf", "")] {
        let path = base.join(file);
        std::fs::write(&path, text).map_err(|source| LabError::io("write", &path, source))?;
    }
    Ok(())
}

fn start_script(instance: &Instance) -> Result<String, LabError> {
    let base = instance.dir();
    let mut script = String::new();
    for (dir, target) in BIND_MOUNTS {
        let source = quote(&base.join(dir))?;
        script.push_str(&format!("mkdir -p {target}\nmount --bind {source} {target}\n"));
    }
    script.push_str(&format!(
        "virtlogd -d -p {}\nlibvirtd -d -p {}\n",
        quote(&instance.virtlogd_pid())?,
        quote(&instance.libvirtd_pid())?
    ));
    Ok(script)
}

/// Single-quotes a path for `sh`. Lab paths come from our own settings;
/// one with a quote in it is refused rather than escaped.
pub fn quote(path: &Path) -> Result<String, LabError> {
    let text =
        path.to_str().filter(|t| !t.contains('\'')).ok_or_else(|| LabError::BadPath { path: path.to_path_buf() })?;
    Ok(format!("'{text}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_script_binds_every_libvirt_dir_before_starting_daemons() {
        let paths = super::super::LabPaths::new(Path::new("/tmp/labs"), Path::new("/tmp/cache"), "t");
        let script = start_script(&paths.libvirt_instance()).unwrap();
        let first_daemon = script.find("virtlogd -d").unwrap();
        for (dir, target) in BIND_MOUNTS {
            let bind = script.find(&format!("mount --bind '/tmp/labs/t/libvirt/{dir}' {target}")).unwrap();
            assert!(bind < first_daemon, "{target} bound after the daemons started");
        }
        assert!(script.contains("libvirtd -d -p '/tmp/labs/t/libvirt/libvirtd.pid'"));
    }

    #[test]
    fn quote_refuses_paths_with_quotes() {
        assert!(matches!(quote(Path::new("/tmp/it's")), Err(LabError::BadPath { .. })));
    }
}
