//! Quantities written as text in configuration: durations ("250ms", "30s", "5m", "1h", bare seconds) and the number/unit split they share with byte sizes.

use std::time::Duration;

/// Splits a quantity such as "1.5s" or "64MiB" into its number and its (trimmed) unit.
pub fn split_quantity(text: &str) -> Option<(f64, &str)> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses "250ms", "30s", "5m", "1h", "1.5s" or a bare number of seconds.
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
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
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
}
