//! `worker-controller bench`: cold starts through the standard path and the controller, on the same anchors.
//!
//! Scenarios: one engine started `runs` times, and a list of models loaded one after another for
//! `rounds` rounds; apart from those, `concurrency` ([`concurrency`]) times one stream against
//! many at once on one engine. The standard path is a fresh `worker-controller generate` process per start
//! that creates its device during startup; the controller path attaches to a prewarmed worker,
//! makes the first token and detaches. Writes `results.json`, `report.md` and `chart.svg`.

pub mod chart;
pub mod concurrency;
pub mod decode;
pub mod expect;
pub mod floor;
pub mod frame;
pub mod guard;
pub mod machine;
pub mod progress;
pub mod report;
pub mod results;
pub mod standard;
pub mod stats;

mod controller_path;

use std::path::{Path, PathBuf};

use anyhow::Context;
use wc_actors::{DType, DeviceSpec, PrewarmOptions, Timeline};

use controller_path::ControllerPath;
use decode::DecodeRecord;
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
    /// Size of each pinned staging buffer of the controller's workers.
    pub staging_bytes: u64,
    /// Host cache of the `controller` worker (`controller_nocache` has none).
    pub host_cache_bytes: u64,
    /// Tokens each controller-path start streams after its attach, to time decode (0: none).
    pub decode_tokens: usize,
    /// CPUs the controller workers' device threads are kept on (`[prewarm] cpus`; empty:
    /// anywhere), the same for every mode so that no mode is timed on a faster CPU.
    pub worker_cpus: Vec<usize>,
    /// Which paths to time, by name (`standard`, `controller`, `controller_nocache`,
    /// `controller_process`, `controller_peer`); empty: all but `controller_peer`.
    pub modes: Vec<String>,
    /// The device of `controller_peer`'s source worker (default: `device`, a copy within it).
    pub peer_source: Option<DeviceSpec>,
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
    /// Attached on a second worker while a first (on `peer_source`) serves the same model:
    /// copied from the first worker's device. Timed only when asked for by name.
    ControllerPeer,
    Transformers,
}

impl Mode {
    /// The paths a bench can time, in the order each run takes them (the peer aside).
    const TIMED: [Mode; 4] = [
        Mode::Standard,
        Mode::Controller,
        Mode::ControllerNoCache,
        Mode::ControllerProcess,
    ];

    /// Paths timed only when named (`controller_peer` holds the model on two workers).
    const ON_REQUEST: [Mode; 1] = [Mode::ControllerPeer];

    fn name(self) -> &'static str {
        match self {
            Mode::Standard => "standard",
            Mode::Controller => "controller",
            Mode::ControllerNoCache => "controller_nocache",
            Mode::ControllerProcess => "controller_process",
            Mode::ControllerPeer => "controller_peer",
            Mode::Transformers => "transformers",
        }
    }
}

/// What one start gave: its anchors, the weight bytes it moved and, on the controller's paths,
/// its decode timing (when asked for) and the memory around it.
type Started = (Timeline, u64, Option<DecodeRecord>, Option<RunMemory>);

