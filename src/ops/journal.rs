//! The journal of one operation (snapshot, restore, delete, clone,
//! destroy): each step recorded before it runs, with its undo; a failure
//! undoes, newest first, every step that may have acted (see
//! [`crate::catalog::Catalog::undo_plan`]). [`Journaled`] is how an
//! operation's run records, times and closes each step; [`PhaseMachine`]
//! how it moves between the phases of its state machine.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::catalog::{Catalog, CatalogError, OperationId, OperationKind, Owner, StepId, StepRecord, UndoAction};
use crate::ops::interrupt::Interrupted;

#[derive(Debug)]
pub struct Journal<'c> {
    catalog: &'c Catalog,
    pub op: OperationId,
    open: Vec<StepId>,
    /// A step the operation names as its point of no return is done:
    /// from here it is finished, never rolled back, so a signal no longer
    /// stops it (see [`Journaled::is_point_of_no_return`]).
    past_no_return: bool,
}

impl<'c> Journal<'c> {
    pub fn begin(
        catalog: &'c Catalog,
        kind: OperationKind,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Journal<'c>, CatalogError> {
        refuse_if_interrupted(catalog, env)?;
        let op = catalog.begin_operation(kind, env, &Owner::current(), now)?;
        Ok(Journal { catalog, op, open: Vec::new(), past_no_return: false })
    }

    /// The operation also acts on `env`: `recover ENV` and `status ENV`
    /// find it too (a clone is journaled under the clone's name).
    pub fn also_touches(&self, env: &str) -> Result<(), CatalogError> {
        self.catalog.also_touches(self.op, env)
    }

    /// The operation acts on `host`: `recover` undoes it there.
    pub fn on_host(&self, host: &str) -> Result<(), CatalogError> {
        self.catalog.set_operation_host(self.op, host)
    }

    pub fn record(&mut self, name: impl Into<String>, undo: UndoAction) -> Result<StepId, CatalogError> {
        let step = self.catalog.record_step(self.op, &StepRecord::new(name, undo))?;
        self.open.push(step);
        Ok(step)
    }

    pub fn done(&mut self, step: StepId) -> Result<(), CatalogError> {
        self.catalog.finish_step(step)?;
        self.open.retain(|s| *s != step);
        Ok(())
    }

    pub fn failed(&mut self, step: StepId, error: &str) -> Result<(), CatalogError> {
        self.catalog.fail_step(step, error)?;
        self.open.retain(|s| *s != step);
        Ok(())
    }

    pub fn complete(self) -> Result<(), CatalogError> {
        self.catalog.complete_operation(self.op)
    }

    /// Fails the open steps, then undoes every step that may have acted,
    /// newest first; returns the undo failures (the operation then stays
    /// `failed`).
    pub fn roll_back(mut self, cause: &str, mut undo: impl FnMut(&UndoAction) -> Result<(), String>) -> Vec<String> {
        let log = |what: &str, result: Result<(), CatalogError>| {
            if let Err(e) = result {
                tracing::error!("journal: cannot {what}: {e}");
            }
        };
        for step in std::mem::take(&mut self.open) {
            log("fail a step", self.catalog.fail_step(step, cause));
        }
        log("start the rollback", self.catalog.begin_rollback(self.op, cause));
        let plan = match self.catalog.undo_plan(self.op) {
            Ok(plan) => plan,
            Err(e) => return vec![format!("cannot read the journal's undo plan: {e}")],
        };
        let mut failures = Vec::new();
        for (step, action) in plan {
            match undo(&action) {
                Ok(()) => log("mark a step undone", self.catalog.mark_undone(step)),
                Err(error) => {
                    log("record a failed undo", self.catalog.fail_undo(step, &error));
                    failures.push(error);
                }
            }
        }
        if failures.is_empty() {
            log("finish the rollback", self.catalog.finish_rollback(self.op));
        } else {
            log("mark the operation failed", self.catalog.fail_operation(self.op, &failures.join("; ")));
        }
        failures
    }
}

/// Refuses a new operation on `env` while an interrupted one (journaled
/// running or rolling back, its owner dead) acts on it: the new one would
/// work on what the other left half done, and `recover` would later undo
/// it from under it. Checked here, where every operation begins its
/// journal, so each gets it; `recover` itself journals nothing this way.
/// Callers hold `env`'s lock, so a live owner is never taken for dead.
fn refuse_if_interrupted(catalog: &Catalog, env: &str) -> Result<(), CatalogError> {
    let Some(operation) = catalog.interrupted_operations()?.into_iter().find(|op| op.touches_env(env)) else {
        return Ok(());
    };
    let last_step = match catalog.steps(operation.id)?.last() {
        Some(step) => format!("'{}' {}", step.name, step.state),
        None => "none".to_owned(),
    };
    Err(CatalogError::Interrupted {
        env: env.to_owned(),
        operation: operation.id.0,
        kind: operation.kind.as_str(),
        started_at: operation.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        last_step,
    })
}

