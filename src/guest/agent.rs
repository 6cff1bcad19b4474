//! Calling `envclone-agent` in a guest: one subcommand per SSH exec, one
//! JSON [`Envelope`] back on stdout.

use envclone_agent::{Body, Envelope, ExitStatus, Status, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::quote::command_line;
use super::{ExecOutput, GuestError, GuestSession};

/// The agent's name, looked up on the PATH of the guest's non-interactive
/// SSH sessions unless [`AgentClient::with_program`] says otherwise.
pub const AGENT_PROGRAM: &str = "envclone-agent";

/// How much of each output stream an unreadable answer keeps for the error.
const TAIL_BYTES: usize = 400;

/// What a shell answers when it cannot find the program.
const EXIT_NOT_FOUND: i32 = 127;

#[derive(Debug, Clone, Copy)]
pub struct AgentClient<'a> {
    session: &'a GuestSession,
    program: &'a str,
}

impl<'a> AgentClient<'a> {
    pub fn new(session: &'a GuestSession) -> Self {
        AgentClient { session, program: AGENT_PROGRAM }
    }

    /// Calls the agent at `program` (e.g. `/usr/local/bin/envclone-agent`,
    /// which some SSH servers leave off the PATH) instead of by name.
    pub fn with_program(session: &'a GuestSession, program: &'a str) -> Self {
        AgentClient { session, program }
    }

    /// Runs `envclone-agent <args...>` with `stdin` and returns its payload.
    pub fn call<T: DeserializeOwned>(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<T, GuestError> {
        if let Some(arg) = args.iter().find(|a| a.contains('\0')) {
            return Err(GuestError::ArgumentHasNul { arg: arg.to_string() });
        }
        let command = command_line(self.program, args);
        let output = self.session.exec(&command, stdin)?;
        parse_answer(self.session.target(), &command, &output)
    }

    /// `envclone-agent status`.
    pub fn status(&self) -> Result<Status, GuestError> {
        self.call(&["status"], None)
    }
}

/// The part of an envelope every protocol version keeps, read first so that
/// an agent of another version is named as such rather than misread.
#[derive(Deserialize)]
struct Header {
    protocol: u32,
    #[serde(default)]
    agent_version: String,
}

/// Turns what `command` left behind into its payload or the matching error.
pub fn parse_answer<T: DeserializeOwned>(target: &str, command: &str, output: &ExecOutput) -> Result<T, GuestError> {
    let bad = |source| bad_answer(target, command, output, source);
    if output.status == EXIT_NOT_FOUND && output.stdout.is_empty() {
        return Err(GuestError::AgentMissing { target: target.to_string() });
    }
    let header: Header = serde_json::from_slice(&output.stdout).map_err(|e| bad(Some(e)))?;
    if header.protocol != PROTOCOL_VERSION {
        return Err(GuestError::ProtocolMismatch {
            target: target.to_string(),
            ours: PROTOCOL_VERSION,
            theirs: header.protocol,
            agent_version: header.agent_version,
        });
    }
    let envelope: Envelope<T> = serde_json::from_slice(&output.stdout).map_err(|e| bad(Some(e)))?;
    match envelope.body {
        Body::Ok(payload) if output.status == ExitStatus::Ok.code() => Ok(payload),
        // A success body with a failure status: one of the two is lying.
        Body::Ok(_) => Err(bad(None)),
        Body::Error(e) => Err(GuestError::Agent {
            target: target.to_string(),
            kind: e.kind,
            message: e.message,
            hint: e.hint,
            exit: ExitStatus::from_code(output.status),
        }),
    }
}

fn bad_answer(target: &str, command: &str, output: &ExecOutput, source: Option<serde_json::Error>) -> GuestError {
    GuestError::BadAnswer {
        target: target.to_string(),
        command: command.to_string(),
        status: output.status,
        stdout_tail: tail(&output.stdout),
        stderr_tail: tail(&output.stderr),
        source,
    }
}

/// The last `TAIL_BYTES` of `bytes`, trimmed, as text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;
    use envclone_agent::AgentError;
    use proptest::prelude::*;

    const TARGET: &str = "root@10.0.0.5:22 via netns lab";
    const COMMAND: &str = "envclone-agent status";

