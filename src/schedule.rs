//! When a `[schedules.*]` entry fires, for `envclone daemon`.
//!
//! Cron expressions are evaluated in **UTC**, not local time: "0 2 * * *"
//! fires at 02:00 UTC every day, and no run is skipped or doubled when
//! daylight saving time changes. `every` intervals are anchored to the last
//! run: the next run is due one interval after the previous one started.
//!
//! Missed runs (the daemon was down, or a run outlasted the next fire
//! time) are counted, never replayed: however many were missed, one run
//! catches up, and [`Due::missed`] tells the daemon how many to log and
//! count.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::{CronError, CronExpr, Schedule};

/// Counting missed cron fire times stops here (about two years of a
/// once-a-minute schedule), so a very old last run costs bounded time.
const MAX_COUNTED: u32 = 1_000_000;

/// What makes a schedule fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// At every minute the expression matches, in UTC.
    Cron(CronExpr),
    /// One interval after the previous run.
    Every(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}")]
    Cron {
        expr: String,
        #[source]
        source: CronError,
    },
    #[error("exactly one of `cron` and `every` must be set")]
    NoTrigger,
    #[error("`every` must be longer than zero")]
    ZeroInterval,
}

/// Whether a schedule should run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Start a run now.
    pub run_now: bool,
    /// Fire times that passed without a run, besides the one `run_now`
    /// catches up (counting stops at a million).
    pub missed: u32,
    /// When the schedule fires next, assuming a run starts now if `run_now`.
    pub next: DateTime<Utc>,
}

impl Trigger {
    /// The trigger of a schedule; the config's validation already refuses
    /// what this refuses.
    pub fn of(schedule: &Schedule) -> Result<Trigger, ScheduleError> {
        match (&schedule.cron, schedule.every) {
            (Some(expr), None) => CronExpr::parse(expr)
                .map(Trigger::Cron)
                .map_err(|source| ScheduleError::Cron { expr: expr.clone(), source }),
            (None, Some(every)) if every.is_zero() => Err(ScheduleError::ZeroInterval),
            (None, Some(every)) => Ok(Trigger::Every(every.get())),
            _ => Err(ScheduleError::NoTrigger),
        }
    }

    /// The first fire time strictly after `after`. For `every`, `after` is
    /// the last run, so this is one interval later.
    pub fn next_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            // A parsed expression always fires within ten years; MAX stands
            // for "never" should that ever not hold.
            Trigger::Cron(expr) => expr.next_after(after.naive_utc()).map_or(DateTime::<Utc>::MAX_UTC, |t| t.and_utc()),
            Trigger::Every(interval) => add(after, *interval),
        }
    }

    /// Whether a run is due at `now` given the start of the last run
    /// (`None`: never ran). A cron schedule that never ran waits for its
    /// next fire time; an interval schedule that never ran runs at once.
    pub fn due(&self, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
        let Some(last) = last_run else {
            return match self {
                Trigger::Cron(_) => Due { run_now: false, missed: 0, next: self.next_after(now) },
                Trigger::Every(interval) => Due { run_now: true, missed: 0, next: add(now, *interval) },
            };
        };
        let first = self.next_after(last);
        if first > now {
            return Due { run_now: false, missed: 0, next: first };
        }
        let fired = match self {
            Trigger::Cron(_) => {
                let mut fired = 0;
                let mut at = first;
                while at <= now && fired < MAX_COUNTED {
                    fired += 1;
                    at = self.next_after(at);
                }
                fired
            }
            Trigger::Every(interval) => {
                let elapsed = (now - last).to_std().unwrap_or_default();
                u32::try_from(elapsed.as_nanos() / interval.as_nanos().max(1)).unwrap_or(u32::MAX)
            }
        };
        let next = match self {
            Trigger::Cron(_) => self.next_after(now),
            Trigger::Every(interval) => add(now, *interval),
        };
        Due { run_now: true, missed: fired.saturating_sub(1), next }
    }
}

/// The next fire time of `schedule` strictly after `after` (see [`Trigger::next_after`]).
pub fn next_run(schedule: &Schedule, after: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
    Ok(Trigger::of(schedule)?.next_after(after))
}

