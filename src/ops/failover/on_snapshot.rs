//! A manual snapshot as the signal to fail back: while a standby whose
//! config sets `failback_on_manual_snapshot` serves ENV, a snapshot of ENV
//! taken by hand (not by a schedule) is taken, then ENV fails back from
//! that standby; both reports make one document ([`Triggered`]).
//! [`sides`] decides, from what the fence guard found; [`take`] sequences.

use serde::Serialize;

use super::{DrillRequest, FailbackReport, SwitchStatus};
use crate::catalog::FailoverState;
use crate::config::Config;
use crate::guest::agents::Quiescer;
use crate::ops::context::OpContext;
use crate::ops::snapshot::{self, SnapshotError, SnapshotReport, SnapshotRequest};

/// Who serves, as a snapshot of one environment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sides {
    /// The switches whose standby serves: the snapshot of such an
    /// environment is of the standby's domains. One failing back serves
    /// nothing (the failback decides who serves).
    pub served: Vec<SwitchStatus>,
    /// The standby the snapshot fails the environment back from, if any.
    pub failback_from: Option<String>,
}

/// What a snapshot of `env` (`scheduled` when a schedule takes it) does
/// about the switches in force the guard returned.
pub fn sides(config: &Config, mut switches: Vec<SwitchStatus>, env: &str, scheduled: bool) -> Sides {
    switches.retain(|s| s.state == FailoverState::Active);
    let failback_from = switches
        .iter()
        .find(|s| s.env == env)
        .map(|s| s.active.clone())
        .filter(|sb| !scheduled && config.standbys.get(sb).is_some_and(|c| c.failback_on_manual_snapshot));
    Sides { served: switches, failback_from }
}

/// A manual snapshot that triggered a failback: both reports, one document.
#[derive(Debug, Serialize)]
pub struct Triggered {
    pub snapshot: SnapshotReport,
    pub failback: FailbackReport,
}

/// What [`take`] did.
#[derive(Debug)]
pub enum Snapshotted {
    Taken(SnapshotReport),
    FailedBack(Box<Triggered>),
}

/// Takes the snapshot `request`; then, when `failback_from` names the
/// standby (see [`sides`]), fails `request.env` back from it through
/// `failback`, which the caller wires (the failback works on the
/// primary's environment, not the standby's domains the snapshot is of).
/// A failed snapshot triggers nothing.
pub fn take<E: From<SnapshotError>>(
    ctx: &OpContext<'_>,
    request: &SnapshotRequest,
    quiescer: &dyn Quiescer,
    failback_from: Option<&str>,
    failback: impl FnOnce(&DrillRequest) -> Result<FailbackReport, E>,
) -> Result<Snapshotted, E> {
    let report = snapshot::take(ctx, request, quiescer)?;
    let Some(standby) = failback_from else {
        return Ok(Snapshotted::Taken(report));
    };
    ctx.note(format!(
        "snapshot {}/{} taken; standby {standby} fails back on a manual snapshot \
         (standbys.{standby}.failback_on_manual_snapshot): failing {} back",
        report.env, report.name, report.env
    ));
    let request = DrillRequest { env: request.env.clone(), standby: Some(standby.to_owned()) };
    let failback = failback(&request)?;
    Ok(Snapshotted::FailedBack(Box::new(Triggered { snapshot: report, failback })))
}
