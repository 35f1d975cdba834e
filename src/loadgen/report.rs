//! The load report: throughput and latency percentiles over every request, as `results.json`
//! and `report.md` (percentiles as the cold-start bench computes them; the chart is [`super::chart`]).

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{Endpoint, Limit, LoadOptions, RequestResult};
use crate::bench::machine;
use crate::bench::stats::percentile;

/// p50 / p95 / p99 / mean / max of one quantity, in milliseconds, over `count` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
    pub count: usize,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        Self {
            p50: percentile(values, 50.0),
            p95: percentile(values, 95.0),
            p99: percentile(values, 99.0),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            max: values.iter().copied().fold(f64::MIN, f64::max),
            count: values.len(),
        }
    }
}

/// How the run was set up.
#[derive(Clone, Debug, Serialize)]
pub struct LoadMeta {
    pub date: String,
    /// `git describe --always --dirty` of this loadgen build.
    pub commit: String,
    /// The server's `GET /version`: its version and the commit it was built from (`-dirty`
    /// when its tree was); absent when the server did not answer it.
    pub server_version: Option<String>,
    pub server_commit: Option<String>,
    pub machine: String,
    pub command: String,
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub concurrency: usize,
    /// The request count asked for (absent for a timed run).
    pub requests_limit: Option<usize>,
    /// The duration asked for, in seconds (absent for a counted run).
    pub duration_limit_s: Option<f64>,
    pub max_tokens: usize,
    pub prompts: usize,
    pub ignore_eos: bool,
}

/// The totals and percentiles over the successful requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSummary {
    pub requests: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// From the first request sent to the last one ended (the largest `start_ms + e2e_ms` of
    /// the requests, to within the clock reads).
    pub wall_s: f64,
    pub output_tokens: usize,
    pub prompt_tokens: usize,
    /// Output tokens of every successful request over the wall time.
    pub output_tokens_per_s: f64,
    pub requests_per_s: f64,
    /// Time to first token.
    pub ttft_ms: Percentiles,
    /// Every gap between two texts of one request, over all requests.
    pub itl_ms: Percentiles,
    /// End to end.
    pub e2e_ms: Percentiles,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub meta: LoadMeta,
    pub summary: LoadSummary,
    /// One entry per request, in the order each client sent them.
    pub requests: Vec<RequestResult>,
}

impl LoadReport {
    pub fn new(
        options: &LoadOptions,
        command: &str,
        requests: Vec<RequestResult>,
        wall: Duration,
    ) -> Self {
        let meta = LoadMeta {
            date: machine::today(),
            commit: env!("WC_GIT_DESCRIBE").to_owned(),
            server_version: None,
            server_commit: None,
            machine: machine::describe(),
            command: command.to_owned(),
            url: options.url.clone(),
            model: options.model.clone(),
            endpoint: options.endpoint,
            concurrency: options.concurrency,
            requests_limit: match options.limit {
                Limit::Requests(n) => Some(n),
                Limit::Duration(_) => None,
            },
            duration_limit_s: match options.limit {
                Limit::Duration(d) => Some(d.as_secs_f64()),
                Limit::Requests(_) => None,
            },
            max_tokens: options.max_tokens,
            prompts: options.prompts.len(),
            ignore_eos: options.ignore_eos,
        };
        Self {
            meta,
            summary: summarize(&requests, wall),
            requests,
        }
    }

