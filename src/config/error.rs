//! Errors from loading the config and from looking names up in it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::error::Failure;
use crate::exit::ExitCode;
use serde::Serialize;

/// One problem in the config file, located by line, column and dotted key.
/// Serializable for `envclone check --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `schedules.nightly.environment`; empty when the
    /// text is not valid TOML at all.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    /// `envclone.toml:14:15: schedules.nightly.environment: no environment named "prod"`
    /// followed by an indented `hint:` line when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}", DisplayDiagnostics { path, diagnostics })]
    Invalid { path: PathBuf, diagnostics: Vec<Diagnostic> },
}

impl ConfigError {
    /// The diagnostics of an `Invalid` error; empty for `Read`.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Invalid { diagnostics, .. } => diagnostics,
            Self::Read { .. } => &[],
        }
    }
}

impl Failure for ConfigError {
    /// Nothing was done: the config must be fixed first.
    fn exit_code(&self) -> ExitCode {
        match self {
            ConfigError::Read { .. } | ConfigError::Invalid { .. } => ExitCode::Usage,
        }
    }

    /// What the user can do about a `Read` error. `Invalid` carries one hint
    /// per diagnostic in its Display instead, so this returns `None` for it.
    fn hint(&self) -> Option<String> {
        match self {
            Self::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => Some(
                "create it from config/envclone.example.toml, or point --config or ENVCLONE_CONFIG at another file"
                    .to_owned(),
            ),
            Self::Read { .. } | Self::Invalid { .. } => None,
        }
    }
}

struct DisplayDiagnostics<'a> {
    path: &'a PathBuf,
    diagnostics: &'a [Diagnostic],
}

impl fmt::Display for DisplayDiagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.diagnostics.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "invalid config file {} ({count} {noun}):", self.path.display())?;
        for diagnostic in self.diagnostics {
            write!(f, "\n{diagnostic}")?;
        }
        Ok(())
    }
}

/// A name given on the command line that the config does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no environment named {name:?}")]
    UnknownEnvironment { name: String, known: Vec<String> },
    #[error("environment {environment:?} has no VM named {name:?}")]
    UnknownVm { environment: String, name: String, known: Vec<String> },
    #[error("no standby named {name:?}")]
    UnknownStandby { name: String, known: Vec<String> },
    #[error("no host named {name:?}")]
    UnknownHost { name: String, known: Vec<String> },
}

impl Failure for LookupError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::NotFound
    }

    fn hint(&self) -> Option<String> {
        let (kind, known) = match self {
            Self::UnknownEnvironment { known, .. } => ("environments", known),
            Self::UnknownVm { known, .. } => ("VMs", known),
            Self::UnknownStandby { known, .. } => ("standbys", known),
            Self::UnknownHost { known, .. } => ("hosts", known),
        };
        Some(if known.is_empty() {
            format!("no {kind} are configured")
        } else {
            format!("known {kind}: {}", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(hint: Option<&str>) -> Diagnostic {
        Diagnostic {
            file: PathBuf::from("envclone.toml"),
            line: 14,
            column: 15,
            key: "schedules.nightly.environment".to_owned(),
            message: "no environment named \"prod\"".to_owned(),
            hint: hint.map(str::to_owned),
        }
    }

    #[test]
    fn invalid_lists_every_diagnostic_with_its_hint() {
        let error = ConfigError::Invalid {
            path: PathBuf::from("envclone.toml"),
            diagnostics: vec![diagnostic(Some("define [environments.prod] or use one of: demo")), diagnostic(None)],
        };
        let expected = "\
invalid config file envclone.toml (2 problems):
envclone.toml:14:15: schedules.nightly.environment: no environment named \"prod\"
  hint: define [environments.prod] or use one of: demo
envclone.toml:14:15: schedules.nightly.environment: no environment named \"prod\"";
        assert_eq!(error.to_string(), expected);
        assert_eq!(error.hint(), None);
    }

    #[test]
    fn missing_file_hint_names_the_ways_to_pick_another() {
        let error = ConfigError::Read {
            path: PathBuf::from("/etc/envclone/envclone.toml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(error.hint().unwrap().contains("ENVCLONE_CONFIG"));
    }

    #[test]
    fn lookup_hint_lists_known_names() {
        let error = LookupError::UnknownEnvironment { name: "prod".into(), known: vec!["demo".into(), "qa".into()] };
        assert_eq!(error.hint().as_deref(), Some("known environments: demo, qa"));
        let none = LookupError::UnknownStandby { name: "x".into(), known: vec![] };
        assert_eq!(none.hint().as_deref(), Some("no standbys are configured"));
    }
}
