//! New SSH host keys for whichever server the guest has, made by that
//! server's own tool: `dropbearkey` for dropbear, `ssh-keygen -A` for
//! OpenSSH. No key material is generated in the agent itself, so it carries
//! no crypto of its own and every key is in the format its server expects.
//!
//! Old private keys are not kept: a clone must not be able to pose as its
//! source. Each new key replaces its file with a rename, so a server that
//! starts meanwhile reads the old key or the new one, never half a key.

use std::fs;
use std::path::{Path, PathBuf};

use envclone_agent::{HostKey, SshServer};

use super::system::{self, tool};
use super::IdentityError;

pub const DROPBEAR_DIR: &str = "/etc/dropbear";
/// dropbear's default key files, per type (`dropbear -h`).
const DROPBEAR_TYPES: &[&str] = &["dss", "rsa", "ecdsa", "ed25519"];
pub const OPENSSH_DIR: &str = "/etc/ssh";

/// dropbear's key files that exist in `dir`, by its naming convention.
pub fn dropbear_default_keys(dir: &Path) -> Vec<PathBuf> {
    DROPBEAR_TYPES.iter().map(|t| dir.join(format!("dropbear_{t}_host_key"))).filter(|path| path.is_file()).collect()
}

/// A `dropbearkey -t` type and `-s` size for a public key type.
fn dropbear_type(public_type: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match public_type {
        "ssh-ed25519" => ("ed25519", None),
        "ssh-rsa" => ("rsa", None),
        "ssh-dss" => ("dss", None),
        "ecdsa-sha2-nistp256" => ("ecdsa", Some("256")),
        "ecdsa-sha2-nistp384" => ("ecdsa", Some("384")),
        "ecdsa-sha2-nistp521" => ("ecdsa", Some("521")),
        _ => return None,
    })
}

/// The type a key file is named for (`dropbear_rsa_host_key`), if any.
fn type_from_name(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    let kind = name.strip_prefix("dropbear_")?.strip_suffix("_host_key")?;
    DROPBEAR_TYPES.iter().find(|t| **t == kind).copied()
}

/// The OpenSSH public key line in `dropbearkey -y` output, without its
/// comment: `ssh-ed25519 AAAA...`.
fn public_line(listing: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let kind = words.next()?;
        let blob = words.next()?;
        dropbear_type(kind)?;
        blob.starts_with("AAAA").then(|| format!("{kind} {blob}"))
    })
}

/// Replaces each dropbear key in `paths` with a new key of the same type
/// (taken from the old key, else from the file name, else ed25519).
pub fn regenerate_dropbear(paths: &[PathBuf]) -> Result<Vec<HostKey>, IdentityError> {
    let dropbearkey = tool("dropbearkey")?;
    let mut keys = Vec::new();
    for path in paths {
        let old_type = system::run(&dropbearkey, &["-y", "-f", &path.to_string_lossy()])
            .ok()
            .and_then(|listing| public_line(&listing))
            .and_then(|line| dropbear_type(line.split(' ').next().unwrap_or("")));
        let (kind, size) = old_type.unwrap_or((type_from_name(path).unwrap_or("ed25519"), None));
        let public_key = replace_dropbear_key(&dropbearkey, path, kind, size)?;
        keys.push(HostKey { server: SshServer::Dropbear, path: path.display().to_string(), public_key });
    }
    Ok(keys)
}

fn replace_dropbear_key(
    dropbearkey: &Path,
    path: &Path,
    kind: &str,
    size: Option<&str>,
) -> Result<String, IdentityError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.envclone-new"));
    let temporary_text = temporary.to_string_lossy().into_owned();
    // dropbearkey refuses to overwrite; a leftover of a crashed run goes.
    let _ = fs::remove_file(&temporary);
    let result = (|| {
        let mut args = vec!["-t", kind, "-f", &temporary_text];
        if let Some(size) = size {
            args.extend(["-s", size]);
        }
        system::run(dropbearkey, &args)?;
        let listing = system::run(dropbearkey, &["-y", "-f", &temporary_text])?;
        let public_key = public_line(&listing).ok_or_else(|| IdentityError::PublicKey {
            path: temporary.clone(),
            command: format!("{} -y -f {temporary_text}", dropbearkey.display()),
        })?;
        rename_private_key(&temporary, path)?;
        Ok(public_key)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Mode 0600, renamed over `path`, directory flushed.
fn rename_private_key(from: &Path, to: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let write_err = |source| IdentityError::WriteFile { path: to.to_path_buf(), source };
    fs::set_permissions(from, fs::Permissions::from_mode(0o600)).map_err(write_err)?;
    fs::rename(from, to).map_err(write_err)?;
    if let Some(dir) = to.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)?;
    }
    Ok(())
}