    /// Writes `results.json`, `report.md` and `chart.svg` into `out` (created if missing).
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(out.join("report.md"), self.markdown())?;
        std::fs::write(out.join("chart.svg"), super::chart::svg(self))?;
        Ok(())
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let (m, s) = (&self.meta, &self.summary);
        let mut md = String::new();
        let _ = writeln!(md, "# Load: `{}` at {}\n", m.model, m.url);
        let _ = writeln!(md, "- date: {}", m.date);
        let _ = writeln!(md, "- machine (of the client): {}", m.machine);
        let _ = writeln!(
            md,
            "- server: {} at commit {}{}; loadgen at {}",
            m.server_version.as_deref().unwrap_or("?"),
            m.server_commit
                .as_deref()
                .unwrap_or("unknown (no GET /version)"),
            if m.server_commit
                .as_deref()
                .is_some_and(|c| c.ends_with("-dirty"))
            {
                " (DIRTY BUILD: uncommitted changes)"
            } else {
                ""
            },
            m.commit
        );
        let _ = writeln!(md, "- command: `{}`", m.command);
        let limit = match (m.requests_limit, m.duration_limit_s) {
            (Some(n), _) => format!("{n} requests"),
            (_, Some(secs)) => format!("for {secs:.0} s"),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "- {} concurrent streaming clients, {limit}, `max_tokens` {}{}, {} prompt(s), {}\n",
            m.concurrency,
            m.max_tokens,
            if m.ignore_eos { " (ignore_eos)" } else { "" },
            m.prompts,
            m.endpoint.path()
        );
        let _ = writeln!(
            md,
            "| requests | ok | failed | wall s | output tokens | output tok/s | req/s |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {} | {:.1} | {:.2} |\n",
            s.requests,
            s.succeeded,
            s.failed,
            s.wall_s,
            s.output_tokens,
            s.output_tokens_per_s,
            s.requests_per_s
        );
        let _ = writeln!(md, "| ms | p50 | p95 | p99 | mean | max | n |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for (name, p) in [
            ("time to first token", &s.ttft_ms),
            ("inter-token latency", &s.itl_ms),
            ("end to end", &s.e2e_ms),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                p.p50, p.p95, p.p99, p.mean, p.max, p.count
            );
        }
        if let Some(error) = self.requests.iter().find_map(|r| r.error.as_deref()) {
            let _ = writeln!(md, "\nFirst error: {error}");
        }
        md
    }
}

/// Totals and percentiles; latencies over the successful requests only.
fn summarize(requests: &[RequestResult], wall: Duration) -> LoadSummary {
    let ok: Vec<&RequestResult> = requests.iter().filter(|r| r.ok).collect();
    let wall_s = wall.as_secs_f64();
    let per_s = |n: usize| if wall_s > 0.0 { n as f64 / wall_s } else { 0.0 };
    let output_tokens = ok.iter().map(|r| r.output_tokens).sum();
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_ms.iter().copied()).collect();
    let e2e: Vec<f64> = ok.iter().map(|r| r.e2e_ms).collect();
    LoadSummary {
        requests: requests.len(),
        succeeded: ok.len(),
        failed: requests.len() - ok.len(),
        wall_s,
        output_tokens,
        prompt_tokens: ok.iter().filter_map(|r| r.prompt_tokens).sum(),
        output_tokens_per_s: per_s(output_tokens),
        requests_per_s: per_s(ok.len()),
        ttft_ms: Percentiles::of(&ttft),
        itl_ms: Percentiles::of(&itl),
        e2e_ms: Percentiles::of(&e2e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ttft: f64, itl: &[f64], e2e: f64, tokens: usize) -> RequestResult {
        RequestResult {
            ok: true,
            ttft_ms: Some(ttft),
            itl_ms: itl.to_vec(),
            e2e_ms: e2e,
            output_tokens: tokens,
            ..RequestResult::default()
        }
    }

    #[test]
    fn summary_counts_tokens_of_successes_over_the_wall_time() {
        let failed = RequestResult {
            error: Some("503".into()),
            e2e_ms: 1.0,
            ..RequestResult::default()
        };
        let requests = vec![
            request(10.0, &[1.0, 3.0], 20.0, 3),
            request(30.0, &[2.0], 40.0, 2),
            failed,
        ];
        let s = summarize(&requests, Duration::from_millis(500));
        assert_eq!((s.requests, s.succeeded, s.failed), (3, 2, 1));
        assert_eq!(s.output_tokens, 5);
        assert!((s.output_tokens_per_s - 10.0).abs() < 1e-9);
        assert_eq!(s.ttft_ms.count, 2);
        assert_eq!(s.itl_ms.count, 3);
        assert_eq!((s.itl_ms.p50, s.itl_ms.max), (2.0, 3.0));
        assert_eq!(s.e2e_ms.mean, 30.0);
    }

    #[test]
    fn percentiles_of_nothing_are_zero() {
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
        let p = Percentiles::of(&[5.0]);
        assert_eq!((p.p50, p.p99, p.max, p.count), (5.0, 5.0, 5.0, 1));
    }
}
