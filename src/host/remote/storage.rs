//! [`SshStorage`]: another host's files and `qemu-img`, through a shell on
//! it. Each operation is one command of POSIX `sh`, coreutils and
//! `qemu-img`, which every host running libvirt has: nothing of
//! envclone's is installed there.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::shell::{command_line, RemoteStream, SshShell, LONG_WORK};
use crate::catalog::ImageFormat;
use crate::host::qemu_img::{self, parse_chain, parse_check, parse_map};
use crate::host::{Copied, CopyProgress, Extent, FileStamp, RangeWriter, Storage, StorageError, ToolError};

/// The exit status our scripts give for "the file to create exists".
const EXISTS: i32 = 17;

#[derive(Debug)]
pub struct SshStorage {
    shell: Arc<SshShell>,
    /// Bound on a command that only looks (stat, test, ls), and on each
    /// stall of a stream.
    short: Duration,
}

fn os(parts: &[&str]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

fn with_program(program: &str, args: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(program)).chain(args).collect()
}

/// `path` quoted for the remote shell.
fn quoted(path: &Path) -> Result<String, ToolError> {
    command_line(&[path.as_os_str().to_owned()])
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"))
}

impl SshStorage {
    pub fn new(shell: Arc<SshShell>, short: Duration) -> Self {
        SshStorage { shell, short }
    }

    pub fn shell(&self) -> &SshShell {
        &self.shell
    }

    fn run(
        &self,
        what: &'static str,
        path: &Path,
        argv: Vec<OsString>,
        timeout: Duration,
    ) -> Result<Vec<u8>, StorageError> {
        self.shell.run(&argv, timeout).map_err(StorageError::tool(what, path))
    }

    fn qemu_img(&self, what: &'static str, path: &Path, args: Vec<OsString>) -> Result<Vec<u8>, StorageError> {
        self.run(what, path, with_program("qemu-img", args), LONG_WORK)
    }

    /// Runs `script`, which exits [`EXISTS`] when `path` is in the way.
    fn create(&self, what: &'static str, path: &Path, script: &str) -> Result<Vec<u8>, StorageError> {
        let output = self.shell.script(script, LONG_WORK).map_err(StorageError::tool(what, path))?;
        if output.status == EXISTS {
            return Err(StorageError::Exists { path: path.to_owned() });
        }
        self.shell.ok(script, output).map_err(StorageError::tool(what, path))
    }

    fn text(&self, what: &'static str, path: &Path, argv: &[&str]) -> Result<String, StorageError> {
        let stdout = self.run(what, path, os(argv), self.short)?;
        Ok(String::from_utf8_lossy(&stdout).trim().to_owned())
    }

    fn bad_output(command: &str, detail: impl Into<String>) -> StorageError {
        StorageError::BadOutput { command: command.to_owned(), detail: detail.into() }
    }

    fn status(&self, what: &'static str, path: &Path, argv: Vec<OsString>) -> Result<i32, StorageError> {
        self.shell.output(&argv, self.short).map(|o| o.status).map_err(StorageError::tool(what, path))
    }

    fn refuse_existing(path: &Path) -> Result<String, ToolError> {
        let path = quoted(path)?;
        Ok(format!("if [ -e {path} ]; then exit {EXISTS}; fi; mkdir -p -- \"$(dirname -- {path})\""))
    }
}

/// `script`'s errors as the storage's: `what` failed on `path`.
fn script_for(path: &Path, build: impl FnOnce() -> Result<String, ToolError>) -> Result<String, StorageError> {
    build().map_err(StorageError::tool("quote", path))
}

impl Storage for SshStorage {
    fn exists(&self, path: &Path) -> Result<bool, StorageError> {
        let argv = vec!["test".into(), "-e".into(), path.as_os_str().to_owned()];
        match self.status("look at", path, argv)? {
            0 => Ok(true),
            1 => Ok(false),
            status => Err(Self::bad_output("test -e", format!("exit status {status}"))),
        }
    }

    fn size(&self, path: &Path) -> Option<u64> {
        let path_text = path.to_str()?;
        self.text("look at", path, &["stat", "-c", "%s", "--", path_text]).ok()?.parse().ok()
    }

    fn stamp(&self, path: &Path) -> Result<FileStamp, StorageError> {
        let path_text = path.to_str().unwrap_or_default();
        let text = self.text("look at", path, &["stat", "-c", "%s %.9Y", "--", path_text])?;
        let bad = || Self::bad_output("stat -c '%s %.9Y'", text.clone());
        let (len, modified) = text.split_once(' ').ok_or_else(bad)?;
        let (secs, nanos) = modified.split_once('.').unwrap_or((modified, "0"));
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        let nanos: i64 = format!("{nanos:0<9}").get(..9).unwrap_or("0").parse().map_err(|_| bad())?;
        Ok(FileStamp { len: len.parse().map_err(|_| bad())?, modified_ns: secs * 1_000_000_000 + nanos })
    }

