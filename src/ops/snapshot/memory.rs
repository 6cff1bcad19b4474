//! A VM's memory state, captured live at the same instant as its disk
//! snapshot, and written as a libvirt save image that `virsh restore` (and
//! [`restore_memory_image`]) can start again.
//!
//! How (QEMU's `background-snapshot` migration capability, through QMP):
//!
//! ```text
//! before the barrier   prepare: save-image prefix (header + domain XML whose disks are the
//!                      snapshot's images) written to <vm>/<snapshot>.mem; a unix socket
//!                      listened on; background-snapshot turned on
//! in the barrier       pause (QMP stop) -> external disk snapshot -> capture: `migrate` to
//!                      the socket; QEMU saves the devices' state, write-protects RAM and
//!                      starts the guest again: once it runs, the memory point has passed,
//!                      and it is the disk snapshot's point exactly (the guest was paused
//!                      between the two)
//! after the thaw       finish: RAM streams (copy-on-write, the guest keeps running) into
//!                      the file after the prefix; capability off again
//! ```
//!
//! The freeze is never held while memory streams: only the pause, the disk
//! snapshot and QEMU's device-state save (tens of milliseconds) are inside
//! the window. A guest captured frozen resumes frozen after a restore: its
//! agent's lease timeout (the freeze limit) thaws it a few seconds later,
//! or `envclone-agent thaw` does at once.
//!
//! QEMU connects to the socket from its own process, so the socket lives
//! next to the image (or in the temporary directory when that path is too
//! long for a socket address).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::save_image::{ReadSaveImageError, SaveImageError, SavePrefix};
use crate::error::Failure;
use crate::hypervisor::{Disk, DomainDef, HvError, Hypervisor};

