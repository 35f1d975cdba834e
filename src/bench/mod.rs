//! `worker-controller bench`: cold starts through the standard path and the controller, on the same anchors.
//!
//! Scenarios: one engine started `runs` times, and a list of models loaded one after another for
//! `rounds` rounds; apart from those, `concurrency` ([`concurrency`]) times one stream against
//! many at once on one engine. The standard path is a fresh `worker-controller generate` process per start
//! that creates its device during startup; the controller path attaches to a prewarmed worker,
//! makes the first token and detaches. Writes `results.json`, `report.md` and `chart.svg`.

pub mod chart;
pub mod concurrency;
pub mod floor;
pub mod frame;
pub mod machine;
pub mod report;
pub mod results;
pub mod standard;
pub mod stats;

mod controller_path;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use wc_actors::{DType, DeviceSpec, Timeline};

use controller_path::ControllerPath;
use results::{Floor, Meta, Results, RunRecord};
use standard::{peer_available, run_peer, run_standard, ChildOptions};

/// What to measure and where.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub models: Vec<String>,
    pub runs: usize,
    pub rounds: usize,
    pub device: DeviceSpec,
    pub dtype: Option<DType>,
    pub out: PathBuf,
    pub single: bool,
    pub sequential: bool,
    /// The transformers peer script (`bench/peer_transformers.py`): also time the peer when
    /// python3 has torch and transformers; `None`: no peer.
    pub peer_script: Option<PathBuf>,
    /// Give every fresh process an empty CUDA JIT cache.
    pub cold_jit: bool,
    pub command: String,
    /// The `worker-controller` binary for standard-path processes (default: this executable).
    pub exe: Option<PathBuf>,
    /// Transformers peer starts in the single-engine scenario (each is a 10+ s Python start).
    pub peer_runs: usize,
    /// Size of each pinned staging buffer of the controller's workers.
    pub staging_bytes: u64,
    /// Host cache of the `controller` worker (`controller_nocache` has none).
    pub host_cache_bytes: u64,
}

/// One way of starting an engine, timed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Standard,
    /// Attach as configured by default, host cache on: a re-attached model skips the disk.
    Controller,
    /// Attach with the host cache off: weights come from the page cache every time.
    ControllerNoCache,
    /// As `Controller`, with the worker in its own process (the server's default isolation).
    ControllerProcess,
    Transformers,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Standard => "standard",
            Mode::Controller => "controller",
            Mode::ControllerNoCache => "controller_nocache",
            Mode::ControllerProcess => "controller_process",
            Mode::Transformers => "transformers",
        }
    }
}

struct Bench<'a> {
    options: &'a BenchOptions,
    exe: PathBuf,
    peer_script: Option<PathBuf>,
    controller: ControllerPath,
    controller_nocache: ControllerPath,
    controller_process: ControllerPath,
    scratch: PathBuf,
    runs: Vec<RunRecord>,
}

impl Bench<'_> {
    fn start(&mut self, mode: Mode, model: &str) -> anyhow::Result<(Timeline, u64)> {
        let jit_dir = self.options.cold_jit.then(|| {
            let dir = self.scratch.join(format!("jit-{}", self.runs.len()));
            let _ = std::fs::create_dir_all(&dir);
            dir
        });
        let child = ChildOptions {
            device: &self.options.device,
            dtype: self.options.dtype,
            jit_cache_dir: jit_dir.as_deref(),
        };
        let result = match mode {
            Mode::Standard => run_standard(&self.exe, model, &child),
            Mode::Transformers => run_peer(
                self.peer_script.as_deref().expect("peer script"),
                model,
                &child,
            ),
            Mode::Controller => self.controller.start_engine(model),
            Mode::ControllerNoCache => self.controller_nocache.start_engine(model),
            Mode::ControllerProcess => self.controller_process.start_engine(model),
        };
        if let Some(dir) = jit_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    fn record(
        &mut self,
        scenario: &str,
        mode: Mode,
        model: &str,
        round: usize,
        run: usize,
    ) -> anyhow::Result<()> {
        let (timeline, bytes) = self
            .start(mode, model)
            .with_context(|| format!("{scenario} run {run}, {} path, {model}", mode.name()))?;
        let record = RunRecord::new(scenario, mode.name(), model, round, run, timeline, bytes);
        eprint!(
            "\r[{scenario}] round {round} run {run}: {:<12} {:>9.1} ms   ",
            mode.name(),
            record.total_ms
        );
        let _ = std::io::stderr().flush();
        self.runs.push(record);
        Ok(())
    }

    const MODES: [Mode; 4] = [
        Mode::Standard,
        Mode::Controller,
        Mode::ControllerNoCache,
        Mode::ControllerProcess,
    ];

    /// Scenario 1: the first model, started `runs` times through each path, interleaved; the
    /// transformers peer for its first `peer_runs`.
    fn single(&mut self) -> anyhow::Result<()> {
        let model = self.options.models[0].clone();
        for run in 0..self.options.runs {
            for mode in Self::MODES {
                self.record("single", mode, &model, 0, run)?;
            }
            if self.peer_script.is_some() && run < self.options.peer_runs {
                self.record("single", Mode::Transformers, &model, 0, run)?;
            }
        }
        eprintln!();
        Ok(())
    }

    /// Scenario 2: every model in turn, `rounds` times, through each path.
    fn sequential(&mut self) -> anyhow::Result<()> {
        for round in 0..self.options.rounds {
            for mode in Self::MODES {
                for (i, model) in self.options.models.clone().iter().enumerate() {
                    self.record("sequential", mode, model, round, i)?;
                }
            }
        }
        eprintln!();
        Ok(())
    }
}

