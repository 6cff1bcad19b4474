//! Fencing the primary of a role switch, and keeping it fenced.
//!
//! **Fence.** A primary domain is fenced by stopping it hard, turning its
//! autostart off (a host reboot must not bring it back) and stamping the
//! switch into its libvirt `<metadata>` (`<envclone:fence epoch='N'
//! fenced-at='...'/>`, see [`FenceStamp`]), so whoever inspects it on its
//! host sees that epoch N serves elsewhere. When the primary's libvirt does
//! not answer (its host is down: the usual reason for an unplanned
//! failover), nothing can be done there: the fence is recorded as
//! `fenced-unconfirmed` and the failover goes on, because a runbook must not
//! hang on a dead host.
//!
//! **Guard.** While a switch is in force, an old primary domain found
//! running (someone ran `virsh start`, or its host came back after a
//! `fenced-unconfirmed` fence with autostart on) is fenced again at once
//! and the return is recorded (`returned-refenced`) for `status` to show
//! loudly: two live copies of an environment at the same addresses must
//! never last. A `fenced-unconfirmed` domain found shut off once its host
//! answers again gets its autostart off and its stamp (`fenced`, confirmed).
//! [`guard`] does this; `envclone status`, `snapshot` and `failover` run it
//! first, and the daemon runs it on every tick (through `envclone status`).
//! It takes no lock: stopping a domain that must not run is right whatever
//! else runs.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::carry::HomeCopy;
use crate::catalog::{Catalog, CatalogError, FailoverMode, FailoverRecord, FailoverState, FenceEvent, FenceKind};
use crate::hypervisor::{FenceStamp, HvError, Hypervisor};

/// The primary's libvirt, as the failover or the guard found it.
#[derive(Debug, Clone, Copy)]
pub enum PrimaryHost<'h> {
    Answers(&'h dyn Hypervisor),
    /// Connecting failed or did not answer in time.
    Unreachable {
        uri: &'h str,
        reason: &'h str,
    },
}

/// How one primary domain of a switch is fenced now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedDomain {
    pub domain: String,
    /// `fenced` or `fenced-unconfirmed`.
    pub fence: FenceKind,
    /// Why it is unconfirmed, or that it was gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub(crate) fn stamp(epoch: i64, at: DateTime<Utc>) -> FenceStamp {
    FenceStamp { epoch, fenced_at: at.to_rfc3339_opts(SecondsFormat::Secs, true), autostart: None }
}

/// Stops `domain`, turns its autostart off and stamps it, with the
/// autostart it had (kept from its stamp when it is fenced again for the
/// same epoch: the guard found it back); a domain that is not defined (any
/// more) is fenced already: returns whether it exists.
pub fn fence_domain(hv: &dyn Hypervisor, domain: &str, stamp: &FenceStamp) -> Result<bool, HvError> {
    let found = match hv.domain(domain) {
        Err(HvError::NoSuchDomain { .. }) => return Ok(false),
        Err(other) => return Err(other),
        Ok(found) => found,
    };
    let before = found.def.fence_stamp().filter(|s| s.epoch == stamp.epoch).and_then(|s| s.autostart);
    let stamp = &FenceStamp { autostart: before.or(Some(found.autostart)), ..stamp.clone() };
    hv.destroy_domain(domain)?;
    hv.set_autostart(domain, false)?;
    // Shut off, `domain` reports the persistent definition: the stamp goes
    // there, where a later `virsh start` still carries it.
    let current = hv.domain(domain)?;
    if current.def.fence_stamp().as_ref() != Some(stamp) {
        let mut def = current.def.clone();
        def.set_fence_stamp(stamp);
        hv.define_domain(&def)?;
    }
    Ok(true)
}

/// One return of an old primary, or a fence confirmed, found by [`guard`] now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardAction {
    pub env: String,
    pub epoch: i64,
    pub domain: String,
    /// `returned-refenced`, `refence-failed`, or `fenced` (an unconfirmed
    /// fence confirmed once its host answered).
    pub action: FenceKind,
    pub detail: Option<String>,
}

/// One environment whose standby is its active side, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchStatus {
    pub env: String,
    /// The standby serving `env`: its active side.
    pub active: String,
    /// `planned` or `unplanned`.
    pub mode: FailoverMode,
    /// `active`, or `failing-back` while a failback runs (or was
    /// interrupted: `envclone recover ENV`).
    pub state: FailoverState,
    pub epoch: i64,
    pub since: DateTime<Utc>,
    /// The libvirt URI of the primary's host the guard checks.
    pub primary_uri: String,
    /// Each primary domain's fence now.
    pub primary: Vec<FencedDomain>,
    /// Whether the guard could look at the primary's domains now, and why not.
    pub checked: bool,
    pub unchecked_reason: Option<String>,
    /// Every return of an old primary domain while this switch is in force,
    /// oldest first (`returned-refenced` or `refence-failed`).
    pub returns: Vec<FenceEvent>,
    /// What the guard did in this check.
    pub actions: Vec<GuardAction>,
    /// The way home while the standby serves (its home sync): the newest
    /// snapshot of `env` all home, its age (the lag of the way home), the
    /// bytes carried home so far and when the home sync last ran.
    pub home_snapshot: Option<String>,
    pub home_lag_seconds: Option<i64>,
    pub bytes_home: u64,
    pub home_synced_at: Option<DateTime<Utc>>,
}