/// How often the capture polls QEMU while the guest is paused or frozen.
const CAPTURE_POLL: Duration = Duration::from_millis(5);
/// How often `finish` polls while memory streams.
const STREAM_POLL: Duration = Duration::from_millis(50);
/// A stream that stops moving for this long is given up.
const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Bound on waiting for QEMU to acknowledge a cancel.
const CANCEL_WITHIN: Duration = Duration::from_secs(10);
/// Bound on QEMU connecting after `prepare` (hooks and the barrier come between).
const ACCEPT_WITHIN: Duration = Duration::from_secs(600);
const ACCEPT_POLL: Duration = Duration::from_millis(5);
const COPY_BLOCK: usize = 1 << 20;
/// Socket addresses hold 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot write the memory image {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the memory image header")]
    Encode(#[source] SaveImageError),
    #[error("cannot listen on {} for QEMU's memory stream", socket.display())]
    Listen {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QMP {command} to domain {domain}")]
    Qmp {
        domain: String,
        command: &'static str,
        #[source]
        source: Box<HvError>,
    },
    #[error("QEMU of domain {domain} refused {command}: {desc} ({class})")]
    Refused { domain: String, command: &'static str, class: String, desc: String },
    #[error("QEMU of domain {domain} cannot take a background snapshot: {desc}")]
    Unsupported { domain: String, desc: String },
    #[error("unexpected reply to {command} from domain {domain}: {detail}")]
    Reply { domain: String, command: &'static str, detail: String },
    #[error("the memory stream of domain {domain} ended {status}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Migration { domain: String, status: String, detail: Option<String> },
    #[error("gave up after {} ms waiting for {what} of domain {domain}", after.as_millis())]
    Timeout { domain: String, what: &'static str, after: Duration },
    #[error("cannot store the memory stream in {}", path.display())]
    Stream {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QEMU sent no memory stream for {}", path.display())]
    Empty { path: PathBuf },
    #[error(transparent)]
    ReadImage(#[from] ReadSaveImageError),
    #[error("the domain XML in the memory image")]
    Xml(#[source] Box<HvError>),
    #[error("cannot create the overlay {} on {}: {detail}", overlay.display(), backing.display())]
    Overlay { overlay: PathBuf, backing: PathBuf, detail: String },
    #[error("cannot restore the domain from its memory image")]
    Restore(#[source] Box<HvError>),
}

impl MemoryError {
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            MemoryError::Unsupported { .. } => {
                "QEMU needs userfaultfd write-protection for this (Linux 5.7+, QEMU 6.0+, and \
                 CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1); take the snapshot without --memory"
            }
            MemoryError::Listen { .. } | MemoryError::Write { .. } | MemoryError::Stream { .. } => {
                "check the snapshot storage directory (`environments.ENV.storage`): space, permissions"
            }
            MemoryError::Timeout { .. } => "the host may be overloaded; try again, or without --memory",
            MemoryError::Qmp { source, .. } | MemoryError::Restore(source) => return source.hint(),
            _ => return None,
        };
        Some(hint.to_owned())
    }
}

/// A memory image once complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryImage {
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// One VM's memory capture in progress; see the module documentation.
/// Always end it with [`MemoryCapture::finish`] or [`MemoryCapture::abort`].
#[derive(Debug)]
pub struct MemoryCapture {
    domain: String,
    path: PathBuf,
    socket: PathBuf,
    /// Accepts QEMU's connection and copies the stream; returns its length.
    writer: Option<JoinHandle<io::Result<u64>>>,
    paused: bool,
    migrating: bool,
    capability_on: bool,
}

impl MemoryCapture {
    /// Writes the image's prefix to `path` (which must not exist) with `def`
    /// as the domain XML, listens for the stream, and turns QEMU's
    /// background-snapshot on. Nothing is left behind on error.
    pub fn prepare(
        hv: &dyn Hypervisor,
        domain: &str,
        def: &DomainDef,
        path: &Path,
    ) -> Result<MemoryCapture, MemoryError> {
        let prefix = SavePrefix::new(&def.to_xml(), None, true).map_err(MemoryError::Encode)?;
        let bytes = prefix.encode().map_err(MemoryError::Encode)?;
        let write_err = |source| MemoryError::Write { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        // Guest RAM holds secrets: readable by root only, like libvirt's own.
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(write_err)?;
        let mut capture = MemoryCapture {
            domain: domain.to_owned(),
            path: path.to_owned(),
            socket: socket_path(path),
            writer: None,
            paused: false,
            migrating: false,
            capability_on: false,
        };
        if let Err(e) = file.write_all(&bytes) {
            capture.remove_files();
            return Err(write_err(e));
        }
        match capture.listen(file).and_then(|()| capture.set_capability(hv, true)) {
            Ok(()) => Ok(capture),
            Err(error) => {
                for cleanup in capture.abort(hv) {
                    tracing::warn!(domain, "while giving up the memory capture: {cleanup}");
                }
                Err(error)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pauses the guest (QMP `stop`): the first step of the memory point.
    pub fn pause(&mut self, hv: &dyn Hypervisor) -> Result<(), MemoryError> {
        qmp(hv, &self.domain, "stop", None)?;
        self.paused = true;
        Ok(())
    }

    /// Starts the guest again if [`MemoryCapture::pause`] stopped it and
    /// nothing else did.
    pub fn resume(&mut self, hv: &dyn Hypervisor) -> Result<(), MemoryError> {
        if self.paused {
            qmp(hv, &self.domain, "cont", None)?;
            self.paused = false;
        }
        Ok(())
    }

    /// Starts the background snapshot and returns once QEMU has captured
    /// the devices' state and started the guest again (the memory point),
    /// at the latest at `deadline`. On error the guest runs again.
    pub fn capture(&mut self, hv: &dyn Hypervisor, deadline: Instant) -> Result<(), MemoryError> {
        let result = self.start_and_wait(hv, deadline);
        if result.is_err() {
            if self.migrating {
                if let Err(e) = self.cancel(hv) {
                    tracing::warn!(domain = %self.domain, "cannot cancel the memory stream: {e}");
                }
            }
            if let Err(e) = self.resume(hv) {
                tracing::error!(domain = %self.domain, "cannot resume the guest after a failed memory capture: {e}");
            }
        }
        result
    }

    fn start_and_wait(&mut self, hv: &dyn Hypervisor, deadline: Instant) -> Result<(), MemoryError> {
        let uri = format!("unix:{}", self.socket.display());
        qmp(hv, &self.domain, "migrate", Some(json!({ "uri": uri })))?;
        self.migrating = true;
        let within = deadline.saturating_duration_since(Instant::now());
        let outcome = crate::wait::until("the memory point", within, CAPTURE_POLL, || -> Result<_, MemoryError> {
            if running(hv, &self.domain)? {
                return Ok(Some(None));
            }
            let (status, detail) = migration_status(hv, &self.domain)?;
            Ok(matches!(status.as_str(), "failed" | "cancelled" | "cancelling").then_some(Some((status, detail))))
        });
        match outcome {
            Ok(None) => {
                // QEMU started the guest itself: our pause is over.
                self.paused = false;
                Ok(())
            }
            Ok(Some((status, detail))) => {
                self.migrating = false;
                Err(MemoryError::Migration { domain: self.domain.clone(), status, detail })
            }
            Err(crate::wait::WaitError::Timeout { last: Some(error), .. }) => Err(error),
            Err(crate::wait::WaitError::Timeout { waited, .. }) => {
                Err(MemoryError::Timeout { domain: self.domain.clone(), what: "the memory point", after: waited })
            }
        }
    }

    /// After the thaw: waits (up to `within`) for the stream to complete,
    /// turns background-snapshot off and returns the image. On error
    /// everything is given up (see [`MemoryCapture::abort`]).
    pub fn finish(mut self, hv: &dyn Hypervisor, within: Duration) -> Result<MemoryImage, MemoryError> {
        match self.wait_complete(hv, within) {
            Ok(image) => Ok(image),
            Err(error) => {
                let domain = self.domain.clone();
                for cleanup in self.abort(hv) {
                    tracing::warn!(domain, "while giving up the memory image: {cleanup}");
                }
                Err(error)
            }
        }
    }

    fn wait_complete(&mut self, hv: &dyn Hypervisor, within: Duration) -> Result<MemoryImage, MemoryError> {
        let outcome = crate::wait::until("the memory stream", within, STREAM_POLL, || -> Result<_, MemoryError> {
            let (status, detail) = migration_status(hv, &self.domain)?;
            Ok(match status.as_str() {
                "completed" => Some(Ok(())),
                "failed" | "cancelled" => Some(Err((status, detail))),
                _ => None,
            })
        });
        match outcome {
            Ok(Ok(())) => self.migrating = false,
            Ok(Err((status, detail))) => {
                self.migrating = false;
                return Err(MemoryError::Migration { domain: self.domain.clone(), status, detail });
            }
            Err(crate::wait::WaitError::Timeout { waited, .. }) => {
                return Err(MemoryError::Timeout {
                    domain: self.domain.clone(),
                    what: "the memory stream",
                    after: waited,
                })
            }
        }
        let bytes = self.join_writer()?;
        if bytes == 0 {
            return Err(MemoryError::Empty { path: self.path.clone() });
        }
        self.set_capability(hv, false)?;
        let size_bytes = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(domain = %self.domain, bytes, path = %self.path.display(), "memory image written");
        Ok(MemoryImage { path: self.path.clone(), size_bytes })
    }

    /// Gives the capture up: cancels the stream, starts the guest again if
    /// paused, turns background-snapshot off, removes the file. Returns
    /// what could not be undone (the guest left paused is among them).
    pub fn abort(mut self, hv: &dyn Hypervisor) -> Vec<MemoryError> {
        let mut failures = Vec::new();
        if self.migrating {
            if let Err(e) = self.cancel(hv) {
                failures.push(e);
            }
        }
        if let Err(e) = self.resume(hv) {
            failures.push(e);
        }
        if self.capability_on {
            if let Err(e) = self.set_capability(hv, false) {
                failures.push(e);
            }
        }
        if self.writer.is_some() {
            // A writer still waiting for QEMU takes our empty connection and ends.
            let _ = UnixStream::connect(&self.socket);
            if let Err(e) = self.join_writer() {
                tracing::debug!(path = %self.path.display(), "memory stream writer: {e}");
            }
        }
        self.remove_files();
        failures
    }

    fn listen(&mut self, mut file: File) -> Result<(), MemoryError> {
        let _ = fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket)
            .map_err(|source| MemoryError::Listen { socket: self.socket.clone(), source })?;
        let socket = self.socket.clone();
        self.writer = Some(std::thread::spawn(move || {
            let mut stream = accept_within(&listener, ACCEPT_WITHIN)?;
            drop(listener);
            let _ = fs::remove_file(&socket);
            stream.set_read_timeout(Some(STREAM_IDLE))?;
            let bytes = copy_stream(&mut stream, &mut file)?;
            file.sync_all()?;
            Ok(bytes)
        }));
        Ok(())
    }

    fn join_writer(&mut self) -> Result<u64, MemoryError> {
        let Some(writer) = self.writer.take() else { return Ok(0) };
        let stream_err = |source| MemoryError::Stream { path: self.path.clone(), source };
        match writer.join() {
            Ok(result) => result.map_err(stream_err),
            Err(_) => Err(stream_err(io::Error::other("the stream writer panicked"))),
        }
    }

    fn set_capability(&mut self, hv: &dyn Hypervisor, on: bool) -> Result<(), MemoryError> {
        let args = json!({ "capabilities": [{ "capability": "background-snapshot", "state": on }] });
        match qmp(hv, &self.domain, "migrate-set-capabilities", Some(args)) {
            Ok(_) => {
                self.capability_on = on;
                Ok(())
            }
            Err(MemoryError::Refused { domain, desc, .. }) if on => Err(MemoryError::Unsupported { domain, desc }),
            Err(error) => Err(error),
        }
    }

    fn cancel(&mut self, hv: &dyn Hypervisor) -> Result<(), MemoryError> {
        qmp(hv, &self.domain, "migrate_cancel", None)?;
        let outcome = crate::wait::until("the cancel", CANCEL_WITHIN, STREAM_POLL, || {
            migration_status(hv, &self.domain)
                .map(|(status, _)| (!matches!(status.as_str(), "active" | "setup" | "cancelling")).then_some(()))
        });
        self.migrating = false;
        outcome.map_err(|_| MemoryError::Timeout {
            domain: self.domain.clone(),
            what: "the cancel",
            after: CANCEL_WITHIN,
        })
    }

    fn remove_files(&self) {
        for path in [&self.socket, &self.path] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), "cannot remove: {e}"),
            }
        }
    }
}

impl Drop for MemoryCapture {
    fn drop(&mut self) {
        if self.writer.is_some() || self.paused {
            tracing::error!(domain = %self.domain, paused = self.paused, "memory capture dropped unfinished");
            let _ = UnixStream::connect(&self.socket);
        }
    }
}

/// Copies the stream to the file in large blocks (RAM streams at
/// hundreds of MiB/s).
fn copy_stream(from: &mut UnixStream, to: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BLOCK];
    let mut total = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                to.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits for one connection, at most `within` (a safety net: the capture
/// either connects within seconds or is aborted, which connects itself).
fn accept_within(listener: &UnixListener, within: Duration) -> io::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && started.elapsed() < within => {
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "QEMU never connected to send the memory stream"));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `<dir>/.<image name>.sock`, or one in the temporary directory when that
/// is too long for a socket address.
fn socket_path(image: &Path) -> PathBuf {
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let beside = image.with_file_name(format!(".{name}.sock"));
    if beside.as_os_str().len() <= MAX_SOCKET_PATH {
        return beside;
    }
    std::env::temp_dir().join(format!("envclone-{}-{}.sock", std::process::id(), name.replace(['/', ' '], "_")))
}

/// One QMP command through the hypervisor; its `return`, or the refusal.
fn qmp(
    hv: &dyn Hypervisor,
    domain: &str,
    command: &'static str,
    arguments: Option<Value>,
) -> Result<Value, MemoryError> {
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let reply = hv.qmp_raw(domain, &request.to_string()).map_err(|source| MemoryError::Qmp {
        domain: domain.to_owned(),
        command,
        source: Box::new(source),
    })?;
    let bad = |detail: String| MemoryError::Reply { domain: domain.to_owned(), command, detail };
    let mut value: Value = serde_json::from_str(&reply).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(ret) = value.get_mut("return") {
        return Ok(ret.take());
    }
    if let Some(error) = value.get("error") {
        let field = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        return Err(MemoryError::Refused {
            domain: domain.to_owned(),
            command,
            class: field("class"),
            desc: field("desc"),
        });
    }
    Err(bad(format!("neither `return` nor `error`: {reply}")))
}

fn running(hv: &dyn Hypervisor, domain: &str) -> Result<bool, MemoryError> {
    let status = qmp(hv, domain, "query-status", None)?;
    Ok(status.get("running").and_then(Value::as_bool).unwrap_or(false))
}

/// `query-migrate`: (status, error description).
fn migration_status(hv: &dyn Hypervisor, domain: &str) -> Result<(String, Option<String>), MemoryError> {
    let info = qmp(hv, domain, "query-migrate", None)?;
    let status = info.get("status").and_then(Value::as_str).unwrap_or("none").to_owned();
    let detail = info.get("error-desc").and_then(Value::as_str).map(str::to_owned);
    Ok((status, detail))
}

/// How long to wait for a stream of `bytes`: generous for a busy TCG host.
pub fn stream_budget(bytes: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_secs(bytes / (16 << 20))
}

/// A domain started from a memory image.
#[derive(Debug, Clone)]
pub struct RestoredDomain {
    pub def: DomainDef,
    /// `(disk target, new overlay, image it is based on)`.
    pub overlays: Vec<(String, PathBuf, PathBuf)>,
}

/// Starts the domain saved in `image` again: each disk of the saved
/// definition (the snapshot's images) gets a new qcow2 overlay at
/// `overlay_for(disk)`, so the snapshot stays untouched, and libvirt
/// restores the memory state onto them. The domain (same name and UUID as
/// saved) must not be running. The guest resumes where it was, frozen if
/// it was captured frozen: its agent's lease timeout thaws it, or call
/// `envclone-agent thaw` in it. Reusable by `restore`.
pub fn restore_memory_image(
    hv: &dyn Hypervisor,
    image: &Path,
    overlay_for: &dyn Fn(&Disk) -> PathBuf,
) -> Result<RestoredDomain, MemoryError> {
    let prefix = SavePrefix::read(image)?;
    let mut def = DomainDef::parse(&prefix.xml).map_err(|e| MemoryError::Xml(Box::new(e)))?;
    let mut overlays = Vec::new();
    for disk in def.disks() {
        let Some(backing) = disk.source.clone() else { continue };
        if disk.device != "disk" || disk.readonly {
            continue;
        }
        let overlay = overlay_for(&disk);
        let format = disk.format.clone().unwrap_or_else(|| "raw".to_owned());
        create_overlay(&overlay, &backing, &format)?;
        def.set_disk_source(&disk.target, &overlay, "qcow2").map_err(|e| MemoryError::Xml(Box::new(e)))?;
        overlays.push((disk.target.clone(), overlay, backing));
    }
    hv.restore_memory(image, Some(&def)).map_err(|e| MemoryError::Restore(Box::new(e)))?;
    Ok(RestoredDomain { def, overlays })
}

/// `qemu-img create -f qcow2 -F <format> -b <backing> <overlay>`.
pub fn create_overlay(overlay: &Path, backing: &Path, format: &str) -> Result<(), MemoryError> {
    let fail =
        |detail: String| MemoryError::Overlay { overlay: overlay.to_owned(), backing: backing.to_owned(), detail };
    if let Some(dir) = overlay.parent() {
        fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let mut command = Command::new("qemu-img");
    command.args(["create", "-q", "-f", "qcow2", "-F", format, "-b"]).arg(backing).arg(overlay);
    crate::host::tool::run(&mut command).map(|_| ()).map_err(|e| fail(crate::error::chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{DomainState, FakeHypervisor};

    const RUNNING: &str = r#"{"return": {"status": "running", "running": true}}"#;

    fn image_in(dir: &Path) -> PathBuf {
        dir.join("web").join("s1.mem")
    }

    #[test]
    fn prepare_writes_the_prefix_with_the_definition_and_turns_the_capability_on() {
        let dir = tempfile::tempdir().unwrap();
        let hv = FakeHypervisor::running_env("net", &["web"])
            .with_qmp_reply("migrate-set-capabilities", r#"{"return": {}}"#);
        let def = hv.peek_domain("web").unwrap().def;
        let path = image_in(dir.path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();

        let capture = MemoryCapture::prepare(&hv, "web", &def, &path).unwrap();

        let prefix = SavePrefix::read(&path).unwrap();
        assert_eq!(DomainDef::parse(&prefix.xml).unwrap(), def);
        assert!(prefix.header.was_running);
        assert!(capture.socket.exists());
        let failures = capture.abort(&hv);
        assert!(failures.is_empty(), "{failures:?}");
        assert!(!path.exists(), "abort removes the image");
    }

    #[test]
    fn prepare_reports_background_snapshot_unsupported_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let refusal =
            r#"{"error": {"class": "GenericError", "desc": "Background-snapshot is not supported by host kernel"}}"#;
        let hv = FakeHypervisor::running_env("net", &["web"]).with_qmp_reply("migrate-set-capabilities", refusal);
        let def = hv.peek_domain("web").unwrap().def;
        let path = image_in(dir.path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();

        let error = MemoryCapture::prepare(&hv, "web", &def, &path).unwrap_err();

        assert!(matches!(&error, MemoryError::Unsupported { desc, .. } if desc.contains("host kernel")), "{error:?}");
        assert!(error.hint().is_some());
        assert!(!path.exists());
        assert!(!socket_path(&path).exists());
    }

    #[test]
    fn failed_stream_start_resumes_the_paused_guest() {
        let dir = tempfile::tempdir().unwrap();
        let hv = FakeHypervisor::running_env("net", &["web"])
            .with_qmp_reply("migrate-set-capabilities", r#"{"return": {}}"#)
            .with_qmp_reply("migrate", r#"{"error": {"class": "GenericError", "desc": "no space"}}"#);
        let def = hv.peek_domain("web").unwrap().def;
        let path = image_in(dir.path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut capture = MemoryCapture::prepare(&hv, "web", &def, &path).unwrap();

        capture.pause(&hv).unwrap();
        assert_eq!(hv.peek_domain("web").unwrap().state, DomainState::Paused);
        let error = capture.capture(&hv, Instant::now() + Duration::from_secs(1)).unwrap_err();

        assert!(matches!(&error, MemoryError::Refused { command: "migrate", .. }), "{error:?}");
        assert_eq!(hv.peek_domain("web").unwrap().state, DomainState::Running);
        assert!(capture.abort(&hv).is_empty());
    }

    #[test]
    fn capture_returns_once_qemu_runs_the_guest_again() {
        let dir = tempfile::tempdir().unwrap();
        let hv = FakeHypervisor::running_env("net", &["web"])
            .with_qmp_reply("migrate-set-capabilities", r#"{"return": {}}"#)
            .with_qmp_reply("migrate", r#"{"return": {}}"#)
            .with_qmp_reply("query-status", RUNNING)
            .with_qmp_reply("query-migrate", r#"{"return": {"status": "cancelled"}}"#)
            .with_qmp_reply("migrate_cancel", r#"{"return": {}}"#);
        let def = hv.peek_domain("web").unwrap().def;
        let path = image_in(dir.path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut capture = MemoryCapture::prepare(&hv, "web", &def, &path).unwrap();

        capture.capture(&hv, Instant::now() + Duration::from_secs(1)).unwrap();

        assert!(!capture.paused);
        assert!(capture.abort(&hv).is_empty());
    }

    #[test]
    fn long_image_paths_get_a_socket_in_the_temporary_directory() {
        let long = PathBuf::from(format!("/{}/s1.mem", "d".repeat(120)));
        assert!(socket_path(&long).starts_with(std::env::temp_dir()));
        assert_eq!(socket_path(Path::new("/srv/web/s1.mem")), Path::new("/srv/web/.s1.mem.sock"));
    }
}