/// Runs the bench and writes its three files; returns the results.
pub fn run(options: &BenchOptions) -> anyhow::Result<Results> {
    anyhow::ensure!(!options.models.is_empty(), "give at least one model");
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let exe = match &options.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()?,
    };
    anyhow::ensure!(
        options.runs > 0 || !options.single,
        "runs must be at least 1"
    );
    anyhow::ensure!(
        options.rounds > 0 || !options.sequential,
        "rounds must be at least 1"
    );
    let peer_script = options.peer_script.clone().filter(|_| peer_available());
    if options.peer_script.is_some() && peer_script.is_none() {
        eprintln!("transformers peer skipped: python3 with torch and transformers not found");
    }
    let jit_cache = match (&options.device, options.cold_jit) {
        (DeviceSpec::Cpu, _) => "n/a (CPU)".to_string(),
        (_, true) => "cold (an empty CUDA_CACHE_PATH for every fresh process)".to_string(),
        (_, false) => format!("{} at start", machine::jit_cache_state()),
    };
    eprintln!(
        "prewarming three controller workers on {} (host cache on / off / in a process) ...",
        options.device
    );
    let (device, dtype, staging) = (&options.device, options.dtype, options.staging_bytes);
    let cache = options.host_cache_bytes;
    let controller = ControllerPath::start(device, dtype, staging, cache, None)?;
    let controller_nocache = ControllerPath::start(device, dtype, staging, 0, None)?;
    let controller_process = ControllerPath::start(device, dtype, staging, cache, Some(&exe))?;
    let scratch = std::env::temp_dir().join(format!("wc-bench-{}", std::process::id()));
    let mut bench = Bench {
        options,
        exe,
        peer_script,
        controller,
        controller_nocache,
        controller_process,
        scratch,
        runs: Vec::new(),
    };
    if options.single {
        bench.single()?;
    }
    if options.sequential {
        bench.sequential()?;
    }
    bench.controller.stop();
    bench.controller_nocache.stop();
    bench.controller_process.stop();
    let _ = std::fs::remove_dir_all(&bench.scratch);

    let (method, bandwidth) = floor::measure_bandwidth(&options.device)?;
    let mut floor = Floor {
        method,
        bandwidth_gb_per_s: bandwidth,
        ..Default::default()
    };
    for run in bench.runs.iter().filter(|r| r.mode == "controller") {
        floor.bytes.insert(run.model.clone(), run.bytes);
        floor.floor_ms.insert(
            run.model.clone(),
            run.bytes as f64 / (bandwidth * 1e9) * 1e3,
        );
    }
    let mut results = Results {
        meta: Meta {
            date: machine::today(),
            commit: env!("WC_GIT_DESCRIBE").to_owned(),
            command: options.command.clone(),
            machine: machine::describe(),
            device: options.device.to_string(),
            dtype: options
                .dtype
                .map(|d| d.to_string())
                .unwrap_or_else(|| "checkpoint dtype".into()),
            jit_cache,
            runs: options.runs,
            rounds: options.rounds,
            models: options.models.clone(),
            controller_prewarm_ms: bench.controller.prewarm_ms,
        },
        floor,
        runs: bench.runs,
        ..Default::default()
    };
    results.summarize();
    write_outputs(&results, &options.out)?;
    Ok(results)
}

/// Writes `results.json`, `report.md` and `chart.svg` into `out`.
pub fn write_outputs(results: &Results, out: &Path) -> anyhow::Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(out.join("report.md"), report::markdown(results))?;
    std::fs::write(out.join("chart.svg"), chart::svg(results))?;
    Ok(())
}