/// Whether `schedule` should run at `now` (see [`Trigger::due`]).
pub fn due_runs(
    schedule: &Schedule,
    last_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Due, ScheduleError> {
    Ok(Trigger::of(schedule)?.due(last_run, now))
}

fn add(time: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(interval)
        .ok()
        .and_then(|delta| time.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HumanDuration, Retention};
    use chrono::TimeZone;

    fn utc(text: &str) -> DateTime<Utc> {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap().and_utc()
    }

    fn cron(expr: &str) -> Schedule {
        Schedule {
            environment: "prod".into(),
            cron: Some(expr.into()),
            every: None,
            memory: false,
            retention: Retention::default(),
        }
    }

    fn every(text: &str) -> Schedule {
        Schedule {
            environment: "prod".into(),
            cron: None,
            every: Some(text.parse().unwrap()),
            memory: false,
            retention: Retention::default(),
        }
    }

    #[test]
    fn cron_next_run_is_in_utc() {
        assert_eq!(next_run(&cron("0 2 * * *"), utc("2024-03-31 01:30:00")).unwrap(), utc("2024-03-31 02:00:00"));
        assert_eq!(next_run(&cron("0 2 * * *"), utc("2024-03-31 02:00:00")).unwrap(), utc("2024-04-01 02:00:00"));
    }

    #[test]
    fn cron_next_run_across_month_and_year_ends() {
        assert_eq!(next_run(&cron("0 0 31 * *"), utc("2024-04-01 00:00:00")).unwrap(), utc("2024-05-31 00:00:00"));
        assert_eq!(next_run(&cron("0 0 29 2 *"), utc("2024-02-29 00:00:00")).unwrap(), utc("2028-02-29 00:00:00"));
        assert_eq!(next_run(&cron("@hourly"), utc("2024-12-31 23:00:01")).unwrap(), utc("2025-01-01 00:00:00"));
    }

    #[test]
    fn every_next_run_is_one_interval_after_the_last_run() {
        assert_eq!(next_run(&every("90m"), utc("2024-05-01 23:00:00")).unwrap(), utc("2024-05-02 00:30:00"));
    }

    #[test]
    fn every_90m_runs_only_once_the_interval_passed() {
        let trigger = Trigger::of(&every("90m")).unwrap();
        let last = utc("2024-05-01 10:00:00");

        let early = trigger.due(Some(last), utc("2024-05-01 11:29:59"));
        let on_time = trigger.due(Some(last), utc("2024-05-01 11:30:00"));

        assert_eq!(early, Due { run_now: false, missed: 0, next: utc("2024-05-01 11:30:00") });
        assert_eq!(on_time, Due { run_now: true, missed: 0, next: utc("2024-05-01 13:00:00") });
    }

    #[test]
    fn every_counts_missed_runs_and_catches_up_once() {
        let due = due_runs(&every("90m"), Some(utc("2024-05-01 10:00:00")), utc("2024-05-01 16:10:00")).unwrap();

        // Due at 11:30, 13:00, 14:30 and 16:00: one run now, three missed.
        assert_eq!(due, Due { run_now: true, missed: 3, next: utc("2024-05-01 17:40:00") });
    }

    #[test]
    fn cron_counts_missed_runs_and_catches_up_once() {
        let due = due_runs(&cron("0 2 * * *"), Some(utc("2024-05-01 02:00:00")), utc("2024-05-04 09:00:00")).unwrap();

        // Fired on the 2nd, 3rd and 4th: one run now, two missed.
        assert_eq!(due, Due { run_now: true, missed: 2, next: utc("2024-05-05 02:00:00") });
    }

    #[test]
    fn cron_is_not_due_before_its_next_fire_time() {
        let due =
            due_runs(&cron("*/15 * * * *"), Some(utc("2024-05-01 10:00:00")), utc("2024-05-01 10:14:59")).unwrap();

        assert_eq!(due, Due { run_now: false, missed: 0, next: utc("2024-05-01 10:15:00") });
    }

    #[test]
    fn never_run_cron_waits_but_never_run_interval_runs_now() {
        let now = utc("2024-05-01 10:07:00");

        let cron_due = due_runs(&cron("0 * * * *"), None, now).unwrap();
        let every_due = due_runs(&every("1h"), None, now).unwrap();

        assert_eq!(cron_due, Due { run_now: false, missed: 0, next: utc("2024-05-01 11:00:00") });
        assert_eq!(every_due, Due { run_now: true, missed: 0, next: utc("2024-05-01 11:07:00") });
    }

    #[test]
    fn a_last_run_in_the_future_is_not_due() {
        let last = utc("2024-05-01 12:00:00");
        let now = utc("2024-05-01 10:00:00");

        assert!(!due_runs(&every("1h"), Some(last), now).unwrap().run_now);
        assert!(!due_runs(&cron("* * * * *"), Some(last), now).unwrap().run_now);
    }

    #[test]
    fn missed_counting_is_bounded_for_a_very_old_last_run() {
        let last = Utc.with_ymd_and_hms(1990, 1, 1, 0, 0, 0).unwrap();

        let due = due_runs(&cron("* * * * *"), Some(last), utc("2024-05-01 10:00:00")).unwrap();

        assert!(due.run_now);
        assert_eq!(due.missed, MAX_COUNTED - 1);
    }

    #[test]
    fn schedules_without_a_valid_trigger_are_refused() {
        let both = Schedule { every: Some(HumanDuration::from_secs(60)), ..cron("0 2 * * *") };
        let neither = Schedule { cron: None, ..cron("0 2 * * *") };

        assert_eq!(Trigger::of(&both), Err(ScheduleError::NoTrigger));
        assert_eq!(Trigger::of(&neither), Err(ScheduleError::NoTrigger));
        assert!(matches!(Trigger::of(&cron("0 25 * * *")), Err(ScheduleError::Cron { .. })));
        assert_eq!(Trigger::of(&every("0s")), Err(ScheduleError::ZeroInterval));
    }
}
