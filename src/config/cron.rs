//! Five-field cron expressions ("0 2 * * *") as used by `[schedules.*]`.
//!
//! The grammar is Vixie cron's: per field a comma list of `*`, `N`, `A-B`,
//! each optionally followed by `/STEP`; month and weekday names; and the
//! `@hourly`-style macros. When both day fields are restricted a time
//! matches if either matches, as in Vixie cron.
//!
//! [`CronExpr::next_after`] finds the next time an expression fires on a
//! calendar without time zones (envclone's schedules use UTC, see
//! `crate::schedule`).

use std::fmt;

use chrono::{Datelike, NaiveDateTime, Timelike};

/// A parsed cron expression: the set of allowed values per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    days_of_month_restricted: bool,
    days_of_week_restricted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {found}")]
    FieldCount { found: usize },
    #[error("unknown macro {name:?}")]
    UnknownMacro { name: String },
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("never fires: no selected month has a day {first_day}")]
    NeverFires { first_day: u32 },
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names accepted instead of numbers; index 0 names `min`.
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: FieldSpec = FieldSpec { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: FieldSpec = FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
/// 7 is accepted as a second Sunday, as in every common cron.
const DAY_OF_WEEK: FieldSpec =
    FieldSpec { name: "day-of-week", min: 0, max: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// How far [`CronExpr::next_after`] looks: a valid expression fires at
/// least once in 8 years (February 29th skips 2100), so 10 is plenty.
const SEARCH_DAYS: u32 = 366 * 10;

impl CronExpr {
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let text = text.trim();
        let expanded = match text.strip_prefix('@') {
            Some(name) => expand_macro(name)?,
            None => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
            return Err(CronError::FieldCount { found: fields.len() });
        };
        let mut days_of_week = parse_field(day_of_week, &DAY_OF_WEEK)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        let expr = Self {
            minutes: parse_field(minute, &MINUTE)?,
            hours: parse_field(hour, &HOUR)?,
            days_of_month: parse_field(day_of_month, &DAY_OF_MONTH)?,
            months: parse_field(month, &MONTH)?,
            days_of_week,
            days_of_month_restricted: !day_of_month.starts_with('*'),
            days_of_week_restricted: !day_of_week.starts_with('*'),
        };
        expr.check_fires()?;
        Ok(expr)
    }

    /// Whether the expression fires at this local time. `day_of_week` counts
    /// from Sunday = 0; `month` and `day_of_month` count from 1.
    pub fn matches(&self, minute: u32, hour: u32, day_of_month: u32, month: u32, day_of_week: u32) -> bool {
        self.day_matches(day_of_month, month, day_of_week) && has(self.minutes, minute) && has(self.hours, hour)
    }

    /// The first minute strictly after `after` at which the expression
    /// fires, or `None` if it does not within ten years (which no parsed
    /// expression does).
    pub fn next_after(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = after.with_second(0)?.with_nanosecond(0)? + chrono::Duration::minutes(1);
        let mut date = start.date();
        let mut from = (start.hour(), start.minute());
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date.day(), date.month(), date.weekday().num_days_from_sunday()) {
                if let Some((hour, minute)) = self.first_time_from(from) {
                    return date.and_hms_opt(hour, minute, 0);
                }
            }
            date = date.succ_opt()?;
            from = (0, 0);
        }
        None
    }

    fn day_matches(&self, day_of_month: u32, month: u32, day_of_week: u32) -> bool {
        let dom = has(self.days_of_month, day_of_month);
        let dow = has(self.days_of_week, day_of_week % 7);
        let day = match (self.days_of_month_restricted, self.days_of_week_restricted) {
            (true, true) => dom || dow,
            _ => dom && dow,
        };
        day && has(self.months, month)
    }

    /// The first (hour, minute) of a day at or after `from` that matches.
    fn first_time_from(&self, (from_hour, from_minute): (u32, u32)) -> Option<(u32, u32)> {
        (from_hour..24).filter(|hour| has(self.hours, *hour)).find_map(|hour| {
            let first = if hour == from_hour { from_minute } else { 0 };
            let minutes = self.minutes & (u64::MAX << first) & ((1 << 60) - 1);
            (minutes != 0).then(|| (hour, minutes.trailing_zeros()))
        })
    }

    /// "0 0 30 2 *" is valid syntax that never runs; a schedule that silently
    /// never takes a snapshot is worse than an error.
    fn check_fires(&self) -> Result<(), CronError> {
        if !self.days_of_month_restricted || self.days_of_week_restricted {
            return Ok(());
        }
        let first_day = self.days_of_month.trailing_zeros();
        let fits = (1..=12u32)
            .filter(|month| self.months & (1 << month) != 0)
            .any(|month| DAYS_IN_MONTH[month as usize - 1] >= first_day);
        if fits {
            Ok(())
        } else {
            Err(CronError::NeverFires { first_day })
        }
    }
}

fn has(set: u64, value: u32) -> bool {
    value < 64 && set & (1 << value) != 0
}

