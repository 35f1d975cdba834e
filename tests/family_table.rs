//! The family table is the one list of what this engine runs: every `model_type` it lists has a
//! bundled checkpoint made by transformers that parses as that family and attaches, every
//! family prewarms, and a type it does not list is refused with the list in the message.

mod common;

use std::collections::BTreeSet;

use common::fixture;
use wc_actors::{ModelSpec, Timeline};
use worker_controller::models::family::{family_of, model_types, FAMILIES};
use worker_controller::models::FamilyConfig;
use worker_controller::{CandleDevice, DeviceSpec, LoadError};

#[test]
fn every_listed_model_type_has_a_bundled_checkpoint_that_parses_and_attaches() {
    let mut covered = BTreeSet::new();
    let fixtures = std::fs::read_dir(fixture("")).unwrap();
    let (mut device, _) = CandleDevice::open(&DeviceSpec::Cpu, None).unwrap();
    for entry in fixtures {
        let dir = entry.unwrap().path();
        if !dir.join("config.json").is_file() {
            continue;
        }
        let config = FamilyConfig::from_file(&dir.join("config.json")).unwrap();
        let model_type = config.model_type().to_string();
        assert_eq!(
            family_of(&model_type).unwrap().name,
            config.family.name,
            "{}: read by the family the table names for {model_type}",
            dir.display()
        );
        let spec = ModelSpec {
            model: dir.display().to_string(),
            dtype: None,
            canonical: false,
            park: None,
        };
        let (engine, bytes) = device
            .load_engine(&spec, &mut Timeline::default())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(bytes > 0 && engine.device_bytes() > 0, "{}", dir.display());
        covered.insert(model_type);
    }
    let listed: BTreeSet<String> = model_types().iter().map(|t| t.to_string()).collect();
    assert_eq!(
        covered, listed,
        "every model_type of the table has a bundled checkpoint"
    );
}

#[test]
fn every_family_prewarms_in_every_dtype_on_the_cpu() {
    for family in &FAMILIES {
        for dtype in [
            candle_core::DType::F32,
            candle_core::DType::F16,
            candle_core::DType::BF16,
        ] {
            (family.prewarm)(&candle_core::Device::Cpu, dtype)
                .unwrap_or_else(|e| panic!("{} {dtype:?}: {e}", family.name));
        }
    }
}

#[test]
fn an_unlisted_model_type_is_refused_with_the_list() {
    let err = FamilyConfig::from_json(r#"{"model_type": "gpt_neox"}"#).unwrap_err();
    assert!(
        matches!(&err, LoadError::UnknownModelType { found, .. } if found == "gpt_neox"),
        "{err}"
    );
    for model_type in model_types() {
        assert!(
            err.to_string().contains(&format!("`{model_type}`")),
            "{err} names {model_type}"
        );
    }
}
