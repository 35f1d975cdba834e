//! The cold-start bench's own logic: a small real run's files, percentiles, phase records, report and chart, the child's frame, and the guard that fails a controller path not faster than a fresh process.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{fixture, scratch};
use wc_actors::{Anchor, DeviceSpec, Timeline};
use worker_controller::bench::guard::{check, NotFaster};
use worker_controller::bench::results::{phase_names, ModeSummary, Results, RunRecord};
use worker_controller::bench::stats::{percentile, ratio, Summary};
use worker_controller::bench::{chart, frame, report, BenchOptions};

const PRENORM: &str = "tiny-opt-prenorm";
const POSTNORM: &str = "tiny-opt-postnorm-proj";

const CLI: &str = env!("CARGO_BIN_EXE_worker-controller");

/// Bytes of tensor data in a safetensors file: everything after the 8-byte length and the header.
fn safetensors_data_bytes(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes.len() as u64 - 8 - header_len
}

/// The instants of every anchor in `timeline`, checked to be marked in order and non-decreasing.
fn assert_ordered(timeline: &Timeline, what: &str) {
    let anchors: Vec<Anchor> = timeline.marks.iter().map(|(a, _)| *a).collect();
    let mut sorted = anchors.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(anchors, sorted, "{what}: anchors in order, once each");
    assert!(
        timeline.marks.windows(2).all(|w| w[0].1 <= w[1].1),
        "{what}: instants are monotone: {timeline:?}"
    );
}

fn assert_phases_sum_to_total(phases: &BTreeMap<String, f64>, total_ms: f64, what: &str) {
    let names: Vec<&str> = phases.keys().map(String::as_str).collect();
    let mut expected = phase_names();
    expected.sort();
    assert_eq!(names, expected, "{what}: one entry per phase");
    let sum: f64 = phases.values().sum();
    assert!(
        (sum - total_ms).abs() < 1e-6,
        "{what}: phases sum to {sum}, total_ms is {total_ms}"
    );
    assert!(phases.values().all(|ms| *ms >= 0.0), "{what}: {phases:?}");
}