impl fmt::Display for FieldSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

fn expand_macro(name: &str) -> Result<&'static str, CronError> {
    match name.to_ascii_lowercase().as_str() {
        "hourly" => Ok("0 * * * *"),
        "daily" | "midnight" => Ok("0 0 * * *"),
        "weekly" => Ok("0 0 * * 0"),
        "monthly" => Ok("0 0 1 * *"),
        "yearly" | "annually" => Ok("0 0 1 1 *"),
        _ => Err(CronError::UnknownMacro { name: format!("@{name}") }),
    }
}

/// Returns the allowed values of one field as a bit set (bit N = value N).
fn parse_field(text: &str, spec: &FieldSpec) -> Result<u64, CronError> {
    let fail = |reason: String| CronError::Field { field: spec.name, reason };
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(step, spec).map_err(fail)?)),
            None => (item, None),
        };
        let (first, last) = match range.split_once('-') {
            _ if range == "*" => (spec.min, spec.max),
            Some((first, last)) => (parse_value(first, spec).map_err(fail)?, parse_value(last, spec).map_err(fail)?),
            // "5/15" means "from 5 to the end, every 15", as in cronie.
            None if step.is_some() => (parse_value(range, spec).map_err(fail)?, spec.max),
            None => {
                let value = parse_value(range, spec).map_err(fail)?;
                (value, value)
            }
        };
        if first > last {
            return Err(fail(format!("range {range} runs backwards")));
        }
        for value in (first..=last).step_by(step.unwrap_or(1) as usize) {
            set |= 1 << value;
        }
    }
    Ok(set)
}

fn parse_step(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(step) if (1..=spec.max.max(1)).contains(&step) => Ok(step),
        _ => Err(format!("step {text:?} must be a number from 1 to {}", spec.max.max(1))),
    }
}

fn parse_value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if text.is_empty() {
        return Err("empty value".to_owned());
    }
    let named = spec.names.iter().position(|name| name.eq_ignore_ascii_case(text));
    let value = match named {
        Some(index) => spec.min + index as u32,
        None => text.parse::<u32>().map_err(|_| format!("{text:?} is not a number{}", name_hint(spec)))?,
    };
    if (spec.min..=spec.max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is out of range {spec}"))
    }
}