/// The run of an operation that only removes what another made (`destroy`
/// of a clone or of a standby): each step removes one thing, has no undo
/// (what is removed is not put back) and is idempotent, so running the
/// operation again finishes where a failed run stopped. See [`remove`].
pub struct Removal<'j, 'c, E> {
    ctx: &'j crate::ops::context::OpContext<'c>,
    journal: Journal<'c>,
    /// The operation's error for a step that failed: `(what, detail)`.
    fail: &'j dyn Fn(String, String) -> E,
}

impl<E> std::fmt::Debug for Removal<'_, '_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Removal").field("journal", &self.journal).finish_non_exhaustive()
    }
}

impl<E: From<CatalogError>> Removal<'_, '_, E> {
    /// Journals `what`, runs `remove` (its begin and end on the progress),
    /// marks it done or failed.
    pub fn step(&mut self, what: String, remove: impl FnOnce() -> Result<(), String>) -> Result<(), E> {
        let id = self.journal.record(what.clone(), UndoAction::Nothing)?;
        let timer = self.ctx.begin(what.clone());
        match remove() {
            Ok(()) => {
                timer.done();
                self.journal.done(id)?;
                Ok(())
            }
            Err(detail) => {
                timer.failed();
                self.journal.failed(id, &detail)?;
                Err((self.fail)(what, detail))
            }
        }
    }
}

/// Runs `steps` as a removal journaled as `kind` on `env`: the journal
/// completes, or, on a failure, says where it stopped (nothing to undo:
/// the operation run again finishes).
pub fn remove<'c, E: std::error::Error + From<CatalogError>>(
    ctx: &crate::ops::context::OpContext<'c>,
    kind: OperationKind,
    env: &str,
    fail: impl Fn(String, String) -> E,
    steps: impl FnOnce(&mut Removal<'_, 'c, E>) -> Result<(), E>,
) -> Result<(), E> {
    let journal = Journal::begin(ctx.catalog, kind, env, ctx.clock.now())?;
    let mut removal = Removal { ctx, journal, fail: &fail };
    match steps(&mut removal) {
        Ok(()) => Ok(removal.journal.complete()?),
        Err(error) => {
            let _ = removal.journal.roll_back(&crate::error::chain(&error), |_| Ok(()));
            Err(error)
        }
    }
}

/// An operation's run whose steps are journaled: each recorded with its
/// undo before it runs, its time reported on the progress, then marked
/// done or failed. Implemented by each operation's `Run`, so the rule is
/// written once.
pub trait Journaled<'r, 'c: 'r>: Sized {
    type Error: std::error::Error + From<CatalogError> + From<Interrupted>;

    fn context(&self) -> &'r crate::ops::context::OpContext<'c>;

    /// The operation's journal while it runs.
    fn journal(&mut self) -> &mut Journal<'c>;

    /// The crash-point family whose point `<family>:<step name>` is hit
    /// after each step (tests kill the operation there); `None`: no
    /// per-step points.
    fn crash_points(&self) -> Option<&'static str> {
        None
    }

    /// Told each step's timing once it ended, before it is marked done or
    /// failed: for an operation whose report lists its steps (a failover's
    /// runbook report). Every step's begin and end (with its duration) go
    /// to the progress whether or not this keeps them.
    fn step_ended(&mut self, name: &str, begun: Instant, took: Duration, ok: bool) {
        let _ = (name, begun, took, ok);
    }

    /// Whether `step` is the operation's point of no return: once it is
    /// done, the operation is finished rather than rolled back (what
    /// `recover` does too), so SIGTERM/SIGINT no longer stop it. `false`
    /// for every step of an operation that rolls back to its end.
    fn is_point_of_no_return(&self, step: &str) -> bool {
        let _ = step;
        false
    }

    /// Journals `name` with its undo, runs `step` (its begin and end, with
    /// its duration, on the progress), marks it done or failed, then hits
    /// the crash point `<family>:<name>` if the run has a family.
    ///
    /// After a SIGTERM or SIGINT ([`crate::ops::interrupt`]) the step is
    /// not started: [`Interrupted`], and the operation rolls back as for
    /// any failed step; past the point of no return it goes on.
    fn step<T>(
        &mut self,
        name: &str,
        undo: UndoAction,
        step: impl FnOnce(&mut Self) -> Result<T, Self::Error>,
    ) -> Result<T, Self::Error> {
        if !self.journal().past_no_return {
            if let Some(signal) = self.context().interrupt.requested() {
                return Err(Interrupted { signal, step: name.to_owned() }.into());
            }
        }
        let id = self.journal().record(name, undo)?;
        let timer = self.context().begin(name);
        let begun = Instant::now();
        let result = step(self);
        let took = timer.end(result.is_ok());
        self.step_ended(name, begun, took, result.is_ok());
        match result {
            Ok(value) => {
                self.journal().done(id)?;
                if self.is_point_of_no_return(name) {
                    self.journal().past_no_return = true;
                }
                if let Some(family) = self.crash_points() {
                    crate::ops::crashpoint::hit(family, name);
                }
                Ok(value)
            }
            Err(error) => {
                self.journal().failed(id, &crate::error::chain(&error))?;
                Err(error)
            }
        }
    }
}

