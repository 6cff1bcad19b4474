//! Running what a user runs, timed: the real `envclone` binary (pointed at
//! the extra environments' config), `virsh` and `virt-clone` on the lab's
//! libvirtd, and `qemu-img`. Each failure names the measurement it broke.

use super::BenchError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A result with the wall-clock interval it took.
#[derive(Debug, Clone)]
pub struct Timed<T> {
    pub value: T,
    pub started: Instant,
    pub ended: Instant,
}

impl<T> Timed<T> {
    pub fn wall(&self) -> Duration {
        self.ended - self.started
    }

    pub fn ms(&self) -> f64 {
        self.wall().as_secs_f64() * 1000.0
    }
}

/// The programs a bench runs, and where they point.
#[derive(Debug, Clone)]
pub struct Tools {
    /// This very binary: the bench measures the `envclone` a user runs.
    pub envclone: PathBuf,
    /// The extra environments' config.
    pub config: PathBuf,
    /// `qemu:///system?socket=...` of the lab's libvirtd.
    pub libvirt_uri: String,
}

impl Tools {
    /// `envclone --config <extra> --json ARGS...`, timed; its JSON report.
    pub fn envclone(&self, step: &str, args: &[&str]) -> Result<Timed<Value>, BenchError> {
        let mut command = Command::new(&self.envclone);
        command.arg("--config").arg(&self.config).arg("--json").args(args).env_remove("ENVCLONE_LIBVIRT_URI");
        let output = run(step, &mut command)?;
        let value = serde_json::from_str(&output.value).map_err(|e| BenchError::Report {
            step: step.to_string(),
            command: crate::host::tool::describe(&command),
            detail: e.to_string(),
        })?;
        Ok(Timed { value, started: output.started, ended: output.ended })
    }

    /// `virsh -c <lab> ARGS...`, timed.
    pub fn virsh(&self, step: &str, args: &[&str]) -> Result<Timed<String>, BenchError> {
        run(step, Command::new("virsh").arg("-q").arg("-c").arg(&self.libvirt_uri).args(args))
    }

    /// `virt-clone --connect <lab> ARGS...`, timed.
    pub fn virt_clone(&self, step: &str, args: &[&str]) -> Result<Timed<String>, BenchError> {
        run(step, Command::new("virt-clone").arg("--connect").arg(&self.libvirt_uri).args(args))
    }
}

/// `program ARGS...`, timed; stdout on success.
pub fn tool(step: &str, program: &str, args: &[&str]) -> Result<Timed<String>, BenchError> {
    run(step, Command::new(program).args(args))
}

fn run(step: &str, command: &mut Command) -> Result<Timed<String>, BenchError> {
    let started = Instant::now();
    let value =
        crate::host::tool::run_text(command).map_err(|source| BenchError::Tool { step: step.to_string(), source })?;
    Ok(Timed { value, started, ended: Instant::now() })
}

/// A string field of a JSON report.
pub fn text<'v>(step: &str, value: &'v Value, pointer: &str) -> Result<&'v str, BenchError> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| BenchError::Field { step: step.to_string(), field: pointer.to_string() })
}

/// A number field of a JSON report (`None` when it is null or absent).
pub fn number(value: &Value, pointer: &str) -> Option<f64> {
    value.pointer(pointer).and_then(Value::as_f64)
}

/// Bytes a file takes on disk (allocated blocks, not its apparent size).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Deletes files made by a measurement; one already gone is fine.
pub fn remove_files(step: &str, paths: &[PathBuf]) -> Result<(), BenchError> {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BenchError::io(step, "remove", path)(e)),
        }
    }
    Ok(())
}
