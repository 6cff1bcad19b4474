//! The lab's guest images. One root image (busybox, dropbear, the agent, an
//! init) is shared by every lab VM and cached by the hash of its content;
//! each VM boots a qcow2 overlay on it plus a tiny "seed" disk holding its
//! identity (hostname, host key, authorized key, app files) that the init
//! copies into place on first boot.

use super::{host, LabError};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bump when the image layout changes in a way the content hash cannot see
/// (e.g. mkfs options).
const LAYOUT_VERSION: &str = "envclone-lab-root-v1";
const ROOT_IMAGE_SIZE: &str = "256M";
const SEED_IMAGE_SIZE: &str = "16M";

const INIT: &str = include_str!("guest/init");
const DEMO_WEB: &str = include_str!("guest/demo-web");
const DEMO_DB: &str = include_str!("guest/demo-db");

/// A file to place in an image: path inside the guest, content, mode.
#[derive(Debug, Clone)]
pub struct GuestFile {
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
}

impl GuestFile {
    pub fn new(path: impl Into<PathBuf>, content: impl Into<Vec<u8>>, mode: u32) -> Self {
        GuestFile { path: path.into(), content: content.into(), mode }
    }
}

/// Returns the cached root image for this agent binary, building it if no
/// image with the same content exists yet.
pub fn root_image(cache: &Path, agent_binary: &Path) -> Result<PathBuf, LabError> {
    fs::create_dir_all(cache).map_err(|source| LabError::io("create", cache, source))?;
    let staging = tempdir_in(cache, "staging")?;
    stage_root(staging.path(), agent_binary)?;
    let digest = content_digest(staging.path())?;
    let image = cache.join(format!("root-{}.qcow2", &digest[..16]));
    if image.exists() {
        tracing::info!(image = %image.display(), "root image found in cache");
        return Ok(image);
    }
    tracing::info!(image = %image.display(), "building root image");
    ext4_qcow2(staging.path(), &image, ROOT_IMAGE_SIZE, "envclone-root")?;
    Ok(image)
}

/// Writes a small ext4 disk (qcow2) whose `files/` tree the guest init copies
/// over its root on first boot.
pub fn seed_image(target: &Path, files: &[GuestFile]) -> Result<(), LabError> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let staging = tempdir_in(parent, "seed")?;
    for file in files {
        let relative = file.path.strip_prefix("/").unwrap_or(&file.path);
        write_file(&staging.path().join("files").join(relative), &file.content, file.mode)?;
    }
    ext4_qcow2(staging.path(), target, SEED_IMAGE_SIZE, "envclone-seed")
}

/// A qcow2 overlay on `base`: the VM writes there, the cached base stays pristine.
pub fn overlay(base: &Path, target: &Path) -> Result<(), LabError> {
    host::run("qemu-img", &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &lossy(base), &lossy(target)])?;
    Ok(())
}

