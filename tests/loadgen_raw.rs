//! `loadgen`'s raw data: results.json names the server's commit (from `GET /version`) and
//! keeps every request's timestamp and per-token gaps, from which throughput and the
//! inter-token percentiles recompute; `--expect` bounds pass and fail the run.

mod server_common;

use std::process::Command;

use serde_json::Value;
use server_common::{model_entry, scratch, Server};

const MODEL: &str = "tiny-opt-prenorm";

fn loadgen(url: &str, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args([
            "loadgen",
            "--url",
            url,
            "--model",
            MODEL,
            "--concurrency",
            "3",
        ])
        .args(["--requests", "9", "--max-tokens", "8", "--ignore-eos"])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .env_remove("WC_API_KEY")
        .output()
        .expect("run loadgen")
}

/// The nearest-rank-with-interpolation percentile of `crate::bench::stats` (linear between
/// closest ranks), reimplemented as bench/recompute.py does.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

#[test]
fn results_hold_the_server_commit_and_recomputable_raw_data() {
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n{}",
        model_entry(MODEL, MODEL, true, "5m")
    );
    let server = Server::start("loadgen-raw", &config);
    let url = format!("http://{}", server.addr);
    let out = scratch("loadgen-raw-out");
    let run = loadgen(&url, &out, &["--expect", "summary.succeeded>=9"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("expect summary.succeeded>=9: ok"),
        "{stderr}"
    );
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let meta = &results["meta"];
    let commit = meta["server_commit"].as_str().expect("server_commit");
    assert_eq!(commit, meta["commit"].as_str().unwrap(), "same build here");
    assert!(meta["server_version"].is_string());

    let requests = results["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 9);
    let mut gaps = Vec::new();
    let (mut tokens, mut end) = (0.0, 0.0f64);
    for r in requests {
        let start = r["start_ms"].as_f64().unwrap();
        let e2e = r["e2e_ms"].as_f64().unwrap();
        let itl: Vec<f64> = r["itl_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        assert_eq!(itl.len(), 7, "8 texts, 7 gaps: {r}");
        let ttft = r["ttft_ms"].as_f64().unwrap();
        assert!(ttft + itl.iter().sum::<f64>() <= e2e + 1e-6, "{r}");
        assert!(start >= 0.0);
        gaps.extend(itl);
        tokens += r["output_tokens"].as_f64().unwrap();
        end = end.max(start + e2e);
    }
    let summary = &results["summary"];
    let wall_ms = summary["wall_s"].as_f64().unwrap() * 1e3;
    // The wall clock closes after the last request's own clock: within a few ms.
    assert!(
        end <= wall_ms + 0.5 && wall_ms - end < 50.0,
        "{end} vs {wall_ms}"
    );
    let tps = summary["output_tokens_per_s"].as_f64().unwrap();
    assert!(
        (tokens / (end / 1e3) - tps).abs() / tps < 0.05,
        "throughput recomputes"
    );
    let p99 = summary["itl_ms"]["p99"].as_f64().unwrap();
    assert!(
        (percentile(&gaps, 99.0) - p99).abs() < 1e-9,
        "ITL p99 recomputes"
    );
    assert_eq!(
        summary["itl_ms"]["count"].as_u64().unwrap() as usize,
        gaps.len()
    );

    // A bound that cannot hold fails the run after the files are written.
    let out2 = scratch("loadgen-raw-out2");
    let run = loadgen(
        &url,
        &out2,
        &["--expect", "summary.ttft_ms.p99<=0.000001ms"],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 of 1 --expect bound(s) failed"),
        "{stderr}"
    );
    assert!(out2.join("results.json").is_file());
    // A path naming nothing fails too.
    let run = loadgen(&url, &out2, &["--expect", "summary.tfft_ms.p99<=1s"]);
    assert!(!run.status.success());
}
