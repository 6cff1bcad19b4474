//! `set-clock`: a clone restored from a memory image resumes at the
//! snapshot's time; the controller sets its clock with clock_settime(2) on
//! CLOCK_REALTIME. The hardware clock is left alone: the hypervisor gives a
//! restored guest the host's time for it at its next boot.

use clap::Args;
use envclone_agent::SetClockReport;
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, clock_settime, ClockId};

use super::IdentityError;

/// 2000-01-01T00:00:00Z: anything earlier is a broken controller clock.
const EARLIEST: i64 = 946_684_800;
/// 2100-01-01T00:00:00Z, excluded.
const LATEST: i64 = 4_102_444_800;

#[derive(Debug, Args)]
pub struct SetClockArgs {
    /// Seconds since the Unix epoch, e.g. 1767225600. Exactly one of this and
    /// --now-from-controller.
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    pub epoch_seconds: Option<String>,
    /// The controller's clock in RFC 3339, e.g. 2026-01-01T12:00:00.250Z or
    /// 2026-01-01T13:00:00+01:00.
    #[arg(long, value_name = "RFC3339")]
    pub now_from_controller: Option<String>,
}

/// A point in time as seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Instant {
    seconds: i64,
    nanos: u32,
}

impl Instant {
    fn millis(self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos / 1_000_000)
    }
}

fn requested(args: &SetClockArgs) -> Result<Instant, IdentityError> {
    let (option, value, parsed) = match (&args.epoch_seconds, &args.now_from_controller) {
        (Some(seconds), None) => ("--epoch-seconds", seconds, parse_epoch_seconds(seconds)),
        (None, Some(text)) => ("--now-from-controller", text, parse_rfc3339(text)),
        (Some(seconds), Some(_)) => {
            return Err(IdentityError::bad(
                "--epoch-seconds",
                seconds,
                "give --epoch-seconds or --now-from-controller, not both",
            ))
        }
        (None, None) => {
            return Err(IdentityError::bad("--epoch-seconds", "", "give --epoch-seconds or --now-from-controller"))
        }
    };
    let instant = parsed.map_err(|reason| IdentityError::bad(option, value, reason))?;
    if !(EARLIEST..LATEST).contains(&instant.seconds) {
        return Err(IdentityError::bad(option, value, "refused: not between 2000-01-01 and 2100-01-01 (UTC)"));
    }
    Ok(instant)
}

pub fn set_clock(args: &SetClockArgs) -> Result<SetClockReport, IdentityError> {
    let new = requested(args)?;
    let previous = clock_gettime(ClockId::CLOCK_REALTIME).map_err(|source| IdentityError::ReadClock { source })?;
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::new(new.seconds, i64::from(new.nanos)))
        .map_err(|source| IdentityError::SetClock { source })?;
    let previous = Instant { seconds: previous.tv_sec(), nanos: previous.tv_nsec() as u32 };
    Ok(SetClockReport {
        previous_unix_ms: previous.millis(),
        new_unix_ms: new.millis(),
        step_ms: new.millis() - previous.millis(),
    })
}

fn parse_epoch_seconds(text: &str) -> Result<Instant, String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number of seconds since 1970-01-01T00:00:00Z".into());
    }
    let seconds = text.parse::<i64>().map_err(|e| e.to_string())?;
    Ok(Instant { seconds, nanos: 0 })
}

/// RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`;
/// `t`, `z` and a space for `T` are accepted as the RFC allows. Fractions
/// beyond nanoseconds are truncated; a leap second (`:60`) counts as the
/// first second of the next minute, as CLOCK_REALTIME does.
fn parse_rfc3339(text: &str) -> Result<Instant, String> {
    let bad = || "expected RFC 3339, e.g. 2026-01-01T12:00:00Z or 2026-01-01T13:00:00.5+01:00".to_string();
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = b.get(range).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators_ok = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !separators_ok {
        return Err(bad());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(format!("{year:04}-{month:02}-{day:02} is not a date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!("{hour:02}:{minute:02}:{second:02} is not a time of day"));
    }
    let mut at = 19;
    let mut nanos: u32 = 0;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        for (i, d) in b[at + 1..at + 1 + digits].iter().enumerate().take(9) {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        at += 1 + digits;
    }
    let offset = match &b[at..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(at + 1..at + 3)?, number(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return Err(format!("{} is not a UTC offset", &text[at..]));
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return Err(bad()),
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Ok(Instant { seconds, nanos })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64, nanos: u32) -> Result<Instant, String> {
        Ok(Instant { seconds, nanos })
    }

    #[test]
    fn rfc3339_by_table() {
        let table = [
            ("1970-01-01T00:00:00Z", at(0, 0)),
            ("2000-01-01T00:00:00Z", at(946_684_800, 0)),
            ("2026-01-01T00:00:00Z", at(1_767_225_600, 0)),
            ("2026-01-01t00:00:00z", at(1_767_225_600, 0)),
            ("2026-01-01 00:00:00Z", at(1_767_225_600, 0)),
            ("2026-01-01T01:00:00+01:00", at(1_767_225_600, 0)),
            ("2025-12-31T19:30:00-04:30", at(1_767_225_600, 0)),
            ("2026-01-01T00:00:00.25Z", at(1_767_225_600, 250_000_000)),
            ("2026-01-01T00:00:00.123456789123Z", at(1_767_225_600, 123_456_789)),
            ("2024-02-29T12:00:00Z", at(1_709_208_000, 0)),
            ("2016-12-31T23:59:60Z", at(1_483_228_800, 0)),
            ("2099-12-31T23:59:59Z", at(4_102_444_799, 0)),
        ];
        for (text, want) in table {
            assert_eq!(parse_rfc3339(text), want, "{text}");
        }
    }

    #[test]
    fn rfc3339_refusals() {
        for text in [
            "",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:61Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+0100",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00Z ",
            "2026/01/01T00:00:00Z",
            "+026-01-01T00:00:00Z",
            "2026-01-01T00:00:00UTC",
            "２026-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text:?} was accepted");
        }
    }

    /// A cheap stand-in for fuzzing: every prefix and every one-byte
    /// mutation of valid stamps parses or is refused, never panics.
    #[test]
    fn rfc3339_never_panics_on_mutations() {
        let seeds = ["2026-01-01T00:00:00.123+01:00", "2099-12-31T23:59:59Z"];
        let replacements = [b'0', b'9', b'-', b':', b'.', b'Z', b'+', b'T', b' ', 0xff];
        for seed in seeds {
            for end in 0..=seed.len() {
                let _ = parse_rfc3339(&seed[..end]);
            }
            for i in 0..seed.len() {
                for r in replacements {
                    let mut bytes = seed.as_bytes().to_vec();
                    bytes[i] = r;
                    let _ = parse_rfc3339(&String::from_utf8_lossy(&bytes));
                }
            }
        }
    }

    fn args(epoch: Option<&str>, rfc3339: Option<&str>) -> SetClockArgs {
        SetClockArgs { epoch_seconds: epoch.map(Into::into), now_from_controller: rfc3339.map(Into::into) }
    }

    #[test]
    fn requested_time_comes_from_exactly_one_option() {
        assert_eq!(requested(&args(Some("1767225600"), None)).unwrap(), Instant { seconds: 1_767_225_600, nanos: 0 });
        assert_eq!(
            requested(&args(None, Some("2026-01-01T00:00:00.5Z"))).unwrap(),
            Instant { seconds: 1_767_225_600, nanos: 500_000_000 }
        );
        for bad in [args(None, None), args(Some("1767225600"), Some("2026-01-01T00:00:00Z"))] {
            assert!(matches!(requested(&bad), Err(IdentityError::BadArgument { .. })), "{bad:?}");
        }
    }

    #[test]
    fn absurd_times_are_refused() {
        for epoch in ["0", "946684799", "4102444800", "-5", "99999999999999999999", "1e9", "", "12 34", "+1767225600"] {
            let err = requested(&args(Some(epoch), None)).unwrap_err();
            assert!(matches!(err, IdentityError::BadArgument { option: "--epoch-seconds", .. }), "{epoch}: {err:?}");
        }
        assert!(requested(&args(Some("946684800"), None)).is_ok());
        assert!(requested(&args(Some("4102444799"), None)).is_ok());
        for text in ["1999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2100-01-01T00:30:00+01:00x"] {
            assert!(requested(&args(None, Some(text))).is_err(), "{text}");
        }
        assert!(requested(&args(None, Some("2100-01-01T00:30:00+01:00"))).is_ok());
    }

    #[test]
    fn days_from_civil_agrees_with_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    /// Inverse of `days_from_civil` (Howard Hinnant's `civil_from_days`).
    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        (year_of_era + era * 400 + i64::from(month <= 2), month, day)
    }

    proptest! {
        #[test]
        fn rfc3339_reads_back_any_instant_in_any_offset(
            seconds in EARLIEST..LATEST,
            millis in 0u32..1000,
            offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59i64),
        ) {
            let local = seconds + offset_minutes * 60;
            let (year, month, day) = civil_from_days(local.div_euclid(86_400));
            let time = local.rem_euclid(86_400);
            let sign = if offset_minutes < 0 { '-' } else { '+' };
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}{sign}{:02}:{:02}",
                time / 3600,
                time / 60 % 60,
                time % 60,
                offset_minutes.abs() / 60,
                offset_minutes.abs() % 60,
            );
            prop_assert_eq!(parse_rfc3339(&text), Ok(Instant { seconds, nanos: millis * 1_000_000 }), "{}", text);
        }

        #[test]
        fn rfc3339_never_panics(text in "\\PC{0,40}") {
            let _ = parse_rfc3339(&text);
            let _ = parse_epoch_seconds(&text);
        }
    }
}
