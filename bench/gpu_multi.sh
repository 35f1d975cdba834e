#!/usr/bin/env bash
# Issue 27 on a machine with 2 or more GPUs (written on a CPU-only session, not run yet): the peer
# clone of an attached llama-3.1-8b bf16 to another GPU against a host-cache attach there.
#   1. the topology: `nvidia-smi topo -m` and the peer links `GET /workers` reports per pair;
#   2. `serve` with `[runtime] isolation = "thread"` (a peer copy between worker processes is not
#      built) and one worker per GPU: the 8B attached on worker 0 ("src"), then on worker 1 from
#      the host cache (src detached first, so no peer holds it: the host-path baseline), then
#      `src` attached again and the 8B attached on worker 1 $RUNS times, each a peer clone
#      (`source: "peer:0"`), every reply kept in $OUT/multi/;
#   3. tokens of the peer clone against those of the host-path attach (greedy), and worker 1's
#      free memory after each detach against its prewarmed baseline;
#   4. the decode rate of `src` while a clone reads its weights: one long greedy stream on `src`,
#      tokens timestamped, a clone started 2 s in; tokens/s in the clone's window against the
#      2 s before it;
#   5. `bench --modes controller,controller_peer --device cuda:1 --peer-source cuda:0`;
#   6. tests/cuda_peer_copy.rs when packed as cuda_peer_copy.xz in $GPU_BIN (build it with
#      `CARGO_TARGET_DIR=target-cuda cargo test --release --features cuda --no-run --test
#      cuda_peer_copy`): tiny models copied GPU to GPU, tokens and memory checked.
# Run from the repo root with wc-cuda.gz in $GPU_BIN (default .gpu/).
set -u
GPU_BIN=${GPU_BIN:-.gpu}
RUNS=${RUNS:-10}
PORT=${PORT:-8327}
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT/multi"
D="$OUT/multi"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
[ -x /tmp/wc/wc-cuda ] || { mkdir -p /tmp/wc; gunzip -c "$GPU_BIN/wc-cuda.gz" > /tmp/wc/wc-cuda; chmod +x /tmp/wc/wc-cuda; }
WC=/tmp/wc/wc-cuda
MODEL=${MODEL:-/tmp/llama-8b}
URL=http://127.0.0.1:$PORT
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
GPUS=$(nvidia-smi -L | wc -l)
mkdir -p /tmp/wc
for f in "$GPU_BIN"/cuda_peer_copy.*; do
  [ -f "$f" ] || continue
  case "$f" in *.xz) xz -dc "$f" > /tmp/wc/cuda_peer_copy ;; *.gz) gunzip -c "$f" > /tmp/wc/cuda_peer_copy ;; esac
  chmod +x /tmp/wc/cuda_peer_copy
done
[ "$GPUS" -ge 2 ] || { log "gpu_multi: $GPUS GPU(s): needs 2 or more"; exit 1; }

nvidia-smi topo -m > "$D/topo.txt" 2>&1
nvidia-smi --query-gpu=index,name,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv > "$D/gpus.csv"
log "topology: $(tr '\n' ' ' < "$D/gpus.csv")"
[ -f "$MODEL/config.json" ] || $WC make-model --preset llama-3.1-8b --dtype bf16 --force --out "$MODEL" >> "$OUT/session.log" 2>&1

{
  printf '[server]\nport = %s\nmodel_roots = ["%s"]\n' "$PORT" "$(dirname "$MODEL")"
  printf '[runtime]\nisolation = "thread"\n'
  printf '[prewarm]\ndtypes = ["bf16"]\nhost_cache = "20GiB"\nkv_cache_tokens = 4096\n'
  for g in $(seq 0 $((GPUS - 1))); do printf '[[workers]]\ndevice = "cuda:%s"\n' "$g"; done
} > "$D/serve.toml"
$WC serve --config "$D/serve.toml" > "$D/serve.log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for i in $(seq 1 600); do curl -sf "$URL/ready" > /dev/null && break; sleep 0.5; done
curl -s "$URL/workers" > "$D/workers-prewarmed.json"

attach() { # worker name file
  curl -s -X POST "$URL/engines" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"name\": \"$2\", \"dtype\": \"bf16\", \"worker\": $1}" > "$D/$3"
}
detach() { curl -s -X DELETE "$URL/engines/$1" > "$D/detach-$1-$2.json"; }
complete() { # engine file
  curl -s "$URL/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$1\", \"prompt\": \"The capital of France is\", \"max_tokens\": 32, \"temperature\": 0, \"ignore_eos\": true}" > "$D/$2"
}

