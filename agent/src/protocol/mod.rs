//! Messages exchanged with the agent. Every answer is wrapped in [`Envelope`],
//! which carries the protocol version so that a controller can refuse an
//! agent it does not understand instead of misreading it.

use serde::{Deserialize, Serialize};

/// `freeze` and `thaw`: the freeze lease (two JSON lines, see the module).
pub mod freeze;

mod identity;
pub use identity::*;

/// `rewrite` and `scan`: the plan, the scan request and their reports.
mod rewrite;
pub use rewrite::*;

/// Bumped on any incompatible change to a message below.
pub const PROTOCOL_VERSION: u32 = 1;

/// Exit codes of `envclone-agent`. The controller maps them back with
/// [`ExitStatus::from_code`]; the numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitStatus {
    /// The subcommand did what it was asked.
    Ok,
    /// The request itself was invalid (bad argument, refused path).
    Usage,
    /// The request was valid but failed in the guest.
    Failed,
    /// Refused because of the guest's state (e.g. already frozen).
    Busy,
}

impl ExitStatus {
    pub const fn code(self) -> i32 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::Usage => 2,
            ExitStatus::Failed => 1,
            ExitStatus::Busy => 3,
        }
    }

    pub const fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(ExitStatus::Ok),
            1 => Some(ExitStatus::Failed),
            2 => Some(ExitStatus::Usage),
            3 => Some(ExitStatus::Busy),
            _ => None,
        }
    }
}

/// One answer of the agent: the protocol version, and either the payload or
/// an error that says what failed and how to fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub protocol: u32,
    pub agent_version: String,
    #[serde(flatten)]
    pub body: Body<T>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body<T> {
    Ok(T),
    Error(AgentError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// Stable machine-readable kind, e.g. `already-frozen`, `bad-argument`.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl<T> Envelope<T> {
    pub fn ok(payload: T) -> Self {
        Envelope { protocol: PROTOCOL_VERSION, agent_version: AGENT_VERSION.to_string(), body: Body::Ok(payload) }
    }

    pub fn error(error: AgentError) -> Self {
        Envelope { protocol: PROTOCOL_VERSION, agent_version: AGENT_VERSION.to_string(), body: Body::Error(error) }
    }
}

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Answer of `envclone-agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub hostname: String,
    /// Mount points that are frozen right now, in freeze order.
    pub frozen: Vec<String>,
    /// Whether a freeze lease is held by a live `freeze` process.
    pub freeze_in_progress: bool,
    /// Seconds since the epoch on the guest clock.
    pub guest_time: u64,
    pub machine_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_ok_and_error() {
        let ok = Envelope::ok(Status {
            hostname: "web".into(),
            frozen: vec![],
            freeze_in_progress: false,
            guest_time: 1,
            machine_id: None,
        });
        let text = serde_json::to_string(&ok).unwrap();
        assert!(text.contains("\"protocol\":1"), "{text}");
        assert_eq!(serde_json::from_str::<Envelope<Status>>(&text).unwrap(), ok);

        let err: Envelope<Status> =
            Envelope::error(AgentError { kind: "busy".into(), message: "frozen".into(), hint: None });
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(serde_json::from_str::<Envelope<Status>>(&text).unwrap(), err);
    }

    #[test]
    fn exit_codes_round_trip() {
        for s in [ExitStatus::Ok, ExitStatus::Usage, ExitStatus::Failed, ExitStatus::Busy] {
            assert_eq!(ExitStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(ExitStatus::from_code(42), None);
    }
}
