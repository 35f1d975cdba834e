//! `worker-controller bench`: cold starts through the standard path and the controller, on the same anchors.
//!
//! Scenarios: one engine started `runs` times, and a list of models loaded one after another for
//! `rounds` rounds. The standard path is a fresh `worker-controller generate` process per start
//! that creates its device during startup; the controller path attaches to a prewarmed worker,
//! makes the first token and detaches. Writes `results.json`, `report.md` and `chart.svg`.

pub mod chart;
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
use results::{Floor, Meta, Results, RunMemory, RunRecord};
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
    /// Pinned staging memory of the controller's workers.
    pub staging_bytes: u64,
    /// Host cache of the `controller` worker (`controller_nocache` has none).
    pub host_cache_bytes: u64,
    /// The paths to time, by name (`standard`, `controller`, `controller_nocache`,
    /// `controller_process`); empty: all of them. The peer runs when `peer_script` is set.
    pub modes: Vec<String>,
}

/// Every path's name, in the order they run.
pub const MODE_NAMES: [&str; 4] = [
    "standard",
    "controller",
    "controller_nocache",
    "controller_process",
];

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

/// What one start gave: its anchors, the weight bytes it moved and, on the controller's paths,
/// the memory around it.
type Started = (Timeline, u64, Option<RunMemory>);

struct Bench<'a> {
    options: &'a BenchOptions,
    exe: PathBuf,
    peer_script: Option<PathBuf>,
    controller: Option<ControllerPath>,
    controller_nocache: Option<ControllerPath>,
    controller_process: Option<ControllerPath>,
    scratch: PathBuf,
    runs: Vec<RunRecord>,
}

impl Bench<'_> {
    fn start(&mut self, mode: Mode, model: &str) -> anyhow::Result<Started> {
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
        let controller = match mode {
            Mode::Controller => self.controller.as_mut(),
            Mode::ControllerNoCache => self.controller_nocache.as_mut(),
            Mode::ControllerProcess => self.controller_process.as_mut(),
            Mode::Standard | Mode::Transformers => None,
        };
        let result = match (mode, controller) {
            (_, Some(controller)) => controller.start_engine(model),
            (Mode::Transformers, None) => run_peer(
                self.peer_script.as_deref().expect("peer script"),
                model,
                &child,
            )
            .map(|(timeline, bytes)| (timeline, bytes, None)),
            _ => run_standard(&self.exe, model, &child)
                .map(|(timeline, bytes)| (timeline, bytes, None)),
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
        let (timeline, bytes, memory) = self
            .start(mode, model)
            .with_context(|| format!("{scenario} run {run}, {} path, {model}", mode.name()))?;
        let mut record = RunRecord::new(scenario, mode.name(), model, round, run, timeline, bytes);
        record.memory = memory;
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

    /// The paths this bench times, in order.
    fn modes(&self) -> Vec<Mode> {
        Self::MODES
            .into_iter()
            .filter(|m| {
                self.options.modes.is_empty() || self.options.modes.iter().any(|n| n == m.name())
            })
            .collect()
    }

    /// Scenario 1: the first model, started `runs` times through each path, interleaved; the
    /// transformers peer for its first `peer_runs`.
    fn single(&mut self) -> anyhow::Result<()> {
        let model = self.options.models[0].clone();
        for run in 0..self.options.runs {
            for mode in self.modes() {
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
            for mode in self.modes() {
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
    for mode in &options.modes {
        anyhow::ensure!(
            MODE_NAMES.contains(&mode.as_str()),
            "unknown mode `{mode}`: expected one of {}",
            MODE_NAMES.join(", ")
        );
    }
    let wanted = |name: &str| options.modes.is_empty() || options.modes.iter().any(|m| m == name);
    eprintln!(
        "prewarming the controller workers on {} (host cache on / off / in a process, as asked) ...",
        options.device
    );
    let (device, dtype, staging) = (&options.device, options.dtype, options.staging_bytes);
    let cache = options.host_cache_bytes;
    let start = |name: &str, cache: u64, exe: Option<&Path>| {
        wanted(name)
            .then(|| ControllerPath::start(device, dtype, staging, cache, exe))
            .transpose()
    };
    let controller = start("controller", cache, None)?;
    let controller_nocache = start("controller_nocache", 0, None)?;
    let controller_process = start("controller_process", cache, Some(&exe))?;
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
    let prewarm_ms = [
        &bench.controller,
        &bench.controller_nocache,
        &bench.controller_process,
    ]
    .iter()
    .find_map(|c| c.as_ref().map(|c| c.prewarm_ms))
    .unwrap_or(0.0);
    for controller in [
        &mut bench.controller,
        &mut bench.controller_nocache,
        &mut bench.controller_process,
    ] {
        if let Some(controller) = controller.as_mut() {
            controller.stop();
        }
    }
    let _ = std::fs::remove_dir_all(&bench.scratch);

    let (method, bandwidth) = floor::measure_bandwidth(&options.device)?;
    let mut floor = Floor {
        method,
        bandwidth_gb_per_s: bandwidth,
        ..Default::default()
    };
    for run in bench
        .runs
        .iter()
        .filter(|r| r.mode.starts_with("controller"))
    {
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
            controller_prewarm_ms: prewarm_ms,
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
