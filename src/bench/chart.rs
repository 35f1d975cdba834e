//! `chart.svg`: stacked bars of p50 phases per scenario and mode, with the p95 total marked.

use std::fmt::Write;

use super::report::MODES;
use super::results::{phase_names, Results};

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
];

/// An SVG with one bar per (scenario, mode): p50 of each phase stacked, p95 of the total as a tick.
pub fn svg(results: &Results) -> String {
    let bars: Vec<(String, &super::results::ModeSummary)> = results
        .scenarios
        .iter()
        .flat_map(|(name, s)| {
            MODES
                .iter()
                .filter_map(move |m| s.summary.get(*m).map(|sum| (format!("{name} / {m}"), sum)))
        })
        .collect();
    let max_ms = bars
        .iter()
        .map(|(_, s)| s["total"].p95_ms.max(s["total"].p50_ms))
        .fold(1e-9, f64::max);
    let (label_w, plot_w, bar_h, gap, top) = (190.0, 560.0, 26.0, 14.0, 60.0);
    let height = top + bars.len() as f64 * (bar_h + gap) + 70.0;
    let width = label_w + plot_w + 120.0;
    let scale = plot_w / max_ms;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">Time to first token, p50 by phase (ms); | = p95 total</text>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="42" fill="dimgray">{} · {} {} · JIT cache {}</text>"#,
        escape(&results.meta.machine),
        escape(&results.meta.device),
        escape(&results.meta.dtype),
        escape(&results.meta.jit_cache)
    );
    for (i, (label, summary)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}">{}</text>"#,
            y + bar_h * 0.65,
            escape(label)
        );
        let mut x = label_w;
        for (phase, color) in phase_names().iter().zip(COLORS) {
            let w = summary[*phase].p50_ms * scale;
            if w > 0.0 {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{bar_h}" fill="{color}"><title>{phase}: {:.2} ms</title></rect>"#,
                    summary[*phase].p50_ms
                );
            }
            x += w;
        }
        let p95_x = label_w + summary["total"].p95_ms * scale;
        let _ = writeln!(
            svg,
            r#"<line x1="{p95_x:.2}" x2="{p95_x:.2}" y1="{:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"#,
            y - 3.0,
            y + bar_h + 3.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.2}" y="{:.1}">{:.1} ms</text>"#,
            p95_x.max(x) + 6.0,
            y + bar_h * 0.65,
            summary["total"].p50_ms
        );
    }
    let legend_y = top + bars.len() as f64 * (bar_h + gap) + 20.0;
    for (i, (phase, color)) in phase_names().iter().zip(COLORS).enumerate() {
        let x = 10.0 + i as f64 * 140.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{legend_y}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{phase}</text>"#,
            x + 16.0,
            legend_y + 10.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