struct Bench<'a> {
    options: &'a BenchOptions,
    exe: PathBuf,
    peer_script: Option<PathBuf>,
    /// The controller paths asked for, each with its own prewarmed worker.
    controller: Option<ControllerPath>,
    controller_nocache: Option<ControllerPath>,
    controller_process: Option<ControllerPath>,
    controller_peer: Option<ControllerPath>,
    scratch: PathBuf,
    runs: Vec<RunRecord>,
    /// The paths timed, in order.
    modes: Vec<Mode>,
    /// Each run as it finishes: redrawn in place on a terminal, a line each otherwise.
    progress: progress::ProgressLine<std::io::Stderr>,
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
        let decode = self.options.decode_tokens;
        let controller = match mode {
            Mode::Controller => self.controller.as_mut(),
            Mode::ControllerNoCache => self.controller_nocache.as_mut(),
            Mode::ControllerProcess => self.controller_process.as_mut(),
            Mode::ControllerPeer => self.controller_peer.as_mut(),
            Mode::Standard | Mode::Transformers => None,
        };
        let result = match (mode, controller) {
            (_, Some(controller)) => controller.start_engine(model, decode),
            (Mode::Transformers, None) => run_peer(
                self.peer_script.as_deref().expect("peer script"),
                model,
                &child,
            )
            .map(|(t, b)| (t, b, None, None)),
            _ => run_standard(&self.exe, model, &child).map(|(t, b)| (t, b, None, None)),
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
        let (timeline, bytes, decode, memory) = self
            .start(mode, model)
            .with_context(|| format!("{scenario} run {run}, {} path, {model}", mode.name()))?;
        let mut record = RunRecord::new(scenario, mode.name(), model, round, run, timeline, bytes);
        record.decode = decode;
        record.memory = memory;
        self.progress.line(&format!(
            "[{scenario}] round {round} run {run}: {:<12} {:>9.1} ms",
            mode.name(),
            record.total_ms
        ));
        self.runs.push(record);
        Ok(())
    }

    /// Scenario 1: the first model, started `runs` times through each path, interleaved; the
    /// transformers peer for its first `peer_runs`.
    fn single(&mut self) -> anyhow::Result<()> {
        let model = self.options.models[0].clone();
        for run in 0..self.options.runs {
            for mode in self.modes.clone() {
                self.record("single", mode, &model, 0, run)?;
            }
            if self.peer_script.is_some() && run < self.options.peer_runs {
                self.record("single", Mode::Transformers, &model, 0, run)?;
            }
        }
        self.progress.finish();
        Ok(())
    }

    /// Scenario 2: every model in turn, `rounds` times, through each path.
    fn sequential(&mut self) -> anyhow::Result<()> {
        for round in 0..self.options.rounds {
            for mode in self.modes.clone() {
                for (i, model) in self.options.models.clone().iter().enumerate() {
                    self.record("sequential", mode, model, round, i)?;
                }
            }
        }
        self.progress.finish();
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
    let modes = timed_modes(&options.modes)?;
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
        "prewarming the controller workers on {} (host cache on / off / in a process, as asked) ...",
        options.device
    );
    let (device, dtype) = (&options.device, options.dtype);
    let cache = options.host_cache_bytes;
    // Only the paths asked for get a worker: each holds its own pinned host cache.
    let start = |mode: Mode, cache: u64, exe: Option<&Path>| {
        let prewarm = PrewarmOptions {
            dtypes: vec![dtype.unwrap_or(DType::F32)],
            staging_bytes: options.staging_bytes,
            host_cache_bytes: cache,
            cpus: options.worker_cpus.clone(),
            ..PrewarmOptions::default()
        };
        modes
            .contains(&mode)
            .then(|| ControllerPath::start(device, dtype, prewarm, exe))
            .transpose()
    };
    let controller = start(Mode::Controller, cache, None)?;
    let controller_nocache = start(Mode::ControllerNoCache, 0, None)?;
    let controller_process = start(Mode::ControllerProcess, cache, Some(&exe))?;
    let controller_peer = modes
        .contains(&Mode::ControllerPeer)
        .then(|| {
            let prewarm = PrewarmOptions {
                dtypes: vec![dtype.unwrap_or(DType::F32)],
                staging_bytes: options.staging_bytes,
                host_cache_bytes: cache,
                cpus: options.worker_cpus.clone(),
                ..PrewarmOptions::default()
            };
            let source = options.peer_source.as_ref().unwrap_or(device);
            ControllerPath::start_peer(source, device, dtype, prewarm)
        })
        .transpose()?;
    let scratch = std::env::temp_dir().join(format!("wc-bench-{}", std::process::id()));
    let mut bench = Bench {
        options,
        exe,
        peer_script,
        controller,
        controller_nocache,
        controller_process,
        controller_peer,
        scratch,
        runs: Vec::new(),
        modes,
        progress: progress::ProgressLine::stderr(),
    };
    if options.single {
        bench.single()?;
    }
    if options.sequential {
        bench.sequential()?;
    }
    let controllers = [
        &mut bench.controller,
        &mut bench.controller_nocache,
        &mut bench.controller_process,
        &mut bench.controller_peer,
    ];
    let mut prewarm_ms = 0.0;
    for controller in controllers.into_iter().flatten() {
        prewarm_ms = controller.prewarm_ms;
        controller.stop();
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
            clean: results::is_clean(env!("WC_GIT_DESCRIBE")),
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

/// The paths named in `names` (all of them when empty), in the order runs take them.
fn timed_modes(names: &[String]) -> anyhow::Result<Vec<Mode>> {
    let known = || Mode::TIMED.into_iter().chain(Mode::ON_REQUEST);
    for name in names {
        anyhow::ensure!(
            known().any(|m| m.name() == name),
            "unknown bench mode `{name}`: expected one of {}",
            known().map(Mode::name).collect::<Vec<_>>().join(", ")
        );
    }
    if names.is_empty() {
        return Ok(Mode::TIMED.to_vec());
    }
    Ok(known()
        .filter(|m| names.iter().any(|n| n == m.name()))
        .collect())
}

/// Writes `results.json`, `report.md` and `chart.svg` into `out`.
/// `meta.clean` is derived from `meta.commit` here: a file cannot call a `-dirty` build clean.
pub fn write_outputs(results: &Results, out: &Path) -> anyhow::Result<()> {
    let mut results = results.clone();
    results.meta.clean = results::is_clean(&results.meta.commit);
    let results = &results;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(out.join("report.md"), report::markdown(results))?;
    std::fs::write(out.join("chart.svg"), chart::svg(results))?;
    Ok(())
}