/// What a switch row keeps about its fence (`resources` of the row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchResources {
    /// The primary's domains as fenced by the failover.
    #[serde(default)]
    pub fenced: Vec<FencedDomain>,
    /// The libvirt URI of the primary's host; the controller's when none.
    #[serde(default)]
    pub primary_uri: Option<String>,
    /// What the home sync (`standby sync SB` while SB serves) carried into
    /// the primary's storage and failback takes as carried: absent from the
    /// rows of an older envclone, like the fields below.
    #[serde(default)]
    pub home: Vec<HomeCopy>,
    /// The newest complete snapshot of the primary all of whose images are
    /// home (in its storage, or carried there).
    #[serde(default)]
    pub home_snapshot: Option<String>,
    /// The primary's newest complete snapshot when the home sync last ran:
    /// the daemon syncs again once there is a newer one.
    #[serde(default)]
    pub home_checked: Option<String>,
    #[serde(default)]
    pub home_synced_at: Option<DateTime<Utc>>,
}

/// Reads a switch row's resources; a planned failover of an older build
/// recorded `fenced` as a list of names.
pub fn switch_resources(record: &FailoverRecord) -> SwitchResources {
    if let Ok(resources) = serde_json::from_value::<SwitchResources>(record.resources.clone()) {
        return resources;
    }
    let names = record.resources["fenced"].as_array().cloned().unwrap_or_default();
    SwitchResources {
        fenced: names
            .iter()
            .filter_map(|n| n.as_str())
            .map(|d| FencedDomain { domain: d.to_owned(), fence: FenceKind::Fenced, detail: None })
            .collect(),
        ..SwitchResources::default()
    }
}

/// The primary URIs the guard needs for `env` (every environment when none).
pub fn guard_uris(catalog: &Catalog, default_uri: &str, env: Option<&str>) -> Result<Vec<String>, CatalogError> {
    let mut uris = Vec::new();
    // A switch failing back is not guarded: nothing to connect for.
    for record in active_switches(catalog, env)?.into_iter().filter(|r| r.state == FailoverState::Active) {
        let uri = switch_resources(&record).primary_uri.unwrap_or_else(|| default_uri.to_owned());
        if !uris.contains(&uri) {
            uris.push(uri);
        }
    }
    Ok(uris)
}

/// The switches in force: active, or failing back.
fn active_switches(catalog: &Catalog, env: Option<&str>) -> Result<Vec<FailoverRecord>, CatalogError> {
    let mut envs: Vec<String> = catalog.failovers(env)?.into_iter().map(|f| f.env).collect();
    envs.sort();
    envs.dedup();
    envs.iter().filter_map(|e| catalog.switch_in_force(e).transpose()).collect()
}

