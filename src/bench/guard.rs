//! The regression guard of `bench`: a prewarmed attach exists to reach the first token sooner
//! than a fresh process, so every controller path timed must beat the standard path (p50 to
//! first token) in every scenario, or the bench fails. Issue 28: the CPU attach fell behind a
//! fresh process (0.9x) and nothing said so.

use super::results::Results;
use super::stats::ratio;

/// The path the controller's are compared against.
const STANDARD: &str = "standard";

/// What the controller's paths are named after (`controller`, `controller_nocache`, ...); the
/// transformers peer is not one.
const CONTROLLER: &str = "controller";

/// A controller path that was not faster than the standard path in one scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct NotFaster {
    pub scenario: String,
    pub mode: String,
    pub controller_p50_ms: f64,
    pub standard_p50_ms: f64,
}

/// Every controller path not faster than the standard path.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "the controller path is not faster than the standard path (p50 to first token): {}; \
     attaching to a prewarmed worker must beat a fresh process, so this is a regression \
     (pass --allow-slower to accept it)",
    describe(.0)
)]
pub struct SlowerThanStandard(pub Vec<NotFaster>);

fn describe(slower: &[NotFaster]) -> String {
    slower
        .iter()
        .map(|s| {
            format!(
                "{}: {} {:.2} ms, standard {:.2} ms ({})",
                s.scenario,
                s.mode,
                s.controller_p50_ms,
                s.standard_p50_ms,
                ratio(s.standard_p50_ms, s.controller_p50_ms)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks that in every scenario that timed the standard path, each controller path has a lower
/// p50 to first token. Scenarios without the standard path pass.
pub fn check(results: &Results) -> Result<(), SlowerThanStandard> {
    let mut slower = Vec::new();
    for (scenario, result) in &results.scenarios {
        let Some(standard) = result.summary.get(STANDARD).and_then(|s| s.get("total")) else {
            continue;
        };
        for (mode, summary) in result
            .summary
            .iter()
            .filter(|(m, _)| m.starts_with(CONTROLLER))
        {
            let Some(total) = summary.get("total") else {
                continue;
            };
            if total.p50_ms >= standard.p50_ms {
                slower.push(NotFaster {
                    scenario: scenario.clone(),
                    mode: mode.clone(),
                    controller_p50_ms: total.p50_ms,
                    standard_p50_ms: standard.p50_ms,
                });
            }
        }
    }
    match slower.is_empty() {
        true => Ok(()),
        false => Err(SlowerThanStandard(slower)),
    }
}
