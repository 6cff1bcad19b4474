//! `status`: what the controller checks before it relies on a guest.

use envclone_agent::{AgentError, ExitStatus, Status};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn collect() -> Result<Status, (ExitStatus, AgentError)> {
    let hostname = nix::unistd::gethostname()
        .map_err(|e| failed("hostname", format!("cannot read the hostname: {e}")))?
        .to_string_lossy()
        .into_owned();
    let guest_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| failed("clock", "the guest clock is before 1970".to_string()))?
        .as_secs();
    let machine_id = std::fs::read_to_string("/etc/machine-id").ok().map(|s| s.trim().to_string());
    // From the freeze record on tmpfs: no probe can ask the kernel whether
    // a filesystem is frozen without thawing it (see freeze::state).
    let (frozen, freeze_in_progress) = crate::freeze::observe()?;
    Ok(Status { hostname, frozen, freeze_in_progress, guest_time, machine_id })
}

fn failed(kind: &str, message: String) -> (ExitStatus, AgentError) {
    (ExitStatus::Failed, AgentError { kind: kind.to_string(), message, hint: None })
}
