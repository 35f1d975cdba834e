//! `report.md`: one table per scenario, phases by mode with p50/p95, the ratio and the floor.

use std::fmt::Write;

use super::results::{phase_names, Results};

/// Modes in the order the tables show them.
pub const MODES: [&str; 3] = ["standard", "controller", "transformers"];

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
    let _ = writeln!(md, "- machine: {}", meta.machine);
    let _ = writeln!(md, "- device: {} ({})", meta.device, meta.dtype);
    let _ = writeln!(md, "- CUDA JIT cache: {}", meta.jit_cache);
    let _ = writeln!(md, "- models: {}", meta.models.join(", "));
    let _ = writeln!(
        md,
        "- runs: {} single, {} sequential rounds",
        meta.runs, meta.rounds
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
        header.push_str(" standard / controller (p50) |");
        rule.push_str("---:|");
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
            let ratio = match (
                scenario.summary.get("standard"),
                scenario.summary.get("controller"),
            ) {
                (Some(s), Some(c)) => {
                    let (s, c) = (s[phase].p50_ms, c[phase].p50_ms);
                    if c > 0.0 {
                        format!("{:.1}x", s / c)
                    } else {
                        "-".into()
                    }
                }
                _ => "-".into(),
            };
            let _ = writeln!(md, "{line} {ratio} |");
        }
        md.push('\n');
    }
    let floor = &results.floor;
    let _ = writeln!(
        md,
        "## Floor\n\nWeight bytes / measured bandwidth ({}: {:.2} GB/s).\n",
        floor.method, floor.bandwidth_gb_per_s
    );
    let _ = writeln!(
        md,
        "| model | weight bytes | floor ms | controller p50 total / floor |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (model, bytes) in &floor.bytes {
        let floor_ms = floor.floor_ms.get(model).copied().unwrap_or(0.0);
        let controller = results
            .runs
            .iter()
            .filter(|r| r.mode == "controller" && &r.model == model)
            .map(|r| r.total_ms)
            .collect::<Vec<_>>();
        let p50 = super::stats::percentile(&controller, 50.0);
        let multiple = if floor_ms > 0.0 {
            format!("{:.0}x", p50 / floor_ms)
        } else {
            "-".into()
        };
        let _ = writeln!(md, "| {model} | {bytes} | {floor_ms:.3} | {multiple} |");
    }
    md
}
