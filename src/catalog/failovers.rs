//! Failovers of an environment to its standby: DR drills (`envclone
//! failover ENV --test`), role switches with their epoch, and failbacks
//! (`envclone failback ENV`: a row of mode `failback` with the epoch it
//! starts, recorded `ended` in the same transaction that ends the switch).
//!
//! A row is written by the last journaled step of the failover that makes
//! it (so a crash before leaves no row, and `envclone recover` rolls the
//! steps back) and ended by `--end`. While a drill runs its row says how
//! to reach the standby's VMs (`environment`: `envclone ssh SB VM` goes
//! through the drill's gateway namespace) and what the drill made
//! (`resources`), which ending it removes and nothing else.
//!
//! A row's state by its mode (see [`FailoverState::valid_transition`] and
//! [`FailoverMode::has_state`]); the arrows back are the undo of a
//! failback's steps:
//!
//! ```text
//! test:               running ──> ended
//! planned, unplanned: active ──> failing-back ──> ended
//!                       ^            │  ^           │
//!                       └────────────┘  └───────────┘
//! failback:           ended (recorded so, with the end of its switch)
//! ```

use std::fmt;

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};

use super::model::text_enum;
use super::{Catalog, CatalogError, Timestamp};

const COLUMNS: &str = "id, env, standby, mode, epoch, state, started_at, finished_at, environment, resources, report";

text_enum!(
    /// What a failover is. See [`FailoverMode::has_state`].
    FailoverMode {
        /// A DR drill: the standby runs beside the primary, isolated.
        Test => "test",
        /// A role switch after a final snapshot, the primary fenced.
        Planned => "planned",
        /// A role switch to the standby's last synced snapshot, the
        /// primary fenced (or unreachable).
        Unplanned => "unplanned",
        /// The return of a switch: the primary active again, at a new epoch.
        Failback => "failback",
    }
);

text_enum!(
    /// Where a failover is in its life. See [`FailoverState::valid_transition`].
    FailoverState {
        /// A drill under way.
        Running => "running",
        /// A switch in force: the standby is the active side.
        Active => "active",
        /// A switch while a failback hands the environment back (or after
        /// one was interrupted: `envclone recover ENV`).
        FailingBack => "failing-back",
        Ended => "ended",
    }
);

impl FailoverMode {
    /// Whether a failover of this mode is ever in `state`: only a switch
    /// is active or fails back, only a drill runs.
    pub fn has_state(self, state: FailoverState) -> bool {
        use FailoverState::*;
        match self {
            FailoverMode::Test => matches!(state, Running | Ended),
            FailoverMode::Planned | FailoverMode::Unplanned => matches!(state, Active | FailingBack | Ended),
            FailoverMode::Failback => state == Ended,
        }
    }
}

impl FailoverState {
    /// The one place that says which state changes a failover may make.
    /// `failing-back -> active` and `ended -> failing-back` are the undo of
    /// a failback's steps (marking the switch, recording its end).
    pub fn valid_transition(self, to: FailoverState) -> bool {
        use FailoverState::*;
        match self {
            Running => matches!(to, Ended),
            Active => matches!(to, FailingBack),
            FailingBack => matches!(to, Active | Ended),
            Ended => matches!(to, FailingBack),
        }
    }
}

/// One failover: a drill, or a role switch (planned or unplanned).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverRecord {
    pub id: i64,
    /// The primary.
    pub env: String,
    pub standby: String,
    pub mode: FailoverMode,
    /// The role switch's number (a failback's: the epoch it starts, ENV
    /// home again); none for a drill.
    pub epoch: Option<i64>,
    pub state: FailoverState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// How to reach the standby's VMs (JSON of `config::Environment`).
    pub environment: serde_json::Value,
    /// What the failover made (JSON, its owner's type).
    pub resources: serde_json::Value,
    /// The report it printed.
    pub report: serde_json::Value,
}

/// What [`Catalog::add_failover`] records.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFailover {
    pub env: String,
    pub standby: String,
    pub mode: FailoverMode,
    pub epoch: Option<i64>,
    pub state: FailoverState,
    pub started_at: DateTime<Utc>,
    pub environment: serde_json::Value,
    pub resources: serde_json::Value,
    pub report: serde_json::Value,
}