    fn free_space(&self, dir: &Path) -> Result<u64, StorageError> {
        let dir_text = dir.to_str().unwrap_or_default();
        let text = self.text("measure the free space of", dir, &["stat", "-f", "-c", "%a %S", "--", dir_text])?;
        let numbers: Vec<u64> = text.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        match numbers[..] {
            [available, block] => Ok(available.saturating_mul(block)),
            _ => Err(Self::bad_output("stat -f -c '%a %S'", text)),
        }
    }

    fn create_dir(&self, dir: &Path) -> Result<(), StorageError> {
        let argv = vec!["mkdir".into(), "-p".into(), "--".into(), dir.as_os_str().to_owned()];
        self.run("create the directory", dir, argv, self.short).map(drop)
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let script = script_for(dir, || {
            let d = quoted(dir)?;
            Ok(format!("if [ -d {d} ]; then find {d} -mindepth 1 -maxdepth 1 -print0; fi"))
        })?;
        let output = self.shell.script(&script, self.short).map_err(StorageError::tool("list", dir))?;
        let stdout = self.shell.ok(&script, output).map_err(StorageError::tool("list", dir))?;
        Ok(stdout
            .split(|&b| b == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| PathBuf::from(String::from_utf8_lossy(entry).into_owned()))
            .collect())
    }

    fn remove_dir_if_empty(&self, dir: &Path) {
        let argv = vec!["rmdir".into(), "--".into(), dir.as_os_str().to_owned()];
        let _ = self.shell.output(&argv, self.short);
    }

    fn remove(&self, path: &Path) -> Result<(), StorageError> {
        let argv = vec!["rm".into(), "-f".into(), "--".into(), path.as_os_str().to_owned()];
        self.run("remove", path, argv, self.short).map(drop)
    }

    fn install(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        let script = script_for(from, || {
            let (f, t, d) = (quoted(from)?, quoted(to)?, quoted(parent(to))?);
            // The rename reaches the disk with the directory (the file's
            // data was synced by whoever wrote it, as on the controller's host).
            Ok(format!("mv -f -- {f} {t} && sync -- {d}"))
        })?;
        let output = self.shell.script(&script, self.short).map_err(StorageError::tool("rename", from))?;
        self.shell.ok(&script, output).map(drop).map_err(StorageError::tool("rename", from))
    }

    fn copy_file(&self, from: &Path, to: &Path) -> Result<Copied, StorageError> {
        let script = script_for(to, || {
            let (f, t) = (quoted(from)?, quoted(to)?);
            let refuse = Self::refuse_existing(to)?;
            Ok(format!(
                "set -e; {refuse}; cp --sparse=always -- {f} {t}; sync -- {t}; stat -c %s -- {t}; sha256sum < {t}"
            ))
        })?;
        let stdout = self.create("copy", to, &script)?;
        let text = String::from_utf8_lossy(&stdout);
        let mut words = text.split_whitespace();
        let bytes = words.next().and_then(|n| n.parse().ok());
        match (bytes, words.next()) {
            (Some(bytes), Some(sha256)) if sha256.len() == 64 => Ok(Copied { bytes, sha256: sha256.to_owned() }),
            _ => Err(Self::bad_output("cp, stat, sha256sum", text.into_owned())),
        }
    }

    fn sha256(&self, path: &Path) -> Result<String, StorageError> {
        let script = script_for(path, || Ok(format!("sha256sum < {}", quoted(path)?)))?;
        let output = self.shell.script(&script, LONG_WORK).map_err(StorageError::tool("checksum", path))?;
        let stdout = self.shell.ok(&script, output).map_err(StorageError::tool("checksum", path))?;
        let text = String::from_utf8_lossy(&stdout);
        match text.split_whitespace().next() {
            Some(sum) if sum.len() == 64 => Ok(sum.to_owned()),
            _ => Err(Self::bad_output("sha256sum", text.into_owned())),
        }
    }

    fn create_overlay(&self, overlay: &Path, backing: &Path, format: ImageFormat) -> Result<(), StorageError> {
        let script = script_for(overlay, || {
            let create = command_line(&with_program("qemu-img", qemu_img::create_overlay(overlay, backing, format)))?;
            Ok(format!("set -e; {}; {create}", Self::refuse_existing(overlay)?))
        })?;
        self.create("create", overlay, &script).map(drop)
    }

    fn copy_full(&self, image: &Path, copy: &Path, progress: CopyProgress<'_>) -> Result<u64, StorageError> {
        let script = script_for(copy, || {
            let (i, c) = (quoted(image)?, quoted(copy)?);
            // Direct I/O where the file system has it, as on the controller's host.
            Ok(format!(
                "set -e; {}; qemu-img convert -U -O qcow2 -t none -T none {i} {c} 2>/dev/null || \
                 {{ rm -f -- {c}; qemu-img convert -U -O qcow2 {i} {c}; }}; sync -- {c}; stat -c %s -- {c}",
                Self::refuse_existing(copy)?
            ))
        })?;
        progress(0);
        let stdout = self.create("convert", copy, &script)?;
        progress(1000);
        let text = String::from_utf8_lossy(&stdout);
        text.trim().parse().map_err(|_| Self::bad_output("qemu-img convert; stat", text.into_owned()))
    }

