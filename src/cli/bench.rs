//! `bench`: cold-start benchmark of the standard path against the worker controller.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wc_actors::{DType, DeviceSpec};

use crate::bench::{run as run_bench, BenchOptions};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Models to load (directories or hub ids), comma-separated; the first is the single-engine one.
    /// Default: the two bundled tests/fixtures models, looked for in the current directory, then
    /// next to the binary and the directories above it.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::NonEmptyStringValueParser::new())]
    models: Option<Vec<String>>,
    /// Single-engine cold starts per path (at least 1).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    runs: usize,
    /// Rounds of the sequential multi-model scenario (at least 1).
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
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
    /// Which scenarios to run: all, single or sequential (cold starts), or concurrency (one
    /// stream against --streams at once on the first model, each --stream-tokens long).
    #[arg(long, default_value = "all", value_parser = ["all", "single", "sequential", "concurrency"])]
    scenario: String,
    /// Streams run at once in the concurrency scenario.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    streams: usize,
    /// Tokens each stream of the concurrency scenario generates.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    stream_tokens: usize,
    /// Skip the transformers peer even when python3 has it.
    #[arg(long)]
    no_peer: bool,
    /// The transformers peer script. Default: bench/peer_transformers.py, looked for in the
    /// current directory, then next to the binary and the directories above it.
    #[arg(long, value_name = "PATH", conflicts_with = "no_peer")]
    peer_script: Option<PathBuf>,
    /// Give every fresh process an empty CUDA JIT cache (a cold start on a fresh machine).
    #[arg(long)]
    cold_jit: bool,
    /// Transformers peer starts (single-engine scenario only; each takes 10+ s).
    #[arg(long, default_value_t = 5)]
    peer_runs: usize,
    /// Pinned staging ring of the controller's CUDA workers, in MiB.
    #[arg(long, default_value_t = 256)]
    staging_mib: u64,
    /// Only re-render report.md and chart.svg into --out from an earlier run's results.json.
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
    /// Host cache of the `controller` worker, in MiB (`controller_nocache` has none).
    #[arg(long, default_value_t = 2048)]
    host_cache_mib: u64,
    /// Tokens each controller-path start streams after its attach, to time decode tokens/s
    /// as a caller sees it (0: no decode).
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Paths to time, comma-separated: standard, controller, controller_nocache,
    /// controller_process, controller_peer. Default: all but controller_peer. Only the
    /// controller paths asked for prewarm a worker (each with its own pinned host cache), so
    /// leaving some out saves host memory. controller_peer attaches each start on a second
    /// worker while a first serves the same model (copied from it: see --peer-source).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// The device of controller_peer's source worker (e.g. cuda:0 with --device cuda:1).
    /// Default: --device (a copy within one device).
    #[arg(long, value_name = "DEVICE")]
    peer_source: Option<DeviceSpec>,
    /// CPUs the controller workers' device threads are kept on, comma-separated (Linux; the
    /// same for every mode, so that modes compare on the same CPUs). Default: anywhere.
    #[arg(long, value_delimiter = ',', value_name = "CPUS")]
    worker_cpus: Vec<usize>,
    /// Exit 0 even when a controller path is not faster (p50 to first token) than the standard
    /// path in some scenario. Without it, bench (and --render, on the results it reads) writes
    /// its files, then fails, naming each such path, so that a regression cannot pass unseen.
    #[arg(long)]
    allow_slower: bool,
    /// A bound the run must meet, PATH<=VALUE or PATH>=VALUE on a field of results.json
    /// (repeatable), e.g. 'summary.controller.total.p50_ms<=350' or
    /// 'scenarios.single.summary.controller.total.p50_ms<=0.35s' (`ms`/`s` units on `_ms`
    /// fields). Checked after the files are written (also with --render); each failing bound
    /// is named and bench exits non-zero.
    #[arg(long, value_name = "PATH<=VALUE")]
    expect: Vec<crate::bench::expect::Expect>,
    /// Refuse to run from a build with uncommitted changes (results.json's meta.commit ends in
    /// `-dirty` and meta.clean is false either way).
    #[arg(long)]
    require_clean: bool,
}

/// The models `bench` starts when `--models` is not given.
pub const DEFAULT_MODELS: [&str; 2] = [
    "tests/fixtures/tiny-opt-prenorm",
    "tests/fixtures/tiny-opt-postnorm-proj",
];

