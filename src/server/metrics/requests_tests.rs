//! Tests of the request-level series: waiting and running, latencies, and forgetting a model.

use super::*;

fn output(prompt: usize, generated: usize) -> GenerateOutput {
    GenerateOutput {
        prompt_ids: vec![1; prompt],
        new_tokens: vec![2; generated],
        text: String::new(),
        finish_reason: FinishReason::Length,
        prefill_ms: 0.0,
        decode_ms: 0.0,
        cumulative_logprob: 0.0,
        logprobs: Vec::new(),
    }
}

fn access() -> RequestContext {
    RequestContext::new("r".into(), "POST", "/v1/completions")
}

/// The value of the series `name{model_name="m"}` as exposed.
fn exposed(series: &RequestSeries, name: &str) -> u64 {
    let mut registry = Registry::default();
    series.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let prefix = format!("{name}{{model_name=\"m\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[test]
fn a_request_waits_until_its_first_token_then_runs_until_it_ends() {
    let series = RequestSeries::default();
    let ctx = access();
    let mut trace = series.trace(&ctx, "m");
    let waiting = InFlight {
        waiting: 1,
        running: 0,
    };
    assert_eq!(series.in_flight()["m"], waiting);
    trace.token();
    trace.token();
    let running = InFlight {
        waiting: 0,
        running: 1,
    };
    assert_eq!(series.in_flight()["m"], running);
    trace.finish(&output(4, 2));
    assert!(series.in_flight().is_empty());
    let facts = ctx.facts();
    assert_eq!(
        (
            facts.model.as_deref(),
            facts.prompt_tokens,
            facts.completion_tokens
        ),
        (Some("m"), Some(4), Some(2))
    );
    assert!(facts.ttft_ms.is_some() && facts.queue_ms.is_some());
    assert_eq!(exposed(&series, "vllm:generation_tokens_total"), 2);
    assert_eq!(exposed(&series, "vllm:prompt_tokens_total"), 4);
    assert_eq!(
        exposed(&series, "vllm:time_to_first_token_seconds_count"),
        1
    );
    assert_eq!(
        exposed(&series, "vllm:inter_token_latency_seconds_count"),
        1
    );
    assert_eq!(
        exposed(&series, "vllm:e2e_request_latency_seconds_count"),
        1
    );
    assert_eq!(exposed(&series, "vllm:request_queue_time_seconds_count"), 1);
}

#[test]
fn a_request_dropped_unfinished_leaves_the_gauges_and_records_no_latency() {
    let series = RequestSeries::default();
    let ctx = access();
    drop(series.trace(&ctx, "m"));
    let mut running = series.trace(&ctx, "m");
    running.token();
    drop(running);
    assert!(series.in_flight().is_empty(), "no series left for a name");
    assert_eq!(
        exposed(&series, "vllm:time_to_first_token_seconds_count"),
        1
    );
    let text = format!("{:?}", series.e2e);
    assert!(!text.contains("model_name"), "no e2e series: {text}");
    assert_eq!(ctx.facts().error, Some("cancelled"));
}

#[test]
fn queue_time_is_what_came_before_the_engine_started() {
    let mut out = output(1, 1);
    out.prefill_ms = 300.0;
    out.decode_ms = 500.0;
    assert!((queue_seconds(2.0, Some(0.5), &out) - 0.2).abs() < 1e-9);
    assert!((queue_seconds(1.0, None, &out) - 0.2).abs() < 1e-9);
    assert_eq!(queue_seconds(0.1, Some(0.1), &out), 0.0);
}

#[test]
fn a_model_without_an_engine_or_a_request_in_flight_loses_its_series() {
    let series = RequestSeries::default();
    let ctx = access();
    for model in ["gone", "kept", "busy"] {
        let mut trace = series.trace(&ctx, model);
        trace.token();
        trace.finish(&output(1, 1));
    }
    let mut busy = series.trace(&ctx, "busy");
    busy.token();
    series.forget_all_but(|m| m == "kept");
    let mut registry = Registry::default();
    series.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains("\"gone\""), "{text}");
    assert!(text.contains("vllm:e2e_request_latency_seconds_count{model_name=\"kept\"} 1"));
    assert!(text.contains("vllm:generation_tokens_total{model_name=\"busy\"} 1"));
}
