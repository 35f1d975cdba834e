//! Measures the host-to-device bandwidth that bounds putting weights on a device.

use std::time::Instant;

use wc_actors::DeviceSpec;

/// `(method, GB/s)`: pinned host-to-device copies on a GPU, memcpy on the CPU (best of 5).
pub fn measure_bandwidth(device: &DeviceSpec) -> anyhow::Result<(String, f64)> {
    match device {
        DeviceSpec::Cpu => Ok(("memcpy".into(), memcpy_bandwidth(256 << 20))),
        DeviceSpec::Cuda(index) => Ok((
            "pinned host-to-device copy".into(),
            crate::load::cuda::pinned_h2d_bandwidth(*index, 256 << 20)
                .map_err(anyhow::Error::msg)?,
        )),
    }
}

fn memcpy_bandwidth(bytes: usize) -> f64 {
    let source = vec![1u8; bytes];
    let mut target = vec![0u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        target.copy_from_slice(&source);
        std::hint::black_box(&mut target);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
}
