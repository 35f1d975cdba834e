#!/usr/bin/env bash
# Issue 23's serving measurement, as a user measures it, on one GPU in one call: a
# llama-3.1-8b-shaped bf16 checkpoint (random weights, `make-model`), one `serve` with one worker
# process, `loadgen` at 1, 16, 64 and 128 clients (128 output tokens, ~32-token prompts,
# ignore_eos; TTFT, inter-token and end-to-end percentiles), then the peer on the same checkpoint
# and card: transformers with a static KV cache and `torch.compile` (bench/peer_compiled.py) at
# batch 1 and 64. Run from the repo root with the gzipped wc-cuda in $GPU_BIN (default .gpu/), or
# WC=<binary>.
# Writes under $OUT. SKIP_PEER=1 skips the peer; CLIENTS="1 16" changes the client counts.
set -u
GPU_BIN=${GPU_BIN:-.gpu}
TOKENS=${TOKENS:-128}
CLIENTS=${CLIENTS:-"1 16 64 128"}
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
if [ -z "${WC:-}" ]; then
  mkdir -p /tmp/wc && for f in "$GPU_BIN"/wc-cuda.gz; do gunzip -c "$f" > /tmp/wc/wc-cuda; chmod +x /tmp/wc/wc-cuda; done
  WC=/tmp/wc/wc-cuda
fi
MODEL=${MODEL:-/tmp/llama-8b}
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
{ date -u; $WC --version; nvidia-smi; nproc; free -g; } > "$OUT/machine.txt" 2>&1
log "build: $($WC --version); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f "$MODEL/config.json" ] || { log "make-model llama-3.1-8b"; $WC make-model --preset llama-3.1-8b --dtype bf16 --force --out "$MODEL" >> "$OUT/session.log" 2>&1; }
cat > "$OUT/serve.toml" <<TOML
[server]
port = 8311
max_tokens = 4096
[prewarm]
dtypes = ["bf16"]
host_cache = "20GiB"
kv_cache_tokens = 32768
[[workers]]
device = "cuda:0"
[[models]]
name = "llama-8b"
path = "$MODEL"
dtype = "bf16"
attach_on_start = true
TOML
$WC serve --config "$OUT/serve.toml" > "$OUT/serve.log" 2>&1 &
SERVER=$!
for i in $(seq 1 600); do curl -sf http://127.0.0.1:8311/ready > /dev/null && break; sleep 0.5; done
log "ready after $i polls"
# Device memory as the workers report it, and the card's own figure, before and after each run
# (decode graphs take their memory lazily, per bucket).
memory() {
  curl -s http://127.0.0.1:8311/workers > "$OUT/workers-$1.json"
  log "memory $1: $(python3 -c "import json; w=json.load(open('$OUT/workers-$1.json')); w=w.get('workers', w); print([{k: x.get('memory', x).get(k) for k in ('free_bytes', 'total_bytes', 'parked_bytes')} for x in w])" 2>&1 | head -c 300); card: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader) used"
}
memory ready
# ~32-token prompts of the placeholder tokenizer's words.
P1="$(python3 -c "print(' '.join(f't{i}' for i in range(100, 132)))")"
P2="$(python3 -c "print(' '.join(f't{i}' for i in range(2000, 2031)))")"
for c in $CLIENTS; do
  requests=$(( c < 8 ? 8 : c * 3 ))
  $WC loadgen --url http://127.0.0.1:8311 --model llama-8b --concurrency "$c" --max-tokens "$TOKENS" \
    --ignore-eos --prompt "$P1" --prompt "$P2" --requests "$requests" --out "$OUT/loadgen-c$c" >> "$OUT/session.log" 2>&1
  log "loadgen c=$c rc=$?: $(python3 -c "import json; r=json.load(open('$OUT/loadgen-c$c/results.json')); s=r.get('summary', r); print({k: s.get(k) for k in ('succeeded', 'failed', 'output_tokens_per_s', 'ttft_ms', 'itl_ms')})" 2>&1 | head -c 700)"
  memory "after-c$c"
done
kill -INT $SERVER; wait $SERVER
log "serve exit rc=$?"
if [ -z "${SKIP_PEER:-}" ]; then
  log "peer: transformers, static cache + torch.compile, batch 1 and 64"
  python3 bench/peer_compiled.py --model "$MODEL" --dtype bf16 --batches 1,64 --new-tokens "$TOKENS" > "$OUT/peer-compiled.jsonl" 2>> "$OUT/peer.log"
  log "peer rc=$?: $(cat "$OUT/peer-compiled.jsonl" | tr '\n' ' ' | head -c 800)"
fi
