//! Where a lab keeps its files. Everything a lab makes lives under its root
//! (so `lab down` can remove exactly that), except the content-addressed
//! image cache, which labs and test runs share.

use std::path::{Path, PathBuf};

pub const DEFAULT_LABS_DIR: &str = "/var/lib/envclone/labs";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/envclone/lab-images";

#[derive(Debug, Clone)]
pub struct LabPaths {
    pub root: PathBuf,
    pub cache: PathBuf,
}

impl LabPaths {
    pub fn new(labs_dir: &Path, cache: &Path, name: &str) -> Self {
        LabPaths { root: labs_dir.join(name), cache: cache.to_path_buf() }
    }

    /// The private libvirt instance's directories, bind-mounted over the
    /// system paths inside the daemons' own mount namespace.
    pub fn libvirt(&self) -> PathBuf {
        self.root.join("libvirt")
    }
    pub fn libvirt_socket(&self) -> PathBuf {
        self.libvirt().join("run/libvirt-sock")
    }
    pub fn libvirtd_pid(&self) -> PathBuf {
        self.libvirt().join("libvirtd.pid")
    }
    pub fn virtlogd_pid(&self) -> PathBuf {
        self.libvirt().join("virtlogd.pid")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.libvirt().join("daemons.log")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn client_key(&self) -> PathBuf {
        self.keys().join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.keys().join("known_hosts")
    }
    pub fn console_log(&self, domain: &str) -> PathBuf {
        self.root.join("console").join(format!("{domain}.log"))
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("envclone.toml")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn libvirt_uri(&self) -> String {
        format!("qemu:///system?socket={}", self.libvirt_socket().display())
    }
}
