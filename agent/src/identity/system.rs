//! The guest's programs and files, as the identity subcommands touch them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::IdentityError;

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
/// new one, never a part: a temporary file in the same directory, flushed to
/// disk, renamed over the target, and the directory flushed. The target's
/// mode is kept when it exists, `mode` is used when it does not.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), IdentityError> {
    let write_err = |source| IdentityError::WriteFile { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.envclone-{}", std::process::id()));
    let mode = fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(mode);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary)?;
        file.write_all(content)?;
        // create_new applied the umask; the mode must be exact.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            matches!(err, IdentityError::WriteFile { ref path, .. } if path == Path::new("/nonexistent-envclone/x"))
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
