#!/usr/bin/env bash
# Decode speed of two builds side by side on one GPU (issue 23's changes, each measured against the
# build before it in the same call), run from the repo root with, in $GPU_BIN (default .gpu/),
# wc-cuda-before and wc-cuda (and cuda_reference, run first when there), each .gz or .xz:
#   - OPT-125m f16 and llama-3.2-1b bf16: `generate` (a fresh process), 256 new tokens, batch 1,
#     decode tokens/s, 3 runs per build, builds alternating;
#   - llama-3.1-8b bf16 from the host cache: `bench --scenario single --decode-tokens 128`, the
#     controller path's streamed decode (tokens/s as a caller sees it), 4 runs per build.
# FRESH_8B=1 adds a fresh process's 8B load (bench's standard path) before vs after, and the
# transformers peer. Everything under $OUT (packed in $OUT/all.tgz); the summary in session.log.
set -u
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT"
source "$(dirname "$0")/gpu_unpack.sh"
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
{ date -u; nvidia-smi; } > "$OUT/machine.txt" 2>&1
log "builds: before=$(/tmp/wc/wc-cuda-before --version) after=$(/tmp/wc/wc-cuda --version)"
if [ -x /tmp/wc/cuda_reference ]; then
  WC_EXPECT_GPUS=$(nvidia-smi -L | wc -l) /tmp/wc/cuda_reference --test-threads 1 > "$OUT/test-cuda_reference.txt" 2>&1
  log "cuda_reference rc=$?: $(grep 'test result' "$OUT/test-cuda_reference.txt")"
fi
WC=/tmp/wc/wc-cuda
[ -f /tmp/opt-125m/model.safetensors ] || $WC make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m > /dev/null 2>&1
[ -f /tmp/llama-3.2-1b/config.json ] || $WC make-model --preset llama-3.2-1b --dtype bf16 --force --out /tmp/llama-3.2-1b > /dev/null 2>&1
for spec in "opt-125m f16" "llama-3.2-1b bf16"; do
  set -- $spec
  for round in 1 2 3; do
    for b in before after; do
      bin=/tmp/wc/wc-cuda; [ $b = before ] && bin=/tmp/wc/wc-cuda-before
      "$bin" generate --device cuda:0 --dtype "$2" --model "/tmp/$1" --prompt-ids 2 --max-new-tokens 256 --ignore-eos --json \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['timings']['decode_tokens_per_s'])" >> "$OUT/decode-$1-$b.txt"
    done
  done
  log "$1 decode tok/s before: $(tr '\n' ' ' < "$OUT/decode-$1-before.txt") after: $(tr '\n' ' ' < "$OUT/decode-$1-after.txt")"
done
[ -f /tmp/llama-8b/config.json ] || $WC make-model --preset llama-3.1-8b --dtype bf16 --force --out /tmp/llama-8b > /dev/null 2>&1
for b in before after; do
  bin=/tmp/wc/wc-cuda; [ $b = before ] && bin=/tmp/wc/wc-cuda-before
  "$bin" bench --models /tmp/llama-8b --device cuda:0 --dtype bf16 --scenario single --runs 4 --no-peer \
    --modes controller --staging-mib 4096 --host-cache-mib 20480 --decode-tokens 128 --out "$OUT/llama-8b-$b" > "$OUT/bench-8b-$b.log" 2>&1
  log "8B $b rc=$?: $(grep -i -A3 'tokens/s' "$OUT/llama-8b-$b/report.md" | grep '^|' | tail -1)"
done
if [ -n "${FRESH_8B:-}" ]; then
  # A fresh process's 8B load (the standard path): before (pageable copies) vs after (pinned
  # staging ring), and transformers' from_pretrained on the same card as the peer.
  /tmp/wc/wc-cuda-before bench --models /tmp/llama-8b --device cuda:0 --dtype bf16 --scenario single --runs 1 \
    --modes standard --no-peer --out "$OUT/fresh-8b-before" > "$OUT/bench-fresh-8b-before.log" 2>&1
  log "fresh 8B before rc=$?: $(grep -E '^\| (weights_read|weights_on_device|\*\*total)' "$OUT/fresh-8b-before/report.md" | tr '\n' ' ')"
  /tmp/wc/wc-cuda bench --models /tmp/llama-8b --device cuda:0 --dtype bf16 --scenario single --runs 2 \
    --modes standard --peer-runs 1 --out "$OUT/fresh-8b-after" > "$OUT/bench-fresh-8b-after.log" 2>&1
  log "fresh 8B after rc=$?: $(grep -E '^\| (weights_read|weights_on_device|\*\*total)' "$OUT/fresh-8b-after/report.md" | tr '\n' ' ')"
fi
tar czf "$OUT/all.tgz" -C "$OUT" --exclude all.tgz .
