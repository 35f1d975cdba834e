//! `chart.svg`: stacked bars of p50 phases per scenario and mode, with the p95 total marked.
//!
//! One panel holds every bar on one scale. When some modes are more than ten times faster than
//! the slowest in a panel (the controller next to a fresh process), a zoom panel below shows just
//! those on their own scale, so their phases stay readable; zooms repeat while that holds.

use std::fmt::Write;

use super::report::MODES;
use super::results::{phase_names, ModeSummary, Results};

/// The series colours (also the load report's).
pub const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
];
const LABEL_W: f64 = 240.0;
const PLOT_W: f64 = 560.0;
const BAR_H: f64 = 26.0;
const GAP: f64 = 14.0;
const PANEL_TITLE_H: f64 = 24.0;

type Bar<'a> = (String, &'a ModeSummary);

fn slowest(bars: &[Bar]) -> f64 {
    bars.iter()
        .map(|(_, s)| s["total"].p95_ms.max(s["total"].p50_ms))
        .fold(1e-9, f64::max)
}

/// An SVG with one bar per (scenario, mode): p50 of each phase stacked, p95 of the total as a tick.
pub fn svg(results: &Results) -> String {
    let bars: Vec<Bar> = results
        .scenarios
        .iter()
        .flat_map(|(name, s)| {
            MODES
                .iter()
                .filter_map(move |m| s.summary.get(*m).map(|sum| (format!("{name} / {m}"), sum)))
        })
        .collect();
    let mut panels = vec![bars];
    while let Some(last) = panels.last() {
        let max_ms = slowest(last);
        let fast: Vec<Bar> = last
            .iter()
            .filter(|(_, s)| s["total"].p95_ms.max(s["total"].p50_ms) * 10.0 < max_ms)
            .cloned()
            .collect();
        if fast.is_empty() || panels.len() == 3 {
            break;
        }
        panels.push(fast);
    }
    let panel_h = |n: usize| PANEL_TITLE_H + n as f64 * (BAR_H + GAP) + 10.0;
    let top = 60.0;
    let height = top + panels.iter().map(|p| panel_h(p.len())).sum::<f64>() + 50.0;
    let width = LABEL_W + PLOT_W + 120.0;
    let mut svg = svg_start(width, height);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">Time to first token: p50 by phase, | = p95 total, label = p50 total</text>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="42" fill="dimgray">{} · {} {} · JIT cache {}</text>"#,
        escape(&results.meta.machine),
        escape(&results.meta.device),
        escape(&results.meta.dtype),
        escape(&results.meta.jit_cache)
    );
    let mut y = top;
    for (i, bars) in panels.iter().enumerate() {
        let title = if i == 0 {
            "every mode, one scale"
        } else {
            "zoom: the modes under a tenth of the slowest above, their own scale"
        };
        y = panel(&mut svg, title, bars, slowest(bars), y) + 10.0;
    }
    legend(&mut svg, y + 6.0);
    svg.push_str("</svg>\n");
    svg
}

/// Draws `bars` scaled so that `max_ms` spans the plot; returns the y below the panel.
fn panel(svg: &mut String, title: &str, bars: &[Bar], max_ms: f64, top: f64) -> f64 {
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{:.1}" font-style="italic" fill="dimgray">{} (full width = {:.1} ms)</text>"#,
        top + 14.0,
        escape(title),
        max_ms
    );
    let scale = PLOT_W / max_ms;
    for (i, (label, summary)) in bars.iter().enumerate() {
        let y = top + PANEL_TITLE_H + i as f64 * (BAR_H + GAP);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}">{}</text>"#,
            y + BAR_H * 0.65,
            escape(label)
        );
        let mut x = LABEL_W;
        for (phase, color) in phase_names().iter().zip(COLORS) {
            let w = summary[*phase].p50_ms * scale;
            if w > 0.0 {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{BAR_H}" fill="{color}"><title>{phase}: {:.2} ms</title></rect>"#,
                    summary[*phase].p50_ms
                );
            }
            x += w;
        }
        let p95_x = LABEL_W + summary["total"].p95_ms * scale;
        let _ = writeln!(
            svg,
            r#"<line x1="{p95_x:.2}" x2="{p95_x:.2}" y1="{:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"#,
            y - 3.0,
            y + BAR_H + 3.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.2}" y="{:.1}">{:.1} ms</text>"#,
            p95_x.max(x) + 6.0,
            y + BAR_H * 0.65,
            summary["total"].p50_ms
        );
    }
    top + PANEL_TITLE_H + bars.len() as f64 * (BAR_H + GAP)
}

fn legend(svg: &mut String, y: f64) {
    for (i, (phase, color)) in phase_names().iter().zip(COLORS).enumerate() {
        let x = 10.0 + i as f64 * 140.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{phase}</text>"#,
            x + 16.0,
            y + 10.0
        );
    }
}

/// Text made safe inside SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The opening of an SVG document of `width` x `height` on a white background, as every chart
/// of ours starts (close it with `</svg>`).
pub fn svg_start(width: f64, height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    svg
}