    fn status() -> Status {
        Status {
            hostname: "web".into(),
            frozen: vec!["/var".into()],
            freeze_in_progress: true,
            guest_time: 1_700_000_000,
            machine_id: Some("abc".into()),
        }
    }

    fn output(status: i32, stdout: &str, stderr: &str) -> ExecOutput {
        ExecOutput { status, stdout: stdout.into(), stderr: stderr.into() }
    }

    fn answer<T: serde::Serialize>(status: i32, envelope: &Envelope<T>) -> ExecOutput {
        output(status, &serde_json::to_string(envelope).unwrap(), "")
    }

    #[test]
    fn parse_answer_returns_payload() {
        let got: Status = parse_answer(TARGET, COMMAND, &answer(0, &Envelope::ok(status()))).unwrap();
        assert_eq!(got, status());
    }

    #[test]
    fn parse_answer_maps_agent_error_with_its_hint_and_exit() {
        let error =
            AgentError { kind: "already-frozen".into(), message: "/var is frozen".into(), hint: Some("thaw".into()) };
        let err = parse_answer::<Status>(TARGET, COMMAND, &answer(3, &Envelope::<Status>::error(error))).unwrap_err();
        assert!(
            matches!(&err, GuestError::Agent { kind, exit: Some(ExitStatus::Busy), .. } if kind == "already-frozen"),
            "{err:?}"
        );
        assert_eq!(err.hint().as_deref(), Some("thaw"));
    }

    #[test]
    fn parse_answer_refuses_other_protocol_before_reading_the_body() {
        let stdout = r#"{"protocol":999,"agent_version":"9.0.0","ok":{"entirely":"different"}}"#;
        let err = parse_answer::<Status>(TARGET, COMMAND, &output(0, stdout, "")).unwrap_err();
        assert!(matches!(err, GuestError::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs: 999, .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("matching envclone-agent"));
    }

    #[test]
    fn parse_answer_refuses_non_json_and_keeps_tails() {
        let err =
            parse_answer::<Status>(TARGET, COMMAND, &output(1, "Segmentation fault\n", "core dumped\n")).unwrap_err();
        let GuestError::BadAnswer { status, stdout_tail, stderr_tail, source, .. } = err else { panic!("{err:?}") };
        assert_eq!((status, stdout_tail.as_str(), stderr_tail.as_str()), (1, "Segmentation fault", "core dumped"));
        assert!(source.is_some());
    }

    #[test]
    fn parse_answer_refuses_payload_of_wrong_shape() {
        let stdout = r#"{"protocol":1,"agent_version":"0.1.0","ok":{"hostname":5}}"#;
        let err = parse_answer::<Status>(TARGET, COMMAND, &output(0, stdout, "")).unwrap_err();
        assert!(matches!(err, GuestError::BadAnswer { source: Some(_), .. }), "{err:?}");
    }

    #[test]
    fn parse_answer_refuses_success_body_with_failure_status() {
        let err = parse_answer::<Status>(TARGET, COMMAND, &answer(1, &Envelope::ok(status()))).unwrap_err();
        assert!(matches!(err, GuestError::BadAnswer { status: 1, source: None, .. }), "{err:?}");
    }

    #[test]
    fn parse_answer_names_a_missing_agent() {
        let err =
            parse_answer::<Status>(TARGET, COMMAND, &output(127, "", "sh: envclone-agent: not found")).unwrap_err();
        assert!(matches!(err, GuestError::AgentMissing { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("install envclone-agent"));
    }

    #[test]
    fn tail_keeps_the_end() {
        let long = format!("{}END", "x".repeat(1000));
        assert!(tail(long.as_bytes()).ends_with("END"));
        assert_eq!(tail(long.as_bytes()).len(), TAIL_BYTES);
        assert_eq!(tail(b"\xff ok \n"), "\u{fffd} ok");
    }

    proptest! {
        #[test]
        fn parse_answer_never_panics(status in -1i32..256, stdout in proptest::collection::vec(any::<u8>(), 0..200)) {
            let out = ExecOutput { status, stdout, stderr: vec![] };
            let _ = parse_answer::<Status>(TARGET, COMMAND, &out);
        }
    }
}
