//! Where an upload puts the tensors a model reads as one ([`FusedGroup`]s: a layer's q/k/v
//! projections, its gate/up ones): in one device buffer per group, each member's bytes copied
//! straight to its rows, so the fused tensor exists with no device copy after the upload. Only
//! groups whose members are all in the checkpoint, stored in the target dtype (no conversion)
//! and stackable (same trailing dims) are placed; the others are allocated one tensor each, as
//! before, and [`DeviceWeights::fuse`](crate::load::DeviceWeights::fuse) stacks them.

use std::collections::HashMap;

use candle_core::cuda_backend::cudarc::driver::sys::CUdeviceptr;
use candle_core::{CudaDevice, DType, Tensor};

use super::copy_sink::{allocate_shape, Filling};
use crate::load::dtype::stored_candle_dtype;
use crate::load::error::LoadError;
use crate::load::safetensors::{InspectedFile, TensorHeader};
use crate::load::weights::FusedGroup;

/// One group to place: its member rows and, once its first member is allocated, its buffer.
struct PlacedGroup {
    name: String,
    header: TensorHeader,
    buffer: Option<(CUdeviceptr, Tensor)>,
}

/// The groups of one upload.
#[derive(Default)]
pub(super) struct FusedPlacement {
    groups: Vec<PlacedGroup>,
    /// Member name → (group, first row, byte offset in the group).
    members: HashMap<String, (usize, usize, u64)>,
}

impl FusedPlacement {
    /// The groups of `wanted` whose members `files` hold in `dtype`, stackable.
    pub(super) fn new(wanted: &[FusedGroup], files: &[InspectedFile], dtype: DType) -> Self {
        let headers: HashMap<&str, &TensorHeader> = files
            .iter()
            .flat_map(|f| f.header.tensors.iter())
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut placement = Self::default();
        for group in wanted {
            let members: Option<Vec<&TensorHeader>> = group
                .members
                .iter()
                .map(|m| headers.get(m.as_str()).copied())
                .collect();
            let Some(members) = members.filter(|m| stackable(m, dtype)) else {
                continue;
            };
            let index = placement.groups.len();
            let (mut rows, mut bytes) = (0usize, 0u64);
            for member in &members {
                placement
                    .members
                    .insert(member.name.clone(), (index, rows, bytes));
                rows += member.shape[0];
                bytes += member.data_bytes;
            }
            let mut shape = members[0].shape.clone();
            shape[0] = rows;
            placement.groups.push(PlacedGroup {
                name: group.name.clone(),
                header: TensorHeader {
                    name: group.name.clone(),
                    dtype: members[0].dtype,
                    shape,
                    data_bytes: bytes,
                    data_offset: 0,
                },
                buffer: None,
            });
        }
        placement
    }

    /// Where `header`'s bytes go when it is a member of a placed group (its group's buffer
    /// allocated with the first member); `None` for any other tensor.
    pub(super) fn allocate(
        &mut self,
        device: &CudaDevice,
        header: &TensorHeader,
    ) -> Result<Option<Filling>, LoadError> {
        let Some(&(index, row, offset)) = self.members.get(&header.name) else {
            return Ok(None);
        };
        let group = &mut self.groups[index];
        if group.buffer.is_none() {
            let whole = allocate_shape(device, &group.header)?;
            group.buffer = Some((whole.pointer, whole.tensor));
        }
        let (base, tensor) = group.buffer.as_ref().expect("allocated above");
        Ok(Some(Filling {
            pointer: base + offset,
            tensor: tensor.narrow(0, row, header.shape[0])?,
            remaining: header.data_bytes,
        }))
    }

    /// The placed groups' tensors, by group name, for the upload's tensors.
    pub(super) fn into_tensors(self) -> impl Iterator<Item = (String, Tensor)> {
        self.groups
            .into_iter()
            .filter_map(|g| g.buffer.map(|(_, tensor)| (g.name, tensor)))
    }
}

/// Whether `members` stack along their first dimension and are stored in `dtype`.
fn stackable(members: &[&TensorHeader], dtype: DType) -> bool {
    let Some(first) = members.first() else {
        return false;
    };
    members.iter().all(|m| {
        m.dtype == first.dtype
            && stored_candle_dtype(&m.name, m.dtype).is_ok_and(|d| d == dtype)
            && !m.shape.is_empty()
            && m.shape.len() == first.shape.len()
            && m.shape[1..] == first.shape[1..]
    })
}