/// Every well-formedness check the chart gets: one root, balanced elements.
fn assert_svg_well_formed(svg: &str) {
    let svg = svg.trim();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    assert!(svg.ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    for tag in ["text", "title"] {
        assert_eq!(
            svg.matches(&format!("<{tag}")).count(),
            svg.matches(&format!("</{tag}>")).count(),
            "<{tag}> elements are closed"
        );
    }
    let rects = svg.matches("<rect").count();
    let closed = svg.matches("</rect>").count();
    let self_closed = svg
        .split("<rect")
        .skip(1)
        .filter(|rest| rest.split('>').next().unwrap().ends_with('/'))
        .count();
    assert_eq!(rects, closed + self_closed, "<rect> elements are closed");
}

/// The panels the chart draws, as lists of `(scenario, mode summary)`: every mode, then while
/// some modes' totals are under a tenth of the slowest in the panel above, those again on their
/// own scale (at most three panels).
fn chart_panels(results: &Results) -> Vec<Vec<(String, &ModeSummary)>> {
    let longest = |mode: &ModeSummary| mode["total"].p95_ms.max(mode["total"].p50_ms);
    let all: Vec<(String, &ModeSummary)> = results
        .scenarios
        .iter()
        .flat_map(|(name, s)| s.summary.values().map(move |m| (name.clone(), m)))
        .collect();
    let mut panels = vec![all];
    while panels.len() < 3 {
        let last = panels.last().unwrap();
        let slowest = last.iter().map(|(_, m)| longest(m)).fold(0.0, f64::max);
        let fast: Vec<_> = last
            .iter()
            .filter(|(_, m)| longest(m) * 10.0 < slowest)
            .cloned()
            .collect();
        if fast.is_empty() {
            break;
        }
        panels.push(fast);
    }
    panels
}

/// Bar segments the chart should draw: one per nonzero p50 phase of each mode in each panel.
fn nonzero_bars(results: &Results) -> usize {
    chart_panels(results)
        .iter()
        .flatten()
        .map(|(_, mode)| {
            phase_names()
                .iter()
                .filter(|p| mode[**p].p50_ms > 0.0)
                .count()
        })
        .sum()
}

/// How many labelled bars of `scenario` the chart should draw, over every panel.
fn labelled_bars(results: &Results, scenario: &str) -> usize {
    chart_panels(results)
        .iter()
        .flatten()
        .filter(|(name, _)| name == scenario)
        .count()
}

/// A bench of `models` on the CPU, single scenario, one run per path, no peer, no decode.
fn cpu_bench(models: Vec<String>, out: &Path) -> BenchOptions {
    BenchOptions {
        models,
        runs: 1,
        rounds: 1,
        device: DeviceSpec::Cpu,
        dtype: None,
        out: out.to_path_buf(),
        single: true,
        sequential: false,
        peer_script: None,
        cold_jit: false,
        command: "test".into(),
        exe: Some(PathBuf::from(CLI)),
        peer_runs: 0,
        staging_bytes: 0,
        host_cache_bytes: 64 << 20,
        decode_tokens: 0,
        modes: Vec::new(),
        worker_cpus: Vec::new(),
        peer_source: None,
    }
}

#[test]
fn a_small_real_bench_writes_consistent_results_report_and_chart() {
    let out = scratch("bench-run");
    let models: Vec<String> = [PRENORM, POSTNORM]
        .iter()
        .map(|m| fixture(m).display().to_string())
        .collect();
    let options = BenchOptions {
        runs: 3,
        sequential: true,
        decode_tokens: 4,
        ..cpu_bench(models.clone(), &out)
    };
    let returned = worker_controller::bench::run(&options).unwrap();

    // results.json: what was returned, with the documented keys.
    for file in ["results.json", "report.md", "chart.svg"] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let runs = json["runs"].as_array().unwrap();
    // Every controller start gives its worker's memory back: free after the detach equals free
    // at prewarm.
    for run in runs
        .iter()
        .filter(|r| r["mode"].as_str().unwrap().starts_with("controller"))
    {
        let memory = &run["memory"];
        assert!(memory["baseline_free_bytes"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(
            memory["after_detach_free_bytes"], memory["baseline_free_bytes"],
            "memory back after the detach: {run}"
        );
        assert!(memory["rss_bytes"].as_u64().unwrap() > 0, "{run}");
    }
    // The standard path and every controller path: no peer was asked for.
    let modes: BTreeSet<&str> = runs.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert!(
        modes.contains("standard") && modes.contains("controller"),
        "{modes:?}"
    );
    assert!(
        modes
            .iter()
            .all(|m| *m == "standard" || m.starts_with("controller")),
        "{modes:?}"
    );
    assert_eq!(
        runs.len(),
        (3 + 2) * modes.len(),
        "3 single + 2 sequential (2 models x 1 round) per mode"
    );
    let standard_p50 = json["summary"]["standard"]["total"]["p50_ms"]
        .as_f64()
        .unwrap();
    assert!(standard_p50 > 0.0);
    assert!(json["summary"]["controller"]["first_token"]["p50_ms"].is_f64());
    assert_eq!(json["meta"]["command"], "test");
    assert_eq!(json["meta"]["models"], serde_json::json!(models));
    let results: Results = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(results.runs.len(), returned.runs.len());

    for run in &results.runs {
        let what = format!(
            "{} {} {} run {}",
            run.scenario, run.mode, run.model, run.run
        );
        assert_ordered(&run.timeline, &what);
        assert!(run.timeline.get(Anchor::Requested).is_some(), "{what}");
        assert!(run.timeline.get(Anchor::FirstToken).is_some(), "{what}");
        assert_phases_sum_to_total(&run.phases_ms, run.total_ms, &what);
        assert!(
            (run.total_ms - run.timeline.total_ms()).abs() < 1e-9,
            "{what}"
        );
        assert_eq!(
            run.bytes,
            safetensors_data_bytes(Path::new(&run.model)),
            "{what}"
        );
        match run.mode.as_str() {
            // A fresh process opens its device: both startup anchors are marked.
            "standard" => {
                assert!(run.timeline.get(Anchor::ProcessStarted).is_some(), "{what}");
                assert!(run.timeline.get(Anchor::DeviceReady).is_some(), "{what}");
                assert!(
                    run.decode.is_none(),
                    "{what}: no decode on the standard path"
                );
            }
            // A prewarmed worker skips them: zero phases; its engine then decodes 4 tokens.
            _ => {
                assert_eq!(run.phases_ms["process_started"], 0.0, "{what}");
                assert_eq!(run.phases_ms["device_ready"], 0.0, "{what}");
                let decode = run.decode.expect("a controller path decodes");
                assert_eq!(decode.tokens, 4, "{what}");
                assert!(decode.caller_decode_ms > 0.0, "{what}");
                assert!(decode.tokens_per_s() > 0.0, "{what}");
            }
        }
    }
    let count = |scenario: &str, mode: &str| {
        results
            .runs
            .iter()
            .filter(|r| r.scenario == scenario && r.mode == mode)
            .count()
    };
    for &mode in &modes {
        assert_eq!(count("single", mode), 3, "{mode}");
        assert_eq!(count("sequential", mode), 2, "{mode}");
        let sequential: Vec<&str> = results
            .runs
            .iter()
            .filter(|r| r.scenario == "sequential" && r.mode == mode)
            .map(|r| r.model.as_str())
            .collect();
        assert_eq!(sequential, models, "{mode}: every model in turn");
    }
    // The single scenario's summary is the top-level one, and it summarizes those runs (checked
    // on the returned results: serde_json's default float parsing may be 1 ulp off).
    assert_eq!(returned.summary, returned.scenarios["single"].summary);
    let single_standard: Vec<f64> = returned
        .runs
        .iter()
        .filter(|r| r.scenario == "single" && r.mode == "standard")
        .map(|r| r.total_ms)
        .collect();
    assert_eq!(
        returned.summary["standard"]["total"],
        Summary::of(&single_standard)
    );
    let written = results.summary["standard"]["total"].p50_ms;
    let p50 = returned.summary["standard"]["total"].p50_ms;
    assert!((written - p50).abs() <= 1e-9 * p50, "{written} vs {p50}");
    assert_eq!(
        results.floor.bytes[&models[1]],
        safetensors_data_bytes(Path::new(&models[1]))
    );

    // report.md: a table per scenario with the ratio column.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for title in [
        "## Single engine cold start",
        "## Sequential multi-model loading",
    ] {
        let section = md.split(title).nth(1).unwrap_or_else(|| panic!("{title}"));
        let table = section.split("\n## ").next().unwrap();
        let header = table.lines().find(|l| l.starts_with("| phase |")).unwrap();
        assert!(
            header.contains("standard / controller"),
            "{title}: {header}"
        );
        assert!(header.contains("standard p50 ms") && header.contains("controller p95 ms"));
        assert!(table.contains("| **total** |"), "{title}");
        for phase in phase_names() {
            assert!(table.contains(&format!("| {phase} |")), "{title}: {phase}");
        }
        // Decode tokens/s of worker threads and processes side by side, and how they compare.
        assert!(table.contains("### Decode after attach"), "{title}");
        for mode in ["controller", "controller_process"] {
            assert!(table.contains(&format!("| {mode} | ")), "{title}: {mode}");
        }
        assert!(
            table.contains("Worker process vs worker thread: requested → first_token p50")
                && table.contains("decode tokens/s p50"),
            "{title}"
        );
    }
    assert_eq!(md.matches("standard / controller (p50)").count(), 2);
    assert_eq!(
        returned.scenarios["single"].decode["controller_process"].runs,
        3
    );
    assert!(!returned.scenarios["single"].decode.contains_key("standard"));

    // chart.svg: well-formed, one bar segment per nonzero p50 phase.
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert_svg_well_formed(&svg);
    let bars = nonzero_bars(&results);
    assert!(
        bars >= 4,
        "at least weights/engine/first-token phases are drawn"
    );
    assert_eq!(svg.matches("</title></rect>").count(), bars);
    for scenario in ["single", "sequential"] {
        let labelled = labelled_bars(&results, scenario);
        assert!(
            labelled >= modes.len(),
            "{scenario}: every mode in the first panel"
        );
        assert_eq!(
            svg.matches(&format!(">{scenario} / ")).count(),
            labelled,
            "{scenario}: one labelled bar per mode and panel"
        );
    }
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn percentiles_interpolate_between_ranks() {
    let one_to_ten: Vec<f64> = (1..=10).rev().map(f64::from).collect();
    assert_eq!(percentile(&one_to_ten, 0.0), 1.0);
    assert_eq!(percentile(&one_to_ten, 100.0), 10.0);
    assert!((percentile(&one_to_ten, 50.0) - 5.5).abs() < 1e-12);
    assert!((percentile(&one_to_ten, 95.0) - 9.55).abs() < 1e-12);
    assert!((percentile(&one_to_ten, 90.0) - 9.1).abs() < 1e-12);
    assert_eq!(percentile(&[3.0, 3.0, 3.0], 95.0), 3.0);
    assert_eq!(percentile(&[], 95.0), 0.0);

    let s = Summary::of(&[40.0, 10.0, 30.0, 20.0]);
    assert_eq!(s.runs, 4);
    assert_eq!(s.p50_ms, 25.0);
    assert_eq!(s.mean_ms, 25.0);
    assert!((s.p95_ms - 38.5).abs() < 1e-12);
    assert_eq!(Summary::of(&[]), Summary::default());
}

/// A timeline at whole milliseconds from `requested = 0`; anchors not listed are skipped.
fn timeline(marks: &[(Anchor, u64)]) -> Timeline {
    let mut t = Timeline::default();
    for (anchor, ms) in marks {
        t.mark_at(*anchor, 1_000_000_000 + ms * 1_000_000);
    }
    t
}

#[test]
fn a_run_record_gives_skipped_anchors_zero_phases() {
    let t = timeline(&[
        (Anchor::Requested, 0),
        (Anchor::WeightsRead, 4),
        (Anchor::WeightsOnDevice, 6),
        (Anchor::EngineReady, 7),
        (Anchor::FirstToken, 10),
    ]);
    let record = RunRecord::new("single", "controller", "m", 0, 2, t.clone(), 99);
    assert_eq!(record.phases_ms["process_started"], 0.0);
    assert_eq!(record.phases_ms["device_ready"], 0.0);
    assert_eq!(record.phases_ms["weights_read"], 4.0);
    assert_eq!(record.phases_ms["weights_on_device"], 2.0);
    assert_eq!(record.phases_ms["engine_ready"], 1.0);
    assert_eq!(record.phases_ms["first_token"], 3.0);
    assert_eq!(record.total_ms, 10.0);
    assert_phases_sum_to_total(&record.phases_ms, record.total_ms, "hand-made");
    assert_eq!(record.timeline, t);
    assert_eq!((record.run, record.bytes), (2, 99));

    // A path that skips a later step: engine_ready missing, first_token measured from weights.
    let record = RunRecord::new(
        "single",
        "standard",
        "m",
        0,
        0,
        timeline(&[
            (Anchor::Requested, 0),
            (Anchor::ProcessStarted, 1),
            (Anchor::DeviceReady, 3),
            (Anchor::WeightsRead, 4),
            (Anchor::WeightsOnDevice, 5),
            (Anchor::FirstToken, 8),
        ]),
        0,
    );
    assert_eq!(record.phases_ms["engine_ready"], 0.0);
    assert_eq!(record.phases_ms["first_token"], 3.0);
    assert_phases_sum_to_total(&record.phases_ms, record.total_ms, "no engine_ready");
}

#[test]
fn report_ratio_and_chart_bars_follow_the_runs() {
    // Standard: 100 ms total (50 ms device, 50 ms weights); controller: 10 ms, all weights.
    let mut runs = Vec::new();
    for run in 0..3 {
        runs.push(RunRecord::new(
            "single",
            "standard",
            "m",
            0,
            run,
            timeline(&[
                (Anchor::Requested, 0),
                (Anchor::DeviceReady, 50),
                (Anchor::FirstToken, 100),
            ]),
            8,
        ));
        runs.push(RunRecord::new(
            "single",
            "controller",
            "m",
            0,
            run,
            timeline(&[(Anchor::Requested, 0), (Anchor::WeightsRead, 10)]),
            8,
        ));
    }
    let mut results = Results {
        runs,
        ..Default::default()
    };
    results.summarize();
    assert_eq!(results.summary["standard"]["total"].p50_ms, 100.0);
    assert_eq!(results.summary["controller"]["total"].p50_ms, 10.0);
    assert_eq!(results.summary["controller"]["weights_read"].p50_ms, 10.0);

    let md = report::markdown(&results);
    let total = md.lines().find(|l| l.starts_with("| **total** |")).unwrap();
    assert!(
        total.ends_with(" 10.0x |"),
        "standard / controller = 10x: {total}"
    );
    // A phase the controller skips has no ratio rather than a division by zero.
    let device = md
        .lines()
        .find(|l| l.starts_with("| device_ready |"))
        .unwrap();
    assert!(device.ends_with(" - |"), "{device}");

    let svg = chart::svg(&results);
    assert_svg_well_formed(&svg);
    // standard: device_ready + first_token; controller: weights_read. 10 ms is not under a
    // tenth of 100 ms, so there is no zoom panel.
    assert_eq!(nonzero_bars(&results), 3);
    assert_eq!(svg.matches("</title></rect>").count(), 3);
    assert!(!svg.contains("zoom"));

    // A controller at 5 ms is: it is drawn again in a zoom panel on its own scale.
    for run in results.runs.iter_mut().filter(|r| r.mode == "controller") {
        *run = RunRecord::new(
            "single",
            "controller",
            "m",
            0,
            run.run,
            timeline(&[(Anchor::Requested, 0), (Anchor::WeightsRead, 5)]),
            8,
        );
    }
    results.summarize();
    let svg = chart::svg(&results);
    assert_svg_well_formed(&svg);
    assert!(svg.contains("zoom"));
    assert_eq!(nonzero_bars(&results), 4);
    assert_eq!(svg.matches("</title></rect>").count(), 4);
    assert!(
        svg.contains("(full width = 5.0 ms)"),
        "the zoom panel spans the fast mode"
    );
}

#[test]
fn a_generate_child_sends_its_anchors_in_one_frame() {
    let model = fixture(PRENORM);
    let child = Command::new(CLI)
        .args([
            "generate",
            "--frame",
            "--prompt-ids",
            "2",
            "--max-new-tokens",
            "1",
            "--ignore-eos",
            "--model",
        ])
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    let mut stdout = child.stdout.as_slice();
    let report = frame::read(&mut stdout).unwrap();
    assert!(stdout.is_empty(), "nothing but the frame on stdout");
    assert_ordered(&report.timeline, "child");
    let instants: Vec<u64> = Anchor::ALL[1..]
        .iter()
        .map(|a| {
            report
                .timeline
                .get(*a)
                .unwrap_or_else(|| panic!("{} marked by the child", a.name()))
        })
        .collect();
    assert!(instants.windows(2).all(|w| w[0] <= w[1]), "{instants:?}");
    assert_eq!(report.bytes, safetensors_data_bytes(&model));
}

#[test]
fn modes_limit_the_bench_to_the_paths_asked_for_and_unknown_ones_are_refused() {
    let out = scratch("bench-modes");
    let mut options = BenchOptions {
        runs: 2,
        modes: vec!["controller".into(), "controller_nocache".into()],
        ..cpu_bench(vec![fixture(PRENORM).display().to_string()], &out)
    };
    let results = worker_controller::bench::run(&options).unwrap();
    let modes: BTreeSet<&str> = results.runs.iter().map(|r| r.mode.as_str()).collect();
    assert_eq!(modes, BTreeSet::from(["controller", "controller_nocache"]));
    assert_eq!(results.runs.len(), 4, "two runs of each path asked for");
    options.modes = vec!["warp-drive".into()];
    let error = worker_controller::bench::run(&options)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown bench mode `warp-drive`"), "{error}");
}

#[test]
fn the_peer_path_is_timed_only_when_asked_for_and_copies_every_start_from_the_source_worker() {
    let out = scratch("bench-peer");
    let options = BenchOptions {
        runs: 2,
        decode_tokens: 4,
        modes: vec!["controller".into(), "controller_peer".into()],
        ..cpu_bench(vec![fixture(PRENORM).display().to_string()], &out)
    };
    let results = worker_controller::bench::run(&options).unwrap();
    let peer: Vec<&RunRecord> = results
        .runs
        .iter()
        .filter(|r| r.mode == "controller_peer")
        .collect();
    assert_eq!(peer.len(), 2, "two runs of the peer path");
    let host = results
        .runs
        .iter()
        .find(|r| r.mode == "controller")
        .unwrap();
    for run in &peer {
        assert!(run.bytes > 0, "every start copies the weights");
        assert!(run.decode.is_some(), "and decodes after its attach");
        let memory = run.memory.as_ref().expect("memory around the run");
        assert_eq!(memory.after_detach_free_bytes, memory.baseline_free_bytes);
    }
    assert_eq!(
        peer[0].bytes, host.bytes,
        "the same weights as the host path's"
    );
    let default = cpu_bench(vec![fixture(PRENORM).display().to_string()], &out);
    let all = worker_controller::bench::run(&BenchOptions { runs: 1, ..default }).unwrap();
    assert!(
        all.runs.iter().all(|r| r.mode != "controller_peer"),
        "not by default"
    );
}

/// Results of three runs per `(scenario, mode, ms to first token)`.
fn results_of(runs: &[(&str, &str, u64)]) -> Results {
    let mut results = Results::default();
    for &(scenario, mode, ms) in runs {
        for run in 0..3 {
            let t = timeline(&[(Anchor::Requested, 0), (Anchor::FirstToken, ms)]);
            let record = RunRecord::new(scenario, mode, "m", 0, run, t, 8);
            results.runs.push(record);
        }
    }
    results.summarize();
    results
}

#[test]
fn the_guard_fails_every_controller_path_not_faster_than_a_fresh_process() {
    let faster = results_of(&[
        ("single", "standard", 8),
        ("single", "controller", 2),
        ("single", "controller_process", 3),
        ("sequential", "standard", 8),
        ("sequential", "controller", 7),
        // The transformers peer is not a controller path: slower is its normal.
        ("single", "transformers", 12_000),
    ]);
    assert_eq!(check(&faster), Ok(()));
    let slower = results_of(&[
        ("single", "standard", 8),
        ("single", "controller", 2),
        ("single", "controller_process", 9),
        ("sequential", "standard", 8),
        ("sequential", "controller", 8),
    ]);
    let error = check(&slower).unwrap_err();
    let not_faster = |scenario: &str, mode: &str, ms| NotFaster {
        scenario: scenario.into(),
        mode: mode.into(),
        controller_p50_ms: ms,
        standard_p50_ms: 8.0,
    };
    assert_eq!(
        error.0,
        [
            not_faster("sequential", "controller", 8.0),
            not_faster("single", "controller_process", 9.0),
        ],
        "a tie is not faster; the faster path is not named"
    );
    let message = error.to_string();
    for part in [
        "not faster than the standard path",
        "single: controller_process 9.00 ms, standard 8.00 ms (0.9x)",
        "--allow-slower",
    ] {
        assert!(message.contains(part), "{part} in {message}");
    }
    // Nothing to compare against: only the controller timed (`--modes controller`).
    assert_eq!(check(&results_of(&[("single", "controller", 9)])), Ok(()));
}

#[test]
fn a_speed_up_below_one_is_not_printed_as_zero() {
    assert_eq!(ratio(5.1, 12.6), "0.4x");
    assert_eq!(ratio(7.58, 8.46), "0.9x");
    assert_eq!(ratio(1.0, 50.0), "0.02x");
    assert_eq!(ratio(1.0, 1000.0), "<0.01x");
    assert_eq!(ratio(30.0, 2.0), "15.0x");
}

#[test]
fn bench_exits_non_zero_on_a_slower_controller_unless_allowed() {
    let dir = scratch("bench-guard");
    let results = dir.join("results.json");
    let slower = results_of(&[("single", "standard", 7), ("single", "controller", 8)]);
    std::fs::write(&results, serde_json::to_string(&slower).unwrap()).unwrap();
    let render = |allow: bool| {
        let mut command = Command::new(CLI);
        command.arg("bench").arg("--render").arg(&results);
        command.arg("--out").arg(dir.join("out"));
        if allow {
            command.arg("--allow-slower");
        }
        let out = command.stderr(Stdio::piped()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = render(false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("single: controller 8.00 ms, standard 7.00 ms (0.9x)"),
        "{stderr}"
    );
    assert!(
        dir.join("out/report.md").is_file(),
        "the report is still written"
    );
    let (code, stderr) = render(true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("warning (--allow-slower)"), "{stderr}");
    let help = Command::new(CLI)
        .args(["bench", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--allow-slower"), "{help}");
    let _ = std::fs::remove_dir_all(&dir);
}
