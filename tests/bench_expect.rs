//! `bench --expect` bounds and the dirty-build mark, on a committed results.json re-rendered
//! with `--render` (no model is started).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A committed run of a `-dirty` build (benchmarks/cpu-2026-11-28-overhead/README.md).
const DIRTY: &str = "benchmarks/cpu-2026-11-28-overhead/tiny-opt-free/results.json";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wc-bench-expect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn render(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(["bench", "--allow-slower", "--render"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("run bench --render")
}

#[test]
fn a_dirty_build_is_never_written_as_clean() {
    let dir = scratch("dirty");
    // A file that claims to be clean: the claim is not carried over.
    let mut results: Value =
        serde_json::from_str(&std::fs::read_to_string(DIRTY).unwrap()).unwrap();
    results["meta"]["clean"] = Value::Bool(true);
    let input = dir.join("in.json");
    std::fs::write(&input, results.to_string()).unwrap();
    let run = render(&input, &dir, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(written["meta"]["commit"], "907e9218c6-dirty");
    assert_eq!(written["meta"]["clean"], false);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("907e9218c6-dirty (NOT A CLEAN BUILD"),
        "{report}"
    );
}

#[test]
fn expect_bounds_pass_and_fail_the_run() {
    let dir = scratch("expect");
    let input = Path::new(DIRTY);
    // controller.total.p50_ms is 3.67 ms in that file.
    let ok = render(
        input,
        &dir,
        &["--expect", "summary.controller.total.p50_ms<=0.004s"],
    );
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert!(
        stderr.contains("expect summary.controller.total.p50_ms<=0.004s: ok"),
        "{stderr}"
    );
    let bad = render(
        input,
        &dir,
        &[
            "--expect",
            "summary.controller.total.p50_ms<=3ms",
            "--expect",
            "meta.runs>=30",
        ],
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 of 2 --expect bound(s) failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("summary.controller.total.p50_ms<=3ms: measured 3.67"),
        "{stderr}"
    );
    // Not a bound: refused by the parser.
    let typo = render(
        input,
        &dir,
        &["--expect", "summary.controller.total.p50_ms<3"],
    );
    assert!(!typo.status.success());
}
