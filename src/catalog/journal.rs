//! The operation journal: every multi-step operation and its steps, stored
//! in the catalog so `envclone recover` can finish or roll back what a
//! crashed process left half done. The vocabulary and the state machines are
//! in `operation.rs`; this file only persists them, checking every state
//! change against them inside a write transaction (an invalid change is an
//! error and changes nothing).
//!
//! Forward step changes (`done`, `failed`) need a `running` operation; undo
//! changes (`undone`, `undo-failed`) need a `rolling-back` one, so undoing
//! always starts with [`Catalog::begin_rollback`].
//!
//! Which operations are interrupted: those `running` or `rolling-back`
//! whose [`Owner`] is no longer alive (pid gone, pid reused, or another
//! boot). `recover` takes the environment's lock first; since a live
//! operation holds that lock for its whole run, the judgement cannot race
//! with a live owner.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::operation::{
    Operation, OperationId, OperationKind, OperationState, Owner, Step, StepId, StepRecord, StepState, UndoAction,
    UndoJson,
};
use super::snapshots::ensure_environment;
use super::{Catalog, CatalogError, Timestamp};

const OPERATION_COLUMNS: &str = "o.id, o.kind, e.name, o.pid, o.pid_start_ticks, o.boot_id, o.started_at, \
     o.finished_at, o.state, o.error, \
     (SELECT json_group_array(env) FROM (SELECT env FROM operation_envs WHERE operation_id = o.id ORDER BY env)), \
     o.host";
const STEP_COLUMNS: &str = "id, operation_id, seq, name, undo, state, started_at, finished_at, error";

