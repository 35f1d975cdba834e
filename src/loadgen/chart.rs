//! `chart.svg` of a load run: p50, p95 and p99 of time to first token, inter-token latency and
//! end to end, one panel each on its own scale (inter-token gaps are far shorter than the rest).

use std::fmt::Write;

use super::report::{LoadReport, Percentiles};
use crate::bench::chart::{escape, svg_start, COLORS};

const LABEL_W: f64 = 60.0;
const PLOT_W: f64 = 560.0;
const BAR_H: f64 = 20.0;
const GAP: f64 = 6.0;
const PANEL_TITLE_H: f64 = 26.0;
const TOP: f64 = 60.0;

/// The SVG of `report`.
pub fn svg(report: &LoadReport) -> String {
    let (m, s) = (&report.meta, &report.summary);
    let panels = [
        ("time to first token", &s.ttft_ms),
        ("inter-token latency", &s.itl_ms),
        ("end to end", &s.e2e_ms),
    ];
    let panel_h = PANEL_TITLE_H + 3.0 * (BAR_H + GAP) + 14.0;
    let height = TOP + panels.len() as f64 * panel_h + 10.0;
    let width = LABEL_W + PLOT_W + 130.0;
    let mut svg = svg_start(width, height);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}: {} clients, {:.1} output tokens/s, {} of {} requests ok</text>"#,
        escape(&m.model),
        m.concurrency,
        s.output_tokens_per_s,
        s.succeeded,
        s.requests
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="42" fill="dimgray">{} · {} · max_tokens {}</text>"#,
        escape(&m.url),
        escape(&m.machine),
        m.max_tokens
    );
    let mut y = TOP;
    for (title, p) in panels {
        panel(&mut svg, title, p, y);
        y += panel_h;
    }
    svg.push_str("</svg>\n");
    svg
}

/// One quantity's p50 / p95 / p99 as bars, the widest filling the plot.
fn panel(svg: &mut String, title: &str, p: &Percentiles, top: f64) {
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{:.1}" font-style="italic" fill="dimgray">{} (ms, n = {}, mean {:.2})</text>"#,
        top + 16.0,
        escape(title),
        p.count,
        p.mean
    );
    let widest = p.p99.max(p.p95).max(p.p50).max(1e-9);
    for (i, (name, value)) in [("p50", p.p50), ("p95", p.p95), ("p99", p.p99)]
        .into_iter()
        .enumerate()
    {
        let y = top + PANEL_TITLE_H + i as f64 * (BAR_H + GAP);
        let w = value / widest * PLOT_W;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}">{name}</text><rect x="{LABEL_W}" y="{y:.1}" width="{w:.2}" height="{BAR_H}" fill="{}"/><text x="{:.2}" y="{:.1}">{value:.2} ms</text>"#,
            y + BAR_H * 0.7,
            COLORS[i],
            LABEL_W + w + 6.0,
            y + BAR_H * 0.7
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{Endpoint, Limit, LoadOptions, RequestResult};
    use std::time::Duration;

    #[test]
    fn every_percentile_is_drawn_with_its_value() {
        let options = LoadOptions {
            url: "http://h:1".into(),
            api_key: None,
            model: "m<1>".into(),
            endpoint: Endpoint::Completions,
            concurrency: 2,
            limit: Limit::Requests(1),
            max_tokens: 4,
            prompts: vec!["p".into()],
            temperature: 0.0,
            ignore_eos: false,
            timeout: Duration::from_secs(1),
        };
        let request = RequestResult {
            ok: true,
            ttft_ms: Some(12.5),
            itl_ms: vec![1.0, 2.0],
            e2e_ms: 20.0,
            output_tokens: 3,
            ..RequestResult::default()
        };
        let report = LoadReport::new(&options, "cmd", vec![request], Duration::from_secs(1));
        let svg = svg(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(
            svg.contains("m&lt;1&gt;: 2 clients, 3.0 output tokens/s"),
            "{svg}"
        );
        assert_eq!(svg.matches("<rect x=").count(), 9, "three bars a panel");
        assert!(
            svg.contains(">12.50 ms<") && svg.contains(">20.00 ms<"),
            "{svg}"
        );
    }
}
