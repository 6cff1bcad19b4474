//! Host tools (`qemu-img`, `ip`, `virsh`, `virt-clone`) run to completion,
//! and their failures said one way everywhere: the command line, the exit
//! status and the end of what the tool wrote to stderr. Each caller wraps a
//! [`ToolError`] in its own error, which adds what it was doing.
//!
//! (`qemu-img convert -p` for full copies streams its progress and is run
//! by `ops::clone::full_copy` itself.)

use std::process::{Command, Output};

/// How much of a tool's stderr an error keeps: its end says why.
const STDERR_TAIL: usize = 800;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed (exit {}): {stderr}", status.map_or("by signal".to_string(), |s| s.to_string()))]
    Failed { command: String, status: Option<i32>, stderr: String },
}

impl ToolError {
    /// What the tool wrote to stderr (its end); empty when it did not run.
    pub fn stderr(&self) -> &str {
        match self {
            ToolError::Spawn { .. } => "",
            ToolError::Failed { stderr, .. } => stderr,
        }
    }
}

/// Runs `command` to completion: its stdout when it exits 0.
pub fn run(command: &mut Command) -> Result<Vec<u8>, ToolError> {
    let output = output(command)?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(failed(command, &output))
    }
}

/// [`run`], its stdout as text.
pub fn run_text(command: &mut Command) -> Result<String, ToolError> {
    run(command).map(|stdout| String::from_utf8_lossy(&stdout).into_owned())
}

/// Runs `command` to completion whatever its exit status says, for tools
/// whose status is an answer (`qemu-img compare`: 1 means "differ").
pub fn output(command: &mut Command) -> Result<Output, ToolError> {
    tracing::debug!(command = %describe(command), "running");
    command.output().map_err(|source| ToolError::Spawn { command: describe(command), source })
}

/// The error of `command` that ran and ended as `output` says.
pub fn failed(command: &Command, output: &Output) -> ToolError {
    ToolError::Failed {
        command: describe(command),
        status: output.status.code(),
        stderr: tail(&String::from_utf8_lossy(&output.stderr), STDERR_TAIL),
    }
}

/// The command line, as a user would type it (without quoting).
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `max` bytes of `text`, trimmed, never cut inside a character.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    let start = text.len().saturating_sub(max);
    let start = (start..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_command_its_status_and_the_end_of_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo out; echo boom >&2; exit 7"])).unwrap_err();
        assert!(matches!(&err, ToolError::Failed { status: Some(7), stderr, .. } if stderr == "boom"), "{err:?}");
        assert_eq!(err.to_string(), "`sh -c echo out; echo boom >&2; exit 7` failed (exit 7): boom");
        assert_eq!(run_text(Command::new("sh").args(["-c", "echo out"])).unwrap(), "out\n");
    }

    #[test]
    fn a_tool_that_is_missing_is_a_spawn_error_naming_it() {
        let err = run(&mut Command::new("envclone-no-such-tool")).unwrap_err();
        assert!(matches!(&err, ToolError::Spawn { command, .. } if command == "envclone-no-such-tool"), "{err:?}");
        assert_eq!(err.stderr(), "");
    }

    #[test]
    fn tail_keeps_the_end_and_whole_characters() {
        assert_eq!(tail("  abcdef \n", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
        assert_eq!(tail("short", 100), "short");
    }
}
