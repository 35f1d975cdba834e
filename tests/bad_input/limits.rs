//! Bounds on what a checkpoint's own code and a request's lengths can make the engine do: a
//! chat template runs on fuel and within an output budget, a tokenizer that could blow a text up
//! or names ids past the vocabulary is refused at attach, lengths never wrap, a sequence that
//! outgrows its reservation fails alone, and messages carry no backtrace.

use std::time::{Duration, Instant};

use wc_actors::{
    DeviceSpec, ErrorKind, GenerateRequest, PrewarmOptions, Prompt, SeqEvent, Timeline,
    WorkerDevice,
};
use worker_controller::models::text::batch::Batch;
use worker_controller::models::text::chat_template::ChatMessage;
use worker_controller::models::text::sequence::{Sequence, Vocabulary};
use worker_controller::models::CausalLm;
use worker_controller::models::RunError;
use worker_controller::CandleDevice;

use crate::common::{copy_fixture, cpu_worker, fixture, spec};

const GOOD: &str = "tiny-opt-prenorm";

/// A copy of the good fixture with `template` as its chat template.
fn with_template(test: &str, template: &str) -> std::path::PathBuf {
    let dir = copy_fixture(GOOD, test);
    std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
    dir
}

/// What a chat on the checkpoint in `dir` answers, through the runtime's prompt encoder, and how
/// long it took; gives up (a failure) after 20 s.
fn chat(dir: &std::path::Path) -> (Result<Vec<u32>, wc_actors::EngineError>, Duration) {
    let (done, answer) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let (engine, _) = cpu_worker()
            .load(
                &spec(&dir),
                &wc_actors::Handoff::default(),
                &mut Timeline::default(),
            )
            .expect("the checkpoint attaches");
        let encoder = engine.prompt_encoder().expect("an encoder");
        let started = Instant::now();
        let ids = encoder.encode(&Prompt::Chat(vec![ChatMessage::new("user", "hello")]));
        let _ = done.send((ids, started.elapsed()));
    });
    answer
        .recv_timeout(Duration::from_secs(20))
        .expect("the chat template ran for more than 20 s")
}

#[test]
fn a_looping_chat_template_runs_out_of_fuel_as_the_models_defect() {
    let dir = with_template(
        "template-loop",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
    );
    let (answer, took) = chat(&dir);
    let err = answer.expect_err("refused");
    assert_eq!(err.kind, ErrorKind::InvalidModel, "{}", err.message);
    assert!(err.message.contains("chat template"), "{}", err.message);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_chat_template_that_writes_without_bound_is_stopped_as_the_models_defect() {
    let dir = with_template(
        "template-expands",
        "{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}",
    );
    let (answer, _) = chat(&dir);
    let err = answer.expect_err("refused");
    assert_eq!(err.kind, ErrorKind::InvalidModel, "{}", err.message);
    assert!(err.message.contains("chat template"), "{}", err.message);
}

#[test]
fn a_chat_template_that_fails_to_render_is_the_models_defect() {
    let dir = with_template("template-fails", "{{ no_such_function() }}");
    let err = chat(&dir).0.expect_err("refused");
    assert_eq!(err.kind, ErrorKind::InvalidModel, "{}", err.message);
    // The template's own refusal of the messages stays the client's.
    let dir = with_template(
        "template-refuses",
        "{{ raise_exception('only assistants here') }}",
    );
    let err = chat(&dir).0.expect_err("refused");
    assert_eq!(err.kind, ErrorKind::InvalidRequest, "{}", err.message);
}

/// The good fixture's tokenizer, edited by `edit`, in a copy; what attaching it answers.
fn attach_with_tokenizer(
    test: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<(), wc_actors::EngineError> {
    let dir = copy_fixture(GOOD, test);
    let path = dir.join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut tokenizer);
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    cpu_worker()
        .load(
            &spec(&dir),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .map(|_| ())
}

#[test]
fn a_tokenizer_normaliser_that_blows_text_up_is_refused_at_attach() {
    let err = attach_with_tokenizer("normaliser-bomb", |t| {
        t["normalizer"] = serde_json::json!({
            "type": "Replace",
            "pattern": {"String": "a"},
            "content": "b".repeat(1 << 20),
        });
    })
    .expect_err("refused at attach");
    assert_eq!(err.kind, ErrorKind::InvalidModel, "{}", err.message);
    assert!(err.message.contains("normaliser"), "{}", err.message);
    assert!(err.message.len() < 2048, "{} bytes", err.message.len());
}

#[test]
fn a_tokenizer_that_adds_ids_past_the_vocabulary_is_refused_at_attach() {
    let err = attach_with_tokenizer("bos-outside", |t| {
        t["post_processor"]["special_tokens"]["</s>"]["ids"] = serde_json::json!([600]);
    })
    .expect_err("refused at attach");
    assert_eq!(err.kind, ErrorKind::InvalidModel, "{}", err.message);
    assert!(err.message.contains("600"), "{}", err.message);
    let err = attach_with_tokenizer("added-outside", |t| {
        let added = t["added_tokens"].as_array_mut().unwrap();
        let mut token = added[0].clone();
        token["id"] = serde_json::json!(700);
        token["content"] = serde_json::json!("<extra>");
        added.push(token);
    })
    .expect_err("refused at attach");
    assert_eq!(err.kind, ErrorKind::InvalidModel, "{}", err.message);
    assert!(err.message.contains("added token"), "{}", err.message);
}

#[test]
fn a_context_of_one_position_is_the_models_defect() {
    // A Llama (RoPE: no tensor is sized by the context) whose context holds one token.
    let dir = copy_fixture("tiny-llama", "one-position");
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = serde_json::json!(1);
    std::fs::write(&path, config.to_string()).unwrap();
    let err = cpu_worker()
        .load(
            &spec(&dir),
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .err()
        .expect("refused");
    assert_eq!(err.kind, ErrorKind::InvalidModel, "{}", err.message);
}

#[test]
fn max_new_tokens_near_the_largest_number_is_refused_not_wrapped() {
    let mut engine = super::load(&fixture(GOOD)).unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![2, 506, 79]),
        max_new_tokens: usize::MAX - 2,
        ..Default::default()
    };
    let err = engine.run(&request, &mut |_| true).expect_err("refused");
    assert!(
        matches!(err, RunError::ContextExceeded { prompt: 3, .. }),
        "{err}"
    );
}

#[test]
fn logit_bias_outside_the_vocabulary_is_refused() {
    let mut engine = super::load(&fixture(GOOD)).unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![2, 506, 79]),
        max_new_tokens: 2,
        logit_bias: vec![(100_000, 5.0)],
        ..Default::default()
    };
    let err = engine.run(&request, &mut |_| true).expect_err("refused");
    assert!(matches!(err, RunError::InvalidSampling(_)), "{err}");
    assert!(err.to_string().contains("100000"), "{err}");
}

