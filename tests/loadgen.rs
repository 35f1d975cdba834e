//! `worker-controller loadgen` against a server in this process on the tiny fixture: every
//! request counted once, latencies consistent per request, the report files written, and the
//! server's own counters agreeing with the client's.

mod server_common;

use std::process::Command;

use serde_json::Value;
use server_common::{model_entry, scratch, Server};

const MODEL: &str = "tiny-opt-prenorm";
const REQUESTS: u64 = 12;
const MAX_TOKENS: u64 = 16;

fn loadgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .arg("loadgen")
        .args(args)
        .env_remove("WC_API_KEY")
        .output()
        .expect("run loadgen")
}

#[test]
fn loadgen_reports_every_request_with_consistent_latencies() {
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n{}",
        model_entry(MODEL, MODEL, true, "5m")
    );
    let server = Server::start("loadgen", &config);
    let out = scratch("loadgen-out");
    let url = format!("http://{}", server.addr);
    let (requests, max_tokens) = (REQUESTS.to_string(), MAX_TOKENS.to_string());
    let run = loadgen(&[
        "--url",
        &url,
        "--model",
        MODEL,
        "--concurrency",
        "4",
        "--requests",
        &requests,
        "--max-tokens",
        &max_tokens,
        "--ignore-eos",
        "--prompt",
        "Hello there",
        "--prompt",
        "The capital of France is",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let markdown = String::from_utf8_lossy(&run.stdout);
    assert!(markdown.contains("| time to first token |"), "{markdown}");
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        markdown
    );
    let chart = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(chart.contains("inter-token latency"), "{chart}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let summary = &report["summary"];
    assert_eq!(summary["requests"], REQUESTS, "{summary}");
    assert_eq!(summary["succeeded"], REQUESTS, "{report}");
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["output_tokens"], REQUESTS * MAX_TOKENS);
    assert!(summary["output_tokens_per_s"].as_f64().unwrap() > 0.0);
    for metric in ["ttft_ms", "itl_ms", "e2e_ms"] {
        let p = &summary[metric];
        let v = |k: &str| p[k].as_f64().unwrap();
        assert!(
            0.0 < v("p50") && v("p50") <= v("p95") && v("p95") <= v("p99") && v("p99") <= v("max"),
            "{metric}: {p}"
        );
    }
    assert_eq!(summary["ttft_ms"]["count"], REQUESTS);
    assert_eq!(summary["e2e_ms"]["count"], REQUESTS);
    let requests = report["requests"].as_array().unwrap();
    assert_eq!(requests.len() as u64, REQUESTS);
    let mut ids: Vec<&str> = requests
        .iter()
        .map(|r| r["request_id"].as_str().expect("echoed id"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, REQUESTS, "one id each: {ids:?}");
    for r in requests {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["status"], 200);
        assert_eq!(r["output_tokens"], MAX_TOKENS);
        let (ttft, e2e) = (
            r["ttft_ms"].as_f64().unwrap(),
            r["e2e_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < ttft && ttft <= e2e, "{r}");
        assert!(r["client"].as_u64().unwrap() < 4);
    }
    assert_eq!(report["meta"]["concurrency"], 4);
    assert_eq!(report["meta"]["prompts"], 2);

    // The server counted the same tokens.
    let metrics = server.get("/metrics").body;
    let series = format!("vllm:generation_tokens_total{{model_name=\"{MODEL}\"}} ");
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert_eq!(served, REQUESTS * MAX_TOKENS);
}

#[test]
fn loadgen_drives_chat_completions_for_a_duration() {
    const CHAT_MODEL: &str = "tiny-llama";
    let config = format!(
        "[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n{}",
        model_entry(CHAT_MODEL, CHAT_MODEL, true, "5m")
    );
    let server = Server::start("loadgen-chat", &config);
    let out = scratch("loadgen-chat-out");
    let url = format!("http://{}", server.addr);
    let run = loadgen(&[
        "--url",
        &url,
        "--model",
        CHAT_MODEL,
        "--endpoint",
        "chat",
        "--concurrency",
        "2",
        "--duration",
        "1s",
        "--max-tokens",
        "8",
        "--ignore-eos",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let summary = &report["summary"];
    let requests = summary["requests"].as_u64().unwrap();
    // Every client starts one request at once, before any duration can be over.
    assert!(requests >= 2, "{summary}");
    assert_eq!(summary["succeeded"], requests, "{report}");
    assert_eq!(summary["output_tokens"], requests * 8);
    assert_eq!(summary["ttft_ms"]["count"], requests);
    assert_eq!(report["meta"]["endpoint"], "chat");
    assert_eq!(report["meta"]["duration_limit_s"], 1.0);
    assert!(report["meta"]["requests_limit"].is_null());
}

#[test]
fn loadgen_fails_clearly_when_every_request_fails() {
    let config = format!(
        "[server]\napi_key = \"sekrit\"\n\n[[workers]]\ndevice = \"cpu\"\ncount = 1\n\n{}",
        model_entry(MODEL, MODEL, true, "5m")
    );
    let server = Server::start("loadgen-refused", &config);
    let out = scratch("loadgen-refused-out");
    let url = format!("http://{}", server.addr);
    let run = loadgen(&[
        "--url",
        &url,
        "--model",
        MODEL,
        "--requests",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("every request") && stderr.contains("401"),
        "{stderr}"
    );
}

#[test]
fn loadgen_help_names_its_options() {
    let help = loadgen(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--url",
        "--api-key",
        "--model",
        "--concurrency",
        "--requests",
        "--duration",
        "--max-tokens",
        "--prompt",
        "--prompts-file",
        "--endpoint",
        "--out",
        "Example",
    ] {
        assert!(text.contains(flag), "no {flag} in\n{text}");
    }
}
