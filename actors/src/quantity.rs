//! Quantities in configuration as serde reads them: durations (a bare number is seconds) and byte sizes ("64MiB"), one rule for every config type.
//!
//! Human-readable formats (TOML, JSON) take a number or text; binary ones (the worker processes'
//! bincode frames) carry plain numbers. Use with `#[serde(with = "crate::quantity::...")]`.

use crate::duration::split_quantity;

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
    let bytes = (value * scale as f64).round();
    // 2^64 as f64: the first value a u64 cannot hold.
    if bytes >= 18_446_744_073_709_551_616.0 {
        return Err(format!("byte size `{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// A duration: seconds (`1.5`) or text with a unit (`"250ms"`, `"30s"`, `"5m"`, `"1h"`), at
/// most [`crate::duration::MAX_DURATION`]; written back as text in milliseconds.
pub mod duration_text {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    use crate::duration::{duration_from_secs, parse_duration};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        } else {
            s.serialize_u64(d.as_nanos().min(u64::MAX as u128) as u64)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        if !d.is_human_readable() {
            return u64::deserialize(d).map(Duration::from_nanos);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => duration_from_secs(s).map_err(de::Error::custom),
            Raw::Text(text) => parse_duration(&text).map_err(de::Error::custom),
        }
    }
}

/// A number of bytes: an integer, or text with a unit (`"512KiB"`, `"64MiB"`, `"2GB"`).
pub mod byte_size {
    use serde::{de, Deserialize, Deserializer, Serializer};

    use super::parse_bytes;

    fn not_a_size<E: de::Error>(got: impl std::fmt::Display) -> E {
        E::custom(format!(
            "expected a byte size such as 1048576, \"512KiB\", \"64MiB\" or \"2GB\" (got {got})"
        ))
    }

    pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        if !d.is_human_readable() {
            return u64::deserialize(d);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 0 => Ok(n.unsigned_abs()),
            Raw::Text(text) => parse_bytes(&text).map_err(de::Error::custom),
            Raw::Int(n) => Err(not_a_size(n)),
            Raw::Float(x) => Err(not_a_size(x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "duration_text")]
        wait: Duration,
        #[serde(with = "byte_size")]
        size: u64,
    }

    #[test]
    fn text_formats_take_numbers_or_units_and_binary_frames_plain_numbers() {
        let json: Both = serde_json::from_str(r#"{"wait": 1.5, "size": "64MiB"}"#).unwrap();
        assert_eq!(
            json,
            Both {
                wait: Duration::from_millis(1500),
                size: 64 << 20
            }
        );
        let json: Both = serde_json::from_str(r#"{"wait": "250ms", "size": 4096}"#).unwrap();
        assert_eq!(json.wait, Duration::from_millis(250));
        assert_eq!(json.size, 4096);
        let back: Both = serde_json::from_value(serde_json::to_value(&json).unwrap()).unwrap();
        assert_eq!(back, json);
        let config = bincode::config::standard();
        let frame = bincode::serde::encode_to_vec(&json, config).unwrap();
        let (decoded, _): (Both, usize) =
            bincode::serde::decode_from_slice(&frame, config).unwrap();
        assert_eq!(decoded, json);
    }

    #[test]
    fn bad_sizes_and_durations_say_what_is_expected() {
        for bad in [r#"{"wait": 1, "size": -1}"#, r#"{"wait": 1, "size": 1.5}"#] {
            let err = serde_json::from_str::<Both>(bad).unwrap_err().to_string();
            assert!(err.contains("expected a byte size"), "{bad}: {err}");
        }
        let err = serde_json::from_str::<Both>(r#"{"wait": "soon", "size": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid duration `soon`"), "{err}");
        let err = serde_json::from_str::<Both>(r#"{"wait": 1e300, "size": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        assert!(parse_bytes("99999999999999999999999GiB")
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
    }
}
