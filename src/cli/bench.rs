//! `bench`: cold-start benchmark of the standard path against the worker controller.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wc_actors::{DType, DeviceSpec};

use crate::bench::{run as run_bench, BenchOptions};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Models to load (directories or hub ids), comma-separated; the first is the single-engine one.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tests/fixtures/tiny-opt-prenorm,tests/fixtures/tiny-opt-postnorm-proj"
    )]
    models: Vec<String>,
    /// Single-engine cold starts per path.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Rounds of the sequential multi-model scenario.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// f32, f16 or bf16 (default: each checkpoint's own).
    #[arg(long)]
    dtype: Option<DType>,
    /// Directory for results.json, report.md and chart.svg.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Which scenarios to run: all, single or sequential.
    #[arg(long, default_value = "all", value_parser = ["all", "single", "sequential"])]
    scenario: String,
    /// Skip the transformers peer even when python3 has it.
    #[arg(long)]
    no_peer: bool,
    /// Give every fresh process an empty CUDA JIT cache (a cold start on a fresh machine).
    #[arg(long)]
    cold_jit: bool,
    /// Transformers peer starts (single-engine scenario only; each takes 10+ s).
    #[arg(long, default_value_t = 5)]
    peer_runs: usize,
    /// Size of each pinned staging buffer of the controller's CUDA workers, in MiB.
    #[arg(long, default_value_t = 1024)]
    staging_mib: u64,
    /// Only re-render report.md and chart.svg into --out from an earlier run's results.json.
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
    /// Host cache of the `controller` worker, in MiB (`controller_nocache` has none).
    #[arg(long, default_value_t = 2048)]
    host_cache_mib: u64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.render {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: crate::bench::results::Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        std::fs::create_dir_all(&args.out)?;
        crate::bench::write_outputs(&results, &args.out)?;
        eprintln!("rendered {}/report.md and chart.svg", args.out.display());
        return Ok(());
    }
    let options = BenchOptions {
        models: args.models,
        runs: args.runs,
        rounds: args.rounds,
        device: args.device,
        dtype: args.dtype,
        out: args.out.clone(),
        single: args.scenario != "sequential",
        sequential: args.scenario != "single",
        peer: !args.no_peer,
        cold_jit: args.cold_jit,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        exe: None,
        peer_runs: args.peer_runs,
        staging_bytes: args.staging_mib << 20,
        host_cache_bytes: args.host_cache_mib << 20,
    };
    let results = run_bench(&options)?;
    for (name, scenario) in &results.scenarios {
        let Some(standard) = scenario.summary.get("standard") else {
            continue;
        };
        for (mode, summary) in scenario.summary.iter().filter(|(m, _)| *m != "standard") {
            eprintln!(
                "{name}: to first token p50 (p95): standard {:.2} ms ({:.2}), {mode} {:.2} ms ({:.2}); standard / {mode} = {:.1}x",
                standard["total"].p50_ms,
                standard["total"].p95_ms,
                summary["total"].p50_ms,
                summary["total"].p95_ms,
                standard["total"].p50_ms / summary["total"].p50_ms.max(1e-9)
            );
        }
    }
    eprintln!(
        "wrote {}/results.json, report.md, chart.svg",
        args.out.display()
    );
    Ok(())
}
