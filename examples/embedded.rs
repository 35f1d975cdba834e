//! Embedding the runtime in your own actix program: prewarm workers, attach a model by message,
//! generate (whole and streamed), detach, shut down.
//!
//! ```sh
//! cargo run --release --example embedded
//! ```
//!
//! Inside an actix system use [`Runtime::start`]; from plain tokio or synchronous code use
//! [`Runtime::start_in_background`], which runs its own system on a thread.

use std::sync::Arc;

use wc_actors::{
    Attach, DeviceSpec, GenerateRequest, ModelSpec, PrewarmOptions, Prompt, Runtime, RuntimeConfig,
    WorkerConfig,
};
use worker_controller::CandleBackend;

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let config = RuntimeConfig {
        workers: vec![WorkerConfig {
            device: DeviceSpec::Cpu,
            count: 2,
            prewarm: PrewarmOptions::default(),
        }],
        ..Default::default()
    };
    let handle = Runtime::start(config, Arc::new(CandleBackend::default()));
    for worker in handle.wait_ready().await? {
        println!(
            "worker {} on {}: {:?}",
            worker.worker, worker.device, worker.state
        );
    }

    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-opt-prenorm"
    );
    let spec = ModelSpec {
        model: model.into(),
        dtype: None,
        canonical: false,
        park: None,
    };
    let report = handle.attach(Attach::new(spec).named("zen")).await?;
    println!(
        "attached `{}` on worker {} in {:.2} ms:",
        report.name, report.worker, report.total_ms
    );
    for phase in &report.phases {
        println!("  {:<18} {:>8.3} ms", phase.anchor.name(), phase.ms);
    }

    let request = GenerateRequest {
        prompt: Prompt::Text("Beautiful is better than".into()),
        max_new_tokens: 24,
        ..Default::default()
    };
    let output = handle.generate("zen", request.clone()).await?;
    println!("whole:    {:?}", output.text);

    let mut stream = handle.generate_stream("zen", request);
    print!("streamed: ");
    while let Some(token) = stream.tokens.recv().await {
        print!("{}", token.text);
    }
    println!();
    stream.output.await?;

    let detached = handle.detach("zen").await?;
    println!(
        "detached in {:.2} ms; memory free before/after: {} / {} bytes",
        detached.detach_ms,
        detached.memory_before_attach.free_bytes,
        detached.memory_after_detach.free_bytes
    );
    handle.shutdown().await;
    Ok(())
}