fn stage_root(root: &Path, agent_binary: &Path) -> Result<(), LabError> {
    for dir in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "mnt",
        "var/log",
        "etc/dropbear",
        "etc/demo",
        "srv/db",
        "usr/local/bin",
        "root/.ssh",
    ] {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).map_err(|source| LabError::io("create", &dir, source))?;
    }
    for (dir, mode) in [("root", 0o700), ("root/.ssh", 0o700), ("tmp", 0o1777)] {
        set_mode(&root.join(dir), mode)?;
    }
    let busybox = host::find_tool("busybox")
        .ok_or_else(|| LabError::MissingTools { missing: vec!["busybox (busybox-static)".into()] })?;
    install_binary(root, &busybox, "bin/busybox")?;
    for applet in host::run(&lossy(&busybox), &["--list"])?.lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(|source| LabError::io("link", &link, source))?;
        }
    }
    let dropbear = host::find_tool("dropbear")
        .ok_or_else(|| LabError::MissingTools { missing: vec!["dropbear (dropbear-bin)".into()] })?;
    install_binary(root, &dropbear, "usr/sbin/dropbear")?;
    // The agent's `reset-identity --ssh-host-keys` makes new host keys with it.
    let dropbearkey = host::find_tool("dropbearkey")
        .ok_or_else(|| LabError::MissingTools { missing: vec!["dropbearkey (dropbear-bin)".into()] })?;
    install_binary(root, &dropbearkey, "usr/bin/dropbearkey")?;
    install_binary(root, agent_binary, "usr/bin/envclone-agent")?;
    let files = [
        GuestFile::new("/sbin/init", INIT, 0o755),
        GuestFile::new("/usr/local/bin/demo-web", DEMO_WEB, 0o755),
        GuestFile::new("/usr/local/bin/demo-db", DEMO_DB, 0o755),
        GuestFile::new("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        GuestFile::new("/etc/group", "root:x:0:\n", 0o644),
        // "*" (no password) rather than "!" or empty: dropbear refuses
        // accounts with an empty password even for key logins.
        GuestFile::new("/etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600),
    ];
    for file in &files {
        write_file(&root.join(file.path.strip_prefix("/").unwrap_or(&file.path)), &file.content, file.mode)?;
    }
    Ok(())
}

/// Copies a binary and, when it is dynamically linked, the libraries `ldd`
/// names, at the same paths, so it runs in a guest without a distribution.
fn install_binary(root: &Path, binary: &Path, target: &str) -> Result<(), LabError> {
    let content = fs::read(binary).map_err(|source| LabError::io("read", binary, source))?;
    write_file(&root.join(target), &content, 0o755)?;
    for library in host::shared_libraries(binary)? {
        let destination = root.join(library.strip_prefix("/").unwrap_or(&library));
        if !destination.exists() {
            let content = fs::read(&library).map_err(|source| LabError::io("read", &library, source))?;
            write_file(&destination, &content, 0o755)?;
        }
    }
    Ok(())
}

/// SHA-256 over every path, type, mode and content below `root`, in sorted
/// order, so equal trees hash equal regardless of creation order.
pub fn content_digest(root: &Path) -> Result<String, LabError> {
    let mut hasher = Sha256::new();
    hasher.update(LAYOUT_VERSION);
    hasher.update(ROOT_IMAGE_SIZE);
    let mut stack = vec![root.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|source| LabError::io("read", &dir, source))? {
            let path = entry.map_err(|source| LabError::io("read", &dir, source))?.path();
            let meta = fs::symlink_metadata(&path).map_err(|source| LabError::io("stat", &path, source))?;
            if meta.is_dir() {
                stack.push(path.clone());
            }
            entries.push((path, meta));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, meta) in entries {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(relative.as_os_str().as_encoded_bytes());
        hasher.update(meta.mode().to_le_bytes());
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(|source| LabError::io("read", &path, source))?;
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            hasher.update(fs::read(&path).map_err(|source| LabError::io("read", &path, source))?);
        }
        hasher.update([0]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// An ext4 filesystem filled from `source` (no loop mount: `mkfs.ext4 -d`),
/// as a qcow2 image at `target`. Both temporaries vanish on drop whatever
/// path the build takes; the rename comes last, so a half-built image is
/// never taken for a finished (or cached) one.
fn ext4_qcow2(source: &Path, target: &Path, size: &str, label: &str) -> Result<(), LabError> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let raw = temp_file_in(dir, ".raw")?;
    host::run("mkfs.ext4", &["-q", "-F", "-L", label, "-d", &lossy(source), &lossy(&raw), size])?;
    let partial = temp_file_in(dir, ".qcow2")?;
    host::run("qemu-img", &["convert", "-O", "qcow2", &lossy(&raw), &lossy(&partial)])?;
    partial.persist(target).map_err(|e| LabError::io("rename", target, e.error))?;
    Ok(())
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), LabError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| LabError::io("create", parent, source))?;
    }
    fs::write(path, content).map_err(|source| LabError::io("write", path, source))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| LabError::io("chmod", path, source))
}

fn tempdir_in(parent: &Path, prefix: &str) -> Result<tempfile::TempDir, LabError> {
    tempfile::Builder::new()
        .prefix(&format!(".{prefix}-"))
        .tempdir_in(parent)
        .map_err(|source| LabError::io("create a staging directory in", parent, source))
}

fn temp_file_in(parent: &Path, suffix: &str) -> Result<tempfile::TempPath, LabError> {
    tempfile::Builder::new()
        .prefix(".build-")
        .suffix(suffix)
        .tempfile_in(parent)
        .map(|file| file.into_temp_path())
        .map_err(|source| LabError::io("create a temporary file in", parent, source))
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_content_and_mode_not_creation_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_file(&a.path().join("x/one"), b"1", 0o644).unwrap();
        write_file(&a.path().join("two"), b"2", 0o755).unwrap();
        write_file(&b.path().join("two"), b"2", 0o755).unwrap();
        write_file(&b.path().join("x/one"), b"1", 0o644).unwrap();
        assert_eq!(content_digest(a.path()).unwrap(), content_digest(b.path()).unwrap());

        set_mode(&b.path().join("two"), 0o644).unwrap();
        assert_ne!(content_digest(a.path()).unwrap(), content_digest(b.path()).unwrap());
        set_mode(&b.path().join("two"), 0o755).unwrap();
        fs::write(b.path().join("x/one"), b"changed").unwrap();
        assert_ne!(content_digest(a.path()).unwrap(), content_digest(b.path()).unwrap());
    }
}
