//! One lab host as a machine: its network namespace, its disk (an ext4
//! image only its mount namespace has mounted), its libvirtd and virtlogd
//! ([`daemons`], in that mount namespace) and its SSH server (a dropbear
//! that enters both namespaces, so `virt-ssh-helper` finds that libvirtd's
//! socket). Power on is [`start`]; a power loss is [`kill`].
//!
//! ```text
//!   <lab>/hosts/<h>/
//!     libvirt/            the host's /run/libvirt, /etc/libvirt, ... (bind mounts);
//!                         etc/hooks/qemu.d/envclone and lib/envclone-gate/: the start gate
//!     storage.ext4        mounted at /srv/envclone in the host's mount namespace only
//!     ssh/authorized_keys mounted over /root/.ssh in the host's mount namespace only
//!     host_key.dropbear   its SSH host key (pinned in keys/hosts_known_hosts)
//!     dropbear.pid, dropbear.log
//! ```

use super::STORAGE;
use crate::lab::daemons::{self, quote, Instance};
use crate::lab::{host, keys, namespace, LabError};
use crate::wait;
use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Sparse: the file only takes what is written into it.
const STORAGE_BYTES: u64 = 8 << 30;
const SSH_PORT: u16 = 22;
/// dropbear listens within milliseconds; the rest is for a loaded machine.
const SSH_READY_WITHIN: Duration = Duration::from_secs(15);
/// How long a status probe may wait for a host's SSH port.
const SSH_PROBE_WITHIN: Duration = Duration::from_secs(1);
/// Killed processes leave within milliseconds; this bounds a stuck one.
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// One host of a two-host lab, and where its files are.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    dir: PathBuf,
}

impl Machine {
    pub fn new(name: &str, netns: String, address: Ipv4Addr, hosts_dir: &Path) -> Self {
        Machine { name: name.to_string(), netns, address, dir: hosts_dir.join(name) }
    }

