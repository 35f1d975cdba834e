#!/usr/bin/env bash
# The engine-side floors' GPU check (issue 22: a move, no behaviour change), run from the repo
# root on the GPU machine with gzipped binaries in $GPU_BIN (default .gpu/). Writes under $OUT.
#
# PART=tests: the CUDA reference tests (cuda_reference.gz) and the OPT-125m attach bench of the
#   new build (wc-cuda.gz).
# PART=compare: the attach bench of the build before the move (wc-cuda-before.gz) and after it
#   (wc-cuda.gz), alternating, on OPT-125m f16 and a llama-3.1-8b-shaped bf16 checkpoint from
#   the host cache (modes controller and controller_process; no peer).
set -u
PART=${PART:-tests}
GPU_BIN=${GPU_BIN:-.gpu}
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p /tmp/wc && for f in "$GPU_BIN"/*.gz; do gunzip -c "$f" > "/tmp/wc/$(basename "$f" .gz)"; chmod +x "/tmp/wc/$(basename "$f" .gz)"; done
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
{ date -u; nvidia-smi; nproc; free -g; } > "$OUT/machine.txt" 2>&1
log "builds: $(for b in /tmp/wc/wc-cuda*; do echo -n "$(basename $b)=$($b --version) "; done)"
opt() { [ -f /tmp/opt-125m/model.safetensors ] || /tmp/wc/wc-cuda make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m >> "$OUT/session.log" 2>&1; }
bench_opt() { # $1 binary, $2 out name
  "$1" bench --models /tmp/opt-125m --device cuda:0 --dtype f16 --scenario single --runs 20 --no-peer \
    --modes controller,controller_process --out "$OUT/$2" >> "$OUT/session.log" 2>&1
  log "bench $2 rc=$?: $(grep -h '\*\*total' "$OUT/$2/report.md" 2>/dev/null | head -3 | tr '\n' ' ')"
}
if [ "$PART" = tests ]; then
  log "cuda_reference"
  WC_EXPECT_GPUS=$(nvidia-smi -L | wc -l) /tmp/wc/cuda_reference --test-threads 1 --nocapture > "$OUT/test-cuda_reference.txt" 2>&1
  log "cuda_reference rc=$?"; grep -E "^test |test result" "$OUT/test-cuda_reference.txt" | tee -a "$OUT/session.log"
  opt; bench_opt /tmp/wc/wc-cuda opt-after
  exit 0
fi
log "make-model llama-3.1-8b bf16"
[ -f /tmp/llama-8b/config.json ] || /tmp/wc/wc-cuda make-model --preset llama-3.1-8b --dtype bf16 --force --out /tmp/llama-8b >> "$OUT/session.log" 2>&1
log "make-model rc=$?"
for b in before after; do
  bin=/tmp/wc/wc-cuda; [ $b = before ] && bin=/tmp/wc/wc-cuda-before
  "$bin" bench --models /tmp/llama-8b --device cuda:0 --dtype bf16 --scenario single --runs 8 --no-peer \
    --modes controller --staging-mib 4096 --host-cache-mib 20480 --decode-tokens 64 --out "$OUT/llama-8b-$b" >> "$OUT/session.log" 2>&1
  log "bench llama-8b-$b rc=$?: $(grep -h '\*\*total' "$OUT/llama-8b-$b/report.md" 2>/dev/null | head -2 | tr '\n' ' ')"
done
opt
for round in 1 2; do
  bench_opt /tmp/wc/wc-cuda-before "opt-before-$round"
  bench_opt /tmp/wc/wc-cuda "opt-after-$round"
done
[ -n "${PARKED:-}" ] && OUT=$OUT bash bench/gpu_parked.sh