/// The phases of an operation's state machine: each operation says which
/// phase may follow which; moving between them is checked one way.
pub trait PhaseMachine: Copy + Sized {
    /// The operation, for messages ("snapshot").
    const OPERATION: &'static str;

    /// The one place that says which phase may follow which.
    fn valid_transition(self, to: Self) -> bool;

    fn as_str(self) -> &'static str;

    /// Moves to `to`. An invalid transition is a bug in the operation's
    /// code, not a state of the world: said loudly, and fatal in debug
    /// builds.
    fn enter(&mut self, to: Self) {
        if self.valid_transition(to) {
            *self = to;
        } else {
            let operation = Self::OPERATION;
            tracing::error!(operation, from = self.as_str(), to = to.as_str(), "invalid phase transition");
            debug_assert!(false, "invalid {operation} phase transition {} -> {}", self.as_str(), to.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use chrono::TimeZone;
    use nix::sys::signal::Signal;

    use super::*;
    use crate::catalog::{OperationState, StepState};
    use crate::config::{Config, Controller};
    use crate::hypervisor::FakeHypervisor;
    use crate::ops::context::{Clock as _, FixedClock, OpContext};
    use crate::ops::interrupt::Interrupt;
    use crate::test_support::{FakeHost, FakeNet, FakeStorage};

    #[derive(Debug, thiserror::Error)]
    enum FakeError {
        #[error(transparent)]
        Catalog(#[from] CatalogError),
        #[error(transparent)]
        Interrupted(#[from] Interrupted),
    }

    /// An operation whose steps do nothing but can name its point of no return.
    struct FakeRun<'r, 'c> {
        ctx: &'r OpContext<'c>,
        journal: Journal<'c>,
        no_return: Option<&'static str>,
    }

    impl<'r, 'c> Journaled<'r, 'c> for FakeRun<'r, 'c> {
        type Error = FakeError;

        fn context(&self) -> &'r OpContext<'c> {
            self.ctx
        }

        fn journal(&mut self) -> &mut Journal<'c> {
            &mut self.journal
        }

        fn is_point_of_no_return(&self, step: &str) -> bool {
            self.no_return == Some(step)
        }
    }

    /// What a run of steps `one`, `two`, `three` did when SIGTERM came
    /// during step `signal_in`.
    struct Outcome {
        result: Result<(), FakeError>,
        ran: Vec<&'static str>,
        undone: Vec<PathBuf>,
        state: OperationState,
        steps: Vec<(String, StepState)>,
    }

    fn run(signal_in: &'static str, no_return: Option<&'static str>) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("state")).unwrap();
        let config = Config {
            controller: Controller::new("/k", "/h"),
            environments: BTreeMap::new(),
            schedules: BTreeMap::new(),
            standbys: BTreeMap::new(),
            hosts: BTreeMap::new(),
            lab: None,
        };
        let (hv, storage, net) = (FakeHypervisor::default(), FakeStorage::default(), FakeNet::default());
        let host = FakeHost::new(&hv, &storage, &net);
        let clock = FixedClock(Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap());
        let interrupt = Interrupt::new();
        let progress = |_: &crate::ops::context::Event| {};
        let ctx = OpContext {
            config: &config,
            host: &host,
            hosts: &crate::host::HostRegistry::new().with(&host),
            catalog: &catalog,
            progress: &progress,
            clock: &clock,
            interrupt: &interrupt,
        };
        let journal = Journal::begin(&catalog, OperationKind::Snapshot, "demo", clock.now()).unwrap();
        let op = journal.op;
        let mut fake = FakeRun { ctx: &ctx, journal, no_return };
        let mut ran = Vec::new();
        let mut result = Ok(());
        for name in ["one", "two", "three"] {
            let undo = UndoAction::DeleteFile { path: PathBuf::from(format!("/{name}")) };
            let step = fake.step(name, undo, |_| {
                if name == signal_in {
                    interrupt.request(Signal::SIGTERM);
                }
                ran.push(name);
                Ok(())
            });
            if let Err(error) = step {
                result = Err(error);
                break;
            }
        }
        let mut undone = Vec::new();
        match &result {
            Ok(()) => fake.journal.complete().unwrap(),
            Err(error) => {
                let failures = fake.journal.roll_back(&crate::error::chain(error), |action| {
                    if let UndoAction::DeleteFile { path } = action {
                        undone.push(path.clone());
                    }
                    Ok(())
                });
                assert!(failures.is_empty(), "{failures:?}");
            }
        }
        let state = catalog.operation(op).unwrap().state;
        let steps = catalog.steps(op).unwrap().into_iter().map(|s| (s.name, s.state)).collect();
        Outcome { result, ran, undone, state, steps }
    }

    #[test]
    fn a_signal_during_a_step_lets_it_finish_then_rolls_back_before_the_next() {
        let outcome = run("two", None);

        assert!(
            matches!(&outcome.result, Err(FakeError::Interrupted(Interrupted { signal: "SIGTERM", step })) if step == "three"),
            "{:?}",
            outcome.result
        );
        // Step two finished; three never started, so never journaled.
        assert_eq!(outcome.ran, ["one", "two"]);
        assert_eq!(outcome.undone, [PathBuf::from("/two"), PathBuf::from("/one")]);
        assert_eq!(outcome.state, OperationState::RolledBack);
        assert_eq!(outcome.steps, [("one".to_owned(), StepState::Undone), ("two".to_owned(), StepState::Undone)]);
    }

    #[test]
    fn a_signal_past_the_point_of_no_return_lets_the_operation_finish() {
        let outcome = run("two", Some("one"));

        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        assert_eq!(outcome.ran, ["one", "two", "three"]);
        assert!(outcome.undone.is_empty());
        assert_eq!(outcome.state, OperationState::Completed);
    }

    #[test]
    fn without_a_signal_every_step_runs() {
        let outcome = run("none", None);

        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        assert_eq!(outcome.ran, ["one", "two", "three"]);
        assert_eq!(outcome.state, OperationState::Completed);
    }

    /// An operation of another boot: its owner is provably dead.
    fn dead_owner() -> crate::catalog::Owner {
        crate::catalog::Owner { pid: std::process::id(), start_ticks: None, boot_id: Some("another boot".into()) }
    }

    fn at_two() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 2, 0, 0).unwrap()
    }

