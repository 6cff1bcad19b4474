//! Making running SSH servers offer new host keys to new connections,
//! without ending the sessions they already serve (the controller's own
//! session among them).
//!
//! - dropbear loads its keys once, in the listener. The listener is stopped
//!   (SIGTERM ends the listener only: each session runs in a child of its
//!   own, which lives on) and started again from its own command line,
//!   environment, working directory and stderr (/proc/PID/{cmdline,environ,
//!   cwd,fd/2}). New connections are refused for the moment in between.
//!   A listener in the foreground (`-F`) belongs to a supervisor (systemd,
//!   runit...), which would start a second copy; it is left alone and the
//!   answer says so. `-i` (inetd) servers load the keys per connection.
//! - OpenSSH's sshd re-executes itself on SIGHUP, re-reading its keys; its
//!   sessions are unaffected (this is what `systemctl reload ssh` does).

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use envclone_agent::{SshServer, SshServerReload};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::IdentityError;
use crate::wait;

/// Bound on the old listener exiting and on the new one accepting.
const LISTENER_DEADLINE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub zombie: bool,
    pub args: Vec<OsString>,
}

/// `(comm) state ppid` from /proc/PID/stat; the name may hold spaces and
/// parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<(String, bool, i32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state == "Z", ppid))
}

fn read_process(pid: i32) -> Option<Process> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let (comm, zombie, ppid) = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
    let args = split_nul(&fs::read(dir.join("cmdline")).ok()?);
    Some(Process { pid, ppid, comm, zombie, args })
}

fn split_nul(bytes: &[u8]) -> Vec<OsString> {
    bytes.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| OsString::from_vec(a.to_vec())).collect()
}

pub fn processes() -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_process)
        .collect()
}

/// Live processes named `comm` whose parent is not: listeners, not the
/// per-connection children they fork.
pub fn listeners<'a>(all: &'a [Process], comm: &str) -> Vec<&'a Process> {
    let comm_of = |pid: i32| all.iter().find(|p| p.pid == pid).map(|p| p.comm.as_str());
    all.iter().filter(|p| p.comm == comm && !p.zombie && comm_of(p.ppid) != Some(comm)).collect()
}

/// Where sshd records its listener's pid (`PidFile`: Debian's, then the default).
const SSHD_PID_FILES: &[&str] = &["/run/sshd.pid", "/var/run/sshd.pid"];

/// OpenSSH listeners: the pid in sshd's pid file, else the `sshd`
/// processes [`is_sshd_listener`] recognises. A per-connection sshd (its
/// privilege-separated children, or one started by inetd or a systemd
/// socket with `-i`) must not get the SIGHUP: it would end that session.
pub fn sshd_listeners(all: &[Process]) -> Vec<&Process> {
    let recorded: Vec<i32> =
        SSHD_PID_FILES.iter().filter_map(|f| fs::read_to_string(f).ok()?.trim().parse().ok()).collect();
    let by_pid_file: Vec<&Process> =
        all.iter().filter(|p| p.comm == "sshd" && !p.zombie && recorded.contains(&p.pid)).collect();
    if !by_pid_file.is_empty() {
        return by_pid_file;
    }
    listeners(all, "sshd").into_iter().filter(|p| is_sshd_listener(&p.args)).collect()
}

/// sshd titles its listener `sshd: /usr/sbin/sshd -D [listener] ...`
/// (OpenSSH 7.9 and later); older ones keep their command line, which then
/// starts with the sshd binary and has no `-i`. Session processes are
/// titled `sshd: user [priv]` and the like.
fn is_sshd_listener(args: &[OsString]) -> bool {
    let words: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if words.iter().any(|w| w.contains("[listener]")) {
        return true;
    }
    let program = words.first().map(|w| w.rsplit('/').next().unwrap_or(w)).unwrap_or("");
    program == "sshd" && !words.iter().skip(1).any(|w| w == "-i")
}

/// What a dropbear command line says about keys, ports and mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropbearOptions {
    pub host_keys: Vec<PathBuf>,
    /// `-p` values: `port`, `address:port` or `[v6]:port`.
    pub ports: Vec<String>,
    pub foreground: bool,
    pub inetd: bool,
}

/// dropbear's options that take a value, attached (`-p22`) or next (`-p 22`).
const DROPBEAR_VALUE_OPTIONS: &[u8] = b"bcrpPWKIGTDA";

