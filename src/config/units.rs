//! Value types of the configuration file: durations ("30s", "5m"), byte sizes ("256MiB") and keep-alive ("-1" for ever).

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};
use wc_actors::duration::split_quantity;
pub use wc_actors::parse_duration;

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

    /// Parses "5m", "30s", "250ms", "1h", "0", a bare number of seconds, or a negative for ever.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        match t.strip_prefix('-') {
            Some(rest) => parse_duration(rest).map(|_| KeepAlive::Forever),
            None => parse_duration(t).map(KeepAlive::For),
        }
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
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) if n < 0 => Ok(KeepAlive::Forever),
            NumberOrText::Int(n) => Ok(KeepAlive::For(Duration::from_secs(n as u64))),
            NumberOrText::Float(x) if x < 0.0 => Ok(KeepAlive::Forever),
            NumberOrText::Float(x) => Ok(KeepAlive::For(Duration::from_secs_f64(x))),
            NumberOrText::Text(s) => KeepAlive::parse(&s).map_err(de::Error::custom),
        }
    }
}

/// A duration written as "30s", "5m", "250ms", "1h" or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let negative = || de::Error::custom("a duration cannot be negative");
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) if n < 0 => Err(negative()),
            NumberOrText::Int(n) => Ok(HumanDuration(Duration::from_secs(n as u64))),
            NumberOrText::Float(x) if x < 0.0 || !x.is_finite() => Err(negative()),
            NumberOrText::Float(x) => Ok(HumanDuration(Duration::from_secs_f64(x))),
            NumberOrText::Text(s) => parse_duration(&s)
                .map(HumanDuration)
                .map_err(de::Error::custom),
        }
    }
}

/// A number of bytes written as an integer or with a unit: "512KiB", "64MiB", "2GB".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) if n >= 0 => Ok(ByteSize(n as u64)),
            NumberOrText::Text(s) => parse_bytes(&s).map(ByteSize).map_err(de::Error::custom),
            _ => Err(de::Error::custom(
                "expected a byte size such as 1048576, \"512KiB\", \"64MiB\" or \"2GB\"",
            )),
        }
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

/// Parses "1048576", "512KiB", "64MiB", "2GiB", "1.5GB", "10K" (K/M/G alone are binary).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid byte size `{text}`: expected e.g. \"1048576\", \"512KiB\", \"64MiB\" or \"2GB\"")
    };
    let (value, unit) = split_quantity(text).ok_or_else(bad)?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    Ok((value * scale as f64).round() as u64)
}
