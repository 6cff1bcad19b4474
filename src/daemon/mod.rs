//! `envclone daemon`: runs the config's `[schedules.*]` on time.
//!
//! - The config is loaded once; **SIGHUP reloads it** (a config that does
//!   not validate is logged and the previous schedules stay). Runs in
//!   progress are not affected by a reload.
//! - Every tick looks at each schedule with [`crate::schedule::due_runs`]
//!   against its last run in the catalog, records each due run
//!   (`schedule_runs`, state `running`) and starts it on a blocking thread
//!   through an injected [`ScheduledRunner`]; then the loop sleeps until the
//!   next fire time (at most [`MAX_SLEEP`], so a wall clock that jumps is
//!   noticed), a run ends, SIGHUP, or shutdown.
//! - **Missed** fire times (the daemon was down, or a run outlasted the
//!   interval) are counted and logged; one run catches up, never a replay.
//! - **Overlap**: while a schedule's previous run still runs, or another
//!   operation holds the environment (`busy`, exit code 3 from the
//!   snapshot), the run is recorded `skipped-overlap`, counted and logged,
//!   never queued.
//! - **Failures** are recorded with their error text and counted; a failure
//!   never stops the daemon. Retention runs after each successful snapshot.
//! - **Autorestore**: every tick (and so right after a run ends, which
//!   wakes the loop) each standby with autorestore whose primary has a
//!   newer complete snapshot than the standby's restored point, manual
//!   snapshots included, is synced by a child `envclone standby sync SB`
//!   on a blocking thread of its own, so a slow transfer never holds the
//!   scheduler. One sync per standby at a time; a failed one is retried
//!   after [`SYNC_RETRY`] (or at once for a newer snapshot). While a
//!   standby serves its primary (a role switch `active`), the same child
//!   runs the other way, the **home sync**: it carries what the standby
//!   wrote towards the primary's storage, started when the primary's newest
//!   complete snapshot is neither the switch's recorded `home_snapshot`
//!   nor the one its last home sync saw (see `ops::failover::home_sync`).
//! - **Fence guard**: while any role switch is in force (a standby serves
//!   its primary), every tick runs the fence guard as a child `envclone
//!   status --json` on a blocking thread of its own (one at a time): an old
//!   primary domain found running is fenced again and the return recorded
//!   (see `ops::failover::fence`).
//! - **Start gate leases**: with hosts under `[hosts]`, every tick (at most
//!   one per [`LEASE_RENEWAL_EVERY`]) renews their leases through a child
//!   `envclone gate renew --json` on a blocking thread (one at a time): a
//!   host holds a fresh lease for each environment that is not failed
//!   over (see `host::gate`); a host that does not answer is logged.
//! - **Shutdown**: SIGTERM or SIGINT flips a `watch` channel; the loop stops
//!   starting runs and waits up to the shutdown grace for runs in progress.
//!   Runs still going after that are left to finish on their own and are
//!   recorded as interrupted at the next start. The signal task and the
//!   scheduler task are joined and their errors collected.
//!
//! `envclone schedule run NAME` ([`run_one`]) does one run of one schedule
//! with the same bookkeeping, for systemd timers and cron.

mod error;
mod execute;
pub mod retention;
pub mod runner;
mod scheduler;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use self::error::{DaemonError, RunError};
pub use self::execute::{Executed, RunReport, RunRequest};
pub use self::runner::{CliRunner, RunResult, ScheduledRunner, StandbySynced};
pub use self::scheduler::{DaemonStats, NotDue, Scheduler, StandbySyncOutcome, TickReport};
use crate::catalog::{Catalog, Owner, RunOrigin};
use crate::config::{Config, Schedule};
use crate::ops::context::{Clock, SystemClock};

/// How long after a failed autorestore sync the same snapshot is tried again.
pub const SYNC_RETRY: Duration = Duration::from_secs(600);

/// The longest the loop sleeps without looking at the clock again.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The least time between two renewals of the start gate's leases: a burst
/// of ticks (runs ending) renews once; ticks come at least every
/// [`MAX_SLEEP`], so a lease of a few minutes never lapses while the
/// daemon runs and its hosts answer.
pub const LEASE_RENEWAL_EVERY: Duration = Duration::from_secs(20);

