//! SSH keys of a lab: the controller's login key and each guest's host key,
//! all generated on the host so known_hosts is written before any guest
//! boots: the lab never trusts a host key on first use.

use super::{host, LabError};
use crate::guest::known_hosts_name;
use std::fs;
use std::path::{Path, PathBuf};

/// A key pair made by dropbearkey: the dropbear-format private key, and its
/// public half as an OpenSSH line (`ssh-ed25519 AAAA... comment`).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private_dropbear: PathBuf,
    pub public_line: String,
}

/// Creates the key at `path` unless it exists; returns it either way.
pub fn ensure_dropbear_key(path: &Path) -> Result<KeyPair, LabError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| LabError::io("create", parent, source))?;
    }
    if !path.exists() {
        host::run("dropbearkey", &["-t", "ed25519", "-f", &path.to_string_lossy()])?;
    }
    let listing = host::run("dropbearkey", &["-y", "-f", &path.to_string_lossy()])?;
    let public_line = listing
        .lines()
        .find(|line| line.starts_with("ssh-ed25519 "))
        .ok_or_else(|| LabError::KeyParse { path: path.to_path_buf() })?
        .to_string();
    Ok(KeyPair { private_dropbear: path.to_path_buf(), public_line })
}

/// The controller's login key in OpenSSH format (what libssh2 reads) next to
/// its dropbear original.
pub fn ensure_client_key(openssh_path: &Path) -> Result<KeyPair, LabError> {
    let pair = ensure_dropbear_key(&openssh_path.with_extension("dropbear"))?;
    if !openssh_path.exists() {
        host::run(
            "dropbearconvert",
            &["dropbear", "openssh", &pair.private_dropbear.to_string_lossy(), &openssh_path.to_string_lossy()],
        )?;
    }
    Ok(pair)
}

/// known_hosts lines for (address, port, host public key line).
pub fn known_hosts(entries: &[(&str, u16, &str)]) -> String {
    entries
        .iter()
        .map(|(address, port, public_line)| {
            // Drop the comment: known_hosts wants "name type base64".
            let key: Vec<&str> = public_line.split_whitespace().take(2).collect();
            format!("{} {}\n", known_hosts_name(address, *port), key.join(" "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines_drop_comments_and_bracket_other_ports() {
        let text = known_hosts(&[
            ("10.77.1.11", 22, "ssh-ed25519 AAAAC3Nza root@web"),
            ("10.77.1.12", 2222, "ssh-ed25519 AAAAC3Nzb"),
        ]);
        assert_eq!(text, "10.77.1.11 ssh-ed25519 AAAAC3Nza\n[10.77.1.12]:2222 ssh-ed25519 AAAAC3Nzb\n");
    }
}
