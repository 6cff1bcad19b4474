//! `reset-identity`: a clone stops sharing its source's machine-id and, on
//! request, its SSH host keys. The new public keys come back in the answer
//! so that the controller can trust them (known_hosts) before it connects
//! again; the running SSH servers are restarted or reloaded so that new
//! connections get the new keys (see [`super::listener`]).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use envclone_agent::ResetIdentityReport;

use super::{host_keys, listener, system, IdentityError};

const MACHINE_ID: &str = "/etc/machine-id";
const DBUS_MACHINE_ID: &str = "/var/lib/dbus/machine-id";

#[derive(Debug, Args)]
pub struct ResetIdentityArgs {
    /// Also regenerate the SSH host keys (dropbear and/or OpenSSH) and make
    /// the running server offer them to new connections.
    #[arg(long)]
    pub ssh_host_keys: bool,
}

pub fn reset_identity(args: &ResetIdentityArgs) -> Result<ResetIdentityReport, IdentityError> {
    // Found before anything changes: no SSH server is a refusal, not half a reset.
    let ssh_servers = if args.ssh_host_keys { Some(SshServers::find()?) } else { None };
    let previous_machine_id =
        fs::read_to_string(MACHINE_ID).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let machine_id = new_machine_id(random_bytes()?);
    system::write_atomic(Path::new(MACHINE_ID), format!("{machine_id}\n").as_bytes(), 0o444)?;
    let dbus_machine_id_updated = update_dbus_copy(Path::new(DBUS_MACHINE_ID), &machine_id)?;

    let mut report = ResetIdentityReport {
        previous_machine_id,
        machine_id,
        dbus_machine_id_updated,
        host_keys: Vec::new(),
        ssh_servers: Vec::new(),
    };
    if let Some(servers) = ssh_servers {
        servers.renew(&mut report)?;
    }
    Ok(report)
}

/// 16 bytes from the kernel's CSPRNG.
fn random_bytes() -> Result<[u8; 16], IdentityError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| IdentityError::Random { source })?;
    Ok(bytes)
}

/// A machine-id as systemd makes one (`sd_id128_randomize`): 128 random
/// bits marked as a version 4, variant 1 UUID, in 32 lowercase hex digits.
fn new_machine_id(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// D-Bus keeps its own copy on older systems; a symlink to /etc/machine-id
/// (the usual case now) or no file at all needs nothing.
fn update_dbus_copy(path: &Path, machine_id: &str) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => {
            system::write_atomic(path, format!("{machine_id}\n").as_bytes(), 0o444)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The guest's SSH servers: their key files and running listeners.
#[derive(Debug)]
struct SshServers {
    dropbear_keys: Vec<PathBuf>,
    dropbear_listeners: Vec<listener::Process>,
    openssh: bool,
    sshd_listeners: Vec<listener::Process>,
}

impl SshServers {
    fn find() -> Result<SshServers, IdentityError> {
        let all = listener::processes();
        let dropbear_listeners: Vec<listener::Process> = listener::listeners(&all, "dropbear")
            .into_iter()
            .filter(|p| !listener::dropbear_options(&p.args).inetd)
            .cloned()
            .collect();
        let sshd_listeners: Vec<listener::Process> = listener::sshd_listeners(&all).into_iter().cloned().collect();
        let mut dropbear_keys = host_keys::dropbear_default_keys(Path::new(host_keys::DROPBEAR_DIR));
        for process in &dropbear_listeners {
            dropbear_keys.extend(listener::dropbear_options(&process.args).host_keys);
        }
        let openssh =
            !host_keys::openssh_keys(Path::new(host_keys::OPENSSH_DIR)).is_empty() || !sshd_listeners.is_empty();
        let servers = SshServers { dropbear_keys: dedup(dropbear_keys), dropbear_listeners, openssh, sshd_listeners };
        if servers.dropbear_keys.is_empty() && !servers.openssh {
            return Err(IdentityError::NoSshServer);
        }
        Ok(servers)
    }

    /// Every key first, then the listeners: a key that cannot be made
    /// leaves the servers running as they were.
    fn renew(&self, report: &mut ResetIdentityReport) -> Result<(), IdentityError> {
        if !self.dropbear_keys.is_empty() {
            report.host_keys.extend(host_keys::regenerate_dropbear(&self.dropbear_keys)?);
        }
        if self.openssh {
            report.host_keys.extend(host_keys::regenerate_openssh(Path::new(host_keys::OPENSSH_DIR))?);
        }
        for process in &self.dropbear_listeners {
            report.ssh_servers.push(listener::restart_dropbear(process)?);
        }
        for process in &self.sshd_listeners {
            report.ssh_servers.push(listener::reload_sshd(process)?);
        }
        Ok(())
    }
}

/// Order kept, later duplicates dropped (a `-r` naming a default file).
fn dedup(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    for path in paths {
        if !seen.contains(&path) {
            seen.push(path);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `systemd-machine-id-setup` would accept: 32 lowercase hex digits.
    fn is_machine_id(text: &str) -> bool {
        text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn machine_ids_are_v4_uuids_in_32_lowercase_hex_digits() {
        for bytes in [[0u8; 16], [0xff; 16], *b"0123456789abcdef"] {
            let id = new_machine_id(bytes);
            assert!(is_machine_id(&id), "{id}");
            assert_eq!(&id[12..13], "4", "{id}");
            assert!("89ab".contains(&id[16..17]), "{id}");
        }
        assert_eq!(new_machine_id([0; 16]), "00000000000040008000000000000000");
    }

    #[test]
    fn random_machine_ids_differ() {
        let a = new_machine_id(random_bytes().unwrap());
        let b = new_machine_id(random_bytes().unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn dbus_copy_is_updated_only_when_it_is_a_file_of_its_own() {
        let dir = std::env::temp_dir().join(format!("envclone-agent-dbus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("machine-id");
        let link = dir.join("link");

        assert!(!update_dbus_copy(&file, "a").unwrap(), "missing file");
        fs::write(&file, "old\n").unwrap();
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(!update_dbus_copy(&link, "b").unwrap(), "symlink");
        assert_eq!(fs::read_to_string(&file).unwrap(), "old\n");
        assert!(update_dbus_copy(&file, "c").unwrap());
        assert_eq!(fs::read_to_string(&file).unwrap(), "c\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dedup_keeps_first_occurrences_in_order() {
        let paths = ["/a", "/b", "/a", "/c", "/b"].map(PathBuf::from).to_vec();
        assert_eq!(dedup(paths), ["/a", "/b", "/c"].map(PathBuf::from));
    }
}