# The host-path baseline on worker 1: read once on worker 0 (fills the host cache), detached.
attach 0 src attach-src-first.json; detach src first
attach 1 host attach-host.json; complete host tokens-host.json; detach host 0
# Peer clones: src serving on worker 0, the 8B attached on worker 1 again and again.
attach 0 src attach-src.json
for run in $(seq 1 "$RUNS"); do
  attach 1 clone "attach-clone-$run.json"
  [ "$run" = 1 ] && complete clone tokens-clone.json
  curl -s "$URL/workers" > "$D/workers-clone-$run.json"
  detach clone "$run"
done
curl -s "$URL/workers" > "$D/workers-after.json"

# The source's decode rate while a clone reads its weights.
python3 - "$URL" "$MODEL" "$D" <<'PY'
import json, sys, threading, time, urllib.request
url, model, d = sys.argv[1:4]
times, window = [], {}
def stream():
    body = json.dumps({"model": "src", "prompt": "Once upon a time", "max_tokens": 2048,
                       "temperature": 0, "ignore_eos": True, "stream": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        for line in r:
            if line.startswith(b"data: {"):
                times.append(time.monotonic())
t = threading.Thread(target=stream); t.start()
time.sleep(2.0)
body = json.dumps({"model": model, "name": "during", "dtype": "bf16", "worker": 1}).encode()
req = urllib.request.Request(url + "/engines", body, {"Content-Type": "application/json"})
window["start"] = time.monotonic()
report = json.load(urllib.request.urlopen(req))
window["end"] = time.monotonic()
json.dump(report, open(f"{d}/attach-during-decode.json", "w"))
t.join()
def rate(a, b):
    n = sum(1 for x in times if a <= x < b)
    return n / (b - a) if b > a else 0.0
s, e = window["start"], window["end"]
during, before = rate(s, e), rate(s - 2.0, s)
out = {"before_tokens_per_s": before, "during_tokens_per_s": during,
       "clone_ms": (e - s) * 1e3, "source": report.get("source"),
       "slowdown": 1 - during / before if before else None}
json.dump(out, open(f"{d}/decode-during-clone.json", "w"), indent=1)
print(json.dumps(out))
PY
curl -s -X DELETE "$URL/engines/during" > /dev/null

python3 - "$D" "$RUNS" <<'PY' | tee -a "$OUT/session.log"
import json, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])
def load(name): return json.load(open(f"{d}/{name}"))
def phase(r, anchor): return next((p["ms"] for p in r["phases"] if p["anchor"] == anchor), 0.0)
host = load("attach-host.json")
clones = [load(f"attach-clone-{i}.json") for i in range(1, runs + 1)]
sources = sorted({c.get("source") for c in clones})
first = sorted(c["total_ms"] for c in clones)
copy = sorted(phase(c, "weights_on_device") for c in clones)
gb = [c["bytes_moved"] / (phase(c, "weights_on_device") / 1e3) / 1e9 for c in clones if phase(c, "weights_on_device") > 0]
print(f"host-cache attach on worker 1: {host['total_ms']:.1f} ms to first token, source {host.get('source')}")
print(f"peer clone x{runs}: sources {sources}; first token p50 {statistics.median(first):.1f} ms, max {first[-1]:.1f}; "
      f"copy phase p50 {statistics.median(copy):.1f} ms; {statistics.median(gb) if gb else 0:.0f} GB/s")
same = load("tokens-host.json")["choices"][0]["text"] == load("tokens-clone.json")["choices"][0]["text"]
print(f"tokens equal to the host-path attach: {same}")
base = load("workers-prewarmed.json")["workers"][1]["memory"]["free_bytes"]
after = load("workers-after.json")["workers"][1]["memory"]["free_bytes"]
print(f"worker 1 free bytes: prewarmed {base}, after the clones' detach {after} (diff {base - after})")
for w in load("workers-prewarmed.json")["workers"]:
    print(f"worker {w['worker']} peers: " + ", ".join(f"{p['peer']}:{p['link']}{'' if p['copy'] else ' (no copy)'}" for p in w.get("peers", [])))
PY
kill -INT $SERVER; wait $SERVER; trap - EXIT

if [ -x /tmp/wc/cuda_peer_copy ]; then
  # The test names its fixtures by the path it was built at.
  [ -d /work/main/tests/fixtures ] || { mkdir -p /work; ln -sfn "$PWD" /work/main; }
  /tmp/wc/cuda_peer_copy --nocapture > "$D/cuda_peer_copy.log" 2>&1
  log "tests/cuda_peer_copy.rs: rc $? ($(grep -E 'GB/s|test result' "$D/cuda_peer_copy.log" | tr '\n' ' '))"
fi

$WC bench --models "$MODEL" --device cuda:1 --peer-source cuda:0 --dtype bf16 --scenario single \
  --runs "$RUNS" --no-peer --modes controller,controller_peer --decode-tokens 0 \
  --out "$D/bench" >> "$OUT/session.log" 2>&1
log "bench controller vs controller_peer: $(grep -A4 '| mode' "$D/bench/report.md" | tr '\n' ' ' | head -c 600)"
