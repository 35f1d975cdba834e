#!/usr/bin/env bash
# Where a worker process's overhead over a worker thread goes on the GPU (issue 12), run from the
# repo root on the GPU machine with the CUDA build's gzipped binary in .gpu/wc-cuda.gz: machine
# topology (NUMA node and CPUs of the GPU), then the bench on OPT-125m f16 with both modes side by
# side, each mode alone, and both pinned to the GPU's own CPUs, every step's timings logged
# (`wc::step`: host time to queue the pass, time to the token, CPU) and every attach's build time
# (`wc::attach`). ONLY_PINNED=1 skips the unpinned benches. Everything lands in $OUT/overhead.tgz.
set -u
FINAL=${OUT:-/tmp/wc-out}; OUT=/tmp/wc-overhead; rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/overhead.tgz" -C "$OUT" . ; cp "$OUT/overhead.log" "$FINAL/"' EXIT
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
gunzip -c .gpu/wc-cuda.gz > /tmp/wc-cuda && chmod +x /tmp/wc-cuda
WC=/tmp/wc-cuda
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/overhead.log"; }
BUS=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | head -1 | tr 'A-F' 'a-f' | sed 's/^0000//; s/^/0000/')
{
  date -u; $WC --version; nvidia-smi; nvidia-smi topo -m; lscpu; numactl -H
  echo "gpu bus $BUS"; for f in numa_node local_cpulist; do echo "$f: $(cat /sys/bus/pci/devices/$BUS/$f 2>&1)"; done
  cat /proc/cpuinfo | grep MHz
} > "$OUT/machine.txt" 2>&1
LOCAL=$(cat /sys/bus/pci/devices/$BUS/local_cpulist 2>/dev/null || echo 0-7)
log "GPU $BUS local CPUs: $LOCAL"
$WC make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m >> "$OUT/overhead.log" 2>&1
export RUST_LOG=warn,wc::step=debug,wc::attach=debug
bench() { # name, modes, more bench arguments...
  local name=$1 modes=$2; shift 2
  log "bench $name: $modes $*"
  $WC bench --modes "$modes" "$@" --models /tmp/opt-125m --device cuda:0 --dtype f16 --scenario single --runs ${RUNS:-20} \
    --decode-tokens 64 --no-peer --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  log "rc=$? $(grep -h 'Worker process vs' "$OUT/$name/report.md" 2>/dev/null)"
}
# Each invocation's threads land on other vCPUs, whose speeds differ by up to 20% at a given
# time on these VMs: several invocations unpinned, then several with both modes' device threads
# kept on the same CPU (`--worker-cpus`), so that the modes compare on equal CPUs.
[ -n "${ONLY_PINNED:-}" ] || for i in 1 2 3; do bench free-$i controller,controller_process; done
for cpu in 3 9 15; do bench pinned-$cpu controller,controller_process --worker-cpus $cpu; done
if [ -n "${TESTS:-}" ]; then
  # The GPU tests of the attach path and of batching, from .gpu/cuda_reference.gz and batching.gz.
  for t in cuda_reference batching; do gunzip -c .gpu/$t.gz > /tmp/$t && chmod +x /tmp/$t; done
  log "batching tests on cuda:0"
  WC_TEST_DEVICE=cuda:0 /tmp/batching --test-threads 1 > "$OUT/test-batching-cuda.txt" 2>&1
  log "batching rc=$? $(grep -h 'test result' "$OUT/test-batching-cuda.txt")"
  WC_EXPECT_GPUS=1 /tmp/cuda_reference --test-threads 1 --skip two_gpus > "$OUT/test-cuda_reference.txt" 2>&1
  log "cuda_reference rc=$? $(grep -h 'test result' "$OUT/test-cuda_reference.txt")"
fi
