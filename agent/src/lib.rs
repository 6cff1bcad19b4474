//! The wire protocol between the envclone controller and `envclone-agent`.
//!
//! The controller runs an agent subcommand over SSH; the agent prints exactly
//! one JSON object on stdout (`freeze`: two, `frozen` then its report) and exits with one of [`ExitStatus`]. Both sides
//! depend on this crate so that there is a single definition of every message.

pub mod matcher;
pub mod protocol;

pub use protocol::*;