/// Where the scheduler reads the time of day (the operations' clock);
/// tests give a fake one. Waiting uses tokio's monotonic timer, never this.
pub type Now = Arc<dyn Clock>;

/// Loads the config again, for SIGHUP.
pub type Reload = Arc<dyn Fn() -> crate::Result<Config> + Send + Sync>;

/// The system clock as a [`Now`].
pub fn system_clock() -> Now {
    Arc::new(SystemClock)
}

/// What `envclone daemon --once` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnceReport {
    pub at: DateTime<Utc>,
    /// Every run started or skipped, finished.
    pub runs: Vec<RunReport>,
    pub not_due: Vec<NotDue>,
    pub missed: u32,
    pub next: Option<DateTime<Utc>>,
    pub errors: Vec<String>,
    /// Autorestore syncs of standbys behind their primary's newest snapshot.
    pub standby_syncs: Vec<StandbySyncOutcome>,
}

impl OnceReport {
    pub fn failed(&self) -> usize {
        self.runs.iter().filter(|run| run.result == crate::catalog::RunState::Failed).count()
    }
}

/// The scheduler loop: see the [module documentation](self). Returns when
/// `shutdown` turns true (or its sender goes away) and the runs in progress
/// ended or `grace` passed.
pub async fn run_loop(
    scheduler: &mut Scheduler,
    mut shutdown: watch::Receiver<bool>,
    mut reloads: mpsc::Receiver<()>,
    reload: Option<Reload>,
    grace: Duration,
) {
    scheduler.reap_interrupted().await;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let now = scheduler.now();
        let tick = scheduler.tick(now).await;
        let wait = tick.next.map_or(MAX_SLEEP, |next| (next - now).to_std().unwrap_or(Duration::ZERO)).min(MAX_SLEEP);
        tracing::debug!("next tick in {}", humantime::format_duration(Duration::from_secs(wait.as_secs())));
        let wake = Instant::now() + wait;
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(()) = reloads.recv() => {
                if let Some(reload) = &reload {
                    reload_config(scheduler, Arc::clone(reload)).await;
                }
            }
            Some(()) = scheduler.join_next(), if scheduler.in_flight() > 0 => {}
        }
    }
    drain(scheduler, Some(grace)).await;
}

/// Waits for the runs in progress, at most `grace` (`None`: as long as they take).
async fn drain(scheduler: &mut Scheduler, grace: Option<Duration>) {
    let deadline = grace.map(|grace| Instant::now() + grace);
    if scheduler.in_flight() > 0 {
        tracing::info!("waiting for {} runs in progress", scheduler.in_flight());
    }
    while scheduler.in_flight() > 0 {
        let Some(deadline) = deadline else {
            scheduler.join_next().await;
            continue;
        };
        tokio::select! {
            _ = scheduler.join_next() => {}
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    "{} runs still in progress after the shutdown grace; they finish on their own and are \
                     recorded as interrupted at the next start",
                    scheduler.in_flight()
                );
                break;
            }
        }
    }
}

async fn reload_config(scheduler: &mut Scheduler, reload: Reload) {
    match tokio::task::spawn_blocking(move || reload()).await {
        Ok(Ok(config)) => {
            tracing::info!("configuration reloaded: {} schedules", config.schedules.len());
            scheduler.set_lease_renewal(!config.hosts.is_empty());
            scheduler.set_schedules(config.schedules);
        }
        Ok(Err(error)) => {
            tracing::error!("configuration reload failed, the previous schedules stay: {}", crate::error::chain(&error))
        }
        Err(error) => tracing::error!("configuration reload failed: {}", crate::error::chain(&error)),
    }
}

/// Turns SIGTERM/SIGINT into shutdown and SIGHUP into a reload request;
/// ends once shutdown is sent or nobody listens any more.
async fn forward_signals(shutdown: watch::Sender<bool>, reloads: mpsc::Sender<()>, mut signals: Signals) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = signals.int.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // A reload already pending covers this one too.
                let _ = reloads.try_send(());
            }
            () = shutdown.closed() => return,
        }
    }
    // Nobody listening means the scheduler already ended.
    let _ = shutdown.send(true);
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind, name| signal(kind).map_err(|source| DaemonError::Signal { signal: name, source });
        Ok(Signals {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, DaemonError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("envclone-daemon")
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Runtime { source })
}

