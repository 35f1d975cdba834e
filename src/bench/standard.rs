//! The standard path, and the Python peer: a fresh process per engine start, its anchors sent back.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::Deserialize;
use wc_actors::{monotonic_ns, Anchor, DType, DeviceSpec, Timeline};

use super::frame;

/// How to start a fresh process for one engine start.
pub struct ChildOptions<'a> {
    pub device: &'a DeviceSpec,
    pub dtype: Option<DType>,
    /// An empty CUDA JIT cache directory for this child (a cold start), or `None` for the
    /// driver's default cache.
    pub jit_cache_dir: Option<&'a Path>,
}

fn apply_env(command: &mut Command, options: &ChildOptions) {
    if let Some(dir) = options.jit_cache_dir {
        command.env("CUDA_CACHE_PATH", dir);
    }
}

/// Runs `exe generate` for one token in a fresh process; `requested` is taken just before spawning.
pub fn run_standard(
    exe: &Path,
    model: &str,
    options: &ChildOptions,
) -> anyhow::Result<(Timeline, u64)> {
    let mut command = Command::new(exe);
    command.args([
        "generate",
        "--frame",
        "--prompt-ids",
        "2",
        "--max-new-tokens",
        "1",
        "--ignore-eos",
    ]);
    command.args(["--model", model, "--device", &options.device.to_string()]);
    if let Some(dtype) = options.dtype {
        command.args(["--dtype", &dtype.to_string()]);
    }
    apply_env(&mut command, options);
    run_child(command)
}

/// Spawns `command`, which must write one [`frame::ChildReport`] on stdout, and returns its
/// anchors with `requested` taken just before the spawn.
pub fn run_child(mut command: Command) -> anyhow::Result<(Timeline, u64)> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let requested = monotonic_ns();
    let mut child = command
        .spawn()
        .context("spawning the standard-path process")?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let report = frame::read(&mut stdout);
    let output = child.wait_with_output()?;
    if !output.status.success() || report.is_err() {
        bail!(
            "standard-path process failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let report = report?;
    let mut timeline = report.timeline;
    timeline.mark_at(Anchor::Requested, requested);
    Ok((timeline, report.bytes))
}

#[derive(Deserialize)]
struct PeerReport {
    marks: BTreeMap<String, u64>,
    bytes: u64,
}

/// The standard path inside a fresh process: open the device (no prewarm; on CUDA a pinned
/// staging ring, as any fresh process of ours loads), load `model`, make one token from `</s>`;
/// the anchors start at this process's start.
pub fn start_in_this_process(
    process_started_ns: u64,
    model: &str,
    device: &DeviceSpec,
    dtype: Option<DType>,
) -> anyhow::Result<frame::ChildReport> {
    let mut timeline = Timeline::default();
    timeline.mark_at(Anchor::ProcessStarted, process_started_ns);
    let mut opened = crate::backend::CandleDevice::open_fresh(device)?;
    timeline.mark(Anchor::DeviceReady);
    let spec = wc_actors::ModelSpec {
        model: model.to_string(),
        dtype,
        canonical: false,
        park: None,
    };
    let (mut engine, bytes) = opened.load_engine(&spec, &mut timeline)?;
    engine.warm_up()?;
    opened.device.synchronize()?;
    timeline.mark(Anchor::FirstToken);
    Ok(frame::ChildReport { timeline, bytes })
}

/// Whether `python3` with torch and transformers is on this machine.
pub fn peer_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `bench/peer_transformers.py` once: transformers `from_pretrained(..).to(device)`, one token.
pub fn run_peer(
    script: &Path,
    model: &str,
    options: &ChildOptions,
) -> anyhow::Result<(Timeline, u64)> {
    let mut command = Command::new("python3");
    command
        .arg(script)
        .args(["--model", model, "--device", &options.device.to_string()]);
    if let Some(dtype) = options.dtype {
        command.args(["--dtype", &dtype.to_string()]);
    }
    apply_env(&mut command, options);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let requested = monotonic_ns();
    let mut child = command.spawn().context("spawning python3")?;
    let mut text = String::new();
    child
        .stdout
        .take()
        .context("peer stdout")?
        .read_to_string(&mut text)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "transformers peer failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let report: PeerReport = serde_json::from_str(text.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("parsing the peer's report {text:?}"))?;
    let mut timeline = Timeline::default();
    timeline.mark_at(Anchor::Requested, requested);
    for anchor in Anchor::ALL {
        if let Some(ns) = report.marks.get(anchor.name()) {
            timeline.mark_at(anchor, *ns);
        }
    }
    Ok((timeline, report.bytes))
}
