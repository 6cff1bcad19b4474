//! Forced-command mode: authorized_keys pins the key to
//! `envclone-agent --forced-command`, and sshd puts what the client asked
//! for in SSH_ORIGINAL_COMMAND. Only `envclone-agent <subcommand> [args]` is
//! accepted; there is no shell, so quoting tricks and `;`, `|`, `$(...)`
//! never reach one.

use crate::{Cli, Command};
use clap::Parser;
use envclone_agent::AgentError;

pub fn command_from_env() -> Result<Command, AgentError> {
    let original = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    parse(&original)
}

pub fn parse(original: &str) -> Result<Command, AgentError> {
    let words = split(original)?;
    let program = words.first().map(String::as_str).unwrap_or("");
    if program != "envclone-agent" && !program.ends_with("/envclone-agent") {
        return Err(refused(format!("only envclone-agent subcommands run with this key, not {original:?}")));
    }
    let cli =
        Cli::try_parse_from(&words).map_err(|e| refused(e.to_string().lines().next().unwrap_or("").to_string()))?;
    match (cli.forced_command, cli.command) {
        (false, Some(command)) => Ok(command),
        _ => Err(refused("a subcommand is required".to_string())),
    }
}

fn refused(message: String) -> AgentError {
    AgentError {
        kind: "forced-command-refused".into(),
        message,
        hint: Some("this key is restricted to `envclone-agent <subcommand>`; use another key for a shell".into()),
    }
}

/// Splits the way the controller quotes (POSIX single and double quotes,
/// backslash), but refuses what only a shell would interpret.
// Hand-written: the only job is the inverse of the controller's quoting,
// and a crate would bring a second idea of "shell words" with it.
fn split(line: &str) -> Result<Vec<String>, AgentError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(refused("unterminated single quote".into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => return Err(refused("unterminated double quote".into())),
                        },
                        Some('$') | Some('`') => return Err(refused("shell expansions are not accepted".into())),
                        Some(c) => word.push(c),
                        None => return Err(refused("unterminated double quote".into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(refused("trailing backslash".into())),
                }
            }
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            ';' | '|' | '&' | '$' | '`' | '<' | '>' | '(' | ')' | '\n' => {
                return Err(refused(format!("shell syntax {c:?} is not accepted")));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_agent_subcommands_with_quoted_arguments() {
        assert!(matches!(parse("envclone-agent status"), Ok(Command::Status)));
        assert!(matches!(parse("/usr/bin/envclone-agent 'status'"), Ok(Command::Status)));
        assert_eq!(split(r#"a 'b c' "d\"e" f\ g"#).unwrap(), ["a", "b c", "d\"e", "f g"]);
    }

    #[test]
    fn refuses_other_programs_and_shell_syntax() {
        for line in [
            "",
            "sh",
            "cat /etc/shadow",
            "envclone-agent status; rm -rf /",
            "envclone-agent status | nc x 1",
            "envclone-agent $(id)",
            "envclone-agent \"`id`\"",
            "envclone-agent status > /etc/passwd",
            "envclone-agent",
            "envclone-agent --forced-command status",
            "envclone-agent no-such-subcommand",
            "envclone-agent 'unterminated",
        ] {
            let err = parse(line).err().unwrap_or_else(|| panic!("{line:?} was accepted"));
            assert_eq!(err.kind, "forced-command-refused", "{line:?}");
        }
    }
}