impl Catalog {
    /// Records a failover; refused while another of the standby is not ended.
    pub fn add_failover(&self, failover: &NewFailover) -> Result<i64, CatalogError> {
        let what = "record a failover";
        let tx = self.write(what)?;
        let open: Option<i64> = tx
            .query_row("SELECT id FROM failovers WHERE standby = ?1 AND state <> 'ended'", [&failover.standby], |r| {
                r.get(0)
            })
            .optional()
            .map_err(CatalogError::query(what))?;
        if let Some(id) = open {
            return Err(CatalogError::Corrupt {
                what,
                detail: format!("failover {id} of standby {} is not ended", failover.standby),
            });
        }
        tx.execute(
            &format!("INSERT INTO failovers ({COLUMNS}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8, ?9)"),
            params![
                failover.env,
                failover.standby,
                failover.mode,
                failover.epoch,
                failover.state,
                Timestamp(failover.started_at),
                failover.environment.to_string(),
                failover.resources.to_string(),
                failover.report.to_string(),
            ],
        )
        .map_err(CatalogError::insert(what, format!("failover of {} to {}", failover.env, failover.standby)))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(id)
    }

    /// The standby's failover that is not ended, if any.
    pub fn open_failover(&self, standby: &str) -> Result<Option<FailoverRecord>, CatalogError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM failovers WHERE standby = ?1 AND state <> 'ended' ORDER BY id DESC"),
                [standby],
                failover_row,
            )
            .optional()
            .map_err(CatalogError::query("look up a standby's failover"))
    }

    /// Every failover of `env`'s standbys (of all, when none), newest first.
    pub fn failovers(&self, env: Option<&str>) -> Result<Vec<FailoverRecord>, CatalogError> {
        let what = "list the failovers";
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM failovers WHERE ?1 IS NULL OR env = ?1 ORDER BY id DESC"))
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([env], failover_row).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// Ends the standby's open failover; false if there was none. A switch
    /// is refused unless it is failing back: it ends with its failback.
    pub fn end_failover(&self, standby: &str, at: DateTime<Utc>) -> Result<bool, CatalogError> {
        let what = "end a failover";
        let tx = self.write(what)?;
        let open: Option<(i64, FailoverMode, FailoverState)> = tx
            .query_row(
                "SELECT id, mode, state FROM failovers WHERE standby = ?1 AND state <> 'ended' ORDER BY id DESC",
                [standby],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(CatalogError::query(what))?;
        let Some((id, mode, state)) = open else { return Ok(false) };
        check_transition(id, mode, state, FailoverState::Ended)?;
        tx.execute(
            "UPDATE failovers SET state = ?1, finished_at = ?2 WHERE id = ?3",
            params![FailoverState::Ended, Timestamp(at), id],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(true)
    }

    /// Forgets the standby's open failover (the undo of recording it); false if there was none.
    pub fn forget_open_failover(&self, standby: &str) -> Result<bool, CatalogError> {
        let changed = self
            .conn
            .execute("DELETE FROM failovers WHERE standby = ?1 AND state <> 'ended'", [standby])
            .map_err(CatalogError::query("forget a failover"))?;
        Ok(changed > 0)
    }
}

/// What happened to one fenced primary domain of a role switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceKind {
    /// Stopped, autostart off, the epoch stamped into its metadata.
    Fenced,
    /// Its libvirt did not answer: nothing could be done or checked.
    FencedUnconfirmed,
    /// Found running while the switch is in force (an old primary came
    /// back), and stopped again.
    ReturnedRefenced,
    /// Found running, and stopping it failed.
    RefenceFailed,
}

impl FenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceKind::Fenced => "fenced",
            FenceKind::FencedUnconfirmed => "fenced-unconfirmed",
            FenceKind::ReturnedRefenced => "returned-refenced",
            FenceKind::RefenceFailed => "refence-failed",
        }
    }

    fn parse(text: &str) -> Option<FenceKind> {
        [FenceKind::Fenced, FenceKind::FencedUnconfirmed, FenceKind::ReturnedRefenced, FenceKind::RefenceFailed]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// One row of `fence_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceEvent {
    pub failover_id: i64,
    pub env: String,
    pub epoch: i64,
    pub domain: String,
    pub kind: FenceKind,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

impl Catalog {
    /// Records what happened to a fenced primary domain.
    pub fn add_fence_event(&self, event: &FenceEvent) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO fence_events (failover_id, env, epoch, domain, kind, detail, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    event.failover_id,
                    event.env,
                    event.epoch,
                    event.domain,
                    event.kind.as_str(),
                    event.detail,
                    Timestamp(event.at)
                ],
            )
            .map_err(CatalogError::insert("record a fence event", format!("domain {}", event.domain)))?;
        Ok(())
    }

    /// The fence events of one failover, oldest first.
    pub fn fence_events(&self, failover_id: i64) -> Result<Vec<FenceEvent>, CatalogError> {
        let what = "list the fence events";
        let mut statement = self
            .conn
            .prepare(
                "SELECT failover_id, env, epoch, domain, kind, detail, at FROM fence_events \
                 WHERE failover_id = ?1 ORDER BY id",
            )
            .map_err(CatalogError::query(what))?;
        let rows = statement
            .query_map([failover_id], |row| {
                let kind: String = row.get(4)?;
                Ok(FenceEvent {
                    failover_id: row.get(0)?,
                    env: row.get(1)?,
                    epoch: row.get(2)?,
                    domain: row.get(3)?,
                    kind: FenceKind::parse(&kind).unwrap_or(FenceKind::RefenceFailed),
                    detail: row.get(5)?,
                    at: row.get::<_, Timestamp>(6)?.0,
                })
            })
            .map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// `env`'s role switch in force (planned or unplanned, not ended), if any:
    /// while it is, the standby is the active side of `env`.
    pub fn active_switch(&self, env: &str) -> Result<Option<FailoverRecord>, CatalogError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM failovers WHERE env = ?1 AND mode <> 'test' AND state = 'active' \
                     ORDER BY id DESC"
                ),
                [env],
                failover_row,
            )
            .optional()
            .map_err(CatalogError::query("look up an environment's role switch"))
    }

    /// The newest epoch of `env` (0 before its first switch).
    pub fn last_epoch(&self, env: &str) -> Result<i64, CatalogError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(epoch), 0) FROM failovers WHERE env = ?1", [env], |r| r.get(0))
            .map_err(CatalogError::query("read an environment's epoch"))
    }
}