    fn backing_chain(&self, path: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let stdout = self.qemu_img("info", path, qemu_img::info_chain(path))?;
        parse_chain(&stdout).map_err(|detail| Self::bad_output("qemu-img info --backing-chain", detail))
    }

    fn set_backing(&self, image: &Path, backing: &Path, format: ImageFormat) -> Result<(), StorageError> {
        self.qemu_img("rebase", image, qemu_img::set_backing(image, backing, format)).map(drop)
    }

    fn pull(&self, top: &Path, backing: Option<(&Path, ImageFormat)>) -> Result<(), StorageError> {
        self.qemu_img("rebase", top, qemu_img::pull(top, backing)).map(drop)
    }

    fn merge(&self, overlay: &Path, into: &Path) -> Result<(), StorageError> {
        self.set_backing(overlay, into, ImageFormat::Qcow2)?;
        self.qemu_img("commit", into, qemu_img::commit(overlay))?;
        self.run("sync", into, vec!["sync".into(), "--".into(), into.as_os_str().to_owned()], LONG_WORK).map(drop)
    }

    fn same_content(&self, a: &Path, b: &Path) -> Result<bool, StorageError> {
        let argv = with_program("qemu-img", qemu_img::compare(a, b));
        let output = self.shell.output(&argv, LONG_WORK).map_err(StorageError::tool("compare", b))?;
        match output.status {
            0 => Ok(true),
            1 => Ok(false),
            _ => Err(StorageError::tool("compare", b)(
                self.shell.failed(&command_line(&argv).unwrap_or_default(), &output),
            )),
        }
    }

    fn check(&self, image: &Path) -> Result<Vec<String>, StorageError> {
        let argv = with_program("qemu-img", qemu_img::check(image));
        let output = self.shell.output(&argv, LONG_WORK).map_err(StorageError::tool("check", image))?;
        match output.status {
            0 | 2 | 3 => parse_check(&output.stdout).map_err(|detail| Self::bad_output("qemu-img check", detail)),
            _ => Err(StorageError::tool("check", image)(
                self.shell.failed(&command_line(&argv).unwrap_or_default(), &output),
            )),
        }
    }

    fn data_extents(&self, path: &Path) -> Result<Vec<Extent>, StorageError> {
        let stdout = self.qemu_img("map the data of", path, qemu_img::map_file(path))?;
        parse_map(&stdout).map_err(|detail| Self::bad_output("qemu-img map -f raw", detail))
    }

    fn read_range(&self, path: &Path, offset: u64, len: u64) -> Result<Box<dyn std::io::Read + '_>, StorageError> {
        let script = script_for(path, || {
            Ok(format!(
                "dd if={} bs=1M iflag=skip_bytes,count_bytes skip={offset} count={len} status=none",
                quoted(path)?
            ))
        })?;
        let stream = self.shell.stream(&script, self.short).map_err(StorageError::tool("read", path))?;
        Ok(Box::new(stream))
    }

    fn write_range(&self, path: &Path, offset: u64) -> Result<Box<dyn RangeWriter + '_>, StorageError> {
        let script = script_for(path, || {
            let p = quoted(path)?;
            Ok(format!(
                "mkdir -p -- \"$(dirname -- {p})\" && dd of={p} bs=1M oflag=seek_bytes seek={offset} conv=notrunc \
                 status=none"
            ))
        })?;
        let stream = self.shell.stream(&script, self.short).map_err(StorageError::tool("write", path))?;
        Ok(Box::new(RemoteRangeWriter { stream, path: path.to_owned() }))
    }

    fn finish_file(&self, path: &Path, len: u64) -> Result<(), StorageError> {
        let script = script_for(path, || {
            let p = quoted(path)?;
            Ok(format!("mkdir -p -- \"$(dirname -- {p})\" && truncate -s {len} -- {p} && sync -- {p}"))
        })?;
        let output = self.shell.script(&script, self.short).map_err(StorageError::tool("set the length of", path))?;
        self.shell.ok(&script, output).map(drop).map_err(StorageError::tool("set the length of", path))
    }
}

/// A `dd` on the host writing what the controller sends.
struct RemoteRangeWriter<'s> {
    stream: RemoteStream<'s>,
    path: PathBuf,
}

impl Write for RemoteRangeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

impl RangeWriter for RemoteRangeWriter<'_> {
    fn finish(self: Box<Self>) -> Result<(), StorageError> {
        let path = self.path;
        self.stream.finish().map_err(StorageError::tool("write", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_the_way_is_refused_before_its_directory_is_made() {
        let script = SshStorage::refuse_existing(Path::new("/srv/e c/o.qcow2")).unwrap();
        assert_eq!(
            script,
            "if [ -e '/srv/e c/o.qcow2' ]; then exit 17; fi; mkdir -p -- \"$(dirname -- '/srv/e c/o.qcow2')\""
        );
    }

    #[test]
    fn a_program_heads_its_arguments() {
        let argv = with_program("qemu-img", qemu_img::commit(Path::new("/o")));
        assert_eq!(command_line(&argv).unwrap(), "qemu-img commit -q -d /o");
        assert_eq!(parent(Path::new("o")), Path::new("/"));
    }
}
