//! Weights on a device: tensors built from checked safetensors data, looked up by name with their shapes checked.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::dtype::stored_candle_dtype;
use super::safetensors::WeightFile;
use super::LoadError;

/// Named tensors on one device, in one dtype.
#[derive(Clone)]
pub struct DeviceWeights {
    tensors: HashMap<String, Tensor>,
    /// Bytes the tensors take on the device.
    pub device_bytes: u64,
}

impl DeviceWeights {
    /// Puts every tensor of each file on `device` as `dtype`, each from the bytes its checked
    /// header places it at; the dtype conversion runs on the device after the copy.
    pub fn upload(
        files: &[Arc<WeightFile>],
        device: &Device,
        dtype: DType,
    ) -> Result<Self, LoadError> {
        let mut tensors = HashMap::new();
        let mut device_bytes = 0u64;
        for file in files {
            for header in &file.header.tensors {
                let stored = stored_candle_dtype(&header.name, header.dtype)?;
                let bytes =
                    header
                        .bytes(&file.data)
                        .ok_or_else(|| LoadError::CorruptSafetensors {
                            path: file.key.path.clone(),
                            reason: format!("tensor `{}` lies outside the data", header.name),
                        })?;
                let host = Tensor::from_raw_buffer(bytes, stored, &header.shape, &Device::Cpu)?;
                let on_device = host.to_device(device)?.to_dtype(dtype)?;
                device_bytes += (on_device.elem_count() * dtype.size_in_bytes()) as u64;
                tensors.insert(header.name.clone(), on_device);
            }
        }
        Ok(Self {
            tensors,
            device_bytes,
        })
    }

    /// Wraps tensors that are already on a device (e.g. made in memory for prewarming).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        let device_bytes = tensors
            .values()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum();
        Self {
            tensors,
            device_bytes,
        }
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor(name.to_string()))?;
        if tensor.dims() != shape {
            return Err(LoadError::WrongShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.clone())
    }

    /// The linear layer `prefix` (`{prefix}.weight` `[out_dim, in_dim]`, and with `bias`,
    /// `{prefix}.bias` `[out_dim]`), shapes checked.
    pub fn linear(
        &self,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<candle_nn::Linear, LoadError> {
        let weight = self.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(self.get(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(candle_nn::Linear::new(weight, bias))
    }

    /// Every tensor by name (fused groups and their members, which are views of them).
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(name, t)| (name.as_str(), t))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Stores each group's members as one tensor, row after row, under the group's name (e.g.
    /// a layer's q, k and v projections as one `[q + k + v, hidden]` weight, read by one matmul),
    /// each member becoming a view of its rows: no byte is held twice. A group already stored
    /// so, or whose members are missing or do not stack (dtype, trailing dims), is left as it
    /// is. Costs one device copy of the members (the upload may instead place them so).
    pub fn fuse(&mut self, groups: &[FusedGroup]) -> Result<(), LoadError> {
        for group in groups {
            if self.tensors.contains_key(&group.name) {
                continue;
            }
            let members: Option<Vec<Tensor>> = group
                .members
                .iter()
                .map(|name| self.tensors.get(name).cloned())
                .collect();
            let Some(members) = members.filter(|m| stackable(m)) else {
                continue;
            };
            let fused = Tensor::cat(&members, 0)?;
            let mut offset = 0;
            for (name, member) in group.members.iter().zip(&members) {
                let rows = member.dim(0)?;
                self.tensors
                    .insert(name.clone(), fused.narrow(0, offset, rows)?);
                offset += rows;
            }
            self.tensors.insert(group.name.clone(), fused);
        }
        Ok(())
    }
}

/// Tensors of one layer that a model reads as one: `name`, the rows of `members` in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FusedGroup {
    pub name: String,
    pub members: Vec<String>,
}

/// Whether `members` can be stacked along their first dimension.
fn stackable(members: &[Tensor]) -> bool {
    let Some(first) = members.first() else {
        return false;
    };
    members.iter().all(|m| {
        m.dtype() == first.dtype()
            && m.device().same_device(first.device())
            && m.rank() == first.rank()
            && m.rank() >= 1
            && m.dims()[1..] == first.dims()[1..]
    })
}
