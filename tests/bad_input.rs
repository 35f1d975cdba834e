//! Every bad input to loading and generation ends in a typed error that names the problem.

mod common;
#[path = "bad_input/limits.rs"]
mod limits;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{copy_fixture, fixture, scratch};
use wc_actors::{DType, DeviceSpec, GenerateRequest, ModelSpec, Prompt, Timeline};
use worker_controller::load::LoadError;
use worker_controller::models::RunError;
use worker_controller::CandleDevice;

fn load(model: &std::path::Path) -> Result<worker_controller::models::opt::OptEngine, LoadError> {
    let (mut device, _) = CandleDevice::open(&DeviceSpec::Cpu, None).unwrap();
    let spec = ModelSpec {
        model: model.display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    };
    device
        .load_as::<worker_controller::models::OptEngine>(&spec, &mut Timeline::default())
        .map(|(engine, _)| engine)
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture("tiny-opt-prenorm").join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn missing_directory() {
    let err = load(std::path::Path::new("/no/such/model")).err().unwrap();
    assert!(matches!(err, LoadError::ModelNotFound(_)), "{err}");
    assert!(err.to_string().contains("/no/such/model"));
}

#[test]
fn missing_weights_file() {
    let dir = copy_fixture("tiny-opt-prenorm", "missing-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(err, LoadError::MissingFile(ref p) if p.ends_with("model.safetensors")),
        "{err}"
    );
}

#[test]
fn truncated_safetensors() {
    let dir = copy_fixture("tiny-opt-prenorm", "truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, LoadError::CorruptSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn garbage_safetensors() {
    let dir = copy_fixture("tiny-opt-prenorm", "garbage");
    std::fs::write(
        dir.join("model.safetensors"),
        b"this is not a safetensors file at all",
    )
    .unwrap();
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, LoadError::CorruptSafetensors { .. }), "{err}");
}

#[test]
fn missing_tensor() {
    let dir = copy_fixture("tiny-opt-prenorm", "missing-tensor");
    let mut tensors = fixture_tensors();
    tensors.remove("model.decoder.layers.1.fc2.weight").unwrap();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(err, LoadError::MissingTensor(ref n) if n == "decoder.layers.1.fc2.weight"),
        "{err}"
    );
}

#[test]
fn tensor_of_the_wrong_shape() {
    let dir = copy_fixture("tiny-opt-prenorm", "wrong-shape");
    let mut tensors = fixture_tensors();
    let name = "model.decoder.layers.0.self_attn.q_proj.weight";
    tensors.insert(
        name.into(),
        Tensor::zeros((128, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let err = load(&dir).err().unwrap();
    match err {
        LoadError::WrongShape {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "decoder.layers.0.self_attn.q_proj.weight");
            assert_eq!((expected, found), (vec![128, 128], vec![128, 64]));
        }
        other => panic!("expected WrongShape, got {other}"),
    }
}

#[test]
fn unknown_model_type() {
    let dir = copy_fixture("tiny-opt-prenorm", "model-type");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"opt\"", "\"gpt_neox\""),
    )
    .unwrap();
    let err = load(&dir).err().unwrap();
    assert!(
        matches!(err, LoadError::UnknownModelType { found: ref t, .. } if t == "gpt_neox"),
        "{err}"
    );
}

#[test]
fn malformed_config() {
    let dir = copy_fixture("tiny-opt-prenorm", "bad-config");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, LoadError::InvalidConfig { .. }), "{err}");
}

#[test]
fn unknown_dtype_and_device_strings() {
    let err = "f8".parse::<DType>().unwrap_err();
    assert!(err.to_string().contains("unknown dtype `f8`"), "{err}");
    let err = "tpu:0".parse::<DeviceSpec>().unwrap_err();
    assert!(err.to_string().contains("unknown device `tpu:0`"), "{err}");
    assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_in_a_build_without_cuda() {
    let err = CandleDevice::open(&DeviceSpec::Cuda(0), None)
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::CudaNotCompiled(_)), "{err}");
    assert!(err.to_string().contains("--features cuda"), "{err}");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_device_that_does_not_exist() {
    let err = CandleDevice::open(&DeviceSpec::Cuda(99), None)
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::DeviceUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("no such GPU"), "{err}");
}

