//! Running the host tools the lab is built from (ip, mkfs.ext4, qemu-img,
//! dropbearkey...). Each failure names the command and keeps its stderr.

use super::LabError;
use std::path::Path;
use std::process::Command;

/// Tools the lab needs, with the Debian package that ships each.
pub const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("unshare", "util-linux"),
    ("libvirtd", "libvirt-daemon-system"),
    ("virtlogd", "libvirt-daemon-system"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("busybox", "busybox-static"),
    ("dropbear", "dropbear-bin"),
    ("dropbearkey", "dropbear-bin"),
    ("dropbearconvert", "dropbear-bin"),
    ("ldd", "libc-bin"),
];

pub fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/lib/dropbear"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

pub fn check_tools() -> Result<(), LabError> {
    let missing: Vec<String> = REQUIRED_TOOLS
        .iter()
        .filter(|(tool, _)| find_tool(tool).is_none())
        .map(|(tool, package)| format!("{tool} ({package})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::MissingTools { missing })
    }
}

/// Runs `program args...` to completion; its stdout on success.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    run_command(Command::new(program).args(args))
}

pub fn run_command(command: &mut Command) -> Result<String, LabError> {
    let described = describe(command);
    tracing::debug!(command = %described, "running");
    let output = command.output().map_err(|source| LabError::Spawn { command: described.clone(), source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::CommandFailed {
            command: described,
            status: output.status.code(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 800),
        })
    }
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    let start = text.len().saturating_sub(max);
    // Never cut inside a UTF-8 sequence.
    let start = (start..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].to_string()
}

/// The shared libraries a dynamically linked binary needs, as `ldd` lists
/// them; empty for a static binary (ldd then exits non-zero).
pub fn shared_libraries(binary: &Path) -> Result<Vec<std::path::PathBuf>, LabError> {
    let Ok(listing) = run("ldd", &[&binary.to_string_lossy()]) else {
        return Ok(Vec::new());
    };
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(Into::into)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
        assert_eq!(tail(" short \n", 100), "short");
    }

    #[test]
    fn failing_command_reports_status_and_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 7"]).unwrap_err();
        assert!(matches!(err, LabError::CommandFailed { status: Some(7), ref stderr, .. } if stderr == "boom"));
    }

    #[test]
    fn dynamic_binaries_list_their_libraries() {
        assert!(shared_libraries(Path::new("/nonexistent/binary")).unwrap().is_empty());
        assert!(!shared_libraries(Path::new("/bin/sh")).unwrap().is_empty());
    }
}
