//! Human-readable durations ("30s", "5m") and sizes ("20GiB") for the config.
//!
//! Both types serialize back to a string that parses to the very same value,
//! so a `Config` written by the lab reads back unchanged.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const DURATION_EXAMPLES: &str = r#"a number with a unit, like "500ms", "30s", "5m" or "1h 30m""#;
const SIZE_EXAMPLES: &str = r#"a number with a unit, like "512MiB", "20GiB" or "1TB""#;
const RATE_EXAMPLES: &str = r#"a size per second, like "50MiB/s" or "1GB/s""#;

/// A length of time written as "30s", "5m" or "1h 30m" in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// A size in bytes written as "512MiB" or "20GiB" in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanSize(pub bytesize::ByteSize);

/// A transfer rate written as "50MiB/s" in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanRate(pub HumanSize);

/// A duration or size string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid duration {text:?}: expected {DURATION_EXAMPLES}")]
    Duration { text: String },
    #[error("invalid size {text:?}: expected {SIZE_EXAMPLES}")]
    Size { text: String },
    #[error("invalid rate {text:?}: expected {RATE_EXAMPLES}")]
    Rate { text: String },
}

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for HumanDuration {
    fn from(duration: Duration) -> Self {
        Self(duration)
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Self {
        duration.0
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text.trim()).map(Self).map_err(|_| UnitError::Duration { text: text.to_owned() })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime prints every component down to nanoseconds, so this is exact.
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl HumanSize {
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytesize::ByteSize::b(bytes))
    }

    pub const fn from_mib(mib: u64) -> Self {
        Self(bytesize::ByteSize::mib(mib))
    }

    pub const fn from_gib(gib: u64) -> Self {
        Self(bytesize::ByteSize::gib(gib))
    }

    pub const fn bytes(self) -> u64 {
        self.0.as_u64()
    }
}

impl From<u64> for HumanSize {
    fn from(bytes: u64) -> Self {
        Self::from_bytes(bytes)
    }
}

impl FromStr for HumanSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || UnitError::Size { text: text.to_owned() };
        let trimmed = text.trim();
        // bytesize reads "GiB" as zero bytes and saturates on overflow; a config
        // value that silently becomes 0 or u64::MAX is a typo, not a size.
        if !trimmed.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(error());
        }
        let size: bytesize::ByteSize = trimmed.parse().map_err(|_| error())?;
        if size.as_u64() == u64::MAX {
            return Err(error());
        }
        Ok(Self(size))
    }
}

impl fmt::Display for HumanSize {
    /// Prints the largest unit that divides the size exactly, so that parsing
    /// the output gives back the same number of bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BINARY: [(u64, &str); 6] = [
            (1 << 60, "EiB"),
            (1 << 50, "PiB"),
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        const DECIMAL: [(u64, &str); 6] = [
            (1_000_000_000_000_000_000, "EB"),
            (1_000_000_000_000_000, "PB"),
            (1_000_000_000_000, "TB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1_000, "kB"),
        ];
        let bytes = self.bytes();
        let unit = BINARY.iter().chain(DECIMAL.iter()).find(|(factor, _)| bytes != 0 && bytes % factor == 0);
        match unit {
            Some((factor, name)) => write!(f, "{}{name}", bytes / factor),
            None => write!(f, "{bytes}B"),
        }
    }
}

impl HumanRate {
    pub const fn bytes_per_second(self) -> u64 {
        self.0.bytes()
    }
}

impl FromStr for HumanRate {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || UnitError::Rate { text: text.to_owned() };
        let size = text.trim().strip_suffix("/s").ok_or_else(error)?;
        match size.parse::<HumanSize>() {
            Ok(size) if size.bytes() > 0 => Ok(Self(size)),
            _ => Err(error()),
        }
    }
}

impl fmt::Display for HumanRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

impl Serialize for HumanRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new(RATE_EXAMPLES))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for HumanSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new(DURATION_EXAMPLES))
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new(SIZE_EXAMPLES))
    }
}

/// Accepts only strings, so that `timeout = 30` is rejected with a message
/// showing the expected form instead of guessing a unit.
struct FromStrVisitor<T> {
    expecting: &'static str,
    target: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        Self { expecting, target: std::marker::PhantomData }
    }
}

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr<Err = UnitError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string: {}", self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_parses_human_units() {
        let cases = [("30s", 30), ("5m", 300), ("1h 30m", 5400), ("2days", 172_800), ("0s", 0)];
        for (text, secs) in cases {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed, HumanDuration::from_secs(secs), "{text}");
        }
    }

    #[test]
    fn duration_rejects_missing_unit_and_garbage() {
        for text in ["30", "", "fast", "5 parsecs", "-1s"] {
            let err = text.parse::<HumanDuration>().unwrap_err();
            assert!(matches!(err, UnitError::Duration { .. }), "{text}");
        }
    }

    #[test]
    fn duration_error_shows_a_valid_example() {
        let err = "soon".parse::<HumanDuration>().unwrap_err();
        assert!(err.to_string().contains("\"30s\""));
    }

    #[test]
    fn duration_display_round_trips_exactly() {
        let odd = Duration::new(3_723, 4_005_006);
        for duration in [Duration::ZERO, Duration::from_millis(1500), odd] {
            let text = HumanDuration(duration).to_string();
            assert_eq!(text.parse::<HumanDuration>().unwrap().get(), duration, "{text}");
        }
    }

    #[test]
    fn size_parses_binary_and_decimal_units() {
        let cases = [
            ("20GiB", 20 << 30),
            ("20 GiB", 20 << 30),
            ("512MiB", 512 << 20),
            ("1TB", 1_000_000_000_000),
            ("1.5KiB", 1536),
            ("4096", 4096),
            ("0B", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<HumanSize>().unwrap().bytes(), bytes, "{text}");
        }
    }

    #[test]
    fn size_rejects_unknown_units_and_overflow() {
        for text in ["20 gigs", "GiB", "", "-1GiB", "99999999999EiB"] {
            let err = text.parse::<HumanSize>().unwrap_err();
            assert!(matches!(err, UnitError::Size { .. }), "{text}");
        }
    }

    #[test]
    fn size_display_uses_largest_exact_unit() {
        assert_eq!(HumanSize::from_gib(20).to_string(), "20GiB");
        assert_eq!(HumanSize::from_bytes(1536).to_string(), "1536B");
        assert_eq!(HumanSize::from_bytes(3_000_000).to_string(), "3MB");
        assert_eq!(HumanSize::from_bytes(0).to_string(), "0B");
    }

    #[test]
    fn a_rate_is_a_size_per_second_and_round_trips() {
        let rate: HumanRate = "50MiB/s".parse().unwrap();
        assert_eq!(rate.bytes_per_second(), 50 << 20);
        assert_eq!(rate.to_string().parse::<HumanRate>().unwrap(), rate);
        for bad in ["50MiB", "0MiB/s", "/s", "fast/s"] {
            assert!(matches!(bad.parse::<HumanRate>(), Err(UnitError::Rate { .. })), "{bad}");
        }
    }

    #[test]
    fn size_display_round_trips_exactly() {
        for bytes in [0, 1, 1023, 1024, 1536, 3_000_000, 20 << 30, u64::MAX - 1] {
            let text = HumanSize::from_bytes(bytes).to_string();
            assert_eq!(text.parse::<HumanSize>().unwrap().bytes(), bytes, "{text}");
        }
    }
}
