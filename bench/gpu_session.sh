#!/usr/bin/env bash
# One GPU session, run from the repo root on the GPU machine with the CUDA build's gzipped binaries
# in $GPU_BIN (default .gpu/: wc-cuda, cuda_reference; bad_input, batching, checkpoint_swap when
# there): GPU tests, compute-sanitizer
# memcheck over the CUDA tests, decode speed against transformers, and the cold-start bench (JIT
# cache warm, then cold). Everything is written under $OUT and packed into $OUT/session.tgz.
#
# PART=tests: machine facts, first processes, presets, GPU tests and memcheck only.
# PART=bench: decode speed and the benches only (makes the presets it needs).
# ONLY_BENCH=1 is PART=bench; SKIP_COLD=1 skips the JIT-cold bench; SKIP_MEMCHECK=1 skips memcheck.
# LLAMA_PRESET=llama-3.2-1b adds a Llama-family attach bench of that `make-model` preset.
# CPU_BENCH=1 adds the CPU bench (bundled fixtures) with and without RAYON_NUM_THREADS=1.
set -u
PART=${PART:-all}
[ -n "${ONLY_BENCH:-}" ] && PART=bench
GPU_BIN=${GPU_BIN:-.gpu}
FINAL=${OUT:-/tmp/wc-out}; OUT=/tmp/wc-session-$PART; rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
# Everything is packed into one archive at the end ($FINAL/session.tgz), the log also beside it.
trap 'tar czf "$FINAL/session-$PART.tgz" -C "$OUT" . ; cp "$OUT/session.log" "$FINAL/session-$PART.log"' EXIT
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p /tmp/wc && for f in "$GPU_BIN"/*.gz; do gunzip -c "$f" > "/tmp/wc/$(basename "$f" .gz)"; chmod +x "/tmp/wc/$(basename "$f" .gz)"; done
WC=/tmp/wc/wc-cuda
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
# Runs a command and logs its wall time (the machine may have no /usr/bin/time).
timed() { local t0; t0=$(date +%s.%N); "$@"; local rc=$?; log "wall $(python3 -c "print(round($(date +%s.%N) - $t0, 3))") s (rc=$rc): ${*:1:3}" > /dev/null; return $rc; }
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
{ date -u; $WC --version; nvidia-smi; nproc; free -g; } > "$OUT/machine.txt" 2>&1
log "build: $($WC --version); $GPUS GPU(s): $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | paste -sd'|')"
presets() {
  for p in opt-125m opt-350m; do
    [ -f /tmp/$p/model.safetensors ] || $WC make-model --preset $p --dtype f16 --force --out /tmp/$p >> "$OUT/session.log" 2>&1
  done
}

if [ "$PART" != bench ]; then
log "JIT cache before: $(ls ~/.nv/ComputeCache 2>/dev/null | wc -l) entries"
log "first process on this machine (JIT cache cold), tiny f16 on cuda:0"
timed $WC generate --device cuda:0 --dtype f16 --model tests/fixtures/tiny-opt-prenorm --prompt-ids 2 --max-new-tokens 4 --ignore-eos --json > "$OUT/first-process.json" 2>> "$OUT/session.log"
log "second process (JIT cache warm)"
timed $WC generate --device cuda:0 --dtype f16 --model tests/fixtures/tiny-opt-prenorm --prompt-ids 2 --max-new-tokens 4 --ignore-eos --json > "$OUT/second-process.json" 2>> "$OUT/session.log"
log "make-model presets"
presets
[ -n "${LLAMA_PRESET:-}" ] && $WC make-model --preset "$LLAMA_PRESET" --dtype bf16 --force --out "/tmp/$LLAMA_PRESET" >> "$OUT/session.log" 2>&1
log "transformers loads them (AutoModelForCausalLM)"
python3 -c "
import sys
from transformers import AutoModelForCausalLM
for d in sys.argv[1:]:
    m = AutoModelForCausalLM.from_pretrained(d)
    print(d, type(m).__name__, 'loaded by transformers:', sum(p.numel() for p in m.parameters()), 'parameters')
" /tmp/opt-125m /tmp/opt-350m ${LLAMA_PRESET:+/tmp/$LLAMA_PRESET} >> "$OUT/session.log" 2>&1
log "transformers load rc=$?"
log "GPU tests (WC_EXPECT_GPUS=$GPUS)"
WC_EXPECT_GPUS=$GPUS /tmp/wc/cuda_reference --test-threads 1 --nocapture > "$OUT/test-cuda_reference.txt" 2>&1; log "cuda_reference rc=$?"
grep -E "^test |test result" "$OUT/test-cuda_reference.txt" | tee -a "$OUT/session.log"
if [ -x /tmp/wc/bad_input ]; then
  /tmp/wc/bad_input --test-threads 1 > "$OUT/test-bad_input.txt" 2>&1; log "bad_input rc=$?"
fi
if [ -x /tmp/wc/batching ]; then
  WC_TEST_DEVICE=cuda:0 /tmp/wc/batching --test-threads 1 > "$OUT/test-batching-cuda.txt" 2>&1
  log "batching on cuda:0 rc=$? $(grep -h 'test result' "$OUT/test-batching-cuda.txt")"
fi
if [ -x /tmp/wc/checkpoint_swap ]; then
  /tmp/wc/checkpoint_swap --test-threads 1 > "$OUT/test-checkpoint_swap.txt" 2>&1
  log "checkpoint_swap rc=$? $(grep -h 'test result' "$OUT/test-checkpoint_swap.txt")"
fi
if [ -z "${SKIP_MEMCHECK:-}" ]; then
  SAN=$(ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  SAN=${SAN:-$(command -v compute-sanitizer)}
  if [ -z "$SAN" ]; then
    log "compute-sanitizer: not found on this machine"
  else
    # Every CUDA test but the 100-cycle loop and the two-GPU timing (minutes under memcheck).
    log "memcheck: $SAN --tool memcheck cuda_reference --skip hundred --skip two_gpus"
    timeout 300 "$SAN" --tool memcheck --print-limit 50 /tmp/wc/cuda_reference --test-threads 1 \
      --skip hundred --skip two_gpus > "$OUT/memcheck-cuda_reference.txt" 2>&1
    log "memcheck rc=$?: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck-cuda_reference.txt" | tail -1)"
    grep -E "^test |test result" "$OUT/memcheck-cuda_reference.txt" | tee -a "$OUT/session.log"
  fi
fi
fi

[ "$PART" = tests ] && exit 0
presets
log "decode tokens/s, OPT-125m preset f16, batch 1, 256 new tokens: ours x5"
for i in 1 2 3 4 5; do
  $WC generate --device cuda:0 --dtype f16 --model /tmp/opt-125m --prompt-ids 2 --max-new-tokens 256 --ignore-eos --json \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['timings']['decode_tokens_per_s'])" >> "$OUT/decode-ours.txt"
done
log "decode tokens/s: transformers (eager) peer"
python3 bench/peer_decode.py --model /tmp/opt-125m --device cuda:0 --dtype f16 --new-tokens 256 > "$OUT/decode-transformers.json" 2>> "$OUT/session.log"
log "bench, JIT cache warm"
$WC bench --models /tmp/opt-125m,/tmp/opt-350m --device cuda:0 --dtype f16 --runs 20 --rounds 3 --peer-runs ${PEER_RUNS:-5} --out "$OUT/bench-warm" >> "$OUT/session.log" 2>&1
log "bench rc=$?"
if [ -n "${LLAMA_PRESET:-}" ]; then
  [ -f "/tmp/$LLAMA_PRESET/config.json" ] || $WC make-model --preset "$LLAMA_PRESET" --dtype bf16 --force --out "/tmp/$LLAMA_PRESET" >> "$OUT/session.log" 2>&1
  log "bench, $LLAMA_PRESET bf16 (staging and host cache sized to hold it)"
  $WC bench --models "/tmp/$LLAMA_PRESET" --device cuda:0 --dtype bf16 --scenario single --runs ${LLAMA_RUNS:-10} \
    --peer-runs ${LLAMA_PEER_RUNS:-2} --staging-mib 4096 --host-cache-mib 4096 --out "$OUT/bench-llama" >> "$OUT/session.log" 2>&1
  log "bench llama rc=$?"
fi
if [ -n "${CPU_BENCH:-}" ]; then
  log "CPU bench (bundled fixtures), default threads, then RAYON_NUM_THREADS=1"
  $WC bench --runs 20 --rounds 5 --out "$OUT/bench-cpu" >> "$OUT/session.log" 2>&1; log "cpu bench rc=$?"
  RAYON_NUM_THREADS=1 $WC bench --runs 20 --rounds 5 --out "$OUT/bench-cpu-rayon1" >> "$OUT/session.log" 2>&1; log "cpu bench rayon1 rc=$?"
fi
[ -n "${SKIP_COLD:-}" ] && exit 0
log "bench, JIT cache cold for every standard process"
$WC bench --models /tmp/opt-125m --device cuda:0 --dtype f16 --scenario single --runs 5 --no-peer --cold-jit --out "$OUT/bench-cold" >> "$OUT/session.log" 2>&1
log "bench cold rc=$?"
