#!/usr/bin/env bash
# Decode graphs on one GPU in one call (issue 23), run from the repo root with wc-cuda and
# cuda_reference (.xz or .gz) in $GPU_BIN (default .gpu/):
#   1. the CUDA reference tests (graphed decode passes equal to eager ones among them);
#   2. `generate` (a fresh process, batch 1, 256 new tokens) of llama-3.2-1b and llama-3.1-8b
#      bf16, graphs on and off (WC_CUDA_GRAPHS=0), alternating, 3 runs each;
#   3. bench/gpu_serving_8b.sh (serve + loadgen at $CLIENTS) with graphs on, then off at 1 and 64
#      clients. PEER=1 adds the compiled transformers peer to the graphs-on run.
# Everything under $OUT, packed into $OUT/all.tgz; the summary in session.log.
set -u
GPU_BIN=${GPU_BIN:-.gpu}
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p /tmp/wc
for f in "$GPU_BIN"/*; do
  name=$(basename "$f"); name=${name%.gz}; name=${name%.xz}
  case "$f" in *.xz) xz -dc "$f" > "/tmp/wc/$name" ;; *.gz) gunzip -c "$f" > "/tmp/wc/$name" ;; *) continue ;; esac
  chmod +x "/tmp/wc/$name"
done
trap 'tar czf "$OUT/all.tgz" -C "$OUT" --exclude all.tgz .' EXIT
WC=/tmp/wc/wc-cuda
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
{ date -u; $WC --version; nvidia-smi; } > "$OUT/machine.txt" 2>&1
log "build $($WC --version); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
if [ -x /tmp/wc/cuda_reference ] && [ -z "${SKIP_TESTS:-}" ]; then
  WC_EXPECT_GPUS=$(nvidia-smi -L | wc -l) /tmp/wc/cuda_reference --test-threads 1 > "$OUT/test-cuda_reference.txt" 2>&1
  log "cuda_reference rc=$?: $(grep 'test result' "$OUT/test-cuda_reference.txt")"
  grep -E "graphs captured|graphed logits|FAILED|panicked" "$OUT/test-cuda_reference.txt" | head -20 | tee -a "$OUT/session.log"
fi
[ -f /tmp/llama-3.2-1b/config.json ] || $WC make-model --preset llama-3.2-1b --dtype bf16 --force --out /tmp/llama-3.2-1b > /dev/null 2>&1
[ -f /tmp/llama-8b/config.json ] || $WC make-model --preset llama-3.1-8b --dtype bf16 --force --out /tmp/llama-8b > /dev/null 2>&1
for model in llama-3.2-1b llama-8b; do
  for round in 1 2 3; do
    for graphs in on off; do
      env_graphs=1; [ $graphs = off ] && env_graphs=0
      WC_CUDA_GRAPHS=$env_graphs $WC generate --device cuda:0 --dtype bf16 --model "/tmp/$model" --prompt-ids 2 \
        --max-new-tokens 256 --ignore-eos --json 2> "$OUT/generate-$model-$graphs-$round.err" \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['timings']['decode_tokens_per_s'])" >> "$OUT/decode-$model-$graphs.txt"
    done
  done
  log "$model generate decode tok/s, graphs on: $(tr '\n' ' ' < "$OUT/decode-$model-on.txt") off: $(tr '\n' ' ' < "$OUT/decode-$model-off.txt")"
done
if [ -z "${SKIP_SERVING:-}" ]; then
  SKIP_PEER=${PEER:+}; [ -z "${PEER:-}" ] && SKIP_PEER=1
  WC=$WC MODEL=/tmp/llama-8b OUT="$OUT/serving-graphs-on" SKIP_PEER=$SKIP_PEER bash bench/gpu_serving_8b.sh
  grep "loadgen\|peer" "$OUT/serving-graphs-on/session.log" | tee -a "$OUT/session.log"
  WC_CUDA_GRAPHS=0 WC=$WC MODEL=/tmp/llama-8b OUT="$OUT/serving-graphs-off" SKIP_PEER=1 CLIENTS="${OFF_CLIENTS:-1 64}" bash bench/gpu_serving_8b.sh
  grep "loadgen" "$OUT/serving-graphs-off/session.log" | sed 's/^/graphs off: /' | tee -a "$OUT/session.log"
fi