#[test]
fn prompt_longer_than_the_position_table() {
    let mut engine = load(&fixture("tiny-opt-prenorm")).unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Ids(vec![5; 129]),
        ..Default::default()
    };
    let err = engine.run(&request, &mut |_| true).err().unwrap();
    assert!(
        matches!(err, RunError::PromptTooLong { len: 129, max: 128 }),
        "{err}"
    );
}

#[test]
fn token_ids_outside_the_vocabulary_and_empty_prompts() {
    let mut engine = load(&fixture("tiny-opt-prenorm")).unwrap();
    let mut run = |ids: Vec<u32>| {
        let request = GenerateRequest {
            prompt: Prompt::Ids(ids),
            ..Default::default()
        };
        engine.run(&request, &mut |_| true).err().unwrap()
    };
    assert!(matches!(
        run(vec![2, 9999]),
        RunError::TokenOutOfRange {
            id: 9999,
            vocab: 512
        }
    ));
    assert!(matches!(run(vec![]), RunError::EmptyPrompt));
}

#[test]
fn text_prompt_without_a_tokenizer() {
    let dir = copy_fixture("tiny-opt-prenorm", "no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let mut engine = load(&dir).unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Text("hello".into()),
        ..Default::default()
    };
    let err = engine.run(&request, &mut |_| true).err().unwrap();
    assert!(matches!(err, RunError::NoTokenizer), "{err}");
    let ids = GenerateRequest {
        prompt: Prompt::Ids(vec![2, 506, 79]),
        max_new_tokens: 3,
        ..Default::default()
    };
    assert_eq!(
        engine.run(&ids, &mut |_| true).unwrap().prompt_ids,
        vec![2, 506, 79]
    );
}

#[test]
fn sharded_checkpoint_without_the_model_prefix_loads_the_same_model() {
    let dir = scratch("sharded");
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-opt-prenorm").join(file), dir.join(file)).unwrap();
    }
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (name, tensor)) in fixture_tensors().into_iter().enumerate() {
        let bare = name.trim_start_matches("model.").to_string();
        let shard = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(bare.clone(), shard.into());
        if i % 2 == 0 {
            first.insert(bare, tensor);
        } else {
            second.insert(bare, tensor);
        }
    }
    candle_core::safetensors::save(&first, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&second, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let sharded = load(&dir).unwrap();
    let single = load(&fixture("tiny-opt-prenorm")).unwrap();
    let ids = [2, 506, 79, 268];
    let a: Vec<Vec<f32>> = sharded.logits(&ids).unwrap().to_vec2().unwrap();
    let b: Vec<Vec<f32>> = single.logits(&ids).unwrap().to_vec2().unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_model_larger_than_the_worker_is_refused_before_any_byte_is_read() {
    use wc_actors::{ErrorKind, PrewarmOptions, WorkerDevice};
    let options = PrewarmOptions {
        memory_limit_bytes: 64 << 10,
        host_cache_bytes: 64 << 20,
        ..PrewarmOptions::default()
    };
    let (mut device, _) = CandleDevice::open(&DeviceSpec::Cpu, Some(&options)).unwrap();
    let model = fixture("tiny-opt-prenorm");
    let spec = ModelSpec {
        model: model.display().to_string(),
        dtype: None,
        canonical: false,
        park: None,
    };
    let footprint = worker_controller::backend::inspect(&spec)
        .unwrap()
        .footprint;
    let error = device
        .load_as::<worker_controller::models::OptEngine>(&spec, &mut Timeline::default())
        .err()
        .expect("refused");
    let LoadError::DoesNotFit {
        needed_bytes,
        free_bytes,
    } = &error
    else {
        panic!("expected DoesNotFit, got {error:?}");
    };
    assert_eq!(
        *needed_bytes,
        footprint.device_bytes
            + footprint.kv_bytes_per_token * PrewarmOptions::default().kv_cache_tokens as u64,
        "weights and a full KV cache"
    );
    assert!(footprint.kv_bytes_per_token > 0);
    assert_eq!(*free_bytes, 64 << 10);
    let text = error.to_string();
    assert!(
        text.contains(&needed_bytes.to_string()) && text.contains(&free_bytes.to_string()),
        "{text}"
    );
    assert!(
        !device.host_cache_holds(&model.join("model.safetensors")),
        "nothing was read"
    );
    let refused = device
        .load(
            &spec,
            &wc_actors::Handoff::default(),
            &mut Timeline::default(),
        )
        .err()
        .unwrap();
    assert_eq!(refused.kind, ErrorKind::OutOfMemory, "{}", refused.message);
}
