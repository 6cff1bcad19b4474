//! `qemu-img convert` for full copies: a standalone qcow2 copy of what a
//! disk reads (the image and everything below it), with only allocated
//! data copied (`qemu-img convert` skips what reads as zeros), and its
//! progress passed on as qemu-img prints it.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::host::{CopyProgress, StorageError};

/// Writes what `image` reads into the new file `copy`: `qemu-img convert`
/// with direct I/O where the file system has it.
pub(super) fn flatten(image: &Path, copy: &Path, progress: CopyProgress<'_>) -> Result<(), StorageError> {
    let fail = |detail: String| StorageError::Io {
        what: "write the full copy",
        path: copy.to_owned(),
        source: std::io::Error::other(detail),
    };
    // Direct I/O (-t/-T none) first: a copy of many GiB then does not
    // evict the running VMs' pages from the host's cache, and costs far
    // less CPU (`envclone lab bench` measured ~4x the throughput here).
    // A filesystem without O_DIRECT (tmpfs) refuses it: copy through
    // the cache there.
    let mut outcome = convert(image, copy, &["-t", "none", "-T", "none"], progress).map_err(&fail)?;
    if !outcome.success && refuses_direct_io(&outcome.stderr) {
        let _ = std::fs::remove_file(copy);
        outcome = convert(image, copy, &[], progress).map_err(&fail)?;
    }
    if !outcome.success {
        let _ = std::fs::remove_file(copy);
        return Err(fail(format!("qemu-img convert: {}", outcome.stderr.trim())));
    }
    Ok(())
}

struct Converted {
    success: bool,
    stderr: String,
}

/// `qemu-img convert -p -U -O qcow2 [cache] image copy`, its progress
/// passed on as it prints it. -U: the snapshot's image is a backing file
/// the running source holds open (read-only); reading it shared is safe,
/// it never changes.
fn convert(image: &Path, copy: &Path, cache: &[&str], progress: CopyProgress<'_>) -> Result<Converted, String> {
    use std::io::Read;
    let mut child = Command::new("qemu-img")
        .args(["convert", "-p", "-U", "-O", "qcow2"])
        .args(cache)
        .arg(image)
        .arg(copy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    let mut stderr_pipe = child.stderr.take().ok_or("qemu-img started without its stderr pipe")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut stdout = child.stdout.take().ok_or("qemu-img started without its stdout pipe")?;
    let mut pending = Vec::new();
    let mut buffer = [0u8; 512];
    while let Ok(read) = stdout.read(&mut buffer) {
        if read == 0 {
            break;
        }
        pending.extend_from_slice(&buffer[..read]);
        // Lines end in '\r' (the same terminal line, rewritten).
        while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Some(permille) = parse_progress(&String::from_utf8_lossy(&line)) {
                progress(permille);
            }
        }
    }
    let status = child.wait().map_err(|e| format!("qemu-img: {e}"))?;
    Ok(Converted { success: status.success(), stderr: stderr.join().unwrap_or_default() })
}

/// `    (42.17/100%)` as qemu-img -p prints it, in thousandths.
fn parse_progress(line: &str) -> Option<u16> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    let percent: f64 = inner.parse().ok()?;
    Some((percent * 10.0).round().clamp(0.0, 1000.0) as u16)
}

fn refuses_direct_io(stderr: &str) -> bool {
    stderr.contains("Invalid argument") || stderr.contains("O_DIRECT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{LocalStorage, Storage};

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

        let seen = std::sync::Mutex::new(Vec::new());
        let bytes = LocalStorage.copy_full(&overlay, &copy, &|p| seen.lock().unwrap().push(p)).unwrap();

        assert!(bytes > 0);
        assert_eq!(seen.lock().unwrap().last(), Some(&1000), "qemu-img -p ends at 100%");

        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", copy.to_str().unwrap()])).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert!(info.get("backing-filename").is_none(), "{info:#}");
        assert!(LocalStorage.copy_full(&overlay, &copy, &|_| {}).is_err(), "an existing copy is never overwritten");
    }

    #[test]
    fn a_filesystem_without_direct_io_gets_a_copy_through_the_cache() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("/dev/shm is a tmpfs on every Linux host");
        let base = dir.path().join("base.qcow2");
        let copy = dir.path().join("copy.qcow2");
        let output =
            Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("1M").output().unwrap();
        assert!(output.status.success());

        LocalStorage.copy_full(&base, &copy, &|_| {}).unwrap();

        assert!(copy.exists());
    }

    #[test]
    fn progress_lines_are_read_in_thousandths() {
        assert_eq!(parse_progress("    (0.00/100%)"), Some(0));
        assert_eq!(parse_progress("    (42.17/100%)\r"), Some(422));
        assert_eq!(parse_progress("    (100.00/100%)"), Some(1000));
        assert_eq!(parse_progress("qemu-img: warning"), None);
    }
}