/// `envclone daemon`: runs until SIGTERM/SIGINT. Errors are those of
/// starting up, and tasks that ended abnormally (all logged, the first
/// returned).
pub fn run_forever(
    config: &Config,
    catalog: Catalog,
    runner: Arc<dyn ScheduledRunner>,
    reload: Reload,
    grace: Duration,
) -> crate::Result<DaemonStats> {
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let signals = Signals::install()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let mut scheduler = Scheduler::new(config.schedules.clone(), catalog, runner, system_clock())
            .with_lease_renewal(!config.hosts.is_empty());
        tracing::info!(
            "envclone daemon started with {} schedules (pid {})",
            config.schedules.len(),
            std::process::id()
        );
        let signal_task = tokio::spawn(forward_signals(shutdown_tx, reload_tx, signals));
        let scheduler_task = tokio::spawn(async move {
            run_loop(&mut scheduler, shutdown_rx, reload_rx, Some(reload), grace).await;
            scheduler.stats().clone()
        });
        // Join every task and collect what went wrong in any of them.
        let scheduler = scheduler_task.await;
        let signals = signal_task.await;
        let mut errors = Vec::new();
        if let Err(source) = signals {
            errors.push(DaemonError::Task { task: "signal", source });
        }
        let stats = match scheduler {
            Ok(stats) => stats,
            Err(source) => {
                errors.push(DaemonError::Task { task: "scheduler", source });
                DaemonStats::default()
            }
        };
        for error in &errors {
            tracing::error!("{}", crate::error::chain(error));
        }
        match errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(stats),
        }
    });
    // Runs left after the shutdown grace keep their blocking threads; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let stats = result?;
    tracing::info!("envclone daemon stopped: {stats:?}");
    Ok(stats)
}

/// `envclone daemon --once`: one tick at `now`, then waits for every run it
/// started.
pub fn run_once(
    config: &Config,
    catalog: Catalog,
    runner: Arc<dyn ScheduledRunner>,
    now: Option<DateTime<Utc>>,
) -> crate::Result<OnceReport> {
    let runtime = runtime()?;
    let report = runtime.block_on(async {
        let mut scheduler = Scheduler::new(config.schedules.clone(), catalog, runner, system_clock())
            .keep_reports()
            .with_lease_renewal(!config.hosts.is_empty());
        scheduler.reap_interrupted().await;
        let tick = scheduler.tick(now.unwrap_or_else(Utc::now)).await;
        drain(&mut scheduler, None).await;
        // The snapshots just taken: their standbys follow (autorestore).
        scheduler.autorestore(Utc::now()).await;
        drain(&mut scheduler, None).await;
        scheduler.finish_guard().await;
        scheduler.finish_lease_renewal().await;
        let standby_syncs = scheduler.take_finished_syncs();
        let mut runs = scheduler.take_finished();
        runs.sort_by(|a, b| a.schedule.cmp(&b.schedule));
        OnceReport {
            at: tick.at,
            runs,
            not_due: tick.not_due,
            missed: tick.missed,
            next: tick.next,
            errors: tick.errors,
            standby_syncs,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(report)
}

/// `envclone schedule run NAME`: one run of the named schedule now, with
/// the daemon's bookkeeping (no due check, no missed counting: the timer
/// or cron line decides when).
pub fn run_one(
    schedules: &BTreeMap<String, Schedule>,
    name: &str,
    catalog: Catalog,
    runner: &dyn ScheduledRunner,
    now: Now,
) -> crate::Result<Executed> {
    let schedule = schedules.get(name).ok_or_else(|| DaemonError::UnknownSchedule {
        name: name.to_owned(),
        known: schedules.keys().cloned().collect(),
    })?;
    crate::schedule::Trigger::of(schedule)
        .map_err(|source| DaemonError::Trigger { schedule: name.to_owned(), source })?;
    let request = RunRequest {
        schedule: name.to_owned(),
        env: schedule.environment.clone(),
        retention: schedule.retention,
        origin: RunOrigin::Command,
        started_at: now.now(),
        missed: 0,
    };
    let catalog = Mutex::new(catalog);
    match execute::begin(&catalog, &request, &Owner::current())? {
        execute::Began::Skipped(executed) => Ok(*executed),
        execute::Began::Started(id) => execute::carry_out(&catalog, runner, id, &request, &now),
    }
}

#[cfg(test)]
mod tests;
