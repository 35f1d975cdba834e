//! `--expect` bounds of `bench` and `loadgen`: `PATH<=VALUE` or `PATH>=VALUE`, where PATH is a
//! dotted path into the command's own `results.json` (object keys, or array indices) and VALUE
//! a number in that field's unit; a field whose name ends in `_ms` also takes `ms` or `s`
//! after the number (`0.5s` is 500). Examples:
//!
//! - `loadgen --expect 'summary.ttft_ms.p99<=0.5s' --expect 'summary.output_tokens_per_s>=900'`
//! - `bench --expect 'summary.controller.total.p50_ms<=350'`
//!
//! The files are written first; then every bound is checked and each one that fails is named,
//! and the command exits non-zero. A path that names nothing (or not a number) fails too, so
//! that a typo cannot pass.

use serde_json::Value;

/// One parsed bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Expect {
    pub path: String,
    /// `true` for `<=`, `false` for `>=`.
    pub at_most: bool,
    /// In the field's unit (ms for `_ms` fields).
    pub bound: f64,
    text: String,
}

impl std::str::FromStr for Expect {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (path, at_most, value) = if let Some((p, v)) = text.split_once("<=") {
            (p, true, v)
        } else if let Some((p, v)) = text.split_once(">=") {
            (p, false, v)
        } else {
            return Err(format!(
                "`{text}`: expected PATH<=VALUE or PATH>=VALUE, e.g. summary.ttft_ms.p99<=0.5s"
            ));
        };
        let (path, value) = (path.trim(), value.trim());
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!("`{text}`: an empty path or path segment"));
        }
        let ms_field = path.ends_with("_ms") || path.split('.').any(|s| s.ends_with("_ms"));
        let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = value.strip_suffix('s') {
            (n, 1e3)
        } else {
            (value, 1.0)
        };
        if number.len() != value.len() && !ms_field {
            return Err(format!(
                "`{text}`: a unit (ms, s) only on a field in milliseconds (a path with `_ms`)"
            ));
        }
        let bound: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: `{value}` is not a number (with ms or s)"))?;
        Ok(Expect {
            path: path.to_owned(),
            at_most,
            bound: bound * scale,
            text: text.to_owned(),
        })
    }
}

impl Expect {
    /// The measured value, or why there is none.
    pub fn measured(&self, results: &Value) -> Result<f64, String> {
        let mut at = results;
        for key in self.path.split('.') {
            at = match at {
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                Value::Object(map) => map.get(key),
                _ => None,
            }
            .ok_or_else(|| format!("{}: results.json has no `{}`", self.text, self.path))?;
        }
        at.as_f64()
            .ok_or_else(|| format!("{}: `{}` is {at}, not a number", self.text, self.path))
    }

    /// `Ok` when the bound holds; otherwise what was measured against it.
    pub fn check(&self, results: &Value) -> Result<f64, String> {
        let value = self.measured(results)?;
        let holds = if self.at_most {
            value <= self.bound
        } else {
            value >= self.bound
        };
        if holds {
            Ok(value)
        } else {
            Err(format!("{}: measured {value}", self.text))
        }
    }
}

/// Checks every bound against `results` (serialised as its `results.json`); prints each that
/// held, fails naming each that did not.
pub fn check_all<T: serde::Serialize>(results: &T, expects: &[Expect]) -> anyhow::Result<()> {
    if expects.is_empty() {
        return Ok(());
    }
    let value = serde_json::to_value(results)?;
    let mut failed = Vec::new();
    for expect in expects {
        match expect.check(&value) {
            Ok(measured) => eprintln!("expect {}: ok (measured {measured})", expect.text),
            Err(why) => failed.push(why),
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} --expect bound(s) failed: {}",
        failed.len(),
        expects.len(),
        failed.join("; ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_bounds_with_units() {
        let e: Expect = "summary.ttft_ms.p99<=0.5s".parse().unwrap();
        assert_eq!((e.at_most, e.bound), (true, 500.0));
        let e: Expect = "summary.output_tokens_per_s >= 900".parse().unwrap();
        assert_eq!((e.at_most, e.bound), (false, 900.0));
        assert!("summary.output_tokens_per_s>=9s".parse::<Expect>().is_err());
        assert!("summary.ttft_ms.p99<500".parse::<Expect>().is_err());
        assert!("summary..p99<=1".parse::<Expect>().is_err());
    }

    #[test]
    fn checks_against_the_results() {
        let r = json!({"summary": {"ttft_ms": {"p99": 420.0}}, "runs": [{"x": 3}]});
        let ok: Expect = "summary.ttft_ms.p99<=0.5s".parse().unwrap();
        assert_eq!(ok.check(&r), Ok(420.0));
        let bad: Expect = "summary.ttft_ms.p99<=400ms".parse().unwrap();
        assert!(bad.check(&r).unwrap_err().contains("measured 420"));
        let index: Expect = "runs.0.x>=3".parse().unwrap();
        assert_eq!(index.check(&r), Ok(3.0));
        let typo: Expect = "summary.tfft_ms.p99<=1".parse().unwrap();
        assert!(typo.check(&r).unwrap_err().contains("has no"));
        assert!(check_all(&r, std::slice::from_ref(&ok)).is_ok());
        assert!(check_all(&r, &[ok, bad]).is_err());
    }
}
