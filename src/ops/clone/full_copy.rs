//! `--disks full`: a standalone qcow2 copy of what a disk reads (the
//! snapshot's image and everything below it), with only allocated data
//! copied (`qemu-img convert` skips what reads as zeros). The copy has no
//! backing file, so the clone needs nothing of the source's.

use std::path::Path;
use std::process::Command;

use crate::ops::restore::ImageFileError;

pub trait FullCopy: Sync + std::fmt::Debug {
    /// Copies what `image` reads into a new qcow2 file `copy` (which must not exist).
    fn copy_full(&self, image: &Path, copy: &Path) -> Result<(), ImageFileError>;
}

/// The real [`FullCopy`]: `qemu-img convert -O qcow2`.
#[derive(Debug, Clone, Copy, Default)]
pub struct QemuImgConvert;

impl FullCopy for QemuImgConvert {
    fn copy_full(&self, image: &Path, copy: &Path) -> Result<(), ImageFileError> {
        let fail = |detail: String| ImageFileError::Other { path: copy.to_owned(), detail };
        if copy.exists() {
            return Err(fail("it already exists".into()));
        }
        // Direct I/O (-t/-T none) first: a copy of many GiB then does not
        // evict the running VMs' pages from the host's cache, and costs far
        // less CPU (`envclone lab bench` measured ~4x the throughput here).
        // A filesystem without O_DIRECT (tmpfs) refuses it: copy through
        // the cache there.
        let direct = convert(image, copy, &["-t", "none", "-T", "none"]).map_err(&fail)?;
        let output = match direct {
            output if output.status.success() => return Ok(()),
            output if refuses_direct_io(&String::from_utf8_lossy(&output.stderr)) => {
                let _ = std::fs::remove_file(copy);
                convert(image, copy, &[]).map_err(&fail)?
            }
            output => output,
        };
        if output.status.success() {
            Ok(())
        } else {
            let _ = std::fs::remove_file(copy);
            Err(fail(format!("qemu-img convert: {}", String::from_utf8_lossy(&output.stderr).trim())))
        }
    }
}

/// `qemu-img convert -U -O qcow2 [cache] image copy`. -U: the snapshot's
/// image is a backing file the running source holds open (read-only);
/// reading it shared is safe, it never changes.
fn convert(image: &Path, copy: &Path, cache: &[&str]) -> Result<std::process::Output, String> {
    Command::new("qemu-img")
        .args(["convert", "-U", "-O", "qcow2"])
        .args(cache)
        .arg(image)
        .arg(copy)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))
}

fn refuses_direct_io(stderr: &str) -> bool {
    stderr.contains("Invalid argument") || stderr.contains("O_DIRECT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_copy_of_an_overlay_has_no_backing_file_and_the_same_data() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        let copy = dir.path().join("copy.qcow2");
        let qemu_img = |args: &[&str]| {
            let output = Command::new("qemu-img").args(args).output().unwrap();
            assert!(output.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ]);

        QemuImgConvert.copy_full(&overlay, &copy).unwrap();

        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", copy.to_str().unwrap()])).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert!(info.get("backing-filename").is_none(), "{info:#}");
        assert!(QemuImgConvert.copy_full(&overlay, &copy).is_err(), "an existing copy is never overwritten");
    }

    #[test]
    fn a_filesystem_without_direct_io_gets_a_copy_through_the_cache() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else { return };
        let base = dir.path().join("base.qcow2");
        let copy = dir.path().join("copy.qcow2");
        let output =
            Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("1M").output().unwrap();
        assert!(output.status.success());

        QemuImgConvert.copy_full(&base, &copy).unwrap();

        assert!(copy.exists());
    }
}