/// The transformers peer script when `--peer-script` is not given.
pub const DEFAULT_PEER_SCRIPT: &str = "bench/peer_transformers.py";

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 would write an empty report)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Its thread-mode paths hold engines on worker threads.
    super::allocator::keep_freed_host_memory(true);
    // The bench reports on its own; logs (of thread-mode workers) only when asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::server::logging::init(super::log_format_from_env());
    }
    if let Some(path) = &args.render {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: crate::bench::results::Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        std::fs::create_dir_all(&args.out)?;
        crate::bench::write_outputs(&results, &args.out)?;
        eprintln!("rendered {}/report.md and chart.svg", args.out.display());
        let guarded = guard(&results, args.allow_slower);
        crate::bench::expect::check_all(&results, &args.expect)?;
        return guarded;
    }
    let commit = env!("WC_GIT_DESCRIBE");
    if !crate::bench::results::is_clean(commit) {
        anyhow::ensure!(
            !args.require_clean,
            "--require-clean: this build is `{commit}`, not a committed tree"
        );
        eprintln!("warning: this build is `{commit}`: results.json will say so (meta.clean false)");
    }
    crate::backend::affinity::check_cpus(&args.worker_cpus)
        .map_err(|reason| anyhow::anyhow!("--worker-cpus: {reason}"))?;
    let models = match args.models {
        Some(models) => models,
        None => DEFAULT_MODELS
            .iter()
            .map(|m| {
                super::bundled::find(m, "the default model", "--models DIR,DIR")
                    .map(|p| p.display().to_string())
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if args.scenario == "concurrency" {
        let options = crate::bench::concurrency::ConcurrencyOptions {
            model: models[0].clone(),
            device: args.device,
            dtype: args.dtype,
            streams: args.streams,
            tokens: args.stream_tokens,
            repeats: args.runs.min(5),
            out: args.out.clone(),
        };
        let result = crate::bench::concurrency::run(&options)?;
        eprint!("{}", crate::bench::concurrency::markdown(&result));
        eprintln!(
            "wrote {}/concurrency.json, concurrency.md",
            args.out.display()
        );
        return Ok(());
    }
    let peer_script = match (&args.peer_script, args.no_peer) {
        (_, true) => None,
        (Some(path), false) => {
            anyhow::ensure!(
                path.is_file(),
                "--peer-script {} is not a file",
                path.display()
            );
            Some(path.clone())
        }
        (None, false) => match super::bundled::find(
            DEFAULT_PEER_SCRIPT,
            "the transformers peer script",
            "--peer-script PATH (or --no-peer)",
        ) {
            Ok(path) => Some(path),
            // Without the script the peer could run: say so. Without transformers it could not.
            Err(e) if crate::bench::standard::peer_available() => return Err(e),
            Err(_) => {
                eprintln!(
                    "transformers peer skipped: python3 with torch and transformers not found"
                );
                None
            }
        },
    };
    let options = BenchOptions {
        models,
        peer_script,
        runs: args.runs,
        rounds: args.rounds,
        device: args.device,
        dtype: args.dtype,
        out: args.out.clone(),
        single: args.scenario != "sequential",
        sequential: args.scenario != "single",
        cold_jit: args.cold_jit,
        // The environment that changes what is measured, then the command line.
        command: ["RAYON_NUM_THREADS", "CUDA_CACHE_PATH"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
            .chain(std::env::args())
            .collect::<Vec<_>>()
            .join(" "),
        exe: None,
        peer_runs: args.peer_runs,
        staging_bytes: args.staging_mib << 20,
        host_cache_bytes: args.host_cache_mib << 20,
        decode_tokens: args.decode_tokens,
        modes: args.modes,
        worker_cpus: args.worker_cpus,
        peer_source: args.peer_source,
    };
    let results = run_bench(&options)?;
    for (name, scenario) in &results.scenarios {
        let Some(standard) = scenario.summary.get("standard") else {
            continue;
        };
        for (mode, summary) in scenario.summary.iter().filter(|(m, _)| *m != "standard") {
            eprintln!(
                "{name}: to first token p50 (p95): standard {:.2} ms ({:.2}), {mode} {:.2} ms ({:.2}); standard / {mode} = {}",
                standard["total"].p50_ms,
                standard["total"].p95_ms,
                summary["total"].p50_ms,
                summary["total"].p95_ms,
                crate::bench::stats::ratio(standard["total"].p50_ms, summary["total"].p50_ms)
            );
        }
    }
    eprintln!(
        "wrote {}/results.json, report.md, chart.svg",
        args.out.display()
    );
    let guarded = guard(&results, args.allow_slower);
    crate::bench::expect::check_all(&results, &args.expect)?;
    guarded
}

/// Fails when a controller path was not faster than the standard path, unless allowed.
fn guard(results: &crate::bench::results::Results, allow_slower: bool) -> anyhow::Result<()> {
    match (crate::bench::guard::check(results), allow_slower) {
        (Err(slower), true) => {
            eprintln!("warning (--allow-slower): {slower}");
            Ok(())
        }
        (result, _) => Ok(result?),
    }
}
