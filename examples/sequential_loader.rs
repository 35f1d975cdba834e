//! The multi-model sequential loader: load a list of models one after another, through the
//! standard path (a fresh process per engine) and through the controller (attach/detach on a
//! prewarmed worker), and print a per-phase table of both on the same anchors.
//!
//! ```sh
//! cargo run --release --example sequential_loader                  # bundled models, 5 rounds, CPU
//! cargo run --release --example sequential_loader -- --rounds 10 --device cuda:0 --dtype f16 /path/a /path/b
//! ```

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use wc_actors::{
    monotonic_ns, Attach, DType, DeviceSpec, ModelSpec, Runtime, RuntimeConfig, WorkerConfig,
};
use worker_controller::bench::frame;
use worker_controller::bench::results::{Results, RunRecord};
use worker_controller::bench::standard::{run_child, start_in_this_process};
use worker_controller::bench::{machine, report, stats};
use worker_controller::CandleBackend;

struct Options {
    models: Vec<String>,
    rounds: usize,
    device: DeviceSpec,
    dtype: Option<DType>,
}

fn parse_args(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        models: Vec::new(),
        rounds: 5,
        device: DeviceSpec::Cpu,
        dtype: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--rounds" => options.rounds = value()?.parse()?,
            "--device" => options.device = value()?.parse()?,
            "--dtype" => options.dtype = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("usage: sequential_loader [--rounds N] [--device cpu|cuda:N] [--dtype f32|f16|bf16] [MODEL ...]");
                std::process::exit(0);
            }
            model => options.models.push(model.to_string()),
        }
    }
    if options.models.is_empty() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        options.models = vec![
            format!("{fixtures}/tiny-opt-prenorm"),
            format!("{fixtures}/tiny-opt-postnorm-proj"),
            format!("{fixtures}/tiny-llama"),
        ];
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let process_started = monotonic_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Child mode: this same executable, started fresh, is one engine on the standard path.
    if args.first().map(String::as_str) == Some("--child") {
        let options = parse_args(&args[1..])?;
        let report = start_in_this_process(
            process_started,
            &options.models[0],
            &options.device,
            options.dtype,
        )?;
        return frame::write(&mut std::io::stdout(), &report);
    }
    let options = parse_args(&args)?;
    let exe = std::env::current_exe()?;
    let mut runs = Vec::new();

    let started = Instant::now();
    for round in 0..options.rounds {
        for (i, model) in options.models.iter().enumerate() {
            let mut child = Command::new(&exe);
            child.args(["--child", "--device", &options.device.to_string(), model]);
            if let Some(dtype) = options.dtype {
                child.args(["--dtype", &dtype.to_string()]);
            }
            let (timeline, bytes) = run_child(child)?;
            runs.push(RunRecord::new(
                "sequential",
                "standard",
                model,
                round,
                i,
                timeline,
                bytes,
            ));
            eprint!("\rstandard path: round {}/{} ", round + 1, options.rounds);
        }
    }
    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());

    let config = RuntimeConfig {
        workers: vec![WorkerConfig {
            device: options.device.clone(),
            count: 1,
            prewarm: wc_actors::PrewarmOptions {
                dtypes: vec![options.dtype.unwrap_or(DType::F32)],
                ..Default::default()
            },
        }],
        ..Default::default()
    };
    let handle =
        Runtime::start_in_background(config, std::sync::Arc::new(CandleBackend::default()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(async {
        handle.wait_ready().await?;
        eprintln!(
            "controller: worker prewarmed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        for round in 0..options.rounds {
            for (i, model) in options.models.iter().enumerate() {
                let spec = ModelSpec {
                    model: model.clone(),
                    dtype: options.dtype,
                    canonical: false,
                    park: None,
                };
                let report = handle.attach(Attach::new(spec)).await?;
                handle.detach(report.engine_id).await?;
                runs.push(RunRecord::new(
                    "sequential",
                    "controller",
                    model,
                    round,
                    i,
                    report.timeline,
                    report.bytes_moved,
                ));
            }
            eprint!("\rcontroller path: round {}/{} ", round + 1, options.rounds);
        }
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    eprintln!();

    let mut results = Results {
        runs,
        ..Default::default()
    };
    results.meta.date = machine::today();
    results.meta.machine = machine::describe();
    results.meta.device = options.device.to_string();
    results.meta.dtype = options
        .dtype
        .map(|d| d.to_string())
        .unwrap_or_else(|| "checkpoint dtype".into());
    results.meta.jit_cache = "n/a".into();
    results.meta.rounds = options.rounds;
    results.meta.models = options.models.clone();
    results.meta.command = std::env::args().collect::<Vec<_>>().join(" ");
    results.summarize();
    let markdown = report::markdown(&results);
    // The floor section needs a bandwidth measurement; the loader prints the phase tables only.
    println!("{}", markdown.split("## Floor").next().unwrap_or(&markdown));
    let summary = &results.scenarios["sequential"].summary;
    let (s, c) = (
        summary["standard"]["total"].p50_ms,
        summary["controller"]["total"].p50_ms,
    );
    println!(
        "attach-to-first-token p50: standard {s:.1} ms, controller {c:.2} ms ({})",
        stats::ratio(s, c)
    );
    Ok(())
}
