//! Memory images name their snapshot's disk images in the domain XML they
//! carry (`restore_memory_image` builds its overlays on those paths). When
//! a live commit merges a later snapshot's image `top` into `into`, that
//! snapshot's disk content now lives at `into`'s path, so its memory images
//! are re-pointed: the XML is rewritten in place, in the room libvirt
//! leaves after it for `virsh save-image-edit`, and the migration stream
//! does not move. This runs after the commit (`into` already reads like
//! `top`) and before `top`'s file is removed, so the image always names a
//! file that holds the right data.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::DeleteError;
use crate::hypervisor::DomainDef;
use crate::ops::snapshot::save_image::SavePrefix;

/// Makes every disk of the memory image at `path` whose source is `from`
/// name `to` (in `format`) instead. Returns whether anything changed.
pub fn repoint(path: &Path, from: &Path, to: &Path, format: &str) -> Result<bool, DeleteError> {
    let fail = |detail: String| DeleteError::RewriteMemory { path: path.to_owned(), to: to.to_owned(), detail };
    let prefix = SavePrefix::read(path).map_err(|source| DeleteError::ReadMemory { path: path.to_owned(), source })?;
    let mut def = DomainDef::parse(&prefix.xml).map_err(|e| fail(e.to_string()))?;
    let targets: Vec<String> =
        def.disks().into_iter().filter(|d| d.source.as_deref() == Some(from)).map(|d| d.target).collect();
    if targets.is_empty() {
        return Ok(false);
    }
    for target in &targets {
        def.set_disk_source(target, to, format).map_err(|e| fail(e.to_string()))?;
    }
    let rewritten = prefix.with_xml(&def.to_xml()).map_err(|e| fail(e.to_string()))?;
    let bytes = rewritten.encode().map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 != prefix.stream_offset() {
        return Err(fail("the rewritten header would move the memory stream".into()));
    }
    let file = OpenOptions::new().write(true).open(path).map_err(|e| fail(e.to_string()))?;
    file.write_all_at(&bytes, 0).map_err(|e| fail(e.to_string()))?;
    file.sync_data().map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::hypervisor::{DirectBootSpec, NicSpec};

    /// A save image for a domain whose vda is `disk`, with a fake stream.
    pub(crate) fn save_image(path: &Path, disk: &Path) {
        let def = DomainDef::direct_boot(&DirectBootSpec {
            name: "web".into(),
            domain_type: "qemu".into(),
            memory_mib: 256,
            vcpus: 1,
            kernel: PathBuf::from("/boot/vmlinuz"),
            initrd: None,
            cmdline: "root=/dev/vda".into(),
            disks: vec![disk.to_owned()],
            interfaces: vec![NicSpec { network: "net".into(), mac: None }],
            serial_log: None,
        });
        let prefix = SavePrefix::new(&def.to_xml(), Some("<qemu-migration/>"), true).unwrap();
        let mut bytes = prefix.encode().unwrap();
        bytes.extend_from_slice(b"QEVM-stream");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    pub(crate) fn disk_of(path: &Path) -> PathBuf {
        let prefix = SavePrefix::read(path).unwrap();
        DomainDef::parse(&prefix.xml).unwrap().disks()[0].source.clone().unwrap()
    }

    #[test]
    fn repoint_rewrites_the_disk_in_place_and_keeps_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("s2.mem");
        save_image(&image, Path::new("/img/s2.vda.qcow2"));
        let before = std::fs::read(&image).unwrap();

        let changed = repoint(&image, Path::new("/img/s2.vda.qcow2"), Path::new("/img/s1.vda.qcow2"), "qcow2").unwrap();

        assert!(changed);
        assert_eq!(disk_of(&image), PathBuf::from("/img/s1.vda.qcow2"));
        let after = std::fs::read(&image).unwrap();
        assert_eq!(after.len(), before.len());
        assert!(after.ends_with(b"QEVM-stream"));
        let prefix = SavePrefix::read(&image).unwrap();
        assert_eq!(prefix.cookie.as_deref(), Some("<qemu-migration/>"));
    }

    #[test]
    fn repoint_leaves_an_image_that_names_other_disks_alone() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("s2.mem");
        save_image(&image, Path::new("/img/other.qcow2"));
        let before = std::fs::read(&image).unwrap();

        let changed = repoint(&image, Path::new("/img/s2.vda.qcow2"), Path::new("/img/s1.vda.qcow2"), "qcow2").unwrap();

        assert!(!changed);
        assert_eq!(std::fs::read(&image).unwrap(), before);
    }

    #[test]
    fn repoint_reports_a_file_that_is_no_save_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("junk.mem");
        std::fs::write(&image, b"junk").unwrap();

        let error = repoint(&image, Path::new("/a"), Path::new("/b"), "qcow2").unwrap_err();

        assert!(matches!(error, DeleteError::ReadMemory { .. }), "{error:?}");
    }
}
