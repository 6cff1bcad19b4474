//! Copying an image from one host to another, in an operation's terms: a
//! byte-for-byte copy of a file, or a full copy of what a disk reads. On
//! one host it is that host's own copy; between two it is a shipment
//! ([`crate::host::ship`]) at the slower of the two hosts' `bandwidth`.

use std::path::Path;

use crate::config::Config;
use crate::host::ship::{self, End, ShipError, ShipProgress};
use crate::host::{Copied, Host};

/// One end of a copy: a file on a host.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub host: &'a dyn Host,
    pub path: &'a Path,
}

impl<'a> At<'a> {
    pub fn new(host: &'a dyn Host, path: &'a Path) -> Self {
        At { host, path }
    }

    fn end(self) -> End<'a> {
        End { host: self.host.name(), storage: self.host.storage(), path: self.path }
    }
}

/// Whether the two ends are on one host (a local copy, no shipment).
pub fn same_host(a: &dyn Host, b: &dyn Host) -> bool {
    a.name() == b.name()
}

/// The rate a shipment between `a` and `b` keeps to, in bytes per second:
/// the lower of their `bandwidth` settings.
pub fn bandwidth(config: &Config, a: &dyn Host, b: &dyn Host) -> Option<u64> {
    let limit = |host: &dyn Host| config.hosts.get(host.name()).and_then(|h| h.bandwidth).map(|r| r.bytes_per_second());
    match (limit(a), limit(b)) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Copies the file `from` to the new file `to`: on one host its own copy,
/// between two a shipment. `bytes` is what crossed between hosts (the
/// file's size for a copy on one host).
pub fn copy_file(config: &Config, from: At<'_>, to: At<'_>, progress: ShipProgress<'_>) -> Result<Copied, ShipError> {
    if same_host(from.host, to.host) {
        return to.host.storage().copy_file(from.path, to.path).map_err(|source| ShipError::Write {
            host: to.host.name().to_owned(),
            path: to.path.to_owned(),
            source: Box::new(source),
        });
    }
    let shipped = ship::ship(from.end(), to.end(), bandwidth(config, from.host, to.host), progress)?;
    Ok(Copied { bytes: shipped.bytes, sha256: shipped.sha256 })
}

/// A standalone copy of what `image` reads (its whole chain) as the new
/// file `to`. Between two hosts the chain is flattened on `from`'s host
/// into `scratch` (a file there, removed afterwards), then shipped.
pub fn copy_full(
    config: &Config,
    image: At<'_>,
    scratch: &Path,
    to: At<'_>,
    progress: ShipProgress<'_>,
) -> Result<Copied, ShipError> {
    let write_error = |host: &dyn Host, path: &Path| {
        let (host, path) = (host.name().to_owned(), path.to_owned());
        move |source| ShipError::Write { host, path, source: Box::new(source) }
    };
    if same_host(image.host, to.host) {
        let storage = to.host.storage();
        let bytes = storage.copy_full(image.path, to.path, &|_| {}).map_err(write_error(to.host, to.path))?;
        let sha256 = storage.sha256(to.path).map_err(write_error(to.host, to.path))?;
        return Ok(Copied { bytes, sha256 });
    }
    let source = image.host.storage();
    // Left by an interrupted copy: garbage.
    source.remove(scratch).map_err(write_error(image.host, scratch))?;
    source.copy_full(image.path, scratch, &|_| {}).map_err(write_error(image.host, scratch))?;
    let shipped = copy_file(config, At::new(image.host, scratch), to, progress);
    if let Err(e) = source.remove(scratch) {
        tracing::warn!(host = image.host.name(), path = %scratch.display(), error = %e, "cannot remove a scratch copy");
    }
    shipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostSettings, HostSsh, HumanRate};
    use crate::host::Storage;
    use crate::hypervisor::FakeHypervisor;
    use crate::test_support::{FakeHost, FakeNet, FakeStorage};

    fn settings(bandwidth: Option<&str>) -> HostSettings {
        HostSettings {
            libvirt_uri: "qemu+libssh2://root@h/system".into(),
            ssh: HostSsh {
                address: "h".into(),
                port: 22,
                user: "root".into(),
                key: "/k".into(),
                known_hosts: "/kh".into(),
            },
            storage: "/srv".into(),
            libvirt_netns: None,
            bandwidth: bandwidth.map(|b| b.parse::<HumanRate>().unwrap()),
            guest_netns: None,
            gate_dir: None,
            lease: None,
        }
    }

    #[test]
    fn a_full_copy_to_another_host_flattens_there_ships_and_removes_the_scratch() {
        let hv = FakeHypervisor::new();
        let net = FakeNet::default();
        let a_storage = FakeStorage::default();
        let b_storage = FakeStorage::default().made_only("disk");
        let a = FakeHost::new(&hv, &a_storage, &net).named("a");
        let b = FakeHost::new(&hv, &b_storage, &net).named("b");
        let mut config = crate::config::parse_with(
            "[controller]\nssh_key = \"/k\"\nknown_hosts = \"/h\"\n",
            Path::new("t.toml"),
            &crate::config::ValidateOptions { check_files: false },
        )
        .unwrap();
        config.hosts.insert("a".into(), settings(Some("50MiB/s")));
        config.hosts.insert("b".into(), settings(Some("10MiB/s")));
        assert_eq!(bandwidth(&config, &a, &b), Some(10 << 20));

        let copied = copy_full(
            &config,
            At::new(&a, Path::new("/a/top.qcow2")),
            Path::new("/a/.ship/scratch.qcow2"),
            At::new(&b, Path::new("/b/disk.qcow2")),
            &|_, _| {},
        )
        .unwrap();

        assert!(b_storage.is_there(Path::new("/b/disk.qcow2")));
        assert!(a_storage.removed().contains(&Path::new("/a/.ship/scratch.qcow2").to_owned()));
        assert_eq!(copied.sha256, b_storage.sha256(Path::new("/b/disk.qcow2")).unwrap());
        assert!(a_storage.calls().iter().any(|c| c.contains("/a/top.qcow2")), "{:?}", a_storage.calls());
    }
}
