//! Value types of the configuration file: durations ("30s", "5m"), byte sizes ("256MiB") and keep-alive ("-1" for ever).

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};
use wc_actors::duration::duration_from_secs;
pub use wc_actors::duration::MAX_DURATION;
pub use wc_actors::parse_duration;
pub use wc_actors::quantity::parse_bytes;
use wc_actors::quantity::{byte_size, duration_text};

/// How long an idle engine is kept before it may be evicted: a duration, or for ever (`-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::For(Duration::from_secs(300))
    }
}

impl KeepAlive {
    /// Whether an engine idle for `idle` may be evicted.
    pub fn expired(&self, idle: Duration) -> bool {
        match self {
            KeepAlive::For(d) => idle >= *d,
            KeepAlive::Forever => false,
        }
    }

    /// Parses "5m", "30s", "250ms", "1h", "0", a bare number of seconds (at most
    /// [`MAX_DURATION`]), or "-1" for ever; other negatives are errors.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "-1" {
            return Ok(KeepAlive::Forever);
        }
        if t.starts_with('-') {
            return Err(Self::negative(t));
        }
        parse_duration(t).map(KeepAlive::For)
    }

    /// A keep-alive given in seconds: -1 is for ever, other negatives and NaN are errors.
    pub fn from_secs(seconds: f64) -> Result<Self, String> {
        if seconds == -1.0 {
            return Ok(KeepAlive::Forever);
        }
        if seconds < 0.0 {
            return Err(Self::negative(seconds));
        }
        duration_from_secs(seconds)
            .map(KeepAlive::For)
            .map_err(|reason| format!("invalid keep_alive: {reason}"))
    }

    fn negative(value: impl fmt::Display) -> String {
        format!("invalid keep_alive `{value}`: use -1 to keep the engine for ever, or a duration")
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::For(d) => write!(f, "{}", format_duration(*d)),
            KeepAlive::Forever => f.write_str("-1"),
        }
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parsed = match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) => KeepAlive::from_secs(n as f64),
            NumberOrText::Float(x) => KeepAlive::from_secs(x),
            NumberOrText::Text(s) => KeepAlive::parse(&s),
        };
        parsed.map_err(de::Error::custom)
    }
}

/// A duration written as "30s", "5m", "250ms", "1h" or a bare number of seconds, at most
/// [`MAX_DURATION`] (365 days): the library's rule ([`duration_text`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        duration_text::deserialize(d).map(HumanDuration)
    }
}

/// A number of bytes written as an integer or with a unit: "512KiB", "64MiB", "2GB" (the
/// library's rule, [`byte_size`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        byte_size::deserialize(d).map(ByteSize)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Int(i64),
    Float(f64),
    Text(String),
}

/// Writes a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_alive(json: &str) -> Result<KeepAlive, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn keep_alive_from_json_is_bounded_and_only_minus_one_is_forever() {
        assert_eq!(keep_alive("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(keep_alive("-1.0").unwrap(), KeepAlive::Forever);
        assert_eq!(keep_alive("\"-1\"").unwrap(), KeepAlive::Forever);
        assert_eq!(
            keep_alive("300").unwrap(),
            KeepAlive::For(Duration::from_secs(300))
        );
        assert_eq!(
            keep_alive("0.5").unwrap(),
            KeepAlive::For(Duration::from_millis(500))
        );
        for bad in [
            "1e300",
            "18446744073709551615",
            "31536001",
            "\"8761h\"",
            "-2",
            "-0.5",
            "\"-5m\"",
            "\"soon\"",
        ] {
            let err = keep_alive(bad).unwrap_err();
            assert!(
                err.contains("keep_alive") || err.contains("duration"),
                "{bad}: {err}"
            );
        }
        assert!(keep_alive("1e300").unwrap_err().contains("out of range"));
    }

    #[test]
    fn durations_in_seconds_are_bounded_and_never_negative() {
        let duration = |json: &str| serde_json::from_str::<HumanDuration>(json).map(|d| d.0);
        assert_eq!(duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("31536000").unwrap(), MAX_DURATION);
        for bad in ["31536001", "1e300", "-1", "-0.5", "\"-1s\"", "\"9000h\""] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sizes_beyond_u64_are_errors_not_saturated() {
        assert!(parse_bytes("99999999999999999999999GiB")
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
        let size = |json: &str| serde_json::from_str::<ByteSize>(json).map(|s| s.0);
        assert_eq!(size("\"64MiB\"").unwrap(), 64 << 20);
        assert!(size("-1").is_err());
    }
}
