//! Reaching a VM and calling its agent.
//!
//! - [`netns`]: TCP connections made inside a lab network namespace.
//! - [`ssh`]: one verified, authenticated SSH login per guest, reused for
//!   every command ([`GuestSession`]); `interactive` adds a pty.
//! - [`agent`]: `envclone-agent` subcommands and their JSON answers.
//! - [`lease`]: the freeze lease, held on a channel of its own session.
//! - [`agents`]: the guest agents port, what the operations ask of the
//!   agents (one trait per role), and its SSH implementations.
//!
//! Everything here blocks (ssh2 does): async callers use `spawn_blocking`.

mod agent;
pub mod agents;
pub mod endpoint;
mod error;
pub mod hostkey;
mod interactive;
pub mod lease;
pub mod netns;
mod quote;
mod ssh;

pub use agent::{parse_answer, AgentClient, AGENT_PROGRAM};
pub use error::GuestError;
pub use hostkey::{fingerprint, known_hosts_entry, known_hosts_name};
pub use lease::{ArmedLease, FreezeLease, FreezeRequest};
pub use quote::{command_line, shell_quote};
pub use ssh::{ExecOutput, GuestSession, SshOptions, SshTarget};