    pub fn libvirt(&self) -> Instance {
        Instance::new(self.dir.join("libvirt"))
    }
    pub fn storage_image(&self) -> PathBuf {
        self.dir.join("storage.ext4")
    }
    fn ssh_dir(&self) -> PathBuf {
        self.dir.join("ssh")
    }
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("host_key.dropbear")
    }
    fn dropbear_pid(&self) -> PathBuf {
        self.dir.join("dropbear.pid")
    }
    fn dropbear_log(&self) -> PathBuf {
        self.dir.join("dropbear.log")
    }

    /// A path inside the host's mount namespace as the lab (the "hardware",
    /// never an envclone operation) reaches it while the host runs.
    pub fn inside(&self, path: &Path) -> Result<PathBuf, LabError> {
        let pid = self.libvirtd().ok_or_else(|| LabError::HostDown { host: self.name.clone() })?;
        Ok(Path::new("/proc").join(pid.to_string()).join("root").join(path.strip_prefix("/").unwrap_or(path)))
    }

    /// Runs `program args...` in the host's mount namespace (its tools see
    /// its storage).
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        let pid = self.libvirtd().ok_or_else(|| LabError::HostDown { host: self.name.clone() })?;
        let mnt = format!("--mount=/proc/{pid}/ns/mnt");
        host::run_command(Command::new("nsenter").arg(mnt).arg(program).args(args))
    }

    pub fn libvirtd(&self) -> Option<Pid> {
        self.libvirt().libvirtd()
    }

    pub fn libvirtd_running(&self) -> bool {
        daemons::is_running(&self.libvirt())
    }

    /// dropbear runs and the host's SSH port answers from the controller.
    pub fn ssh_up(&self) -> bool {
        daemons::live_pid(&self.dropbear_pid(), "dropbear").is_some()
            && TcpStream::connect_timeout(&self.ssh_address(), SSH_PROBE_WITHIN).is_ok()
    }

    fn ssh_address(&self) -> SocketAddr {
        SocketAddr::from((self.address, SSH_PORT))
    }

    /// Powers the host on (each step skipped when done): namespace, disk,
    /// login keys, the start gate's hook, daemons with the disk mounted,
    /// dropbear. Its link must
    /// exist for dropbear to listen on its address: see [`super::link`].
    pub fn start(&self, authorized_key: &str) -> Result<keys::KeyPair, LabError> {
        fs::create_dir_all(&self.dir).map_err(|source| LabError::io("create", &self.dir, source))?;
        namespace::ensure(&self.netns)?;
        self.ensure_storage()?;
        self.write_authorized_key(authorized_key)?;
        let host_key = keys::ensure_dropbear_key(&self.host_key())?;
        if !self.libvirtd_running() {
            // A power cycle empties /run: the killed daemons' sockets, pid
            // files and the dead QEMUs' status must not look alive.
            let run = self.libvirt().dir().join("run");
            if run.exists() {
                fs::remove_dir_all(&run).map_err(|source| LabError::io("remove", &run, source))?;
            }
        }
        // libvirt looks for hooks only when libvirtd starts: the gate's first.
        super::gate::install_hook(&self.libvirt())?;
        daemons::start(&self.libvirt(), &self.netns, &self.mount_script()?)?;
        self.start_sshd()?;
        Ok(host_key)
    }

    /// Shell lines run in the daemons' mount namespace before they start.
    /// A tmpfs over /srv gives the mount point a place that exists in this
    /// namespace only (a directory made in the shared /srv would show up
    /// on the controller, and removing it there would unmount the disk).
    fn mount_script(&self) -> Result<String, LabError> {
        Ok(format!(
            "mount -t tmpfs -o mode=0755,size=1m envclone-srv /srv\n\
             mkdir -p {STORAGE}\n\
             mount -o loop {} {STORAGE}\n\
             mkdir -p -m 0700 /root/.ssh\n\
             mount --bind {} /root/.ssh\n",
            quote(&self.storage_image())?,
            quote(&self.ssh_dir())?
        ))
    }

    fn ensure_storage(&self) -> Result<(), LabError> {
        let image = self.storage_image();
        if image.exists() {
            return Ok(());
        }
        let partial = image.with_extension("partial");
        let file = fs::File::create(&partial).map_err(|source| LabError::io("create", &partial, source))?;
        file.set_len(STORAGE_BYTES).map_err(|source| LabError::io("size", &partial, source))?;
        let partial_text = partial.to_string_lossy();
        host::run(
            "mkfs.ext4",
            &["-q", "-F", "-L", "envclone-host", "-E", "lazy_itable_init=1,lazy_journal_init=1", &partial_text],
        )?;
        fs::rename(&partial, &image).map_err(|source| LabError::io("rename", &partial, source))
    }

    fn write_authorized_key(&self, public_line: &str) -> Result<(), LabError> {
        let dir = self.ssh_dir();
        fs::create_dir_all(&dir).map_err(|source| LabError::io("create", &dir, source))?;
        // dropbear refuses keys in a directory others can write to.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|source| LabError::io("chmod", &dir, source))?;
        let file = dir.join("authorized_keys");
        fs::write(&file, format!("{public_line}\n")).map_err(|source| LabError::io("write", &file, source))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
            .map_err(|source| LabError::io("chmod", &file, source))
    }

    /// dropbear in the libvirtd's network and mount namespaces, listening
    /// on the host's address only.
    fn start_sshd(&self) -> Result<(), LabError> {
        if self.ssh_up() {
            return Ok(());
        }
        if let Some(stale) = daemons::live_pid(&self.dropbear_pid(), "dropbear") {
            daemons::terminate(stale)?;
        }
        let pid = self.libvirtd().ok_or_else(|| LabError::HostDown { host: self.name.clone() })?;
        let log_path = self.dropbear_log();
        let log = fs::File::create(&log_path).map_err(|source| LabError::io("create", &log_path, source))?;
        let log_err = log.try_clone().map_err(|source| LabError::io("open", &log_path, source))?;
        let listen = format!("{}:{SSH_PORT}", self.address);
        host::run_command(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .arg(format!("--mount=/proc/{pid}/ns/mnt"))
                .arg("dropbear")
                // -E: log to stderr (our log file): there is no syslog here.
                // -W: OpenSSH's 2 MiB channel window, not dropbear's 24 KiB,
                // so images cross at the link's rate as they would to a real sshd.
                .args(["-E", "-W", "2097152", "-r"])
                .arg(self.host_key())
                .args(["-p", &listen, "-P"])
                .arg(self.dropbear_pid())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err),
        )?;
        let address = self.ssh_address();
        wait::until(
            &format!("host {}'s SSH server at {address}", self.name),
            SSH_READY_WITHIN,
            Duration::from_millis(50),
            || TcpStream::connect_timeout(&address, SSH_PROBE_WITHIN).map(Some),
        )
        .map_err(|e| LabError::SshdStart { host: self.name.clone(), log: log_path, detail: e.to_string() })?;
        Ok(())
    }

    /// A power loss: SIGKILL to every process in the host's namespace
    /// (QEMUs, libvirtd, virtlogd, dropbear and its sessions), then wait
    /// until they are gone. Nothing is undefined or cleaned up. The count
    /// of processes killed.
    pub fn kill(&self) -> Result<usize, LabError> {
        let pids = namespace::pids(&self.netns)?;
        for pid in &pids {
            let _ = send_signal(Pid::from_raw(*pid), Signal::SIGKILL); // gone already: fine
        }
        for pid in &pids {
            let pid = Pid::from_raw(*pid);
            wait::until::<(), std::io::Error, _>(
                "a killed host process to exit",
                GONE_WITHIN,
                Duration::from_millis(20),
                || Ok(daemons::process_gone(pid).then_some(())),
            )
            .map_err(|_| LabError::ProcessWontDie { pid: pid.as_raw() })?;
        }
        Ok(pids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine::new("a", "envclone-t-a".into(), Ipv4Addr::new(10, 253, 7, 2), Path::new("/l/t/hosts"))
    }

    #[test]
    fn host_files_live_in_its_own_directory() {
        let m = machine();
        assert_eq!(m.storage_image(), Path::new("/l/t/hosts/a/storage.ext4"));
        assert_eq!(m.libvirt().socket(), Path::new("/l/t/hosts/a/libvirt/run/libvirt-sock"));
        assert_eq!(m.host_key(), Path::new("/l/t/hosts/a/host_key.dropbear"));
    }

    #[test]
    fn storage_and_ssh_dir_are_mounted_in_the_host_namespace_only() {
        let script = machine().mount_script().unwrap();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "mount -t tmpfs -o mode=0755,size=1m envclone-srv /srv");
        assert!(lines.contains(&"mount -o loop '/l/t/hosts/a/storage.ext4' /srv/envclone"), "{script}");
        assert!(lines.contains(&"mount --bind '/l/t/hosts/a/ssh' /root/.ssh"), "{script}");
    }

    #[test]
    fn a_stopped_host_has_no_inside() {
        let m = machine();
        assert!(matches!(m.inside(Path::new("/srv/envclone")), Err(LabError::HostDown { .. })));
    }
}
