//! Human-readable durations in config files and API bodies: `"250ms"`, `"30s"`, `"2m"`, or milliseconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A `Duration` that reads and writes as `"1500ms"`, `"30s"`, `"2m"`, `"1h"`, `"1d"`
/// (or an integer of milliseconds) and prints in the largest exact unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_millis(ms: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(s))
    }
    pub fn as_millis(self) -> u64 {
        self.0.as_millis().min(u64::MAX as u128) as u64
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected a number with a unit such as 250ms, 30s, 2m, 1h or 1d")]
pub struct DurationError {
    pub input: String,
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError { input: s.to_string() };
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        let unit_ms = match unit.trim() {
            "" | "ms" => 1.0,
            "s" | "sec" | "secs" => 1_000.0,
            "m" | "min" | "mins" => 60_000.0,
            "h" | "hour" | "hours" => 3_600_000.0,
            "d" | "day" | "days" => 86_400_000.0,
            "us" | "µs" => 0.001,
            _ => return Err(err()),
        };
        let ms = value * unit_ms;
        if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
            return Err(err());
        }
        Ok(HumanDuration(Duration::from_micros((ms * 1000.0).round() as u64)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if !us.is_multiple_of(1000) {
            return write!(f, "{us}us");
        }
        let ms = us / 1000;
        for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or a number of milliseconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration::from_millis(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(HumanDuration::from_millis)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

/// How long a drain may last: a duration (`0` closes at once) or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deadline {
    After(HumanDuration),
    Unlimited,
}

impl Deadline {
    /// Milliseconds, `u64::MAX` for unlimited.
    pub fn as_millis(self) -> u64 {
        match self {
            Deadline::After(d) => d.as_millis(),
            Deadline::Unlimited => u64::MAX,
        }
    }

    pub fn duration(self) -> Option<Duration> {
        match self {
            Deadline::After(d) => Some(d.0),
            Deadline::Unlimited => None,
        }
    }
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deadline::After(d) => d.fmt(f),
            Deadline::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl FromStr for Deadline {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "unlimited" | "never" => Ok(Deadline::Unlimited),
            other => other.parse().map(Deadline::After),
        }
    }
}

/// A duration as the schema of a config file states it.
pub const DURATION_PATTERN: &str =
    r"^\s*([0-9]+\.?[0-9]*|\.[0-9]+)\s*(ms|s|sec|secs|m|min|mins|h|hour|hours|d|day|days|us|µs)?\s*$";

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: \"250ms\", \"30s\", \"2m\", \"1h\", \"1d\", or a number of milliseconds.",
            "anyOf": [
                { "type": "string", "pattern": DURATION_PATTERN },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

impl schemars::JsonSchema for Deadline {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Deadline".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration (\"30s\", milliseconds; 0 for at once) or \"unlimited\".",
            "anyOf": [
                { "type": "string", "enum": ["unlimited", "never"] },
                { "type": "string", "pattern": DURATION_PATTERN },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

impl serde::Serialize for Deadline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Deadline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Deadline;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", a number of milliseconds, or \"unlimited\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Deadline, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Deadline, E> {
                Ok(Deadline::After(HumanDuration::from_millis(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Deadline, E> {
                u64::try_from(v)
                    .map(|ms| Deadline::After(HumanDuration::from_millis(ms)))
                    .map_err(|_| E::custom("a deadline cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_prints_back() {
        for (s, ms, back) in [
            ("250ms", 250, "250ms"),
            ("30s", 30_000, "30s"),
            ("2m", 120_000, "2m"),
            ("1.5s", 1_500, "1500ms"),
            ("1h", 3_600_000, "1h"),
            ("1d", 86_400_000, "1d"),
            ("90", 90, "90ms"),
        ] {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.as_millis(), ms, "{s}");
            assert_eq!(d.to_string(), back);
        }
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        for s in ["", "s", "10 parsecs", "-5s", "1e999s"] {
            let e = s.parse::<HumanDuration>().unwrap_err();
            assert!(e.to_string().contains(&format!("{s:?}")));
        }
    }

    #[test]
    fn deadlines_read_durations_zero_and_unlimited() {
        let v: Vec<Deadline> = serde_json::from_str(r#"["30s", 0, "unlimited"]"#).unwrap();
        assert_eq!(
            v,
            vec![
                Deadline::After(HumanDuration::from_secs(30)),
                Deadline::After(HumanDuration::from_millis(0)),
                Deadline::Unlimited
            ]
        );
        assert_eq!(Deadline::Unlimited.as_millis(), u64::MAX);
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["30s","0ms","unlimited"]"#);
        assert!("soon".parse::<Deadline>().is_err());
    }

    #[test]
    fn deserializes_strings_and_integers() {
        let v: Vec<HumanDuration> = serde_json::from_str(r#"["2s", 1500]"#).unwrap();
        assert_eq!(v, vec![HumanDuration::from_secs(2), HumanDuration::from_millis(1500)]);
    }
}
