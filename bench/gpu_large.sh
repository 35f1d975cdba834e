#!/usr/bin/env bash
# Real-size attach on one GPU, run from the repo root on the GPU machine with the CUDA build's
# gzipped binaries in $GPU_BIN (default .gpu/: wc-cuda, cuda_reference): random-weight bf16
# checkpoints of the `make-model` presets (sharded as the originals), the cold-start bench on each
# (standard process, controller from its host cache, controller from the page cache, the
# transformers peer on the 1B and 8B), one attach with the files dropped from the page cache (disk
# bandwidth), 10 rounds of alternating 8B/7B attaches, and decode tokens/s of the 8B against
# transformers and the HBM floor. Everything is written under $OUT.
#
# PART=small: GPU tests, OPT-125m and llama-3.2-1b. PART=8b: llama-3.1-8b. PART=7b: qwen2.5-7b,
# the alternating rounds and the 8B's decode speed; PART=recheck: the 8B's controller attach and
# decode again, with a transformers decode result already in $OUT reused (each part fits one
# 10-minute call; the
# results are packed into $OUT/results-$PART.tgz). RUNS (10), HOST_CACHE_MIB (40960),
# STANDARD_RUNS (3) tune it.
set -u
PART=${PART:-all}
GPU_BIN=${GPU_BIN:-.gpu}
RUNS=${RUNS:-10}
STANDARD_RUNS=${STANDARD_RUNS:-3}
CACHE=${HOST_CACHE_MIB:-40960}
FINAL=${OUT:-/tmp/wc-out}; OUT=/tmp/wc-large-$PART; rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/results-$PART.tgz" -C "$OUT" . ; cp "$OUT/session-$PART.log" "$FINAL/"' EXIT
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p /tmp/wc && for f in "$GPU_BIN"/*.gz; do gunzip -c "$f" > "/tmp/wc/$(basename "$f" .gz)"; chmod +x "/tmp/wc/$(basename "$f" .gz)"; done
WC=/tmp/wc/wc-cuda
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session-$PART.log"; }
{ date -u; $WC --version; nvidia-smi; nproc; free -g; df -h /tmp; } > "$OUT/machine-$PART.txt" 2>&1
log "build: $($WC --version); $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"

make() {  # preset dtype
  [ -f "/tmp/$1/config.json" ] && return
  local t0=$(date +%s.%N)
  $WC make-model --preset "$1" --dtype "$2" --force --out "/tmp/$1" >> "$OUT/session-$PART.log" 2>&1
  log "make-model $1 $2: rc=$? in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s, $(du -sb /tmp/$1 | cut -f1) bytes"
}

bench() {  # name model dtype extra-args...
  local name=$1 model=$2 dtype=$3; shift 3
  log "bench $name: $*"
  $WC bench --models "$model" --device cuda:0 --dtype "$dtype" --out "$OUT/bench-$name" "$@" >> "$OUT/session-$PART.log" 2>&1
  log "bench $name rc=$?"
  grep -h "to first token" "$OUT/session-$PART.log" | tail -3
}

# One model: the controller's two paths RUNS times, then fresh processes (and the peer).
attach_bench() {  # name model dtype peer-runs
  bench "$1-controller" "$2" "$3" --scenario single --runs "$RUNS" --modes controller,controller_nocache \
    --host-cache-mib "$CACHE" --no-peer
  if [ "$4" -gt 0 ]; then
    bench "$1-standard" "$2" "$3" --scenario single --runs "$STANDARD_RUNS" --modes standard --peer-runs "$4"
  else
    bench "$1-standard" "$2" "$3" --scenario single --runs "$STANDARD_RUNS" --modes standard --no-peer
  fi
}

# The files of a checkpoint dropped from the page cache, then one attach from disk.
cold_attach() {  # name model dtype
  python3 - "$2" <<'EOF'
import glob, os, sys
for path in glob.glob(os.path.join(sys.argv[1], "*.safetensors")):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
EOF
  bench "$1-cold-disk" "$2" "$3" --scenario single --runs 1 --modes controller_nocache --no-peer
}

decode() {  # name model dtype
  log "decode tokens/s, $1, batch 1, 128 new tokens: ours x2, then transformers (eager)"
  for i in 1 2; do
    $WC generate --device cuda:0 --dtype "$3" --model "$2" --prompt-ids 1 --max-new-tokens 128 --ignore-eos --json \
      > "$OUT/decode-$1-ours-$i.json" 2>> "$OUT/session-$PART.log"
  done
  [ -f "$FINAL/decode-$1-transformers.json" ] && cp "$FINAL/decode-$1-transformers.json" "$OUT/" ||
  python3 bench/peer_decode.py --model "$2" --device cuda:0 --dtype "$3" --new-tokens 128 --repeats 2 \
    > "$OUT/decode-$1-transformers.json" 2>> "$OUT/session-$PART.log"
  python3 - "$OUT" "$1" "$2" <<'EOF' | tee -a "$OUT/session-$PART.log"
import glob, json, os, sys, torch
out, name, model = sys.argv[1:]
x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0"); y = torch.empty_like(x)
best = 1e9
for _ in range(10):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); y.copy_(x); e.record(); e.synchronize(); best = min(best, s.elapsed_time(e) / 1e3)
hbm = 2 * x.numel() / best  # bytes read + written per second
weights = sum(os.path.getsize(f) for f in glob.glob(os.path.join(model, "*.safetensors")))
ours = [json.load(open(f))["timings"]["decode_tokens_per_s"] for f in sorted(glob.glob(f"{out}/decode-{name}-ours-*.json"))]
peer = json.load(open(f"{out}/decode-{name}-transformers.json"))
floor = hbm / weights
result = {"model": name, "weight_bytes": weights, "hbm_copy_gb_per_s": hbm / 1e9,
          "hbm_floor_tokens_per_s": floor, "ours_tokens_per_s": ours,
          "transformers_tokens_per_s": peer["decode_tokens_per_s"],
          "ours_share_of_floor": max(ours) / floor, "ours_over_transformers": max(ours) / peer["p50"]}
json.dump(result, open(f"{out}/decode-{name}.json", "w"), indent=1)
print(json.dumps(result))
EOF
}

if [ "$PART" = small ]; then
  log "GPU tests"
  WC_EXPECT_GPUS=1 /tmp/wc/cuda_reference --test-threads 1 --nocapture --skip two_gpus > "$OUT/test-cuda_reference.txt" 2>&1
  log "cuda_reference rc=$?"; grep -E "^test |test result" "$OUT/test-cuda_reference.txt" | tee -a "$OUT/session-$PART.log"
  make opt-125m f16
  make llama-3.2-1b bf16
  bench opt-125m /tmp/opt-125m f16 --scenario single --runs "$RUNS" --modes standard,controller,controller_nocache \
    --host-cache-mib 2048 --no-peer
  attach_bench llama-3.2-1b /tmp/llama-3.2-1b bf16 2
  cold_attach llama-3.2-1b /tmp/llama-3.2-1b bf16
fi
if [ "$PART" = 8b ]; then
  make llama-3.1-8b bf16
  attach_bench llama-3.1-8b /tmp/llama-3.1-8b bf16 1
  cold_attach llama-3.1-8b /tmp/llama-3.1-8b bf16
fi
if [ "$PART" = 7b ]; then
  make llama-3.1-8b bf16
  make qwen2.5-7b bf16
  STANDARD_RUNS=2 attach_bench qwen2.5-7b /tmp/qwen2.5-7b bf16 0
  bench alternating /tmp/llama-3.1-8b,/tmp/qwen2.5-7b bf16 --scenario sequential --rounds 10 --modes controller \
    --host-cache-mib "$CACHE" --no-peer
  decode llama-3.1-8b /tmp/llama-3.1-8b bf16
fi
if [ "$PART" = recheck ]; then
  # After engine changes: the 8B's attach through the controller and its decode speed again.
  make llama-3.1-8b bf16
  bench llama-3.1-8b-controller /tmp/llama-3.1-8b bf16 --scenario single --runs "$RUNS" \
    --modes controller,controller_nocache --host-cache-mib "$CACHE" --no-peer
  decode llama-3.1-8b /tmp/llama-3.1-8b bf16
fi
log "done"
