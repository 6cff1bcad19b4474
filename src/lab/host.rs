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
    check(REQUIRED_TOOLS)
}

/// Each of `tools` (a tool and the package it comes in) is on the PATH.
pub fn check(tools: &[(&str, &str)]) -> Result<(), LabError> {
    let missing: Vec<String> = tools
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
    Ok(crate::host::tool::run_text(command)?)
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
    fn dynamic_binaries_list_their_libraries() {
        assert!(shared_libraries(Path::new("/nonexistent/binary")).unwrap().is_empty());
        assert!(!shared_libraries(Path::new("/bin/sh")).unwrap().is_empty());
    }
}
