//! Failback steps 11 and 12: the switch ended and ENV home recorded (from
//! here `envclone recover` completes the failback), then SB's storage
//! tidied, its served networks removed and ENV's autostart given back.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::{
    autostart_note, autostart_on, remove_leftover, remove_network, Done, FailbackAction, FailbackReport,
    FailbackResources,
};
use crate::catalog::{FailoverMode, FailoverRecord, FailoverState, NewFailover, StandbyRecord, UndoAction};
use crate::config::Environment;
use crate::ops::failover::drill::{millis, Run};
use crate::ops::failover::{undo, FailoverError};
use crate::ops::journal::Journaled as _;

/// Steps 11 and 12 of the module documentation; the report.
pub(super) fn record(
    mut run: Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
    switch: &FailoverRecord,
    epoch: i64,
    started_at: DateTime<Utc>,
    done: Done,
) -> Result<FailbackReport, FailoverError> {
    let env = switch.env.as_str();
    let previous_epoch = switch.epoch.unwrap_or(0);
    let mut report = FailbackReport {
        env: env.to_owned(),
        standby: standby.name.clone(),
        mode: FailoverMode::Failback,
        action: FailbackAction::FailedBack,
        epoch,
        previous_epoch,
        snapshots: done.snapshots,
        carried_snapshots: done.carried_snapshots,
        bytes_home: done.bytes_while_serving + done.bytes_after_stop,
        bytes_while_serving: done.bytes_while_serving,
        bytes_after_stop: done.bytes_after_stop,
        bytes_home_before: done.bytes_home_before,
        downtime_ms: millis(done.downtime),
        autostart: autostart_note(&done.autostart),
        vms: done.vms,
        removed: Vec::new(),
        started_at,
        steps: Vec::new(),
        duration_ms: 0,
    };
    let leftovers: Vec<PathBuf> = done.carried.iter().map(|image| image.from.clone()).collect();
    let networks = done.readdressed.map(|r| r.networks.into_iter().map(|n| n.name).collect()).unwrap_or_default();
    let resources = FailbackResources { leftovers: leftovers.clone(), networks };
    let recorded =
        run.step(&format!("record epoch {epoch}: {env} home"), undo::unrecord(switch.id, env, epoch), |run| {
            let mut stored = report.clone();
            stored.steps = run.steps.clone();
            stored.duration_ms = millis(run.started.elapsed());
            let row = NewFailover {
                env: env.to_owned(),
                standby: standby.name.clone(),
                mode: FailoverMode::Failback,
                epoch: Some(epoch),
                state: FailoverState::Ended,
                started_at,
                environment: serde_json::to_value(primary).unwrap_or_default(),
                resources: serde_json::to_value(&resources).unwrap_or_default(),
                report: serde_json::to_value(&stored).unwrap_or_default(),
            };
            Ok(run.ctx.catalog.record_failback(switch.id, &row, run.ctx.clock.now())?)
        });
    if let Err(error) = recorded {
        return Err(run.roll_back(error));
    }
    // Recorded: ENV is home. What follows only tidies SB's storage, and a
    // second run finishes it if this one dies.
    for path in &leftovers {
        let removed = run.step(
            &format!("remove {} from {}'s storage", path.display(), standby.name),
            UndoAction::Nothing,
            |run| remove_leftover(run.ctx, &standby.host, path),
        )?;
        if removed {
            report.removed.push(path.clone());
        }
    }
    for network in &resources.networks {
        run.step(&format!("remove {}'s network {network}", standby.name), UndoAction::Nothing, |run| {
            remove_network(run.ctx, &standby.host, network)
        })?;
    }
    // Only now: a domain of ENV that autostarts while the failback could
    // still roll back would be a second live copy after a host reboot. Not
    // repeated by a second run: by then it is the operator's setting.
    let on = done.autostart.iter().filter(|(_, on)| **on == Some(true)).map(|(domain, _)| domain);
    for domain in on {
        run.step(&format!("autostart {domain} on again, as before the failover"), UndoAction::Nothing, |run| {
            autostart_on(run.ctx, domain)
        })?;
    }
    run.complete()?;
    report.steps = std::mem::take(&mut run.steps);
    report.duration_ms = millis(run.started.elapsed());
    Ok(report)
}
