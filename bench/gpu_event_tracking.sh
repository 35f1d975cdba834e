#!/usr/bin/env bash
# cudarc's cross-stream event tracking on and off (WC_CUDA_EVENT_TRACKING=1 keeps it on), run from
# the repo root on the GPU machine with the CUDA build's gzipped binaries in .gpu/ (wc-cuda, and
# cuda_reference and batching for the GPU tests): decode after each attach for OPT-125m f16 and
# llama-3.2-1b bf16, the worker's device thread kept on one CPU, the two settings alternated
# twice; then the GPU tests with tracking off (those of .gpu/ carried). Everything lands in $OUT/tracking.tgz.
set -u
FINAL=${OUT:-/tmp/wc-out}; OUT=/tmp/wc-tracking; rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/tracking.tgz" -C "$OUT" . ; cp "$OUT/tracking.log" "$FINAL/"' EXIT
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p /tmp/wc && for f in .gpu/*.gz; do gunzip -c "$f" > "/tmp/wc/$(basename "$f" .gz)"; chmod +x "/tmp/wc/$(basename "$f" .gz)"; done
WC=/tmp/wc/wc-cuda
CPU=${CPU:-7}
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/tracking.log"; }
{ date -u; $WC --version; nvidia-smi; } > "$OUT/machine.txt" 2>&1
$WC make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m >> "$OUT/tracking.log" 2>&1
$WC make-model --preset llama-3.2-1b --dtype bf16 --force --out /tmp/llama-3.2-1b >> "$OUT/tracking.log" 2>&1
for round in 1 2; do
  for tracking in 1 0; do
    for spec in "opt-125m f16" "llama-3.2-1b bf16"; do
      set -- $spec
      name="$1-tracking$tracking-$round"
      WC_CUDA_EVENT_TRACKING=$tracking $WC bench --modes controller --worker-cpus "$CPU" --models /tmp/$1 \
        --device cuda:0 --dtype $2 --scenario single --runs 10 --decode-tokens 64 --no-peer \
        --out "$OUT/$name" > "$OUT/$name.log" 2>&1
      log "$name rc=$? $(grep -A3 '^| mode' "$OUT/$name/report.md" | tail -1) first token p50 $(grep '\*\*total' "$OUT/$name/report.md" | cut -d'|' -f3)"
    done
  done
done
if [ -x /tmp/wc/batching ]; then
  WC_TEST_DEVICE=cuda:0 /tmp/wc/batching --test-threads 1 > "$OUT/test-batching-cuda.txt" 2>&1
  log "batching rc=$? $(grep -h 'test result' "$OUT/test-batching-cuda.txt")"
fi
WC_EXPECT_GPUS=1 /tmp/wc/cuda_reference --test-threads 1 --skip two_gpus > "$OUT/test-cuda_reference.txt" 2>&1
log "cuda_reference rc=$? $(grep -h 'test result' "$OUT/test-cuda_reference.txt")"
