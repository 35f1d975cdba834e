#!/usr/bin/env bash
# Worker processes on a GPU, run from the repo root on the GPU machine with the CUDA build's
# gzipped binary in .gpu/wc-cuda.gz: the bench with thread and process workers side by side, then
# a worker of cuda:0 killed (SIGKILL) while the other worker of the same GPU keeps serving; with
# DEVICE_FAULT=1 (a `--features cuda,fault-injection` build), then a kernel of that worker writing
# to an invalid address (a sticky CUDA error) while the other keeps serving.
# Everything is written under $OUT.
set -u
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
gunzip -c .gpu/wc-cuda.gz > /tmp/wc-cuda && chmod +x /tmp/wc-cuda
WC=/tmp/wc-cuda
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/isolation.log"; }
{ nvidia-smi; nproc; $WC --version; } > "$OUT/machine.txt" 2>&1
log "make-model opt-125m f16"
$WC make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m >> "$OUT/isolation.log" 2>&1
if [ -z "${SKIP_BENCH:-}" ]; then
  log "bench: controller (thread) vs controller_process, OPT-125m f16, single, 20 runs"
  $WC bench --models /tmp/opt-125m --device cuda:0 --dtype f16 --scenario single --runs 20 --no-peer \
    --out "$OUT/bench-isolation" >> "$OUT/isolation.log" 2>&1
  log "bench rc=$?"
fi
log "serve: two process workers on cuda:0, model a (OPT-125m) and b (tiny fixture)"
cat > /tmp/iso.toml <<TOML
[server]
port = 8123
model_roots = ["/tmp", "$PWD/tests/fixtures"]
[runtime]
isolation = "process"
restart_backoff = "100ms"
[prewarm]
dtypes = ["f16", "f32"]
[[workers]]
device = "cuda:0"
count = 2
[[models]]
name = "a"
path = "/tmp/opt-125m"
dtype = "f16"
attach_on_start = true
[[models]]
name = "b"
path = "$PWD/tests/fixtures/tiny-opt-prenorm"
attach_on_start = true
TOML
$WC serve --config /tmp/iso.toml > "$OUT/serve.log" 2>&1 &
SERVE=$!
python3 - "$OUT" <<'PY' >> "$OUT/isolation.log" 2>&1
import json, os, signal, sys, threading, time, urllib.request
out = sys.argv[1]
base = "http://127.0.0.1:8123"
def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except Exception as e:
        return None, str(e)
deadline = time.time() + 300
while call("GET", "/ready")[0] != 200:
    assert time.time() < deadline, "never ready"
    time.sleep(0.2)
print("workers:", [(w["worker"], w["device"], w["prewarm"]["pid"]) for w in call("GET", "/workers")[1]["workers"]])
def round_(kind):
    workers = call("GET", "/workers")[1]["workers"]
    engines = call("GET", "/engines")[1]["engines"]
    a = next(e for e in engines if e["name"] == "a")
    victim = workers[a["worker"]]["prewarm"]["pid"]
    restarts = workers[a["worker"]].get("restarts", 0)
    print(f"--- {kind}: engine a on worker {a['worker']} (pid {victim}), b on the other worker of cuda:0")
    statuses = []
    stop = [False]
    def ask_b():
        while not stop[0]:
            statuses.append(call("POST", "/v1/completions",
                                 {"model": "b", "prompt": [2, 5, 7], "max_tokens": 16})[0])
    t = threading.Thread(target=ask_b); t.start()
    time.sleep(1.0)
    faulted = time.time()
    if kind == "sigkill":
        os.kill(victim, signal.SIGKILL)
        status, body = call("POST", "/v1/completions", {"model": "a", "prompt": [2, 5], "max_tokens": 4})
    else:
        # A kernel writing to an invalid address in a's worker (the fault-injection build).
        status, body = call("POST", "/v1/completions", {"model": "a", "prompt": [2, 5], "max_tokens": 4,
                                                        "stop": ["\u0000wc-fault:device"]})
    print("request to a:", status, json.dumps(body)[:300], "after %.3f s" % (time.time() - faulted))
    deadline = time.time() + 60
    while True:
        w = call("GET", "/workers")[1]["workers"][a["worker"]]
        if w.get("restarts", 0) > restarts and w["state"] in ("idle", "serving"):
            break
        assert time.time() < deadline, w
        time.sleep(0.1)
    print("worker back after %.3f s:" % (time.time() - faulted), w["state"], "restarts", w["restarts"],
          "pid", w["prewarm"]["pid"], "last_error", w.get("last_error"))
    status, body = call("POST", "/v1/completions", {"model": "a", "prompt": [2, 5], "max_tokens": 4})
    print("a again (on-demand re-attach):", status)
    time.sleep(1.0)
    stop[0] = True; t.join()
    print("b during the fault:", len(statuses), "requests,", statuses.count(200), "answered 200, others:",
          sorted(set(s for s in statuses if s != 200)))
round_("sigkill")
if os.environ.get("DEVICE_FAULT"):
    round_("device")
PY
log "isolation rc=$?"
kill -INT $SERVE; wait $SERVE; log "serve exit $?"
sleep 1; log "worker processes left: $(pgrep -f 'wc-cuda worker' | wc -l)"
