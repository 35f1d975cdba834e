#!/usr/bin/env bash
# Issue 24's device tier on one GPU: `serve` with `[prewarm] park_detached = true` and one worker
# process; the model at $MODEL (default /tmp/llama-8b, made by `make-model --preset llama-3.1-8b`
# when missing) attached over HTTP, detached, and attached again $RUNS times (each a parked
# re-attach), every reply's phases kept in $OUT/parked/attach-*.json; then the same cycle with
# parking off (host-cache re-attach) for the comparison. Run from the repo root with wc-cuda.gz in
# $GPU_BIN (default .gpu/).
set -u
GPU_BIN=${GPU_BIN:-.gpu}
RUNS=${RUNS:-10}
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT/parked"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
[ -x /tmp/wc/wc-cuda ] || { mkdir -p /tmp/wc; gunzip -c "$GPU_BIN/wc-cuda.gz" > /tmp/wc/wc-cuda; chmod +x /tmp/wc/wc-cuda; }
WC=/tmp/wc/wc-cuda
MODEL=${MODEL:-/tmp/llama-8b}
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
[ -f "$MODEL/config.json" ] || $WC make-model --preset llama-3.1-8b --dtype bf16 --force --out "$MODEL" >> "$OUT/session.log" 2>&1
for park in true false; do
  cat > "$OUT/parked/serve-$park.toml" <<TOML
[server]
port = 8312
model_roots = ["$(dirname "$MODEL")"]
[prewarm]
dtypes = ["bf16"]
host_cache = "20GiB"
kv_cache_tokens = 4096
park_detached = $park
[[workers]]
device = "cuda:0"
TOML
  $WC serve --config "$OUT/parked/serve-$park.toml" > "$OUT/parked/serve-$park.log" 2>&1 &
  SERVER=$!
  for i in $(seq 1 600); do curl -sf http://127.0.0.1:8312/ready > /dev/null && break; sleep 0.5; done
  for run in $(seq 0 "$RUNS"); do
    curl -s -X POST http://127.0.0.1:8312/engines -H 'Content-Type: application/json' \
      -d "{\"model\": \"$MODEL\", \"name\": \"m\", \"dtype\": \"bf16\"}" > "$OUT/parked/attach-park-$park-$run.json"
    curl -s http://127.0.0.1:8312/workers > "$OUT/parked/workers-park-$park-$run.json"
    curl -s -X DELETE http://127.0.0.1:8312/engines/m > /dev/null
  done
  curl -s http://127.0.0.1:8312/workers > "$OUT/parked/workers-park-$park-detached.json"
  kill -INT $SERVER; wait $SERVER
  log "park_detached=$park: $(python3 - "$OUT/parked" "$park" "$RUNS" <<'PY'
import json, statistics, sys
d, park, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def total(r):
    return sum(p["ms"] for p in r["phases"])
reports = [json.load(open(f"{d}/attach-park-{park}-{i}.json")) for i in range(runs + 1)]
again = sorted(total(r) for r in reports[1:])
print(f"first attach {total(reports[0]):.1f} ms ({reports[0].get('bytes_moved')} bytes); re-attach p50 "
      f"{statistics.median(again):.1f} ms, max {again[-1]:.1f} ms, bytes moved {[r.get('bytes_moved') for r in reports[1:]]}")
PY
)"
done
