//! `make-model` tells how far the weights are as it writes them: with stderr not a terminal (a
//! log, a pipe, CI) as plain lines, one per tenth at most, ending at 100% before the summary.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wc-progress-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `make-model --preset <preset>` with stderr piped; returns stderr.
fn make_model(preset: &str) -> String {
    let dir = scratch(preset);
    let out = Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(["make-model", "--preset", preset, "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
    stderr
}

/// The percentages of the `weights: ... (N%)` lines, in order.
fn percentages(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.starts_with("weights: "))
        .map(|l| {
            let open = l.rfind('(').expect("a percentage");
            l[open + 1..].trim_end_matches("%)").parse().unwrap()
        })
        .collect()
}

#[test]
fn a_streamed_preset_writes_plain_progress_lines_up_to_100_percent_then_the_summary() {
    let stderr = make_model("llama-tiny");
    assert!(
        !stderr.contains('\r'),
        "no carriage returns off a terminal: {stderr:?}"
    );
    let percent = percentages(&stderr);
    assert!(percent.len() >= 3, "start, some steps, the end: {stderr}");
    assert!(percent.len() <= 11, "at most one line per tenth: {stderr}");
    assert_eq!(percent[0], 0, "{stderr}");
    assert_eq!(*percent.last().unwrap(), 100, "{stderr}");
    assert!(
        percent.windows(2).all(|w| w[0] / 10 < w[1] / 10),
        "each line a new tenth: {percent:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    let last = lines.len() - 1;
    assert!(
        lines[last - 1].ends_with("(100%)") && lines[last].starts_with("wrote "),
        "100%, then the summary: {stderr}"
    );
    let line = lines[last - 1];
    assert!(
        line.contains(" kB of ") && line.ends_with("kB (100%)"),
        "{line}"
    );
}

#[test]
fn a_preset_written_at_once_reports_once_when_done() {
    let stderr = make_model("tiny");
    assert!(!stderr.contains('\r'), "{stderr:?}");
    assert_eq!(percentages(&stderr), [100], "{stderr}");
}
