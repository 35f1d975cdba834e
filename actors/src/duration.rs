//! Quantities written as text in configuration: durations ("250ms", "30s", "5m", "1h", bare seconds) and the number/unit split they share with byte sizes.

use std::time::Duration;

/// The longest duration a setting may say: 365 days. Anything longer is a mistake (a timeout of
/// 1e300 s is not a `Duration` at all, and an `Instant` plus a century overflows); settings that
/// mean "for ever" say so in their own way (a model's `keep_alive = "-1"`).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Splits a quantity such as "1.5s" or "64MiB" into its number and its (trimmed) unit.
pub fn split_quantity(text: &str) -> Option<(f64, &str)> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// A number of seconds as a duration: finite, not negative, at most [`MAX_DURATION`].
pub fn duration_from_secs(seconds: f64) -> Result<Duration, String> {
    if seconds.is_nan() {
        return Err("a duration must be a number of seconds, not NaN".into());
    }
    if seconds < 0.0 {
        return Err(format!("a duration cannot be negative (got {seconds} s)"));
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "duration of {seconds} s is out of range: at most {} s (365 days)",
            MAX_DURATION.as_secs()
        )),
    }
}

/// Parses "250ms", "30s", "5m", "1h", "1.5s" or a bare number of seconds, up to [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration `{text}`: expected a number with a unit of ms, s, m or h, \
             e.g. \"250ms\", \"30s\", \"5m\""
        )
    };
    let (value, unit) = split_quantity(text).ok_or_else(bad)?;
    let seconds = match unit {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "m" | "min" | "mins" => value * 60.0,
        "h" | "hr" | "hours" => value * 3600.0,
        _ => return Err(bad()),
    };
    duration_from_secs(seconds).map_err(|reason| format!("invalid duration `{text}`: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        let err = parse_duration("5 parsecs").unwrap_err();
        assert!(
            err.contains("invalid duration") && err.contains("unit"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_and_odd_values_are_errors_not_panics() {
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
        for text in [
            "8761h",
            "1e300",
            "99999999999999999999999999999999999999h",
            "-1s",
            "nan",
            "inf",
            ".",
            "",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        let err = parse_duration("8761h").unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        for seconds in [f64::NAN, f64::INFINITY, -1.0, 1e300, f64::MAX] {
            assert!(duration_from_secs(seconds).is_err(), "{seconds}");
        }
        assert_eq!(
            duration_from_secs(0.25).unwrap(),
            Duration::from_millis(250)
        );
    }
}
