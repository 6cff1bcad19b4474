//! What every error in envclone can say about itself, and the one way an
//! error chain is flattened into a line. A leaf: each module's error
//! implements [`Failure`] next to its variants, so adding an operation
//! touches its own folder, not this file.

use crate::exit::ExitCode;

/// An error that knows its exit code and how to fix it. The top-level
/// error ([`crate::Error`]) asks the error it wraps.
pub trait Failure: std::error::Error + Send + Sync + 'static {
    /// The documented exit code the binary ends with ([`ExitCode`]).
    fn exit_code(&self) -> ExitCode;

    /// How to fix it, from the innermost error that knows.
    fn hint(&self) -> Option<String>;
}

/// "outer: inner: innermost": the one place an error chain is flattened
/// into a line (messages, JSON reports, journal entries).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