pub fn dropbear_options(args: &[OsString]) -> DropbearOptions {
    let mut options = DropbearOptions::default();
    let mut words = args.iter().skip(1).map(|a| a.as_bytes());
    while let Some(word) = words.next() {
        let Some(flags) = word.strip_prefix(b"-") else { continue };
        for (i, &flag) in flags.iter().enumerate() {
            if DROPBEAR_VALUE_OPTIONS.contains(&flag) {
                let attached = &flags[i + 1..];
                let value = if attached.is_empty() { words.next().unwrap_or_default() } else { attached };
                let value = String::from_utf8_lossy(value).into_owned();
                match flag {
                    b'r' => options.host_keys.push(PathBuf::from(value)),
                    b'p' => options.ports.push(value),
                    _ => {}
                }
                break;
            }
            match flag {
                b'F' => options.foreground = true,
                b'i' => options.inetd = true,
                _ => {}
            }
        }
    }
    options
}

/// Where to check that a listener accepts: its `-p` addresses, loopback
/// for a bare port, 22 when none is given. Names that are not IP literals
/// are skipped.
fn probe_addresses(ports: &[String]) -> Vec<SocketAddr> {
    if ports.is_empty() {
        return vec![SocketAddr::from(([127, 0, 0, 1], 22))];
    }
    ports
        .iter()
        .filter_map(|p| match p.parse::<u16>() {
            Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
            Err(_) => p.parse::<SocketAddr>().ok(),
        })
        .collect()
}

/// Stops a dropbear listener and starts it again as it was started.
pub fn restart_dropbear(listener: &Process) -> Result<SshServerReload, IdentityError> {
    let options = dropbear_options(&listener.args);
    let untouched = |note: &str| SshServerReload {
        server: SshServer::Dropbear,
        previous_pid: listener.pid,
        pid: None,
        serves_new_keys: false,
        note: Some(note.to_string()),
    };
    if options.foreground {
        return Ok(untouched(
            "runs in the foreground (-F) under a supervisor: restart its service for new connections to get the new keys",
        ));
    }
    let dir = PathBuf::from(format!("/proc/{}", listener.pid));
    let exe = match fs::read_link(dir.join("exe")) {
        Ok(exe) if !exe.as_os_str().as_bytes().ends_with(b" (deleted)") => exe,
        _ => return Ok(untouched("its executable is gone (upgraded?): restart it by hand")),
    };
    let environment: Vec<(OsString, OsString)> = fs::read(dir.join("environ"))
        .map(|bytes| split_nul(&bytes))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pair| {
            let bytes = pair.into_vec();
            let at = bytes.iter().position(|b| *b == b'=')?;
            Some((OsString::from_vec(bytes[..at].to_vec()), OsString::from_vec(bytes[at + 1..].to_vec())))
        })
        .collect();
    let cwd = fs::read_link(dir.join("cwd")).unwrap_or_else(|_| PathBuf::from("/"));
    let stderr = stderr_like(&dir.join("fd/2"));

    let pid = Pid::from_raw(listener.pid);
    kill(pid, Signal::SIGTERM).map_err(|source| IdentityError::Signal {
        server: "dropbear",
        pid: listener.pid,
        source,
    })?;
    wait::until(LISTENER_DEADLINE, POLL, || read_process(listener.pid).map_or(true, |p| p.zombie).then_some(()))
        .ok_or(IdentityError::ListenerStuck { server: "dropbear", pid: listener.pid, waited: LISTENER_DEADLINE })?;

    let argv0 = listener.args.first().cloned().unwrap_or_else(|| exe.clone().into_os_string());
    let command = format!(
        "{} {}",
        exe.display(),
        listener.args.iter().skip(1).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    // Without -F dropbear daemonises: this child returns once it has forked.
    let status = Command::new(&exe)
        .arg0(argv0)
        .args(listener.args.iter().skip(1))
        .env_clear()
        .envs(environment)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()
        .map_err(|source| IdentityError::Spawn { command: command.clone(), source })?;
    if !status.success() {
        return Err(IdentityError::CommandFailed { command, status: status.code(), stderr: String::new() });
    }
    for address in probe_addresses(&options.ports) {
        wait::until(LISTENER_DEADLINE, POLL, || TcpStream::connect_timeout(&address, POLL * 10).ok().map(drop))
            .ok_or_else(|| IdentityError::ListenerNotBack {
                server: "dropbear",
                address: address.to_string(),
                waited: LISTENER_DEADLINE,
            })?;
    }
    let all = processes();
    let new_pid = listeners(&all, &listener.comm).into_iter().find(|p| p.args == listener.args).map(|p| p.pid);
    Ok(SshServerReload {
        server: SshServer::Dropbear,
        previous_pid: listener.pid,
        pid: new_pid,
        serves_new_keys: true,
        note: None,
    })
}

