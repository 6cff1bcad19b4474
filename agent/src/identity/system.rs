//! The guest's programs and files, as the identity subcommands touch them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::IdentityError;
use crate::atomic::{self, Ownership};

/// Where system tools live. PATH is not consulted: under a forced command it
/// is whatever the SSH server chose, and the agent runs as root.
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The absolute path of a system tool, e.g. `ip` or `dropbearkey`.
pub fn tool(name: &'static str) -> Result<PathBuf, IdentityError> {
    TOOL_DIRS.iter().map(|dir| Path::new(dir).join(name)).find(|path| path.is_file()).ok_or_else(|| {
        IdentityError::ToolMissing { tool: name, searched: TOOL_DIRS.iter().map(|d| d.to_string()).collect() }
    })
}

/// Runs `program args...` to completion with no input; its stdout on
/// success, its stderr in the error otherwise.
pub fn run(program: &Path, args: &[&str]) -> Result<String, IdentityError> {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| IdentityError::Spawn { command: command.clone(), source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(IdentityError::CommandFailed { command, status: output.status.code(), stderr })
    }
}

pub fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::ReadFile { path: path.to_path_buf(), source })
}

/// Replaces `path` with `content` so that readers see the old file or the
/// new one, never a part (see [`crate::atomic`]). The target's owner and
/// mode are kept when it exists; a new file is the agent's (root), with
/// `mode`.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), IdentityError> {
    let owner = match fs::metadata(path) {
        Ok(meta) => Ownership::of(&meta),
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        Err(_) => Ownership { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() }, mode },
    };
    atomic::replace(path, content, owner)
        .map_err(|source| IdentityError::ReplaceFile { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_content_and_keeps_the_mode() {
        let dir = std::env::temp_dir().join(format!("envclone-agent-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hostname");

        write_atomic(&path, b"db\n", 0o640).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
        write_atomic(&path, b"db2\n", 0o600).unwrap();

        assert_eq!(fs::read_to_string(&path).unwrap(), "db2\n");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o444);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_into_a_missing_directory_names_the_target() {
        let err = write_atomic(Path::new("/nonexistent-envclone/x"), b"", 0o644).unwrap_err();
        assert!(
            matches!(err, IdentityError::ReplaceFile { ref path, .. } if path == Path::new("/nonexistent-envclone/x"))
        );
    }

    #[test]
    fn tools_are_found_in_system_directories_only() {
        assert!(tool("sh").is_ok());
        assert!(matches!(tool("envclone-no-such-tool"), Err(IdentityError::ToolMissing { .. })));
    }

    #[test]
    fn failed_commands_keep_status_and_stderr() {
        let err = run(Path::new("/bin/sh"), &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        assert!(matches!(err, IdentityError::CommandFailed { status: Some(3), ref stderr, .. } if stderr == "nope"));
    }
}
