//! Where a lab keeps its files. Everything a lab makes lives under its root
//! (so `lab down` can remove exactly that), except the content-addressed
//! image cache, which labs and test runs share.

use super::daemons::Instance;
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
    /// The controller's own private libvirt (the one-host lab's only one).
    pub fn libvirt_instance(&self) -> Instance {
        Instance::new(self.libvirt())
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
        self.libvirt_instance().uri()
    }
    /// Where the hosts of a two-host lab keep their files (one directory each).
    pub fn hosts(&self) -> PathBuf {
        self.root.join("hosts")
    }
    /// The host keys of a two-host lab's hosts, pinned for the controller.
    pub fn hosts_known_hosts(&self) -> PathBuf {
        self.keys().join("hosts_known_hosts")
    }
}
