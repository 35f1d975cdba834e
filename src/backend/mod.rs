//! The model layer as a runtime backend: inspects checkpoints, opens and prewarms candle devices
//! ([`CandleDevice`], in `device.rs`), loads engines of every supported family (OPT and the Llama
//! family; `load.rs`).

pub mod affinity;
mod device;
mod load;

use std::collections::HashMap;

use wc_actors::{
    DType, DeviceSpec, EngineError, Footprint, ModelSpec, PrewarmOptions, PrewarmReport,
    WorkerDevice,
};

pub use device::CandleDevice;

use crate::checkpoint::{Checkpoint, TensorHeader};
use crate::error::LoadError;
use crate::host_cache::{check_cached, read_tokenizer};
use crate::models::text_files::TextFiles;

/// Runs checkpoints of every supported family on candle devices.
#[derive(Clone, Debug, Default)]
pub struct CandleBackend;

/// A checkpoint checked against its config, with the dtype it will be held in.
pub struct CheckedCheckpoint {
    pub checkpoint: Checkpoint,
    pub dtype: DType,
    pub footprint: Footprint,
}

/// Resolves `spec` and checks every tensor's presence, shape and dtype from the headers alone
/// (each weight file's header checked against the file's length; no tensor data is read).
/// Errors name files relative to the checkpoint directory.
pub fn check(spec: &ModelSpec) -> Result<CheckedCheckpoint, LoadError> {
    let checkpoint = if spec.canonical {
        Checkpoint::resolve_canonical(&spec.model)?
    } else {
        Checkpoint::resolve(&spec.model)?
    };
    check_headers(spec, checkpoint.clone()).map_err(|e| e.relative_to(&checkpoint.dir))
}

fn check_headers(spec: &ModelSpec, checkpoint: Checkpoint) -> Result<CheckedCheckpoint, LoadError> {
    let headers = checkpoint.headers()?;
    let mut by_name = HashMap::with_capacity(headers.len());
    for header in &headers {
        crate::weights::candle_dtype(&header.name, header.dtype)?;
        if by_name.insert(header.name.as_str(), header).is_some() {
            return Err(LoadError::DuplicateTensor(header.name.clone()));
        }
    }
    for (name, shape) in checkpoint.config.expected_tensors() {
        let header = by_name
            .get(name.as_str())
            .ok_or_else(|| LoadError::MissingTensor(name.clone()))?;
        if header.shape != shape {
            return Err(LoadError::WrongShape {
                name,
                expected: shape,
                found: header.shape.clone(),
            });
        }
    }
    let dtype = spec
        .dtype
        .or_else(|| Checkpoint::stored_dtype(&headers))
        .unwrap_or(DType::F32);
    let elements: u64 = headers.iter().map(TensorHeader::elements).sum();
    let footprint = Footprint {
        device_bytes: elements * dtype.size(),
        kv_bytes_per_token: checkpoint.config.kv_bytes_per_token(dtype.size()),
        file_bytes: headers.iter().map(|h| h.data_bytes).sum(),
        dtype,
    };
    Ok(CheckedCheckpoint {
        checkpoint,
        dtype,
        footprint,
    })
}

/// The whole check of an attach short of a device: the headers ([`check`]), the tokenizer
/// parsed, the side files read and checked against the model ([`TextFiles`]). Errors name files
/// relative to the checkpoint directory.
pub fn preflight(spec: &ModelSpec) -> Result<Footprint, LoadError> {
    let checked = check_cached(spec)?;
    let checkpoint = &checked.checkpoint;
    let text = || {
        let tokenizer = checkpoint
            .tokenizer
            .as_deref()
            .map(read_tokenizer)
            .transpose()?;
        TextFiles::read(
            &checkpoint.dir,
            tokenizer.map(std::sync::Arc::new),
            checkpoint.config.vocab_size(),
            checkpoint.config.max_positions(),
        )
    };
    text().map_err(|e| e.relative_to(&checkpoint.dir))?;
    Ok(checked.footprint.clone())
}

impl wc_actors::Backend for CandleBackend {
    fn inspect(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        Ok(check_cached(spec)?.footprint.clone())
    }

    fn preflight(&self, spec: &ModelSpec) -> Result<Footprint, EngineError> {
        Ok(preflight(spec)?)
    }

    fn open_device(
        &self,
        device: &DeviceSpec,
        options: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError> {
        let (opened, report) = CandleDevice::open(device, Some(options))?;
        Ok((Box::new(opened), report))
    }
}