/// OpenSSH's host keys in `dir`: `ssh_host_*_key`, private halves only.
pub fn openssh_keys(dir: &Path) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("ssh_host_") && name.ends_with("_key") && p.is_file()
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// `ssh-keygen -A` makes only missing keys: the old ones (and their .pub)
/// are moved aside first, put back if it fails, and deleted once it worked.
pub fn regenerate_openssh(dir: &Path) -> Result<Vec<HostKey>, IdentityError> {
    let ssh_keygen = tool("ssh-keygen")?;
    let aside = dir.join(format!(".envclone-old-host-keys.{}", std::process::id()));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::WriteFile { path, source }
    };
    fs::create_dir(&aside).map_err(write_err(&aside))?;
    let mut moved = Vec::new();
    let result = (|| {
        for key in openssh_keys(dir) {
            for file in [key.clone(), PathBuf::from(format!("{}.pub", key.display()))] {
                if file.exists() {
                    let target = aside.join(file.file_name().unwrap_or_default());
                    fs::rename(&file, &target).map_err(write_err(&file))?;
                    moved.push((file, target));
                }
            }
        }
        // -A writes /etc/ssh/ssh_host_*_key below the root given with -f
        // (OpenSSH 8.0 and later); plain -A for the real /etc/ssh.
        let root = dir.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
        if root == Path::new("/") {
            system::run(&ssh_keygen, &["-A"])?;
        } else {
            system::run(&ssh_keygen, &["-A", "-f", &root.to_string_lossy()])?;
        }
        openssh_keys(dir)
            .into_iter()
            .map(|key| {
                let public = PathBuf::from(format!("{}.pub", key.display()));
                let text = system::read(&public)?;
                let words: Vec<&str> = text.split_whitespace().take(2).collect();
                if words.len() != 2 {
                    return Err(IdentityError::PublicKey { path: public, command: "ssh-keygen -A".into() });
                }
                Ok(HostKey { server: SshServer::Openssh, path: key.display().to_string(), public_key: words.join(" ") })
            })
            .collect::<Result<Vec<_>, _>>()
    })();
    if result.is_err() {
        for (original, target) in moved.iter().rev() {
            // A key that cannot go back stays in `aside`, which is then kept:
            // deleting it would leave the guest without any host key.
            fs::rename(target, original).map_err(write_err(original))?;
        }
    }
    // Old private keys must not linger; a failure here is reported.
    fs::remove_dir_all(&aside).map_err(write_err(&aside))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPBEARKEY_Y: &str = "Public key portion is:\n\
        ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINYe3Z3NCq72AFCT/f/ipgHLJgQonyTLW0XZ48JbSeSp root@db\n\
        Fingerprint: SHA256:CobH4B6m145F89hXxxqjHMcJObP12VNOGGUHHqsYpPg\n";

    #[test]
    fn public_line_drops_the_comment_and_the_chatter() {
        assert_eq!(
            public_line(DROPBEARKEY_Y).as_deref(),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINYe3Z3NCq72AFCT/f/ipgHLJgQonyTLW0XZ48JbSeSp")
        );
        assert_eq!(public_line("Public key portion is:\nFingerprint: x\n"), None);
        assert_eq!(public_line("ssh-foo AAAA\n"), None);
    }

    #[test]
    fn key_types_map_to_dropbearkey_arguments() {
        assert_eq!(dropbear_type("ssh-ed25519"), Some(("ed25519", None)));
        assert_eq!(dropbear_type("ecdsa-sha2-nistp384"), Some(("ecdsa", Some("384"))));
        assert_eq!(dropbear_type("ssh-ed448"), None);
        assert_eq!(type_from_name(Path::new("/etc/dropbear/dropbear_rsa_host_key")), Some("rsa"));
        assert_eq!(type_from_name(Path::new("/etc/dropbear/hostkey")), None);
    }

    /// Needs dropbearkey (dropbear-bin, which scripts/install-deps.sh
    /// installs for the lab anyway).
    #[test]
    fn dropbear_key_is_replaced_by_a_new_one_of_the_same_type() {
        let dir = std::env::temp_dir().join(format!("envclone-agent-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dropbear_ecdsa_host_key");
        system::run(&tool("dropbearkey").unwrap(), &["-t", "ecdsa", "-s", "384", "-f", &path.to_string_lossy()])
            .unwrap();
        let before = fs::read(&path).unwrap();

        let keys = regenerate_dropbear(std::slice::from_ref(&path)).unwrap();

        assert_ne!(fs::read(&path).unwrap(), before);
        assert_eq!(keys.len(), 1);
        assert!(keys[0].public_key.starts_with("ecdsa-sha2-nistp384 AAAA"), "{keys:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temporary key left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Needs ssh-keygen (openssh-client).
    #[test]
    fn openssh_keys_are_all_replaced_and_old_ones_removed() {
        let root = std::env::temp_dir().join(format!("envclone-agent-openssh-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("etc/ssh");
        fs::create_dir_all(&dir).unwrap();
        let old = dir.join("ssh_host_ed25519_key");
        let keygen = tool("ssh-keygen").unwrap();
        system::run(&keygen, &["-q", "-t", "ed25519", "-N", "", "-f", &old.to_string_lossy()]).unwrap();
        let old_public = fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).unwrap();

        let keys = regenerate_openssh(&dir).unwrap();

        let ed25519 = keys.iter().find(|k| k.public_key.starts_with("ssh-ed25519 ")).unwrap();
        assert_eq!(ed25519.path, old.display().to_string());
        assert!(!old_public.contains(ed25519.public_key.split(' ').nth(1).unwrap()));
        assert!(keys.iter().all(|k| k.server == SshServer::Openssh && k.public_key.split(' ').count() == 2));
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