impl Catalog {
    /// Journals a new operation on `env`, in state `running`.
    pub fn begin_operation(
        &self,
        kind: OperationKind,
        env: &str,
        owner: &Owner,
        started_at: DateTime<Utc>,
    ) -> Result<OperationId, CatalogError> {
        let what = "journal an operation";
        let tx = self.write(what)?;
        let env = ensure_environment(&tx, env, started_at)?;
        tx.execute(
            "INSERT INTO operations (kind, env_id, pid, pid_start_ticks, boot_id, started_at, state) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                kind,
                env,
                owner.pid,
                owner.start_ticks.map(|ticks| i64::try_from(ticks).unwrap_or(i64::MAX)),
                owner.boot_id,
                Timestamp(started_at),
                OperationState::Running
            ],
        )
        .map_err(CatalogError::query(what))?;
        let id = OperationId(tx.last_insert_rowid());
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(id)
    }

    /// Records that operation `id` also acts on `env` (besides the
    /// environment it is journaled under), so that `recover ENV` and
    /// `status ENV` find it. Recording it twice is harmless.
    pub fn also_touches(&self, id: OperationId, env: &str) -> Result<(), CatalogError> {
        let what = "record an environment an operation touches";
        self.conn
            .execute(
                "INSERT INTO operation_envs (operation_id, env) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![id, env],
            )
            .map_err(CatalogError::insert(what, format!("operation {id} touching '{env}'")))?;
        Ok(())
    }

    /// Records the host the operation acts on (when not its environment's).
    pub fn set_operation_host(&self, id: OperationId, host: &str) -> Result<(), CatalogError> {
        self.conn
            .execute("UPDATE operations SET host = ?1 WHERE id = ?2", params![host, id])
            .map(drop)
            .map_err(CatalogError::query("record the host an operation acts on"))
    }

    pub fn operation(&self, id: OperationId) -> Result<Operation, CatalogError> {
        operation(&self.conn, id)
    }

    /// The operation's steps in the order they were recorded.
    pub fn steps(&self, id: OperationId) -> Result<Vec<Step>, CatalogError> {
        let what = "list an operation's steps";
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {STEP_COLUMNS} FROM operation_steps WHERE operation_id = ?1 ORDER BY seq"))
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([id], step_row).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// Records a step, `running`, before it acts, with how to undo it.
    pub fn record_step(&self, id: OperationId, step: &StepRecord) -> Result<StepId, CatalogError> {
        let what = "journal a step";
        let tx = self.write(what)?;
        let state = operation(&tx, id)?.state;
        if state != OperationState::Running {
            return Err(CatalogError::OperationNotRunning { operation: id.0, state: state.as_str() });
        }
        let seq: u32 = tx
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM operation_steps WHERE operation_id = ?1", [id], |row| {
                row.get(0)
            })
            .map_err(CatalogError::query(what))?;
        tx.execute(
            "INSERT INTO operation_steps (operation_id, seq, name, undo, state, started_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, seq, step.name, UndoJson(step.undo.clone()), StepState::Running, Timestamp(Utc::now())],
        )
        .map_err(CatalogError::query(what))?;
        let step_id = StepId(tx.last_insert_rowid());
        tx.commit().map_err(CatalogError::query(what))?;
        Ok(step_id)
    }

    /// The step finished what it does.
    pub fn finish_step(&self, step: StepId) -> Result<(), CatalogError> {
        self.change_step(step, StepState::Done, None)
    }

    /// The step failed; it may have acted partly, so it is still undone.
    pub fn fail_step(&self, step: StepId, error: &str) -> Result<(), CatalogError> {
        self.change_step(step, StepState::Failed, Some(error))
    }

    /// The step's undo action ran.
    pub fn mark_undone(&self, step: StepId) -> Result<(), CatalogError> {
        self.change_step(step, StepState::Undone, None)
    }

    /// The step's undo action failed; `recover` tries it again.
    pub fn fail_undo(&self, step: StepId, error: &str) -> Result<(), CatalogError> {
        self.change_step(step, StepState::UndoFailed, Some(error))
    }

    /// Every step is done: the operation is complete.
    pub fn complete_operation(&self, id: OperationId) -> Result<(), CatalogError> {
        self.change_operation(id, OperationState::Completed, None, StepState::Done)
    }

    /// Starts undoing the operation's steps because of `cause`.
    pub fn begin_rollback(&self, id: OperationId, cause: &str) -> Result<(), CatalogError> {
        self.change_operation(id, OperationState::RollingBack, Some(cause), StepState::Undone)
    }

    /// Every step is undone: the operation is rolled back.
    pub fn finish_rollback(&self, id: OperationId) -> Result<(), CatalogError> {
        self.change_operation(id, OperationState::RolledBack, None, StepState::Undone)
    }

    /// The operation stops with steps that still need undoing.
    pub fn fail_operation(&self, id: OperationId, error: &str) -> Result<(), CatalogError> {
        self.change_operation(id, OperationState::Failed, Some(error), StepState::Undone)
    }

    /// Makes `owner` (the `recover` process) the owner of an interrupted
    /// operation, so it is not found interrupted again while it works.
    pub fn take_over(&self, id: OperationId, owner: &Owner) -> Result<(), CatalogError> {
        let what = "take over an operation";
        let tx = self.write(what)?;
        let state = operation(&tx, id)?.state;
        if !matches!(state, OperationState::Running | OperationState::RollingBack | OperationState::Failed) {
            return Err(CatalogError::OperationNotRunning { operation: id.0, state: state.as_str() });
        }
        tx.execute(
            "UPDATE operations SET pid = ?2, pid_start_ticks = ?3, boot_id = ?4 WHERE id = ?1",
            params![id, owner.pid, owner.start_ticks.map(|t| i64::try_from(t).unwrap_or(i64::MAX)), owner.boot_id],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Operations in `state`, oldest first.
    pub fn operations_in(&self, state: OperationState) -> Result<Vec<Operation>, CatalogError> {
        let what = "list operations";
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT {OPERATION_COLUMNS} FROM operations o JOIN environments e ON e.id = o.env_id \
                 WHERE o.state = ?1 ORDER BY o.id"
            ))
            .map_err(CatalogError::query(what))?;
        let rows = statement.query_map([state], operation_row).map_err(CatalogError::query(what))?;
        rows.collect::<Result<_, _>>().map_err(CatalogError::query(what))
    }

    /// Operations `running` or `rolling-back` whose owner is gone: what
    /// `envclone recover` finishes or rolls back. See the module docs.
    pub fn interrupted_operations(&self) -> Result<Vec<Operation>, CatalogError> {
        let mut operations = self.operations_in(OperationState::Running)?;
        operations.extend(self.operations_in(OperationState::RollingBack)?);
        operations.retain(|operation| !operation.owner.is_alive());
        operations.sort_by_key(|operation| operation.id);
        Ok(operations)
    }

    /// The undo actions of every step that may have acted and is not
    /// undone yet (done, failed, running when interrupted, undo-failed),
    /// newest first: the order to run them in.
    pub fn undo_plan(&self, id: OperationId) -> Result<Vec<(StepId, UndoAction)>, CatalogError> {
        operation(&self.conn, id)?;
        let mut steps = self.steps(id)?;
        steps.retain(|step| step.state.needs_undo());
        Ok(steps.into_iter().rev().map(|step| (step.id, step.undo)).collect())
    }

    fn change_step(&self, id: StepId, to: StepState, error: Option<&str>) -> Result<(), CatalogError> {
        let what = "change a step's state";
        let tx = self.write(what)?;
        let (operation_id, from): (OperationId, StepState) = tx
            .query_row("SELECT operation_id, state FROM operation_steps WHERE id = ?1", [id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
            .map_err(CatalogError::query(what))?
            .ok_or_else(|| CatalogError::NotFound { what: format!("step {id}") })?;
        let operation_state = operation(&tx, operation_id)?.state;
        let needed = match to {
            StepState::Undone | StepState::UndoFailed => OperationState::RollingBack,
            StepState::Running | StepState::Done | StepState::Failed => OperationState::Running,
        };
        if operation_state != needed {
            return Err(CatalogError::OperationNotRunning {
                operation: operation_id.0,
                state: operation_state.as_str(),
            });
        }
        if !from.valid_transition(to) {
            return Err(CatalogError::InvalidTransition {
                what: format!("step {id}"),
                from: from.as_str(),
                to: to.as_str(),
            });
        }
        tx.execute(
            "UPDATE operation_steps SET state = ?2, finished_at = ?3, error = COALESCE(?4, error) WHERE id = ?1",
            params![id, to, Timestamp(Utc::now()), error],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }

    /// Moves an operation to `to`. Entering a final state that claims all
    /// steps are `steps_must_be` (completed: done; rolled-back: undone)
    /// is refused while a step is in another state.
    fn change_operation(
        &self,
        id: OperationId,
        to: OperationState,
        error: Option<&str>,
        steps_must_be: StepState,
    ) -> Result<(), CatalogError> {
        let what = "change an operation's state";
        let tx = self.write(what)?;
        let from = operation(&tx, id)?.state;
        if !from.valid_transition(to) {
            return Err(CatalogError::InvalidTransition {
                what: format!("operation {id}"),
                from: from.as_str(),
                to: to.as_str(),
            });
        }
        if matches!(to, OperationState::Completed | OperationState::RolledBack) {
            if let Some((seq, name, state)) = unfinished_step(&tx, id, steps_must_be)? {
                return Err(CatalogError::InvalidTransition {
                    what: format!("operation {id} (step {seq} '{name}' is {state})"),
                    from: from.as_str(),
                    to: to.as_str(),
                });
            }
        }
        let finished_at = matches!(to, OperationState::Completed | OperationState::RolledBack | OperationState::Failed)
            .then(|| Timestamp(Utc::now()));
        tx.execute(
            "UPDATE operations SET state = ?2, finished_at = ?3, error = COALESCE(?4, error) WHERE id = ?1",
            params![id, to, finished_at, error],
        )
        .map_err(CatalogError::query(what))?;
        tx.commit().map_err(CatalogError::query(what))
    }
}

fn operation(conn: &rusqlite::Connection, id: OperationId) -> Result<Operation, CatalogError> {
    conn.query_row(
        &format!("SELECT {OPERATION_COLUMNS} FROM operations o JOIN environments e ON e.id = o.env_id WHERE o.id = ?1"),
        [id],
        operation_row,
    )
    .optional()
    .map_err(CatalogError::query("look up an operation"))?
    .ok_or_else(|| CatalogError::NotFound { what: format!("operation {id}") })
}

/// The first step of `id` that is not in state `expected`.
fn unfinished_step(
    tx: &Transaction<'_>,
    id: OperationId,
    expected: StepState,
) -> Result<Option<(u32, String, StepState)>, CatalogError> {
    tx.query_row(
        "SELECT seq, name, state FROM operation_steps WHERE operation_id = ?1 AND state <> ?2 ORDER BY seq LIMIT 1",
        params![id, expected],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )
    .optional()
    .map_err(CatalogError::query("check an operation's steps"))
}

fn operation_row(row: &Row<'_>) -> rusqlite::Result<Operation> {
    let ticks: Option<i64> = row.get(4)?;
    Ok(Operation {
        id: row.get(0)?,
        kind: row.get::<_, OperationKind>(1)?,
        env: row.get(2)?,
        owner: Owner { pid: row.get(3)?, start_ticks: ticks.and_then(|t| u64::try_from(t).ok()), boot_id: row.get(5)? },
        started_at: row.get::<_, Timestamp>(6)?.0,
        finished_at: row.get::<_, Option<Timestamp>>(7)?.map(|t| t.0),
        state: row.get(8)?,
        error: row.get(9)?,
        touches: serde_json::from_str(&row.get::<_, String>(10)?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(10, rusqlite::types::Type::Text, Box::new(e)))?,
        host: row.get(11)?,
    })
}

fn step_row(row: &Row<'_>) -> rusqlite::Result<Step> {
    Ok(Step {
        id: row.get(0)?,
        operation: row.get(1)?,
        seq: row.get(2)?,
        name: row.get(3)?,
        undo: row.get::<_, UndoJson>(4)?.0,
        state: row.get(5)?,
        started_at: row.get::<_, Timestamp>(6)?.0,
        finished_at: row.get::<_, Option<Timestamp>>(7)?.map(|t| t.0),
        error: row.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use std::path::PathBuf;

    fn dead_owner() -> Owner {
        let mut owner = Owner::current();
        owner.start_ticks = owner.start_ticks.map(|ticks| ticks + 1);
        owner
    }

    fn snapshot_steps() -> [StepRecord; 3] {
        [
            StepRecord::new("freeze web", UndoAction::ThawAgent { vm: "web".into() }),
            StepRecord::new("create overlay", UndoAction::DeleteFile { path: PathBuf::from("/img/web.s1.qcow2") }),
            StepRecord::new(
                "pivot web/vda",
                UndoAction::PivotBack { domain: "web".into(), disk: "vda".into(), image: "/img/web.qcow2".into() },
            ),
        ]
    }

    #[test]
    fn journal_round_trip_of_a_completed_operation() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(2, 0)).unwrap();
        for record in snapshot_steps() {
            let step = catalog.record_step(op, &record).unwrap();
            catalog.finish_step(step).unwrap();
        }

        catalog.complete_operation(op).unwrap();

        let operation = catalog.operation(op).unwrap();
        assert_eq!(operation.kind, OperationKind::Snapshot);
        assert_eq!(operation.env, "prod");
        assert_eq!(operation.state, OperationState::Completed);
        assert_eq!(operation.started_at, at(2, 0));
        assert!(operation.finished_at.is_some());
        assert_eq!(operation.owner, Owner::current());
        let steps = catalog.steps(op).unwrap();
        assert_eq!(steps.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(steps.iter().all(|s| s.state == StepState::Done));
        assert_eq!(steps[1].undo, snapshot_steps()[1].undo);
        assert!(catalog.interrupted_operations().unwrap().is_empty());
    }

    #[test]
    fn an_operation_names_the_other_environments_it_touches() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Clone, "x", &dead_owner(), at(2, 0)).unwrap();
        let other = catalog.begin_operation(OperationKind::Snapshot, "shop", &dead_owner(), at(2, 0)).unwrap();

        catalog.also_touches(op, "shop").unwrap();
        catalog.also_touches(op, "shop").unwrap();

        let interrupted = catalog.interrupted_operations().unwrap();
        assert_eq!(
            interrupted.iter().map(|o| (o.id, o.touches.clone())).collect::<Vec<_>>(),
            [(op, vec!["shop".to_owned()]), (other, vec![])]
        );
        assert!(interrupted[0].touches_env("shop") && interrupted[0].touches_env("x"));
        assert!(!interrupted[1].touches_env("x"));
    }

    #[test]
    fn migration_10_keeps_the_operations_journaled_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let old = Catalog::open_at_version(dir.path(), 9).unwrap();
        let op = old.begin_operation(OperationKind::Clone, "x", &dead_owner(), at(2, 0)).unwrap();
        drop(old);

        let catalog = Catalog::open(dir.path()).unwrap();

        assert_eq!(catalog.operation(op).unwrap().touches, Vec::<String>::new());
        catalog.also_touches(op, "shop").unwrap();
        assert_eq!(catalog.operation(op).unwrap().touches, ["shop"]);
    }

    #[test]
    fn interrupted_operation_is_found_with_its_undo_plan_newest_first() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Snapshot, "prod", &dead_owner(), at(2, 0)).unwrap();
        let [freeze, overlay, pivot] = snapshot_steps();
        let first = catalog.record_step(op, &freeze).unwrap();
        catalog.finish_step(first).unwrap();
        let second = catalog.record_step(op, &overlay).unwrap();
        catalog.finish_step(second).unwrap();
        let third = catalog.record_step(op, &pivot).unwrap();
        let live = catalog.begin_operation(OperationKind::Snapshot, "test", &Owner::current(), at(2, 0)).unwrap();

        let interrupted = catalog.interrupted_operations().unwrap();
        let plan = catalog.undo_plan(op).unwrap();

        assert_eq!(interrupted.iter().map(|o| o.id).collect::<Vec<_>>(), [op]);
        assert_ne!(live, op);
        assert_eq!(plan, [(third, pivot.undo), (second, overlay.undo), (first, freeze.undo)]);
    }

    #[test]
    fn recover_rolls_back_an_interrupted_operation() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Restore, "prod", &dead_owner(), at(2, 0)).unwrap();
        let [freeze, overlay, _] = snapshot_steps();
        let done = catalog.record_step(op, &freeze).unwrap();
        catalog.finish_step(done).unwrap();
        catalog.record_step(op, &overlay).unwrap();

        catalog.take_over(op, &Owner::current()).unwrap();
        assert!(catalog.interrupted_operations().unwrap().is_empty());
        catalog.begin_rollback(op, "interrupted").unwrap();
        let plan = catalog.undo_plan(op).unwrap();
        catalog.mark_undone(plan[0].0).unwrap();
        catalog.fail_undo(plan[1].0, "agent did not answer").unwrap();
        assert!(matches!(catalog.finish_rollback(op), Err(CatalogError::InvalidTransition { .. })));
        catalog.fail_operation(op, "thaw of web failed").unwrap();
        assert_eq!(catalog.undo_plan(op).unwrap(), [(done, freeze.undo.clone())]);
        catalog.begin_rollback(op, "retry").unwrap();
        catalog.mark_undone(done).unwrap();
        catalog.finish_rollback(op).unwrap();

        let operation = catalog.operation(op).unwrap();
        assert_eq!(operation.state, OperationState::RolledBack);
        assert_eq!(operation.error.as_deref(), Some("retry"));
        assert!(catalog.undo_plan(op).unwrap().is_empty());
        assert!(catalog.steps(op).unwrap().iter().all(|s| s.state == StepState::Undone));
        assert_eq!(catalog.steps(op).unwrap()[0].error.as_deref(), Some("agent did not answer"));
    }

    #[test]
    fn complete_operation_refuses_while_a_step_is_unfinished() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(2, 0)).unwrap();
        let step = catalog.record_step(op, &snapshot_steps()[0]).unwrap();

        let error = catalog.complete_operation(op).unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "running", to: "completed", .. }));
        catalog.fail_step(step, "no agent").unwrap();
        assert!(catalog.complete_operation(op).is_err());
        assert_eq!(catalog.operation(op).unwrap().state, OperationState::Running);
    }

    #[test]
    fn invalid_operation_transition_is_an_error_and_changes_nothing() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Prune, "prod", &Owner::current(), at(2, 0)).unwrap();
        catalog.complete_operation(op).unwrap();

        let error = catalog.begin_rollback(op, "too late").unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "completed", to: "rolling-back", .. }));
        let operation = catalog.operation(op).unwrap();
        assert_eq!(operation.state, OperationState::Completed);
        assert_eq!(operation.error, None);
    }

    #[test]
    fn invalid_step_transition_is_an_error() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Clone, "prod", &Owner::current(), at(2, 0)).unwrap();
        let step = catalog.record_step(op, &StepRecord::new("check", UndoAction::Nothing)).unwrap();
        catalog.finish_step(step).unwrap();

        let error = catalog.fail_step(step, "late").unwrap_err();

        assert!(matches!(error, CatalogError::InvalidTransition { from: "done", to: "failed", .. }));
    }

    #[test]
    fn undoing_a_step_needs_a_rollback_first() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(2, 0)).unwrap();
        let step = catalog.record_step(op, &snapshot_steps()[0]).unwrap();

        let error = catalog.mark_undone(step).unwrap_err();

        assert!(matches!(error, CatalogError::OperationNotRunning { state: "running", .. }), "{error:?}");
    }

    #[test]
    fn record_step_refuses_a_finished_operation() {
        let (_dir, catalog) = catalog();
        let op = catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(2, 0)).unwrap();
        catalog.complete_operation(op).unwrap();

        let error = catalog.record_step(op, &snapshot_steps()[0]).unwrap_err();

        assert!(matches!(error, CatalogError::OperationNotRunning { state: "completed", .. }));
    }

    #[test]
    fn unknown_operation_and_step_are_not_found() {
        let (_dir, catalog) = catalog();

        assert!(matches!(catalog.operation(OperationId(5)), Err(CatalogError::NotFound { .. })));
        assert!(matches!(catalog.finish_step(StepId(5)), Err(CatalogError::NotFound { .. })));
        assert!(matches!(catalog.undo_plan(OperationId(5)), Err(CatalogError::NotFound { .. })));
    }

    #[test]
    fn operations_are_listed_by_state() {
        let (_dir, catalog) = catalog();
        let failed = catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(2, 0)).unwrap();
        catalog.fail_operation(failed, "disk full").unwrap();
        catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(3, 0)).unwrap();

        let listed = catalog.operations_in(OperationState::Failed).unwrap();

        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].error.as_deref(), Some("disk full"));
    }
}