fn name_hint(spec: &FieldSpec) -> String {
    match (spec.names.first(), spec.names.last()) {
        (Some(first), Some(last)) => format!(" or a name {}..{}", first.to_uppercase(), last.to_uppercase()),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> &'static str {
        match CronExpr::parse(text) {
            Err(CronError::Field { field, .. }) => field,
            other => panic!("{text}: expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_common_expressions() {
        for text in [
            "0 2 * * *",
            "*/15 * * * *",
            "0 9-17/2 * * MON-FRI",
            "30 4 1,15 * *",
            "0 0 * jan,jul sun",
            "5/10 * * * 7",
            "@daily",
            "@Hourly",
            "  0 2 * * *  ",
        ] {
            assert!(CronExpr::parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn rejects_wrong_field_count() {
        assert_eq!(CronExpr::parse("0 2 * *"), Err(CronError::FieldCount { found: 4 }));
        assert_eq!(CronExpr::parse("0 0 2 * * *"), Err(CronError::FieldCount { found: 6 }));
        assert_eq!(CronExpr::parse(""), Err(CronError::FieldCount { found: 0 }));
    }

    #[test]
    fn rejects_out_of_range_values_per_field() {
        assert_eq!(field_of("60 * * * *"), "minute");
        assert_eq!(field_of("* 24 * * *"), "hour");
        assert_eq!(field_of("* * 0 * *"), "day-of-month");
        assert_eq!(field_of("* * * 13 *"), "month");
        assert_eq!(field_of("* * * * 8"), "day-of-week");
    }

    #[test]
    fn rejects_malformed_items() {
        assert_eq!(field_of("*/0 * * * *"), "minute");
        assert_eq!(field_of("5-2 * * * *"), "minute");
        assert_eq!(field_of("1,,2 * * * *"), "minute");
        assert_eq!(field_of("* * * * funday"), "day-of-week");
        assert_eq!(field_of("* */x * * *"), "hour");
        assert_eq!(field_of("- * * * *"), "minute");
    }

    #[test]
    fn rejects_unknown_macro() {
        assert!(matches!(CronExpr::parse("@reboot"), Err(CronError::UnknownMacro { .. })));
    }

    #[test]
    fn rejects_dates_that_never_occur() {
        assert_eq!(CronExpr::parse("0 0 30 2 *"), Err(CronError::NeverFires { first_day: 30 }));
        assert!(CronExpr::parse("0 0 29 2 *").is_ok());
        assert!(CronExpr::parse("0 0 30 2 mon").is_ok());
    }

    #[test]
    fn matches_steps_and_ranges() {
        let expr = CronExpr::parse("*/15 9-17 * * mon-fri").unwrap();
        assert!(expr.matches(45, 9, 3, 6, 1));
        assert!(!expr.matches(50, 9, 3, 6, 1));
        assert!(!expr.matches(0, 18, 3, 6, 1));
        assert!(!expr.matches(0, 9, 3, 6, 0));
    }

    #[test]
    fn sunday_is_both_zero_and_seven() {
        let expr = CronExpr::parse("0 0 * * 7").unwrap();
        assert!(expr.matches(0, 0, 5, 1, 0));
        assert!(expr.matches(0, 0, 5, 1, 7));
    }

    fn time(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    fn next(expr: &str, after: &str) -> String {
        let next = CronExpr::parse(expr).unwrap().next_after(time(after)).unwrap();
        next.format("%Y-%m-%d %H:%M").to_string()
    }

    #[test]
    fn next_after_is_strictly_later_and_minute_aligned() {
        assert_eq!(next("0 2 * * *", "2024-05-01 02:00"), "2024-05-02 02:00");
        assert_eq!(next("0 2 * * *", "2024-05-01 01:59"), "2024-05-01 02:00");
        let expr = CronExpr::parse("* * * * *").unwrap();
        let after = time("2024-05-01 10:00") + chrono::Duration::seconds(30);
        assert_eq!(expr.next_after(after), Some(time("2024-05-01 10:01")));
    }

    #[test]
    fn next_after_steps_and_ranges() {
        assert_eq!(next("*/15 9-17 * * mon-fri", "2024-05-03 17:45"), "2024-05-06 09:00");
        assert_eq!(next("*/15 9-17 * * mon-fri", "2024-05-06 09:07"), "2024-05-06 09:15");
        assert_eq!(next("5/10 * * * *", "2024-05-01 10:55"), "2024-05-01 11:05");
    }

    #[test]
    fn next_after_month_ends_and_leap_days() {
        assert_eq!(next("0 0 31 * *", "2024-01-31 00:00"), "2024-03-31 00:00");
        assert_eq!(next("0 0 30 * *", "2024-01-30 00:00"), "2024-03-30 00:00");
        assert_eq!(next("0 0 29 2 *", "2025-03-01 00:00"), "2028-02-29 00:00");
        assert_eq!(next("0 0 29 2 *", "2096-03-01 00:00"), "2104-02-29 00:00");
        assert_eq!(next("59 23 * * *", "2024-12-31 23:59"), "2025-01-01 23:59");
        assert_eq!(next("@monthly", "2024-02-15 12:00"), "2024-03-01 00:00");
        assert_eq!(next("@yearly", "2024-12-31 23:59"), "2025-01-01 00:00");
    }

    #[test]
    fn next_after_restricted_day_fields_match_either() {
        // The 1st of the month or any Monday: Wed 2024-05-01, then Mon 05-06.
        assert_eq!(next("0 0 1 * mon", "2024-04-30 12:00"), "2024-05-01 00:00");
        assert_eq!(next("0 0 1 * mon", "2024-05-01 00:00"), "2024-05-06 00:00");
        assert_eq!(next("0 0 * * 7", "2024-05-01 00:00"), "2024-05-05 00:00");
    }

    proptest::proptest! {
        /// `next_after` agrees with a minute-by-minute scan using `matches`.
        #[test]
        fn next_after_is_the_first_matching_minute(
            expr in proptest::sample::select(vec![
                "* * * * *", "*/7 * * * *", "0 2 * * *", "30 4 1,15 * *", "0 9-17/2 * * mon-fri",
                "0 0 1 * mon", "15 3 * * 0", "0 0 31 * *", "45 23 28-31 2 *", "0 */6 * jan,jul *",
            ]),
            minutes in 0i64..3 * 366 * 24 * 60,
            seconds in 0i64..60,
        ) {
            let expr = CronExpr::parse(expr).unwrap();
            let after = time("2024-01-01 00:00") + chrono::Duration::minutes(minutes) + chrono::Duration::seconds(seconds);
            let found = expr.next_after(after).unwrap();
            let fires = |t: NaiveDateTime| {
                expr.matches(t.minute(), t.hour(), t.day(), t.month(), t.weekday().num_days_from_sunday())
            };
            proptest::prop_assert!(found > after);
            proptest::prop_assert_eq!(found.second(), 0);
            proptest::prop_assert!(fires(found));
            let mut t = found - chrono::Duration::minutes(1);
            while t > after && found - t < chrono::Duration::days(40) {
                proptest::prop_assert!(!fires(t), "{} fires before {}", t, found);
                t -= chrono::Duration::minutes(1);
            }
        }
    }

    #[test]
    fn restricted_day_fields_match_either() {
        let expr = CronExpr::parse("0 0 1 * mon").unwrap();
        assert!(expr.matches(0, 0, 1, 3, 4));
        assert!(expr.matches(0, 0, 9, 3, 1));
        assert!(!expr.matches(0, 0, 9, 3, 2));
    }
}
