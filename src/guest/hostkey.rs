//! Host key verification against a known_hosts file, the way OpenSSH does
//! it: an unknown or changed key is refused, never accepted silently.

use std::path::Path;

use sha2::{Digest, Sha256};
use ssh2::{CheckResult, KnownHostFileKind, Session};

use super::GuestError;

/// The name a host is stored under in known_hosts: bare for port 22,
/// `[host]:port` otherwise (OpenSSH's convention).
pub fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// OpenSSH's fingerprint of a key blob: `SHA256:` and unpadded base64.
pub fn fingerprint(key_blob: &[u8]) -> String {
    let mut text = base64(&Sha256::digest(key_blob));
    text.truncate(text.trim_end_matches('=').len());
    format!("SHA256:{text}")
}

/// The known_hosts line that trusts `key_blob` for `host_name`. The key type
/// is read from the blob itself (its first SSH string).
pub fn known_hosts_entry(host_name: &str, key_blob: &[u8]) -> String {
    format!("{host_name} {} {}", key_type(key_blob).unwrap_or("ssh-unknown"), base64(key_blob))
}

fn key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

/// Checks the key `session` was offered against `known_hosts`. A missing
/// file is an empty one: the key is then unknown, and the error says how to
/// trust it.
pub fn verify(session: &Session, target: &str, host: &str, port: u16, known_hosts: &Path) -> Result<(), GuestError> {
    let (blob, _) = session.host_key().ok_or_else(|| GuestError::NoHostKey { target: target.to_string() })?;
    let read_err = |source| GuestError::KnownHosts { path: known_hosts.to_path_buf(), source };
    let mut known = session.known_hosts().map_err(read_err)?;
    if known_hosts.exists() {
        known.read_file(known_hosts, KnownHostFileKind::OpenSSH).map_err(read_err)?;
    }
    // `check` with our own `[host]:port` name rather than `check_port`:
    // libssh2 falls back to the bare host for other ports, which OpenSSH
    // does not, and would trust a port-22 key for another server.
    let host_name = known_hosts_name(host, port);
    match known.check(&host_name, blob) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(GuestError::HostKeyMismatch {
            target: target.to_string(),
            fingerprint: fingerprint(blob),
            known_hosts: known_hosts.to_path_buf(),
            host_name,
        }),
        CheckResult::NotFound | CheckResult::Failure => Err(GuestError::UnknownHostKey {
            target: target.to_string(),
            fingerprint: fingerprint(blob),
            known_hosts: known_hosts.to_path_buf(),
            entry: known_hosts_entry(&host_name, blob),
        }),
    }
}

/// Adds `lines` to the known_hosts file at `path` (created if missing),
/// each once. The file is replaced atomically with its mode kept, so a
/// concurrent login never reads half a file.
pub fn trust(path: &Path, lines: &[String]) -> std::io::Result<()> {
    edit_known_hosts(path, |existing| {
        for line in lines {
            if !existing.iter().any(|l| l == line) {
                existing.push(line.clone());
            }
        }
    })
}

/// Removes exactly `lines` from the known_hosts file at `path`; a missing
/// file or line is no error.
pub fn distrust(path: &Path, lines: &[String]) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    edit_known_hosts(path, |existing| existing.retain(|l| !lines.contains(l)))
}

fn edit_known_hosts(path: &Path, change: impl FnOnce(&mut Vec<String>)) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let before = lines.clone();
    change(&mut lines);
    if lines == before {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0o644);
    for line in &lines {
        writeln!(file, "{line}")?;
    }
    file.as_file().sync_all()?;
    file.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Standard padded base64 (RFC 4648), the encoding of known_hosts keys.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_and_distrust_touch_only_their_own_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, "10.77.1.11 ssh-ed25519 AAAA\n").unwrap();
        let ours = vec!["10.90.0.11 ssh-ed25519 AAAA".to_owned()];

        trust(&path, &ours).unwrap();
        trust(&path, &ours).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "10.77.1.11 ssh-ed25519 AAAA\n10.90.0.11 ssh-ed25519 AAAA\n"
        );

        distrust(&path, &ours).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "10.77.1.11 ssh-ed25519 AAAA\n");
        distrust(&dir.path().join("missing"), &ours).unwrap();
    }

    /// An ed25519 public key and what `ssh-keygen -l` and `dropbearkey -y`
    /// print for it.
    const BLOB_HEX: &str =
        "0000000b7373682d6564323535313900000020d61edd9dcd0aaef6005093fdffe2a601cb2604289f24cb5b45d9e3c25b49e4a9";
    const BLOB_B64: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINYe3Z3NCq72AFCT/f/ipgHLJgQonyTLW0XZ48JbSeSp";
    const FINGERPRINT: &str = "SHA256:CobH4B6m145F89hXxxqjHMcJObP12VNOGGUHHqsYpPg";

    #[test]
    fn known_hosts_name_is_bare_only_for_port_22() {
        let table = [
            ("10.0.0.5", 22, "10.0.0.5"),
            ("10.0.0.5", 2222, "[10.0.0.5]:2222"),
            ("web.lab", 22, "web.lab"),
            ("fd00::5", 22, "fd00::5"),
            ("fd00::5", 2200, "[fd00::5]:2200"),
        ];
        for (host, port, want) in table {
            assert_eq!(known_hosts_name(host, port), want);
        }
    }

    #[test]
    fn fingerprint_matches_openssh() {
        assert_eq!(fingerprint(&hex::decode(BLOB_HEX).unwrap()), FINGERPRINT);
    }

    #[test]
    fn entry_is_a_known_hosts_line() {
        let entry = known_hosts_entry("[10.0.0.5]:2222", &hex::decode(BLOB_HEX).unwrap());
        assert_eq!(entry, format!("[10.0.0.5]:2222 ssh-ed25519 {BLOB_B64}"));
    }

    #[test]
    fn key_type_survives_truncated_blobs() {
        assert_eq!(key_type(&[]), None);
        assert_eq!(key_type(&[0, 0, 0, 9, b's']), None);
        assert_eq!(key_type(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let table =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, encoded) in table {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&hex::decode(BLOB_HEX).unwrap()), BLOB_B64);
    }
}
