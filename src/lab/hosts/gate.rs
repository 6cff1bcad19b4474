//! The start gate on a lab host, put there as a host's own disk would hold
//! it: the hook in the host's `/etc/libvirt/hooks/qemu.d/` before its
//! libvirtd starts (libvirt looks for hooks only then), and at `lab up` the
//! protected list and a fresh lease for what the host runs, so that demo
//! starts on a. The lab is the hardware here: it writes the files into the
//! host's libvirt directories on the controller (bind-mounted over
//! `/etc/libvirt` and `/var/lib/libvirt` in the host's mount namespace);
//! envclone's own commands reach them over SSH only (`envclone gate ...`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::GATE_DIR;
use crate::host::gate::{self, Wanted};
use crate::lab::daemons::Instance;
use crate::lab::LabError;

/// Where `/var/lib/libvirt` of a host is, in its libvirt directory (see
/// `daemons::BIND_MOUNTS`).
const LIB: (&str, &str) = ("lib", "/var/lib/libvirt");
/// Where `/etc/libvirt` of a host is.
const ETC: (&str, &str) = ("etc", "/etc/libvirt");

/// `on_host` (under one of the bind-mounted directories) as the lab reaches it.
fn outside(instance: &Instance, on_host: &Path) -> Result<PathBuf, LabError> {
    for (dir, mounted) in [LIB, ETC] {
        if let Ok(rest) = on_host.strip_prefix(mounted) {
            return Ok(instance.dir().join(dir).join(rest));
        }
    }
    Err(LabError::BadPath { path: on_host.to_path_buf() })
}

/// The layout of the gate on a lab host, as the lab reaches it.
fn layout(instance: &Instance) -> Result<gate::Layout, LabError> {
    let on_host = gate::Layout { hooks_dir: gate::HOOKS_DIR.into(), gate_dir: GATE_DIR.into() };
    Ok(gate::Layout {
        hooks_dir: outside(instance, &on_host.hooks_dir)?,
        gate_dir: outside(instance, &on_host.gate_dir)?,
    })
}

/// Writes the hook (for the gate directory as the host sees it) and the
/// gate directory, before the host's libvirtd starts.
pub fn install_hook(instance: &Instance) -> Result<(), LabError> {
    let layout = layout(instance)?;
    let hook = layout.hook_path();
    write(&hook, &gate::hook_script(Path::new(GATE_DIR)))?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
        .map_err(|source| LabError::io("chmod", &hook, source))?;
    fs::create_dir_all(&layout.gate_dir).map_err(|source| LabError::io("create", &layout.gate_dir, source))
}

/// The protected list and the leases as `wanted` says (expiries by the
/// controller's clock, which is the lab hosts' clock).
pub fn grant(instance: &Instance, wanted: &Wanted) -> Result<(), LabError> {
    let layout = layout(instance)?;
    write(&layout.protected_path(), &gate::protected_list(&wanted.protected))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    for env in &wanted.grant {
        write(&layout.lease_path(env), &gate::lease_text(now + wanted.lease.as_secs()))?;
    }
    for env in &wanted.withhold {
        let lease = layout.lease_path(env);
        match fs::remove_file(&lease) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabError::io("remove", &lease, error))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes `text` next to `path` and renames it over: the hook never reads half a file.
fn write(path: &Path, text: &str) -> Result<(), LabError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| LabError::io("create", dir, source))?;
    }
    let partial = path.with_extension("new");
    fs::write(&partial, text).map_err(|source| LabError::io("write", &partial, source))?;
    fs::rename(&partial, path).map_err(|source| LabError::io("rename", &partial, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_and_the_leases_land_in_the_hosts_bind_mounted_libvirt_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let instance = Instance::new(dir.path().join("libvirt"));
        let wanted = Wanted {
            host: "a".into(),
            protected: vec![gate::Protected { domain: "demo-web".into(), env: "demo".into() }],
            grant: vec!["demo".into()],
            withhold: vec!["gone".into()],
            lease: std::time::Duration::from_secs(600),
        };

        install_hook(&instance).unwrap();
        grant(&instance, &wanted).unwrap();

        let hook = dir.path().join("libvirt/etc/hooks/qemu.d/envclone");
        assert_eq!(fs::read_to_string(&hook).unwrap(), gate::hook_script(Path::new(GATE_DIR)));
        assert_eq!(fs::metadata(&hook).unwrap().permissions().mode() & 0o777, 0o755);
        let gate_dir = dir.path().join("libvirt/lib/envclone-gate");
        assert_eq!(fs::read_to_string(gate_dir.join("protected")).unwrap(), "demo-web demo\n");
        let expiry: u64 = fs::read_to_string(gate_dir.join("demo.lease")).unwrap().trim().parse().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((now + 590..=now + 600).contains(&expiry), "{expiry} vs {now}");
    }
}
