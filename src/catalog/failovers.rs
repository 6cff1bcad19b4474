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

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError, Timestamp};

const COLUMNS: &str = "id, env, standby, mode, epoch, state, started_at, finished_at, environment, resources, report";

/// One failover: a drill, or a role switch (planned or unplanned).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverRecord {
    pub id: i64,
    /// The primary.
    pub env: String,
    pub standby: String,
    /// `test`, `planned`, `unplanned` or `failback`.
    pub mode: String,
    /// The role switch's number (a failback's: the epoch it starts, ENV
    /// home again); none for a drill.
    pub epoch: Option<i64>,
    /// `running` (a drill under way), `active` (the switch in force),
    /// `failing-back` (the switch, while a failback hands ENV back) or `ended`.
    pub state: String,
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
    pub mode: String,
    pub epoch: Option<i64>,
    pub state: String,
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

    /// Ends the standby's open failover; false if there was none.
    pub fn end_failover(&self, standby: &str, at: DateTime<Utc>) -> Result<bool, CatalogError> {
        let changed = self
            .conn
            .execute(
                "UPDATE failovers SET state = 'ended', finished_at = ?1 WHERE standby = ?2 AND state <> 'ended'",
                params![Timestamp(at), standby],
            )
            .map_err(CatalogError::query("end a failover"))?;
        Ok(changed > 0)
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
        state: &str,
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

    /// Moves switch `id` from state `from` to `to`; false if it was not in `from`.
    pub fn set_switch_state(&self, id: i64, from: &str, to: &str) -> Result<bool, CatalogError> {
        let changed = self
            .conn
            .execute("UPDATE failovers SET state = ?1 WHERE id = ?2 AND state = ?3", params![to, id, from])
            .map_err(CatalogError::query("change a switch's state"))?;
        Ok(changed > 0)
    }

    /// Ends switch `switch` and records the failback `failback` (mode
    /// `failback`, state `ended`) in one transaction: ENV is home at the
    /// failback's epoch. Returns the failback's row id.
    pub fn record_failback(&self, switch: i64, failback: &NewFailover, at: DateTime<Utc>) -> Result<i64, CatalogError> {
        let what = "record a failback";
        let tx = self.write(what)?;
        let changed = tx
            .execute(
                "UPDATE failovers SET state = 'ended', finished_at = ?1 WHERE id = ?2 AND state <> 'ended'",
                params![Timestamp(at), switch],
            )
            .map_err(CatalogError::query(what))?;
        if changed == 0 {
            return Err(CatalogError::NotFound { what: format!("switch {switch} in force") });
        }
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
        tx.execute(
            "UPDATE failovers SET state = 'failing-back', finished_at = NULL WHERE id = ?1 AND state = 'ended'",
            [switch],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }
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
            mode: "test".into(),
            epoch: None,
            state: "running".into(),
            started_at: Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap(),
            environment: serde_json::json!({}),
            resources: serde_json::json!({ "netns": "envclone-c-sb" }),
            report: serde_json::json!({}),
        }
    }

    #[test]
    fn one_open_failover_per_standby_until_it_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        catalog.add_failover(&drill("sb")).unwrap();

        assert!(catalog.add_failover(&drill("sb")).is_err());
        let open = catalog.open_failover("sb").unwrap().unwrap();
        assert_eq!((open.mode.as_str(), open.state.as_str()), ("test", "running"));
        assert_eq!(open.resources["netns"], "envclone-c-sb");
        assert!(catalog.end_failover("sb", Utc::now()).unwrap());

        assert!(catalog.open_failover("sb").unwrap().is_none());
        assert!(!catalog.end_failover("sb", Utc::now()).unwrap());
        assert_eq!(catalog.failovers(Some("demo")).unwrap()[0].state, "ended");
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
        let switch = NewFailover { mode: "unplanned".into(), epoch: Some(1), state: "active".into(), ..drill("sb") };
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
        let switch = NewFailover { mode: "planned".into(), epoch: Some(1), state: "active".into(), ..drill("sb") };
        let id = catalog.add_failover(&switch).unwrap();
        assert!(catalog.set_switch_state(id, "active", "failing-back").unwrap());
        assert!(catalog.active_switch("demo").unwrap().is_none(), "the guard leaves a failing-back switch alone");
        assert_eq!(catalog.switch_in_force("demo").unwrap().unwrap().id, id);
        let failback = NewFailover { mode: "failback".into(), epoch: Some(2), state: "ended".into(), ..drill("sb") };

        let back = catalog.record_failback(id, &failback, Utc::now()).unwrap();

        assert!(catalog.switch_in_force("demo").unwrap().is_none());
        assert!(catalog.open_failover("sb").unwrap().is_none());
        let last = catalog.last_failover("demo").unwrap().unwrap();
        assert_eq!(
            (last.id, last.mode.as_str(), last.epoch, last.state.as_str()),
            (back, "failback", Some(2), "ended")
        );
        assert_eq!(catalog.last_epoch("demo").unwrap(), 2);
        catalog.unrecord_failback(id, "demo", 2).unwrap();
        catalog.unrecord_failback(id, "demo", 2).unwrap();
        assert_eq!(catalog.switch_in_force("demo").unwrap().unwrap().state, "failing-back");
        assert_eq!(catalog.last_epoch("demo").unwrap(), 1);
    }

    #[test]
    fn a_switch_in_force_gets_its_resources_rewritten_and_an_ended_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let switch = NewFailover { mode: "planned".into(), epoch: Some(1), state: "active".into(), ..drill("sb") };
        let id = catalog.add_failover(&switch).unwrap();
        let home = serde_json::json!({ "fenced": [], "home_snapshot": "s1" });

        assert!(catalog.set_failover_resources(id, "active", &home).unwrap());

        assert_eq!(catalog.active_switch("demo").unwrap().unwrap().resources, home);
        catalog.end_failover("sb", Utc::now()).unwrap();
        assert!(!catalog.set_failover_resources(id, "active", &serde_json::json!({})).unwrap());
        assert_eq!(catalog.failovers(Some("demo")).unwrap()[0].resources, home);
    }

    #[test]
    fn migration_9_keeps_the_failovers_and_their_fence_events() {
        let dir = tempfile::tempdir().unwrap();
        let old = Catalog::open_at_version(dir.path(), 8).unwrap();
        let switch = NewFailover { mode: "unplanned".into(), epoch: Some(1), state: "active".into(), ..drill("sb") };
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
