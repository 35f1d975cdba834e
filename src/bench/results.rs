//! What a bench run records: every run's anchors, per-mode phase summaries, the floor and the machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wc_actors::{Anchor, Timeline};

use super::decode::DecodeRecord;
use super::stats::Summary;

/// One engine start through one path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// `single` or `sequential`.
    pub scenario: String,
    /// `standard`, `controller` or `transformers`.
    pub mode: String,
    pub model: String,
    pub round: usize,
    pub run: usize,
    /// Every anchor's instant, in monotonic nanoseconds.
    pub timeline: Timeline,
    /// Phase name -> milliseconds (a skipped step is 0).
    pub phases_ms: BTreeMap<String, f64>,
    pub total_ms: f64,
    /// Weight bytes moved for this start.
    pub bytes: u64,
    /// Tokens streamed after the attach, timed (controller paths with `--decode-tokens`).
    #[serde(default)]
    pub decode: Option<DecodeRecord>,
    /// Memory around a controller start (absent for fresh processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<RunMemory>,
}

/// The worker's device memory and this process's resident host memory around one attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMemory {
    /// Free device bytes when the worker was prewarmed, before any attach.
    pub baseline_free_bytes: u64,
    /// Free device bytes after the detach.
    pub after_detach_free_bytes: u64,
    /// This process's resident set after the detach (the worker's, in thread mode).
    pub rss_bytes: u64,
}

impl RunRecord {
    pub fn new(
        scenario: &str,
        mode: &str,
        model: &str,
        round: usize,
        run: usize,
        timeline: Timeline,
        bytes: u64,
    ) -> Self {
        let phases_ms = timeline
            .phases()
            .into_iter()
            .map(|p| (p.anchor.name().to_string(), p.ms))
            .collect();
        Self {
            scenario: scenario.into(),
            mode: mode.into(),
            model: model.into(),
            round,
            run,
            total_ms: timeline.total_ms(),
            timeline,
            phases_ms,
            bytes,
            decode: None,
            memory: None,
        }
    }
}

/// The physical limit: weight bytes over the measured host-to-device bandwidth.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Floor {
    /// `pinned host-to-device copy` on a GPU, `memcpy` on the CPU.
    pub method: String,
    pub bandwidth_gb_per_s: f64,
    /// Model -> weight bytes.
    pub bytes: BTreeMap<String, u64>,
    /// Model -> bytes / bandwidth, in milliseconds.
    pub floor_ms: BTreeMap<String, f64>,
}

/// Whether a `git describe --always --dirty` names a committed tree.
pub fn is_clean(commit: &str) -> bool {
    !commit.is_empty() && commit != "unknown" && !commit.ends_with("-dirty")
}

/// Where and how the bench ran.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub date: String,
    /// `git describe --always --dirty` of the build that ran (see `build.rs`).
    #[serde(default)]
    pub commit: String,
    /// Whether `commit` names a committed tree: false for a `-dirty` build (uncommitted
    /// changes) and for `unknown`. Derived from `commit` whenever results are written, never
    /// taken on trust from a file.
    #[serde(default)]
    pub clean: bool,
    pub command: String,
    pub machine: String,
    pub device: String,
    pub dtype: String,
    /// `warm`, `cold` or `n/a` (CPU) for the driver's PTX JIT cache.
    pub jit_cache: String,
    pub runs: usize,
    pub rounds: usize,
    pub models: Vec<String>,
    /// Prewarm of the controller's worker (paid once, before any model is known), in ms.
    pub controller_prewarm_ms: f64,
}

/// Phase summaries of one mode: phase name -> summary, plus `total`.
pub type ModeSummary = BTreeMap<String, Summary>;

/// Per scenario, per mode summaries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub summary: BTreeMap<String, ModeSummary>,
    /// Per mode, milliseconds per decoded token as the caller received them (modes that
    /// decoded only).
    #[serde(default)]
    pub decode: BTreeMap<String, Summary>,
}

/// Everything `results.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub floor: Floor,
    pub runs: Vec<RunRecord>,
    /// The single-engine scenario's summary: `summary[mode][phase]` and `summary[mode].total`.
    pub summary: BTreeMap<String, ModeSummary>,
    pub scenarios: BTreeMap<String, ScenarioResult>,
}

/// Phase names in anchor order (the phase ending at each anchor after `requested`).
pub fn phase_names() -> Vec<&'static str> {
    Anchor::ALL[1..].iter().map(|a| a.name()).collect()
}

/// Summaries by mode of the runs of one scenario.
pub fn summarize(runs: &[RunRecord], scenario: &str) -> BTreeMap<String, ModeSummary> {
    let mut by_mode: BTreeMap<String, Vec<&RunRecord>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.scenario == scenario) {
        by_mode.entry(run.mode.clone()).or_default().push(run);
    }
    by_mode
        .into_iter()
        .map(|(mode, runs)| {
            let mut summary: ModeSummary = phase_names()
                .into_iter()
                .map(|phase| {
                    let values: Vec<f64> = runs
                        .iter()
                        .map(|r| r.phases_ms.get(phase).copied().unwrap_or(0.0))
                        .collect();
                    (phase.to_string(), Summary::of(&values))
                })
                .collect();
            let totals: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
            summary.insert("total".into(), Summary::of(&totals));
            (mode, summary)
        })
        .collect()
}

/// Per mode, the milliseconds per decoded token of the runs of one scenario that decoded.
pub fn summarize_decode(runs: &[RunRecord], scenario: &str) -> BTreeMap<String, Summary> {
    let mut by_mode: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.scenario == scenario) {
        if let Some(decode) = run.decode {
            by_mode
                .entry(run.mode.clone())
                .or_default()
                .push(decode.ms_per_token());
        }
    }
    by_mode
        .into_iter()
        .map(|(mode, values)| (mode, Summary::of(&values)))
        .collect()
}

impl Results {
    /// Fills `summary` and `scenarios` from `runs`.
    pub fn summarize(&mut self) {
        let names: std::collections::BTreeSet<String> =
            self.runs.iter().map(|r| r.scenario.clone()).collect();
        self.scenarios = names
            .into_iter()
            .map(|name| {
                let summary = summarize(&self.runs, &name);
                let decode = summarize_decode(&self.runs, &name);
                (name, ScenarioResult { summary, decode })
            })
            .collect();
        self.summary = self
            .scenarios
            .get("single")
            .map(|s| s.summary.clone())
            .unwrap_or_default();
    }
}
