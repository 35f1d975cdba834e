#!/usr/bin/env bash
# Decode graphs, the decode-attention kernel and the fused layer kernels on one GPU in one call
# (issue 23), run from the repo root with wc-cuda and cuda_reference (.xz or .gz) in $GPU_BIN
# (default .gpu/), and optionally an earlier wc-cuda in $GPU_BIN_BEFORE (e.g. .gpu-before/):
#   1. the CUDA reference tests (graphed decode passes equal to eager ones among them), twice
#      (the second with WC_FUSED=1), and tests/cuda_shared_cache.rs when packed;
#   2. `generate` (a fresh process, batch 1, 256 new tokens) of opt-125m f16, llama-3.2-1b and
#      llama-3.1-8b bf16 in the setups of $SETUPS (8B: $SETUPS_8B), alternating, 3 runs each (8B:
#      2). A setup `gGkKfF` sets graphs (WC_CUDA_GRAPHS), the decode kernel (WC_DECODE_KERNEL)
#      and fused weights with the fused kernels (WC_FUSED; `w`: fused weights with candle's ops)
#      on (1) or off (0); `gGkKfFvV` also the GEMV kernel (WC_GEMV); `before` runs the earlier
#      binary as it is;
#   3. bench/gpu_serving_8b.sh (serve + loadgen): everything off at $OFF_CLIENTS (default 1 and
#      64; OFF_CLIENTS= skips it), then graphs, decode kernel and fused layers (SERVE_FUSED,
#      default 1; SERVE_GEMV, default 0) at $CLIENTS. PEER=1 adds the compiled transformers
#      peer after it.
# Everything under $OUT, packed into $OUT/all.tgz; the summary in session.log.
set -u
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT"
source "$(dirname "$0")/gpu_unpack.sh"
if [ -n "${GPU_BIN_BEFORE:-}" ]; then
  mkdir -p /tmp/wc-before && xz -dc "$GPU_BIN_BEFORE/wc-cuda.xz" > /tmp/wc-before/wc-cuda && chmod +x /tmp/wc-before/wc-cuda
fi
trap 'tar czf "$OUT/all.tgz" -C "$OUT" --exclude all.tgz .' EXIT
WC=/tmp/wc/wc-cuda
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
{ date -u; $WC --version; nvidia-smi; } > "$OUT/machine.txt" 2>&1
log "build $($WC --version); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
if [ -x /tmp/wc/cuda_reference ] && [ -z "${SKIP_TESTS:-}" ]; then
  WC_EXPECT_GPUS=$(nvidia-smi -L | wc -l) timeout "${TEST_TIMEOUT:-300}" /tmp/wc/cuda_reference --test-threads 1 > "$OUT/test-cuda_reference.txt" 2>&1
  log "cuda_reference rc=$?: $(grep 'test result' "$OUT/test-cuda_reference.txt")"
  # Again with fused weights and kernels, so transformers' streams check them through engines.
  WC_FUSED=1 timeout "${TEST_TIMEOUT:-300}" /tmp/wc/cuda_reference --test-threads 1 > "$OUT/test-cuda_reference-fused.txt" 2>&1
  log "cuda_reference WC_FUSED=1 rc=$?: $(grep 'test result' "$OUT/test-cuda_reference-fused.txt")"
  grep -E "graphs captured|graphed logits|FAILED|panicked" "$OUT/test-cuda_reference.txt" | head -20 | tee -a "$OUT/session.log"
fi
if [ -x /tmp/wc/cuda_shared_cache ] && [ -z "${SKIP_TESTS:-}" ]; then
  timeout 150 /tmp/wc/cuda_shared_cache --test-threads 1 > "$OUT/test-cuda_shared_cache.txt" 2>&1
  log "cuda_shared_cache rc=$?: $(grep 'test result' "$OUT/test-cuda_shared_cache.txt")"
fi
[ -f /tmp/opt-125m/model.safetensors ] || $WC make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m > /dev/null 2>&1
[ -f /tmp/llama-3.2-1b/config.json ] || $WC make-model --preset llama-3.2-1b --dtype bf16 --force --out /tmp/llama-3.2-1b > /dev/null 2>&1
[ -f /tmp/llama-8b/config.json ] || $WC make-model --preset llama-3.1-8b --dtype bf16 --force --out /tmp/llama-8b > /dev/null 2>&1
SETUPS=${SETUPS:-"g1k1f0 g1k1f1 g1k1fw g1k1f1v1 g0k0f0"}
for spec in "opt-125m f16" "llama-3.2-1b bf16" "llama-8b bf16"; do
  set -- $spec
  setups=$SETUPS; rounds="1 2 3"
  # A fresh process's 8B load takes most of its run: fewer setups, twice.
  [ $1 = llama-8b ] && setups=${SETUPS_8B:-"g1k1f0 g1k1f1 g1k1f1v1 g0k0f0"} && rounds="1 2"
  for round in $rounds; do
    for setup in $setups; do
      bin=$WC; flags=(WC_CUDA_GRAPHS=${setup:1:1} WC_DECODE_KERNEL=${setup:3:1} WC_FUSED=${setup:5:1})
      # f = w: fused weights with candle's ops instead of the fused kernels.
      [ "${setup:5:1}" = w ] && flags+=(WC_FUSED=1 WC_FUSED_KERNELS=0)
      [ ${#setup} -ge 8 ] && flags+=(WC_GEMV=${setup:7:1})
      [ "$setup" = before ] && bin=/tmp/wc-before/wc-cuda && flags=()
      [ -x "$bin" ] || continue
      env "${flags[@]}" $bin generate --device cuda:0 --dtype "$2" --model "/tmp/$1" --prompt-ids 2 \
        --max-new-tokens 256 --ignore-eos --json 2> "$OUT/generate-$1-$setup-$round.err" \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['timings']['decode_tokens_per_s'])" >> "$OUT/decode-$1-$setup.txt"
    done
  done
  for setup in $setups; do
    [ -f "$OUT/decode-$1-$setup.txt" ] && log "$1 generate decode tok/s, $setup: $(tr '\n' ' ' < "$OUT/decode-$1-$setup.txt")"
  done
done
if [ -z "${SKIP_SERVING:-}" ]; then
  # The path before (both off) first; the peer, the longest part, last.
  if [ "${OFF_CLIENTS-1 64}" != "" ]; then
    WC_CUDA_GRAPHS=0 WC_DECODE_KERNEL=0 WC_FUSED=0 WC=$WC MODEL=/tmp/llama-8b OUT="$OUT/serving-graphs-off" SKIP_PEER=1 CLIENTS="${OFF_CLIENTS:-1 64}" bash bench/gpu_serving_8b.sh
    grep "loadgen" "$OUT/serving-graphs-off/session.log" | sed 's/^/graphs and kernel off: /' | tee -a "$OUT/session.log"
  fi
  SKIP_PEER=${PEER:+}; [ -z "${PEER:-}" ] && SKIP_PEER=1
  WC_FUSED=${SERVE_FUSED:-1} WC_GEMV=${SERVE_GEMV:-0} WC=$WC MODEL=/tmp/llama-8b OUT="$OUT/serving-graphs-on" SKIP_PEER=$SKIP_PEER bash bench/gpu_serving_8b.sh
  grep "loadgen\|peer\|memory" "$OUT/serving-graphs-on/session.log" | tee -a "$OUT/session.log"
fi
