//! `report.md`: one table per scenario, phases by mode with p50/p95, the ratio and the floor.

use std::fmt::Write;

use wc_actors::Anchor;

use super::results::{phase_names, Results, ScenarioResult};

/// Modes in the order the tables show them.
pub const MODES: [&str; 5] = [
    "standard",
    "controller",
    "controller_nocache",
    "controller_process",
    "transformers",
];

fn scenario_title(name: &str) -> &str {
    match name {
        "single" => "Single engine cold start",
        "sequential" => "Sequential multi-model loading",
        other => other,
    }
}

/// The Markdown report of a bench run.
pub fn markdown(results: &Results) -> String {
    let meta = &results.meta;
    let mut md = String::new();
    let _ = writeln!(md, "# Cold start: standard path vs worker controller\n");
    let _ = writeln!(md, "- date: {}", meta.date);
    let _ = writeln!(
        md,
        "- commit: {}{}",
        meta.commit,
        if super::results::is_clean(&meta.commit) {
            ""
        } else {
            " (NOT A CLEAN BUILD: uncommitted changes or no git; figures not reproducible from the commit)"
        }
    );
    let _ = writeln!(md, "- machine: {}", meta.machine);
    let _ = writeln!(md, "- device: {} ({})", meta.device, meta.dtype);
    let _ = writeln!(md, "- CUDA JIT cache: {}", meta.jit_cache);
    let _ = writeln!(md, "- models: {}", meta.models.join(", "));
    let _ = writeln!(
        md,
        "- runs: {} single, {} sequential rounds",
        meta.runs, meta.rounds
    );
    let _ = writeln!(
        md,
        "- controller worker prewarm (once, before any model is known): {:.1} ms",
        meta.controller_prewarm_ms
    );
    let _ = writeln!(md, "- command: `{}`\n", meta.command);
    let _ = writeln!(
        md,
        "Every phase is the gap between two anchors taken after a device sync \
         (`requested` → `process_started` → `device_ready` → `weights_read` → \
         `weights_on_device` → `engine_ready` → `first_token`); a step a path skips is a zero phase.\n"
    );
    for (name, scenario) in &results.scenarios {
        let modes: Vec<&str> = MODES
            .iter()
            .copied()
            .filter(|m| scenario.summary.contains_key(*m))
            .collect();
        let _ = writeln!(md, "## {}\n", scenario_title(name));
        let mut header = String::from("| phase |");
        let mut rule = String::from("|---|");
        for mode in &modes {
            let _ = write!(header, " {mode} p50 ms | {mode} p95 ms |");
            rule.push_str("---:|---:|");
        }
        // Ratios to the standard path, when it ran.
        let others: Vec<&str> = match modes.contains(&"standard") {
            true => modes.iter().copied().filter(|m| *m != "standard").collect(),
            false => Vec::new(),
        };
        for mode in &others {
            let _ = write!(header, " standard / {mode} (p50) |");
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let mut rows: Vec<&str> = phase_names();
        rows.push("total");
        for phase in rows {
            let mut line = if phase == "total" {
                "| **total** |".to_string()
            } else {
                format!("| {phase} |")
            };
            for mode in &modes {
                let s = scenario.summary[*mode]
                    .get(phase)
                    .copied()
                    .unwrap_or_default();
                let _ = write!(line, " {:.2} | {:.2} |", s.p50_ms, s.p95_ms);
            }
            for mode in &others {
                let ratio = match (
                    scenario.summary.get("standard"),
                    scenario.summary.get(*mode),
                ) {
                    (Some(s), Some(c)) if c[phase].p50_ms > 0.0 => {
                        super::stats::ratio(s[phase].p50_ms, c[phase].p50_ms)
                    }
                    _ => "-".into(),
                };
                let _ = write!(line, " {ratio} |");
            }
            let _ = writeln!(md, "{line}");
        }
        md.push('\n');
        decode_table(&mut md, name, scenario);
    }
    let floor = &results.floor;
    let _ = writeln!(
        md,
        "## Floor\n\nWeight bytes / measured bandwidth ({}: {:.2} GB/s).\n",
        floor.method, floor.bandwidth_gb_per_s
    );
    let _ = writeln!(
        md,
        "| model | weight bytes | floor ms | controller_nocache p50 requested→engine_ready / floor | \
         controller (host cache) p50 requested→engine_ready / floor |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (model, bytes) in &floor.bytes {
        let floor_ms = floor.floor_ms.get(model).copied().unwrap_or(0.0);
        // The single-engine scenario's runs of this model where it has them (repeated attaches
        // of one model), else the sequential scenario's.
        let scenario = if results
            .runs
            .iter()
            .any(|r| r.scenario == "single" && &r.model == model)
        {
            "single"
        } else {
            "sequential"
        };
        let p50_of = |mode: &str, to: Anchor| {
            let values: Vec<f64> = results
                .runs
                .iter()
                .filter(|r| r.mode == mode && &r.model == model && r.scenario == scenario)
                .map(|r| r.timeline.span_ms(Anchor::Requested, to))
                .collect();
            super::stats::percentile(&values, 50.0)
        };
        let multiple = |ms: f64| {
            if floor_ms > 0.0 && ms > 0.0 {
                format!("{:.1}x", ms / floor_ms)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            md,
            "| {model} ({scenario}) | {bytes} | {floor_ms:.3} | {} | {} |",
            multiple(p50_of("controller_nocache", Anchor::EngineReady)),
            multiple(p50_of("controller", Anchor::EngineReady))
        );
    }
    md
}

/// The decode table of one scenario (modes that decoded after their attach), and how worker
/// processes compare with worker threads on first token and decode.
fn decode_table(md: &mut String, name: &str, scenario: &ScenarioResult) {
    if scenario.decode.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Decode after attach ({})\n\nTokens streamed right after each attach, timed by the \
         caller from the first token's arrival to the last's: decode only, every per-token cost \
         between engine and caller included.\n",
        scenario_title(name)
    );
    let _ = writeln!(
        md,
        "| mode | runs | ms/token p50 | ms/token p95 | tokens/s p50 | tokens/s p95 (slow end) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let rate = |ms: f64| if ms > 0.0 { 1e3 / ms } else { 0.0 };
    for mode in MODES {
        if let Some(s) = scenario.decode.get(mode) {
            let _ = writeln!(
                md,
                "| {mode} | {} | {:.3} | {:.3} | {:.1} | {:.1} |",
                s.runs,
                s.p50_ms,
                s.p95_ms,
                rate(s.p50_ms),
                rate(s.p95_ms)
            );
        }
    }
    md.push('\n');
    let (Some(thread), Some(process)) = (
        scenario.summary.get("controller"),
        scenario.summary.get("controller_process"),
    ) else {
        return;
    };
    let first_token = process["total"].p50_ms - thread["total"].p50_ms;
    let _ = write!(
        md,
        "Worker process vs worker thread: requested → first_token p50 {first_token:+.2} ms"
    );
    if let (Some(t), Some(p)) = (
        scenario.decode.get("controller"),
        scenario.decode.get("controller_process"),
    ) {
        let change = (rate(p.p50_ms) / rate(t.p50_ms).max(1e-9) - 1.0) * 100.0;
        let _ = write!(md, ", decode tokens/s p50 {change:+.1}%");
    }
    let _ = writeln!(md, ".\n");
}