#[test]
fn a_reply_cut_inside_a_character_reads_the_same_streamed_and_whole() {
    let mut engine = super::load(&fixture(GOOD)).unwrap();
    // Token 162 is the byte 0xE2, which opens a three-byte character.
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![2, 506, 79]),
        max_new_tokens: 3,
        ignore_eos: true,
        logit_bias: vec![(162, 100.0)],
        ..Default::default()
    };
    let mut streamed = String::new();
    let output = engine
        .run(&request, &mut |token| {
            streamed.push_str(&token.text);
            true
        })
        .unwrap();
    assert_eq!(output.new_tokens, [162, 162, 162]);
    assert_eq!(output.text, streamed);
    assert!(!output.text.ends_with('\u{FFFD}'), "{:?}", output.text);
}

#[test]
fn a_sequence_past_its_reservation_fails_alone_and_the_batch_goes_on() {
    let options = PrewarmOptions {
        kv_cache_tokens: 8,
        ..PrewarmOptions::default()
    };
    let (mut device, _) = CandleDevice::open(&DeviceSpec::Cpu, Some(&options)).unwrap();
    let (engine, _) = device
        .load_as::<worker_controller::models::OptEngine>(
            &spec(&fixture(GOOD)),
            &mut Timeline::default(),
        )
        .unwrap();
    let model = &engine.model;
    let request = |max_new_tokens| GenerateRequest {
        max_new_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let fits = Sequence::new(1, vec![2, 506, 79], &request(2), model.new_cache()).unwrap();
    let mut wrapped =
        Sequence::new(2, vec![2, 506, 79, 268, 5], &request(10), model.new_cache()).unwrap();
    // What a reservation that wrapped around would have left it with.
    wrapped.reserved = 3;
    let mut batch = Batch::new(8);
    batch.admit(fits).unwrap();
    batch.admit(wrapped).unwrap();
    let vocab = Vocabulary {
        tokenizer: engine.tokenizer(),
        eos_ids: engine.eos_ids(),
        max_positions: model.max_positions(),
    };
    let mut finished = Vec::new();
    for _ in 0..10 {
        let events = batch.step(model, &vocab).expect("the batch steps on");
        for event in events {
            if let SeqEvent::Finished(id, result) = event {
                finished.push((id, result));
            }
        }
        if batch.is_empty() {
            break;
        }
    }
    assert_eq!(finished.len(), 2, "both ended");
    let (_, wrapped) = finished.iter().find(|(id, _)| *id == 2).unwrap();
    let err = wrapped.as_ref().expect_err("it failed");
    assert!(err.message.contains("reserved"), "{}", err.message);
    let (_, fits) = finished.iter().find(|(id, _)| *id == 1).unwrap();
    assert_eq!(fits.as_ref().expect("it ran").new_tokens.len(), 2);
}

#[test]
fn a_device_error_says_what_failed_without_a_backtrace() {
    let inner = candle_core::Error::Msg("slab is full".into());
    let with_trace = candle_core::Error::WithBacktrace {
        inner: Box::new(inner),
        backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
    };
    let text = RunError::Device(with_trace).to_string();
    assert_eq!(text, "device error: slab is full");
    let engine_error: wc_actors::EngineError =
        RunError::Device(candle_core::Error::Msg("x".repeat(100_000))).into();
    assert!(
        engine_error.message.len() < 1024,
        "{}",
        engine_error.message.len()
    );
}

/// What `worker-controller <args>` exits with and writes to stderr.
fn cli(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker-controller"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn command_line_lengths_and_timeouts_out_of_range_are_refused() {
    let model = fixture(GOOD).display().to_string();
    let (code, stderr) = cli(&[
        "generate",
        "--model",
        &model,
        "--max-new-tokens",
        "18446744073709551613",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("from 0 to 1048576"), "{stderr}");
    let (code, stderr) = cli(&["loadgen", "--model", "m", "--timeout", "0s"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("longer than 0s"), "{stderr}");
}