/// Looks at every fenced primary domain of each switch in force (of `env`
/// only, when given) and fences again any that runs; see the module
/// documentation. `hosts` maps each URI of [`guard_uris`] to its libvirt.
pub fn guard(
    catalog: &Catalog,
    default_uri: &str,
    hosts: &BTreeMap<String, PrimaryHost<'_>>,
    env: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<SwitchStatus>, CatalogError> {
    let mut out = Vec::new();
    for record in active_switches(catalog, env)? {
        let resources = switch_resources(&record);
        let uri = resources.primary_uri.clone().unwrap_or_else(|| default_uri.to_owned());
        let epoch = record.epoch.unwrap_or(0);
        let mut status = SwitchStatus {
            env: record.env.clone(),
            active: record.standby.clone(),
            mode: record.mode,
            state: record.state,
            epoch,
            since: record.started_at,
            primary_uri: uri.clone(),
            primary: Vec::new(),
            checked: false,
            unchecked_reason: None,
            returns: Vec::new(),
            actions: Vec::new(),
            home_lag_seconds: home_lag(catalog, &record.env, resources.home_snapshot.as_deref(), now)?,
            home_snapshot: resources.home_snapshot.clone(),
            bytes_home: resources.home.iter().map(|c| c.bytes).sum(),
            home_synced_at: resources.home_synced_at,
        };
        let mut fences: BTreeMap<String, FencedDomain> =
            resources.fenced.iter().map(|f| (f.domain.clone(), f.clone())).collect();
        let events = catalog.fence_events(record.id)?;
        // A domain that cannot be stopped would add a row on every tick:
        // a failure is recorded once until something else happens to it.
        let last_kind: BTreeMap<String, FenceKind> = events.iter().map(|e| (e.domain.clone(), e.kind)).collect();
        for event in events {
            // A domain fenced again after its return is fenced (confirmed) too.
            let kind = match event.kind {
                FenceKind::ReturnedRefenced => FenceKind::Fenced,
                FenceKind::RefenceFailed => continue,
                other => other,
            };
            let fence = FencedDomain { domain: event.domain.clone(), fence: kind, detail: event.detail };
            fences.insert(event.domain.clone(), fence);
        }
        match hosts.get(&uri).copied() {
            // The failback starts ENV's domains: they are not old primaries.
            _ if record.state != FailoverState::Active => {
                status.unchecked_reason = Some(format!("a failback of {} runs, or was interrupted", record.env));
            }
            None => status.unchecked_reason = Some(format!("libvirt at {uri} was not asked")),
            Some(PrimaryHost::Unreachable { reason, .. }) => {
                status.unchecked_reason = Some(format!("libvirt at {uri} does not answer: {reason}"));
            }
            Some(PrimaryHost::Answers(hv)) => {
                status.checked = true;
                for fence in fences.values_mut() {
                    if let Some(action) = check_one(hv, &record, fence, now) {
                        let repeated = action.action == FenceKind::RefenceFailed
                            && last_kind.get(&fence.domain) == Some(&FenceKind::RefenceFailed);
                        if repeated {
                            status.actions.push(action);
                            continue;
                        }
                        catalog.add_fence_event(&FenceEvent {
                            failover_id: record.id,
                            env: record.env.clone(),
                            epoch,
                            domain: fence.domain.clone(),
                            kind: action.action,
                            detail: action.detail.clone(),
                            at: now,
                        })?;
                        if matches!(action.action, FenceKind::Fenced | FenceKind::ReturnedRefenced) {
                            fence.fence = FenceKind::Fenced;
                            fence.detail = action.detail.clone();
                        }
                        status.actions.push(action);
                    }
                }
            }
        }
        status.primary = fences.into_values().collect();
        status.returns = catalog
            .fence_events(record.id)?
            .into_iter()
            .filter(|e| matches!(e.kind, FenceKind::ReturnedRefenced | FenceKind::RefenceFailed))
            .collect();
        out.push(status);
    }
    Ok(out)
}

/// The age of `env`'s snapshot `snapshot` at `now`.
pub(super) fn home_lag(
    catalog: &Catalog,
    env: &str,
    snapshot: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<i64>, CatalogError> {
    let Some(name) = snapshot else { return Ok(None) };
    Ok(catalog.snapshot_named(env, name)?.map(|s| (now - s.created_at).num_seconds().max(0)))
}

/// What the guard does about one fenced domain, if anything.
fn check_one(
    hv: &dyn Hypervisor,
    record: &FailoverRecord,
    fence: &FencedDomain,
    now: DateTime<Utc>,
) -> Option<GuardAction> {
    let epoch = record.epoch.unwrap_or(0);
    let action = |action, detail: String| GuardAction {
        env: record.env.clone(),
        epoch,
        domain: fence.domain.clone(),
        action,
        detail: Some(detail),
    };
    let found = match hv.domain(&fence.domain) {
        Ok(found) => found,
        // Gone: nothing can come back.
        Err(HvError::NoSuchDomain { .. }) => return None,
        Err(e) => {
            let detail = format!("cannot look at it: {}", crate::error::chain(&e));
            tracing::warn!("old primary domain {} of '{}': {detail}", fence.domain, record.env);
            return None;
        }
    };
    let stamp = stamp(epoch, now);
    if found.state.is_active() {
        tracing::error!(
            "old primary domain {} of '{}' runs while standby {} serves epoch {epoch}: fencing it again",
            fence.domain,
            record.env,
            record.standby
        );
        return Some(match fence_domain(hv, &fence.domain, &stamp) {
            Ok(_) => action(
                FenceKind::ReturnedRefenced,
                format!(
                    "found {} while {} serves epoch {epoch}; stopped, autostart off",
                    found.state.name(),
                    record.standby
                ),
            ),
            Err(e) => action(FenceKind::RefenceFailed, format!("cannot stop it: {}", crate::error::chain(&e))),
        });
    }
    if fence.fence == FenceKind::FencedUnconfirmed {
        return Some(match fence_domain(hv, &fence.domain, &stamp) {
            Ok(_) => action(FenceKind::Fenced, "confirmed: its host answers again; autostart off, stamped".into()),
            Err(e) => {
                action(FenceKind::RefenceFailed, format!("cannot confirm its fence: {}", crate::error::chain(&e)))
            }
        });
    }
    None
}
