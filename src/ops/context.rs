//! What every operation gets: the config, the host it works on (its
//! hypervisor, storage and tools: [`crate::host`]), the catalog, a progress
//! callback and a clock. Commands build one in `run` and pass it down;
//! tests build one around a `FakeHost`, a catalog in a temporary directory,
//! a recording progress callback and a fixed clock.
//!
//! `Catalog` is not `Sync` (one SQLite connection per thread), so neither
//! is an `OpContext`: operations call the catalog from the thread that owns
//! the context and hand worker threads only the `Sync` parts (`host`,
//! `progress`, `clock`).

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::host::{Host, HostError, Hosts};

/// Where operations read the time of day (names, `created_at`); durations
/// are measured with `Instant`, never with this.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that always says the same time: names and ages in tests.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// What an operation reports while it runs: each step's begin and end, and
/// notes worth a line (a fallback taken, a VM left out). Tests wait on and
/// assert these instead of sleeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Begin {
        step: String,
    },
    End {
        step: String,
        took: Duration,
        ok: bool,
    },
    Note {
        text: String,
    },
    /// How far a long step is, in thousandths (a full disk copy).
    Progress {
        step: String,
        permille: u16,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Begin { step } => write!(f, "{step}"),
            Event::End { step, took, ok: true } => write!(f, "{step}: done in {} ms", took.as_millis()),
            Event::End { step, took, ok: false } => write!(f, "{step}: FAILED after {} ms", took.as_millis()),
            Event::Note { text } => f.write_str(text),
            Event::Progress { step, permille } => write!(f, "{step}: {}.{}%", permille / 10, permille % 10),
        }
    }
}

/// The progress callback: called from the operation's threads.
pub type Progress<'a> = &'a (dyn Fn(&Event) + Sync);

/// See the [module documentation](self).
pub struct OpContext<'a> {
    pub config: &'a Config,
    /// The host the operation's environment lives on.
    pub host: &'a dyn Host,
    /// Every host, by name: where a standby or clone on another host is.
    pub hosts: &'a dyn Hosts,
    pub catalog: &'a Catalog,
    pub progress: Progress<'a>,
    pub clock: &'a dyn Clock,
    /// Set by SIGTERM/SIGINT: the operation stops before its next step
    /// (see [`crate::ops::interrupt`]).
    pub interrupt: &'a crate::ops::interrupt::Interrupt,
}

impl fmt::Debug for OpContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpContext")
            .field("host", &self.host.name())
            .field("catalog", &self.catalog.path())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl<'a> OpContext<'a> {
    /// The host named `name` (`None`: the environment's own).
    pub fn host_named(&self, name: Option<&str>) -> Result<&'a dyn Host, HostError> {
        match name {
            None => Ok(self.host),
            Some(name) if name == self.host.name() => Ok(self.host),
            Some(name) => self.hosts.get(name),
        }
    }

    pub fn note(&self, text: impl Into<String>) {
        (self.progress)(&Event::Note { text: text.into() });
    }

    /// A shipment's progress (bytes done, of total) as `step`'s progress.
    pub fn progress_of(&self, step: &str) -> impl Fn(u64, u64) + Sync + 'a {
        let (progress, step) = (self.progress, step.to_owned());
        move |done, total| {
            let permille = done.saturating_mul(1000).checked_div(total).map_or(1000, |p| p.min(1000));
            progress(&Event::Progress { step: step.clone(), permille: u16::try_from(permille).unwrap_or(1000) });
        }
    }

    /// Reports `step` begun; the returned timer reports its end.
    pub fn begin(&self, step: impl Into<String>) -> StepTimer<'a> {
        StepTimer::start(self.progress, step)
    }
}

/// Reports a step's end (with its duration) to the progress callback.
#[must_use = "report the step's end with `done` or `failed`"]
pub struct StepTimer<'a> {
    progress: Progress<'a>,
    step: String,
    started: Instant,
}

impl fmt::Debug for StepTimer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepTimer").field("step", &self.step).finish_non_exhaustive()
    }
}

impl<'a> StepTimer<'a> {
    pub fn start(progress: Progress<'a>, step: impl Into<String>) -> Self {
        let step = step.into();
        progress(&Event::Begin { step: step.clone() });
        StepTimer { progress, step, started: Instant::now() }
    }

    pub fn done(self) -> Duration {
        self.end(true)
    }

    pub fn failed(self) -> Duration {
        self.end(false)
    }

    /// Ends the step as `result` says and hands the result back.
    pub fn finish<T, E>(self, result: Result<T, E>) -> Result<T, E> {
        self.end(result.is_ok());
        result
    }

    /// Ends the step, done or failed as `ok` says.
    pub fn end(self, ok: bool) -> Duration {
        let took = self.started.elapsed();
        (self.progress)(&Event::End { step: self.step, took, ok });
        took
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn step_timer_reports_begin_and_end() {
        let events = Mutex::new(Vec::new());
        let progress = |event: &Event| events.lock().unwrap().push(event.clone());

        let timer = StepTimer::start(&progress, "freeze web");
        let result: Result<(), &str> = timer.finish(Err("no"));

        assert!(result.is_err());
        let events = events.into_inner().unwrap();
        assert_eq!(events[0], Event::Begin { step: "freeze web".into() });
        assert!(matches!(&events[1], Event::End { step, ok: false, .. } if step == "freeze web"));
        assert!(events[1].to_string().starts_with("freeze web: FAILED after"));
    }
}