impl Catalog {
    /// The newest role change of `env`: a switch or a failback (drills aside).
    pub fn last_failover(&self, env: &str) -> Result<Option<FailoverRecord>, CatalogError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM failovers WHERE env = ?1 AND mode <> 'test' ORDER BY id DESC"),
                [env],
                failover_row,
            )
            .optional()
            .map_err(CatalogError::query("look up an environment's last failover"))
    }

    /// `env`'s switch that is in force or failing back, if any.
    pub fn switch_in_force(&self, env: &str) -> Result<Option<FailoverRecord>, CatalogError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM failovers WHERE env = ?1 AND mode IN ('planned', 'unplanned') \
                     AND state IN ('active', 'failing-back') ORDER BY id DESC"
                ),
                [env],
                failover_row,
            )
            .optional()
            .map_err(CatalogError::query("look up an environment's switch in force"))
    }

    /// Rewrites what failover `id` keeps besides its report (`resources`),
    /// while it is in `state`: false if it is not (any more).
    pub fn set_failover_resources(
        &self,
        id: i64,
        state: FailoverState,
        resources: &serde_json::Value,
    ) -> Result<bool, CatalogError> {
        let changed = self
            .conn
            .execute(
                "UPDATE failovers SET resources = ?1 WHERE id = ?2 AND state = ?3",
                params![resources.to_string(), id, state],
            )
            .map_err(CatalogError::query("record what a failover keeps"))?;
        Ok(changed > 0)
    }

    /// Moves switch `id` from state `from` to `to`; false if it was not in
    /// `from`. A change [`FailoverState::valid_transition`] or the
    /// failover's mode does not allow is refused.
    pub fn set_switch_state(&self, id: i64, from: FailoverState, to: FailoverState) -> Result<bool, CatalogError> {
        let what = "change a switch's state";
        if !from.valid_transition(to) {
            return Err(CatalogError::InvalidTransition {
                what: format!("failover {id}"),
                from: from.as_str(),
                to: to.as_str(),
            });
        }
        let tx = self.write(what)?;
        match mode_and_state(&tx, id, what)? {
            Some((mode, state)) if state == from => check_transition(id, mode, from, to)?,
            _ => return Ok(false),
        }
        tx.execute("UPDATE failovers SET state = ?1 WHERE id = ?2", params![to, id])
            .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(true)
    }

    /// Ends switch `switch` and records the failback `failback` (mode
    /// `failback`, state `ended`) in one transaction: ENV is home at the
    /// failback's epoch. Returns the failback's row id.
    pub fn record_failback(&self, switch: i64, failback: &NewFailover, at: DateTime<Utc>) -> Result<i64, CatalogError> {
        let what = "record a failback";
        let tx = self.write(what)?;
        match mode_and_state(&tx, switch, what)? {
            Some((mode, state)) if state != FailoverState::Ended => {
                check_transition(switch, mode, state, FailoverState::Ended)?
            }
            _ => return Err(CatalogError::NotFound { what: format!("switch {switch} in force") }),
        }
        tx.execute(
            "UPDATE failovers SET state = ?1, finished_at = ?2 WHERE id = ?3",
            params![FailoverState::Ended, Timestamp(at), switch],
        )
        .map_err(CatalogError::query(what))?;
        tx.execute(
            &format!(
                "INSERT INTO failovers ({COLUMNS}) VALUES (NULL, ?1, ?2, 'failback', ?3, 'ended', ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                failback.env,
                failback.standby,
                failback.epoch,
                Timestamp(failback.started_at),
                Timestamp(at),
                failback.environment.to_string(),
                failback.resources.to_string(),
                failback.report.to_string(),
            ],
        )
        .map_err(CatalogError::insert(what, format!("failback of {} from {}", failback.env, failback.standby)))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(id)
    }

    /// The undo of [`Catalog::record_failback`]: the failback row of `epoch`
    /// forgotten, switch `switch` failing back again. Idempotent.
    pub fn unrecord_failback(&self, switch: i64, env: &str, epoch: i64) -> Result<(), CatalogError> {
        let what = "forget a failback";
        let tx = self.write(what)?;
        tx.execute("DELETE FROM failovers WHERE env = ?1 AND mode = 'failback' AND epoch = ?2", params![env, epoch])
            .map_err(CatalogError::query(what))?;
        if let Some((mode, FailoverState::Ended)) = mode_and_state(&tx, switch, what)? {
            check_transition(switch, mode, FailoverState::Ended, FailoverState::FailingBack)?;
            tx.execute(
                "UPDATE failovers SET state = ?1, finished_at = NULL WHERE id = ?2",
                params![FailoverState::FailingBack, switch],
            )
            .map_err(CatalogError::query(what))?;
        }
        tx.commit().map_err(CatalogError::query(what))
    }
}

