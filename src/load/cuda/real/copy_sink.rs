//! Queues the copies of a file's landed chunks to the device (the [`ChunkSink`] of an upload),
//! each tensor allocated up front in its stored dtype and converted once its last piece is
//! queued.

use std::collections::VecDeque;
use std::path::Path;

use candle_core::cuda_backend::cudarc::driver::{
    result, sys::CUdeviceptr, CudaEvent, CudaSlice, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Storage, Tensor};
use half::{bf16, f16};

use super::fault::driver;
use super::fused_placement::FusedPlacement;
use super::pinned::BLOCK_BYTES;
use crate::load::chunks::{segments, ChunkSink};
use crate::load::error::{DeviceError, LoadError};
use crate::load::safetensors::{SafetensorsHeader, TensorHeader};

/// A tensor being filled: where its bytes go on the device, and how many are still to come.
pub(super) struct Filling {
    pub(super) pointer: CUdeviceptr,
    pub(super) tensor: Tensor,
    pub(super) remaining: u64,
}

/// Queues the copies of each landed chunk's pieces of tensors, and converts each tensor to the
/// target dtype once its last piece is queued.
pub(super) struct CopySink<'a> {
    device: &'a CudaDevice,
    header: &'a SafetensorsHeader,
    dtype: DType,
    path: &'a Path,
    filling: Vec<Option<Filling>>,
    pub(super) done: Vec<(String, Tensor)>,
    /// With the staging ring: blocks whose copies are queued, to give back when done.
    in_flight: Option<&'a mut VecDeque<(usize, CudaEvent)>>,
    /// Bytes handed over so far (for the read-failure test hook).
    handed: u64,
    /// The read-failure test hook: fail once this many bytes are handed over.
    pub(super) fail_at: Option<u64>,
}

impl<'a> CopySink<'a> {
    /// Allocates every tensor of the file on the device, in its stored dtype (a member of a
    /// fused group in its group's buffer).
    pub(super) fn new(
        device: &'a CudaDevice,
        header: &'a SafetensorsHeader,
        dtype: DType,
        in_flight: Option<&'a mut VecDeque<(usize, CudaEvent)>>,
        path: &'a Path,
        fused: &mut FusedPlacement,
    ) -> Result<Self, LoadError> {
        let filling = header
            .tensors
            .iter()
            .map(|t| match fused.allocate(device, t)? {
                Some(member) => Ok(Some(member)),
                None => allocate_shape(device, t).map(Some),
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let mut sink = Self {
            device,
            header,
            dtype,
            path,
            filling,
            done: Vec::with_capacity(header.tensors.len()),
            in_flight,
            handed: 0,
            fail_at: None,
        };
        // Tensors without bytes are complete already.
        for index in 0..sink.filling.len() {
            sink.finish_if_full(index)?;
        }
        Ok(sink)
    }

    /// Moves a tensor whose bytes are all queued to `done`, converted to the target dtype.
    fn finish_if_full(&mut self, index: usize) -> Result<(), LoadError> {
        if self.filling[index]
            .as_ref()
            .is_some_and(|f| f.remaining == 0)
        {
            let filled = self.filling[index].take().expect("checked");
            let name = self.header.tensors[index].name.clone();
            self.done.push((name, filled.tensor.to_dtype(self.dtype)?));
        }
        Ok(())
    }
}

impl ChunkSink<LoadError> for CopySink<'_> {
    fn chunk_ready(&mut self, chunk: usize, block: usize, bytes: &[u8]) -> Result<(), LoadError> {
        let stream = self.device.cuda_stream();
        let start = chunk as u64 * BLOCK_BYTES as u64;
        for piece in segments(&self.header.tensors, start, bytes.len()) {
            let filling = self.filling[piece.tensor].as_mut().ok_or_else(|| {
                LoadError::Device(DeviceError::other("a tensor's bytes arrived twice"))
            })?;
            let source = &bytes[piece.chunk_offset..piece.chunk_offset + piece.len];
            // SAFETY: the tensor was allocated with `data_bytes` bytes and the piece lies
            // within them (`segments` cuts pieces inside each tensor); `source` stays valid and
            // unwritten until this stream has run the copy (blocks are reused only after their
            // event, and cache blocks only after a synchronize).
            unsafe {
                result::memcpy_htod_async(
                    filling.pointer + piece.tensor_offset,
                    source,
                    stream.cu_stream(),
                )
            }
            .map_err(driver)?;
            filling.remaining -= piece.len as u64;
            self.finish_if_full(piece.tensor)?;
        }
        if let Some(in_flight) = self.in_flight.as_mut() {
            let event = stream.record_event(None).map_err(driver)?;
            in_flight.push_back((block, event));
        }
        self.handed += bytes.len() as u64;
        if self.fail_at.is_some_and(|at| self.handed >= at) {
            self.fail_at = None;
            return Err(LoadError::Io {
                path: self.path.to_path_buf(),
                source: std::io::Error::other("injected read failure (test hook)"),
            });
        }
        Ok(())
    }

    fn wait_for_blocks(&mut self) -> Result<Vec<usize>, LoadError> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Ok(Vec::new());
        };
        let Some((block, event)) = in_flight.pop_front() else {
            return Ok(Vec::new());
        };
        event.synchronize().map_err(driver)?;
        let mut free = vec![block];
        while let Some((_, event)) = in_flight.front() {
            if !event.try_is_complete().map_err(driver)? {
                break;
            }
            free.push(in_flight.pop_front().expect("front exists").0);
        }
        Ok(free)
    }
}

/// Allocates a tensor of `header`'s stored dtype and shape on the device, to be filled by
/// copies queued on the same stream.
pub(super) fn allocate_shape(
    device: &CudaDevice,
    header: &TensorHeader,
) -> Result<Filling, LoadError> {
    match header.dtype {
        safetensors::Dtype::F32 => allocate_as::<f32>(device, header),
        safetensors::Dtype::F16 => allocate_as::<f16>(device, header),
        safetensors::Dtype::BF16 => allocate_as::<bf16>(device, header),
        other => Err(LoadError::UnsupportedTensorDtype {
            name: header.name.clone(),
            dtype: format!("{other:?}"),
        }),
    }
}

fn allocate_as<T: CudaDType + DeviceRepr>(
    device: &CudaDevice,
    header: &TensorHeader,
) -> Result<Filling, LoadError> {
    let stream = device.cuda_stream();
    let elements = header.elements() as usize;
    if elements as u64 * std::mem::size_of::<T>() as u64 != header.data_bytes {
        return Err(LoadError::Device(DeviceError::other(format!(
            "{} bytes do not hold a tensor of shape {:?}",
            header.data_bytes, header.shape
        ))));
    }
    // SAFETY: every byte is written by the copies queued after this on the same stream before
    // any kernel reads the tensor.
    let mut slice: CudaSlice<T> = unsafe { stream.alloc::<T>(elements.max(1)) }.map_err(driver)?;
    let pointer = {
        let (pointer, _record) = slice.device_ptr_mut(&stream);
        pointer
    };
    let storage = Storage::Cuda(T::wrap_cuda_slice(slice, device.clone()));
    let tensor = Tensor::from_storage(storage, header.shape.clone(), BackpropOp::none(), false);
    Ok(Filling {
        pointer,
        tensor,
        remaining: header.data_bytes,
    })
}
