//! Capturing a decode pass as a CUDA graph on the device's stream, and replaying it (without
//! CUDA nothing is captured and the bucketed pass runs eagerly).

#[cfg(feature = "cuda")]
mod imp {
    //! Capturing a pass on the device's stream, and replaying it.
    use candle_core::cuda_backend::cudarc::driver::sys::{
        CUgraphInstantiate_flags, CUstreamCaptureMode,
    };
    use candle_core::{Device, Tensor};

    use crate::models::layers::decode_graph::{DecodeForward, DecodeInputs};

    /// A captured pass.
    pub(crate) struct Graph(candle_core::cuda_backend::cudarc::driver::CudaGraph);

    // SAFETY: a graph is launched only under its `DecodeGraphs`' lock, by one thread at a time,
    // which is all CUDA asks of graph objects; it holds no thread-bound state.
    unsafe impl Send for Graph {}

    impl Graph {
        pub(crate) fn launch(&self) -> candle_core::Result<()> {
            self.0.launch().map_err(candle_core::Error::wrap)
        }
    }

    fn cuda(device: &Device) -> candle_core::Result<&candle_core::CudaDevice> {
        match device {
            Device::Cuda(cuda) => Ok(cuda),
            _ => candle_core::bail!("decode graphs need a CUDA device"),
        }
    }

    /// Runs the pass now, keeping the kernels' parameter uploads for a capture to reuse.
    pub(crate) fn eager_for_capture(
        device: &Device,
        forward: &DecodeForward<'_>,
        inputs: &DecodeInputs<'_>,
    ) -> candle_core::Result<Tensor> {
        match device {
            Device::Cuda(cuda) => {
                let _cached = cuda.enable_cuda_graph_htod_cache();
                forward(inputs)
            }
            _ => forward(inputs),
        }
    }

    /// Gives the graph memory no graph holds back to the device (after a synchronize, so that
    /// no replay still runs).
    pub(crate) fn trim(device: &Device) {
        if let Ok(cuda) = cuda(device) {
            let stream = cuda.cuda_stream();
            let _ = stream.synchronize();
            let ordinal = stream.context().cu_device();
            // SAFETY: a plain driver call on a valid device handle, with the context current.
            let _ = stream.context().bind_to_thread();
            unsafe {
                candle_core::cuda_backend::cudarc::driver::sys::cuDeviceGraphMemTrim(ordinal);
            }
        }
    }

    /// Records the pass (writing its logits into `out`) as a graph; nothing runs.
    pub(crate) fn capture(
        device: &Device,
        forward: &DecodeForward<'_>,
        inputs: &DecodeInputs<'_>,
        out: &Tensor,
    ) -> candle_core::Result<Graph> {
        let cuda = cuda(device)?;
        if cuda.is_event_tracking() {
            // A capture may not wait on events recorded before it began.
            candle_core::bail!("cross-stream event tracking is on (WC_CUDA_EVENT_TRACKING=1)");
        }
        let stream = cuda.cuda_stream();
        let _cached = cuda.enable_cuda_graph_htod_cache();
        let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        stream
            .begin_capture(mode)
            .map_err(candle_core::Error::wrap)?;
        // Every tensor the pass makes is dropped inside the capture (freed by the graph).
        let recorded = forward(inputs).and_then(|logits| out.slice_set(&logits, 0, 0));
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = ended
            .map_err(candle_core::Error::wrap)?
            .ok_or_else(|| candle_core::Error::Msg("the capture recorded nothing".into()))?;
        graph.upload().map_err(candle_core::Error::wrap)?;
        Ok(Graph(graph))
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    //! Without CUDA nothing is captured: the bucketed pass runs eagerly.
    use candle_core::{Device, Tensor};

    use crate::models::layers::decode_graph::{DecodeForward, DecodeInputs};

    pub(crate) enum Graph {}

    impl Graph {
        pub(crate) fn launch(&self) -> candle_core::Result<()> {
            match *self {}
        }
    }

    pub(crate) fn eager_for_capture(
        _: &Device,
        forward: &DecodeForward<'_>,
        inputs: &DecodeInputs<'_>,
    ) -> candle_core::Result<Tensor> {
        forward(inputs)
    }

    pub(crate) fn capture(
        _: &Device,
        _: &DecodeForward<'_>,
        _: &DecodeInputs<'_>,
        _: &Tensor,
    ) -> candle_core::Result<Graph> {
        candle_core::bail!("CUDA graphs need the cuda feature")
    }

    pub(crate) fn trim(_: &Device) {}
}

pub(super) use imp::{capture, eager_for_capture, trim, Graph};
