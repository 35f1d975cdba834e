//! The writer's checkpoints: the placeholder tokenizer round-trips, sharded and single files hold
//! the same tensors, shards split by size, progress counts every byte.

use super::*;

fn spec(name: &str, shape: &[usize], init: Init) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: shape.to_vec(),
        init,
    }
}

#[test]
fn the_placeholder_tokenizer_round_trips_its_words_and_decodes_every_id() {
    let dir = std::env::temp_dir().join(format!("wc-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_placeholder_tokenizer(&dir, 1000).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.get_vocab_size(false), 1000);
    let ids = tokenizer
        .encode("t5 t999 hello", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, [5, 999, 0], "known words and the unknown one");
    assert_eq!(tokenizer.decode(&[7, 42], false).unwrap(), "t7 t42");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sharded_and_single_files_hold_the_same_tensors() {
    let base = std::env::temp_dir().join(format!("wc-writer-{}", std::process::id()));
    let tensors = vec![
        spec("a", &[3, 4], Init::Normal(0.02)),
        spec("b", &[5], Init::Ones),
        spec("c", &[2, 2], Init::Zeros),
        spec("d", &[7, 3], Init::Normal(1.0)),
    ];
    let mut read = Vec::new();
    for shards in [1, 3] {
        let dir = base.join(format!("s{shards}"));
        let written =
            write_safetensors(&dir, &tensors, candle_core::DType::BF16, shards, 7).unwrap();
        assert_eq!(written.files.len(), shards);
        assert_eq!(written.data_bytes, (12 + 5 + 4 + 21) * 2);
        let mut all = std::collections::BTreeMap::new();
        for file in &written.files {
            let loaded =
                candle_core::safetensors::load(dir.join(file), &candle_core::Device::Cpu).unwrap();
            assert!(!loaded.is_empty(), "{file} holds a tensor");
            for (name, t) in loaded {
                let values: Vec<f32> = t
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                all.insert(name, (t.dims().to_vec(), values));
            }
        }
        assert_eq!(all["b"].1, vec![1.0; 5]);
        assert_eq!(all["c"].1, vec![0.0; 4]);
        assert_eq!(all["d"].0, vec![7, 3]);
        if shards > 1 {
            let index: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(index["weight_map"].as_object().unwrap().len(), 4);
            assert_eq!(index["metadata"]["total_size"], 84);
        }
        read.push(all);
    }
    assert_eq!(read[0], read[1], "sharding does not change the weights");
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn progress_counts_every_byte_up_to_the_total_in_order() {
    let dir = std::env::temp_dir().join(format!("wc-writer-progress-{}", std::process::id()));
    let tensors: Vec<TensorSpec> = (0..5)
        .map(|i| spec(&format!("t{i}"), &[100 + i], Init::Normal(0.02)))
        .collect();
    let mut calls = Vec::new();
    let written = write_safetensors_with_progress(
        &dir,
        &tensors,
        candle_core::DType::F16,
        2,
        0,
        &mut |done, total| calls.push((done, total)),
    )
    .unwrap();
    assert_eq!(
        calls.first(),
        Some(&(0, written.data_bytes)),
        "told at the start"
    );
    assert_eq!(
        calls.last(),
        Some(&(written.data_bytes, written.data_bytes)),
        "told at the end"
    );
    assert!(calls.len() >= 6, "told after each tensor: {calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn shards_split_by_size_in_order() {
    let base = std::env::temp_dir().join(format!("wc-writer-split-{}", std::process::id()));
    let tensors: Vec<TensorSpec> = (0..8)
        .map(|i| spec(&format!("t{i}"), &[16], Init::Zeros))
        .collect();
    write_safetensors(&base, &tensors, candle_core::DType::F32, 4, 0).unwrap();
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(base.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    for i in 0..8 {
        let expected = format!("model-{:05}-of-00004.safetensors", i / 2 + 1);
        assert_eq!(map[&format!("t{i}")], expected.as_str(), "t{i}");
    }
    std::fs::remove_dir_all(base).unwrap();
}