/// The file the old listener logged to (its fd 2), opened for appending;
/// /dev/null when that was not a regular file.
fn stderr_like(fd: &Path) -> Stdio {
    let target = fs::read_link(fd).ok().filter(|t| t.is_absolute() && t.is_file());
    target.and_then(|t| fs::OpenOptions::new().append(true).open(t).ok()).map_or_else(Stdio::null, Stdio::from)
}

/// SIGHUP: sshd re-executes itself with the same pid and re-reads its keys.
pub fn reload_sshd(listener: &Process) -> Result<SshServerReload, IdentityError> {
    kill(Pid::from_raw(listener.pid), Signal::SIGHUP).map_err(|source| IdentityError::Signal {
        server: "sshd",
        pid: listener.pid,
        source,
    })?;
    Ok(SshServerReload {
        server: SshServer::Openssh,
        previous_pid: listener.pid,
        pid: Some(listener.pid),
        serves_new_keys: true,
        note: Some("reloaded with SIGHUP, which makes sshd re-read its host keys".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn stat_names_may_hold_spaces_and_parentheses() {
        assert_eq!(parse_stat("42 (dropbear) S 1 42 42 0 -1"), Some(("dropbear".into(), false, 1)));
        assert_eq!(parse_stat("43 (a (b) c) Z 42 1"), Some(("a (b) c".into(), true, 42)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn dropbear_options_by_table() {
        let lab = dropbear_options(&os(&["dropbear", "-R", "-E", "-r", "/etc/dropbear/k", "-p", "22"]));
        assert_eq!(
            lab,
            DropbearOptions {
                host_keys: vec!["/etc/dropbear/k".into()],
                ports: vec!["22".into()],
                ..Default::default()
            }
        );
        let debian = dropbear_options(&os(&["/usr/sbin/dropbear", "-EF", "-p22", "-r/k1", "-W", "65536", "-rk2"]));
        assert_eq!(debian.host_keys, [PathBuf::from("/k1"), PathBuf::from("k2")]);
        assert_eq!(debian.ports, ["22"]);
        assert!(debian.foreground && !debian.inetd);
        let inetd = dropbear_options(&os(&["dropbear", "-i", "-s"]));
        assert!(inetd.inetd);
        // A value that looks like a flag is still a value.
        let odd = dropbear_options(&os(&["dropbear", "-b", "-F"]));
        assert!(!odd.foreground);
    }

    #[test]
    fn probe_addresses_default_to_loopback_port_22() {
        assert_eq!(probe_addresses(&[]), ["127.0.0.1:22".parse::<SocketAddr>().unwrap()]);
        assert_eq!(
            probe_addresses(&["2222".into(), "10.0.0.5:22".into(), "[::1]:22".into(), "host:22".into()]),
            [
                "127.0.0.1:2222".parse::<SocketAddr>().unwrap(),
                "10.0.0.5:22".parse().unwrap(),
                "[::1]:22".parse().unwrap()
            ]
        );
    }

    #[test]
    fn listeners_are_the_processes_whose_parent_has_another_name() {
        let process = |pid, ppid, comm: &str, zombie| Process { pid, ppid, comm: comm.into(), zombie, args: vec![] };
        let all = [
            process(1, 0, "init", false),
            process(10, 1, "dropbear", false),
            process(11, 10, "dropbear", false),
            process(12, 11, "sh", false),
            process(13, 1, "dropbear", true),
            process(20, 1, "sshd", false),
        ];
        let pids: Vec<i32> = listeners(&all, "dropbear").iter().map(|p| p.pid).collect();
        assert_eq!(pids, [10]);
        assert_eq!(listeners(&all, "sshd").len(), 1);
    }

    #[test]
    fn sshd_listeners_are_told_from_session_processes() {
        let listener = ["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"];
        assert!(is_sshd_listener(&os(&listener)));
        assert!(is_sshd_listener(&os(&["/usr/sbin/sshd", "-D"])));
        assert!(is_sshd_listener(&os(&["sshd"])));
        assert!(!is_sshd_listener(&os(&["/usr/sbin/sshd", "-i"])));
        assert!(!is_sshd_listener(&os(&["sshd: root [priv]"])));
        assert!(!is_sshd_listener(&os(&["sshd: root@notty"])));
        assert!(!is_sshd_listener(&[]));
    }

    #[test]
    fn this_process_is_found_in_proc() {
        let me = read_process(std::process::id() as i32).unwrap();
        assert!(!me.zombie);
        assert!(!me.args.is_empty());
    }
}