    #[test]
    fn a_new_operation_is_refused_on_an_environment_with_an_interrupted_one() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let op = catalog.begin_operation(OperationKind::Restore, "demo", &dead_owner(), at_two()).unwrap();
        catalog.record_step(op, &StepRecord::new("stop web", UndoAction::Nothing)).unwrap();

        let error = Journal::begin(&catalog, OperationKind::Snapshot, "demo", at_two()).unwrap_err();

        let CatalogError::Interrupted { env, operation, kind, started_at, last_step } = &error else {
            panic!("not refused as interrupted: {error:?}");
        };
        assert_eq!((env.as_str(), *operation, *kind), ("demo", op.0, "restore"));
        assert_eq!(started_at, "2024-05-01T02:00:00Z");
        assert_eq!(last_step, "'stop web' running");
        assert_eq!(crate::error::Failure::hint(&error).unwrap().split('`').nth(1), Some("envclone recover demo"));
        assert_eq!(crate::error::Failure::exit_code(&error), crate::exit::ExitCode::Failed);
        // Nothing was journaled for the refused operation.
        assert_eq!(catalog.operations_in(OperationState::Running).unwrap().len(), 1);
    }

    #[test]
    fn an_interrupted_operation_refuses_every_environment_it_touches_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let op = catalog.begin_operation(OperationKind::Clone, "copy", &dead_owner(), at_two()).unwrap();
        catalog.also_touches(op, "demo").unwrap();

        let on_source = Journal::begin(&catalog, OperationKind::Snapshot, "demo", at_two());
        let elsewhere = Journal::begin(&catalog, OperationKind::Snapshot, "shop", at_two());

        assert!(matches!(on_source, Err(CatalogError::Interrupted { ref env, .. }) if env == "demo"), "{on_source:?}");
        assert!(elsewhere.is_ok(), "{elsewhere:?}");
    }

    #[test]
    fn a_running_operation_of_a_live_owner_does_not_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        // This process owns it: the environment's lock, not this check, keeps them apart.
        catalog.begin_operation(OperationKind::Restore, "demo", &crate::catalog::Owner::current(), at_two()).unwrap();

        let begun = Journal::begin(&catalog, OperationKind::Snapshot, "demo", at_two());

        assert!(begun.is_ok(), "{begun:?}");
    }
}