/// Failover `id`'s mode and state, if it is recorded.
fn mode_and_state(
    tx: &Transaction<'_>,
    id: i64,
    what: &'static str,
) -> Result<Option<(FailoverMode, FailoverState)>, CatalogError> {
    tx.query_row("SELECT mode, state FROM failovers WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(CatalogError::query(what))
}

/// Refuses a change of failover `id` that [`FailoverState::valid_transition`]
/// or its mode ([`FailoverMode::has_state`]) does not allow.
fn check_transition(id: i64, mode: FailoverMode, from: FailoverState, to: FailoverState) -> Result<(), CatalogError> {
    if from.valid_transition(to) && mode.has_state(to) {
        return Ok(());
    }
    Err(CatalogError::InvalidTransition { what: format!("{mode} failover {id}"), from: from.as_str(), to: to.as_str() })
}

fn failover_row(row: &Row<'_>) -> rusqlite::Result<FailoverRecord> {
    let json = |index: usize| -> rusqlite::Result<serde_json::Value> {
        let text: String = row.get(index)?;
        serde_json::from_str(&text)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e)))
    };
    Ok(FailoverRecord {
        id: row.get(0)?,
        env: row.get(1)?,
        standby: row.get(2)?,
        mode: row.get(3)?,
        epoch: row.get(4)?,
        state: row.get(5)?,
        started_at: row.get::<_, Timestamp>(6)?.0,
        finished_at: row.get::<_, Option<Timestamp>>(7)?.map(|t| t.0),
        environment: json(8)?,
        resources: json(9)?,
        report: json(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn drill(standby: &str) -> NewFailover {
        NewFailover {
            env: "demo".into(),
            standby: standby.into(),
            mode: FailoverMode::Test,
            epoch: None,
            state: FailoverState::Running,
            started_at: Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap(),
            environment: serde_json::json!({}),
            resources: serde_json::json!({ "netns": "envclone-c-sb" }),
            report: serde_json::json!({}),
        }
    }

    #[test]
    fn failover_transitions_per_state() {
        use FailoverState::*;
        let allowed: &[(FailoverState, &[FailoverState])] =
            &[(Running, &[Ended]), (Active, &[FailingBack]), (FailingBack, &[Active, Ended]), (Ended, &[FailingBack])];
        assert_eq!(allowed.len(), FailoverState::ALL.len());
        for (from, targets) in allowed {
            for to in FailoverState::ALL {
                assert_eq!(from.valid_transition(*to), targets.contains(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn failover_states_per_mode() {
        use FailoverState::*;
        let allowed: &[(FailoverMode, &[FailoverState])] = &[
            (FailoverMode::Test, &[Running, Ended]),
            (FailoverMode::Planned, &[Active, FailingBack, Ended]),
            (FailoverMode::Unplanned, &[Active, FailingBack, Ended]),
            (FailoverMode::Failback, &[Ended]),
        ];
        assert_eq!(allowed.len(), FailoverMode::ALL.len());
        for (mode, states) in allowed {
            for state in FailoverState::ALL {
                assert_eq!(mode.has_state(*state), states.contains(state), "{mode} in {state}");
            }
        }
    }

    #[test]
    fn modes_and_states_read_and_serialize_as_the_text_the_catalog_stores() {
        assert_eq!("failing-back".parse::<FailoverState>(), Ok(FailoverState::FailingBack));
        assert_eq!("unplanned".parse::<FailoverMode>(), Ok(FailoverMode::Unplanned));
        assert_eq!(serde_json::to_string(&FailoverState::FailingBack).unwrap(), r#""failing-back""#);
        assert_eq!(serde_json::to_string(&FailoverMode::Test).unwrap(), r#""test""#);

        let error = "serving".parse::<FailoverState>().unwrap_err();

        assert!(error.contains(r#""serving""#), "{error}");
    }

    #[test]
    fn every_mode_and_state_is_stored_as_text_the_schema_accepts_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let mut written = Vec::new();
        for mode in FailoverMode::ALL {
            for state in FailoverState::ALL {
                let standby = format!("sb-{mode}-{state}");
                catalog.add_failover(&NewFailover { mode: *mode, state: *state, ..drill(&standby) }).unwrap();
                written.push((standby, *mode, *state));
            }
        }

        let mut read: Vec<_> =
            catalog.failovers(None).unwrap().into_iter().map(|f| (f.standby, f.mode, f.state)).collect();

        read.reverse();
        assert_eq!(read, written);
    }

    #[test]
    fn a_failover_with_an_unknown_state_reads_as_corrupt_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        catalog.add_failover(&drill("sb")).unwrap();
        // As a hand edit would: the schema's CHECK knows the states too.
        catalog.conn.pragma_update(None, "ignore_check_constraints", true).unwrap();
        catalog.conn.execute("UPDATE failovers SET state = 'serving'", []).unwrap();

        let error = catalog.failovers(None).unwrap_err();

        assert!(matches!(&error, CatalogError::Corrupt { detail, .. } if detail.contains(r#""serving""#)), "{error:?}");
    }

    #[test]
    fn set_switch_state_refuses_an_invalid_transition() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let switch =
            NewFailover { mode: FailoverMode::Planned, epoch: Some(1), state: FailoverState::Active, ..drill("sb") };
        let id = catalog.add_failover(&switch).unwrap();

        let error = catalog.set_switch_state(id, FailoverState::Active, FailoverState::Ended).unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "active", to: "ended", .. }), "{error:?}");
        assert_eq!(catalog.active_switch("demo").unwrap().unwrap().state, FailoverState::Active);
    }

    #[test]
    fn set_switch_state_refuses_to_make_a_drill_fail_back() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let id = catalog.add_failover(&drill("sb")).unwrap();
        catalog.end_failover("sb", Utc::now()).unwrap();

        let error = catalog.set_switch_state(id, FailoverState::Ended, FailoverState::FailingBack).unwrap_err();

        assert!(
            matches!(&error, CatalogError::InvalidTransition { what, from: "ended", to: "failing-back" }
                if what == &format!("test failover {id}")),
            "{error:?}"
        );
        assert_eq!(catalog.failovers(None).unwrap()[0].state, FailoverState::Ended);
    }

    #[test]
    fn end_failover_refuses_a_switch_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let switch =
            NewFailover { mode: FailoverMode::Unplanned, epoch: Some(1), state: FailoverState::Active, ..drill("sb") };
        catalog.add_failover(&switch).unwrap();

        let error = catalog.end_failover("sb", Utc::now()).unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "active", to: "ended", .. }), "{error:?}");
        assert_eq!(catalog.open_failover("sb").unwrap().unwrap().state, FailoverState::Active);
    }

    #[test]
    fn record_failback_refuses_a_switch_not_marked_failing_back() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let switch =
            NewFailover { mode: FailoverMode::Planned, epoch: Some(1), state: FailoverState::Active, ..drill("sb") };
        let id = catalog.add_failover(&switch).unwrap();
        let failback =
            NewFailover { mode: FailoverMode::Failback, epoch: Some(2), state: FailoverState::Ended, ..drill("sb") };

        let error = catalog.record_failback(id, &failback, Utc::now()).unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "active", to: "ended", .. }), "{error:?}");
        assert_eq!(catalog.last_failover("demo").unwrap().unwrap().id, id, "no failback row");
        assert_eq!(catalog.last_epoch("demo").unwrap(), 1);
    }

    #[test]
    fn one_open_failover_per_standby_until_it_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        catalog.add_failover(&drill("sb")).unwrap();

        assert!(catalog.add_failover(&drill("sb")).is_err());
        let open = catalog.open_failover("sb").unwrap().unwrap();
        assert_eq!((open.mode, open.state), (FailoverMode::Test, FailoverState::Running));
        assert_eq!(open.resources["netns"], "envclone-c-sb");
        assert!(catalog.end_failover("sb", Utc::now()).unwrap());

        assert!(catalog.open_failover("sb").unwrap().is_none());
        assert!(!catalog.end_failover("sb", Utc::now()).unwrap());
        assert_eq!(catalog.failovers(Some("demo")).unwrap()[0].state, FailoverState::Ended);
        catalog.add_failover(&drill("sb")).unwrap();
        assert!(catalog.forget_open_failover("sb").unwrap());
        assert_eq!(catalog.failovers(None).unwrap().len(), 1);
    }

    #[test]
    fn a_switch_is_the_active_side_with_its_epoch_and_fence_events_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        catalog.add_failover(&drill("sb")).unwrap();
        assert!(catalog.active_switch("demo").unwrap().is_none(), "a drill is no switch");
        catalog.end_failover("sb", Utc::now()).unwrap();
        let switch =
            NewFailover { mode: FailoverMode::Unplanned, epoch: Some(1), state: FailoverState::Active, ..drill("sb") };
        let id = catalog.add_failover(&switch).unwrap();
        let event = FenceEvent {
            failover_id: id,
            env: "demo".into(),
            epoch: 1,
            domain: "web".into(),
            kind: FenceKind::FencedUnconfirmed,
            detail: Some("libvirt did not answer".into()),
            at: Utc.with_ymd_and_hms(2024, 5, 1, 2, 1, 0).unwrap(),
        };

        catalog.add_fence_event(&event).unwrap();

        let active = catalog.active_switch("demo").unwrap().unwrap();
        assert_eq!((active.id, active.epoch), (id, Some(1)));
        assert_eq!(catalog.last_epoch("demo").unwrap(), 1);
        assert_eq!(catalog.fence_events(id).unwrap(), [event]);
        assert!(catalog.forget_open_failover("sb").unwrap());
        assert!(catalog.fence_events(id).unwrap().is_empty(), "events go with their failover");
        assert_eq!(catalog.last_epoch("other").unwrap(), 0);
    }

    #[test]
    fn a_failback_ends_the_switch_with_the_next_epoch_and_its_undo_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let switch =
            NewFailover { mode: FailoverMode::Planned, epoch: Some(1), state: FailoverState::Active, ..drill("sb") };
        let id = catalog.add_failover(&switch).unwrap();
        assert!(catalog.set_switch_state(id, FailoverState::Active, FailoverState::FailingBack).unwrap());
        assert!(catalog.active_switch("demo").unwrap().is_none(), "the guard leaves a failing-back switch alone");
        assert_eq!(catalog.switch_in_force("demo").unwrap().unwrap().id, id);
        let failback =
            NewFailover { mode: FailoverMode::Failback, epoch: Some(2), state: FailoverState::Ended, ..drill("sb") };

        let back = catalog.record_failback(id, &failback, Utc::now()).unwrap();

        assert!(catalog.switch_in_force("demo").unwrap().is_none());
        assert!(catalog.open_failover("sb").unwrap().is_none());
        let last = catalog.last_failover("demo").unwrap().unwrap();
        assert_eq!(
            (last.id, last.mode, last.epoch, last.state),
            (back, FailoverMode::Failback, Some(2), FailoverState::Ended)
        );
        assert_eq!(catalog.last_epoch("demo").unwrap(), 2);
        catalog.unrecord_failback(id, "demo", 2).unwrap();
        catalog.unrecord_failback(id, "demo", 2).unwrap();
        assert_eq!(catalog.switch_in_force("demo").unwrap().unwrap().state, FailoverState::FailingBack);
        assert_eq!(catalog.last_epoch("demo").unwrap(), 1);
    }

    #[test]
    fn a_switch_in_force_gets_its_resources_rewritten_and_an_ended_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let switch =
            NewFailover { mode: FailoverMode::Planned, epoch: Some(1), state: FailoverState::Active, ..drill("sb") };
        let id = catalog.add_failover(&switch).unwrap();
        let home = serde_json::json!({ "fenced": [], "home_snapshot": "s1" });

        assert!(catalog.set_failover_resources(id, FailoverState::Active, &home).unwrap());

        assert_eq!(catalog.active_switch("demo").unwrap().unwrap().resources, home);
        catalog.set_switch_state(id, FailoverState::Active, FailoverState::FailingBack).unwrap();
        catalog.end_failover("sb", Utc::now()).unwrap();
        assert!(!catalog.set_failover_resources(id, FailoverState::Active, &serde_json::json!({})).unwrap());
        assert_eq!(catalog.failovers(Some("demo")).unwrap()[0].resources, home);
    }

    #[test]
    fn migration_9_keeps_the_failovers_and_their_fence_events() {
        let dir = tempfile::tempdir().unwrap();
        let old = Catalog::open_at_version(dir.path(), 8).unwrap();
        let switch =
            NewFailover { mode: FailoverMode::Unplanned, epoch: Some(1), state: FailoverState::Active, ..drill("sb") };
        let id = old.add_failover(&switch).unwrap();
        let event = FenceEvent {
            failover_id: id,
            env: "demo".into(),
            epoch: 1,
            domain: "web".into(),
            kind: FenceKind::Fenced,
            detail: None,
            at: Utc.with_ymd_and_hms(2024, 5, 1, 2, 1, 0).unwrap(),
        };
        old.add_fence_event(&event).unwrap();
        drop(old);

        let catalog = Catalog::open(dir.path()).unwrap();

        assert_eq!(catalog.schema_version().unwrap(), Catalog::supported_schema_version());
        assert_eq!(catalog.active_switch("demo").unwrap().unwrap().id, id);
        assert_eq!(catalog.fence_events(id).unwrap(), [event]);
        assert!(catalog.forget_open_failover("sb").unwrap());
        assert!(catalog.fence_events(id).unwrap().is_empty(), "the cascade survived the rebuild");
    }
}
