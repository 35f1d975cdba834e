#!/usr/bin/env bash
# Concurrent serving on one GPU, run from the repo root on the GPU machine with the CUDA build's
# gzipped binaries in $GPU_BIN (default .gpu/: wc-cuda, batching, cuda_reference): the batching
# and GPU tests on cuda:0, the CPU concurrency scenario, then for OPT-125m (f16) and llama-3.2-1b
# (bf16), one `serve` with two worker processes on cuda:0; `loadgen` with 1 client, then with 64
# (continuous batching), then 16 clients while another engine attaches on the other worker of the
# same GPU; transformers' batched `generate` at batch 1 and 64 on the same card; and the process
# vs thread bench with decode tokens/s (issue 12's GPU measurement). Everything under $OUT,
# packed into $OUT/results-serving.tgz. ONLY_SERVING=1: the serve + loadgen part only.
# CPUS=3,5 keeps the workers' device threads on those CPUs ([prewarm] cpus).
set -u
GPU_BIN=${GPU_BIN:-.gpu}
TOKENS=${TOKENS:-128}
FINAL=${OUT:-/tmp/wc-out}; OUT=/tmp/wc-serving; rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL"
trap 'tar czf "$FINAL/results-serving.tgz" -C "$OUT" . ; cp "$OUT/session.log" "$FINAL/"' EXIT
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p /tmp/wc && for f in "$GPU_BIN"/*.gz; do gunzip -c "$f" > "/tmp/wc/$(basename "$f" .gz)"; chmod +x "/tmp/wc/$(basename "$f" .gz)"; done
WC=/tmp/wc/wc-cuda
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUT/session.log"; }
{ date -u; $WC --version; nvidia-smi; nproc; free -g; } > "$OUT/machine.txt" 2>&1
log "build: $($WC --version); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
if [ -z "${ONLY_SERVING:-}" ]; then
log "batching tests on cuda:0 (greedy alone = among 16 concurrent, budget, cancel, parameters)"
WC_TEST_DEVICE=cuda:0 /tmp/wc/batching --test-threads 1 > "$OUT/test-batching-cuda.txt" 2>&1
log "batching rc=$?"; grep -E "^test |test result" "$OUT/test-batching-cuda.txt" | tee -a "$OUT/session.log"
WC_EXPECT_GPUS=1 /tmp/wc/cuda_reference --test-threads 1 --skip two_gpus > "$OUT/test-cuda_reference.txt" 2>&1
log "cuda_reference rc=$?"; grep -E "test result" "$OUT/test-cuda_reference.txt" | tee -a "$OUT/session.log"
log "CPU concurrency scenario (this host's CPU, release build): 1 vs 16 streams of 64 tokens"
$WC bench --scenario concurrency --models tests/fixtures/tiny-opt-prenorm --runs 5 --out "$OUT/bench-concurrency-cpu" >> "$OUT/session.log" 2>&1
log "concurrency rc=$?"
fi
grep -qs '"unk_token":"t0"' /tmp/opt-125m/tokenizer.json || $WC make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m >> "$OUT/session.log" 2>&1
grep -qs '"unk_token":"t0"' /tmp/llama-3.2-1b/tokenizer.json || $WC make-model --preset llama-3.2-1b --dtype bf16 --force --out /tmp/llama-3.2-1b >> "$OUT/session.log" 2>&1

serve_config() {  # name path dtype
  cat <<EOF
[server]
port = 8311
max_tokens = 4096
[runtime]
isolation = "process"
[prewarm]
dtypes = ["f16", "bf16"]
host_cache = "4GiB"
${CPUS:+cpus = [$CPUS]}
[[workers]]
device = "cuda:0"
count = 2
[[models]]
name = "$1"
path = "$2"
dtype = "$3"
attach_on_start = true
[[models]]
name = "other"
path = "/tmp/llama-3.2-1b"
dtype = "bf16"
EOF
}

loadgen() {  # name model concurrency requests-or-duration...
  local name=$1 model=$2 c=$3; shift 3
  $WC loadgen --url http://127.0.0.1:8311 --model "$model" --concurrency "$c" --max-tokens "$TOKENS" \
    --ignore-eos --prompt "t10 t20 t30 t40 t50" --prompt "t7 t8 t9 t100 t200 t300 t400 t500 t600" \
    --out "$OUT/loadgen-$name" "$@" >> "$OUT/session.log" 2>&1
  log "loadgen $name (c=$c $*) rc=$?: $(python3 -c "import json,sys; r=json.load(open('$OUT/loadgen-$name/results.json')); s=r.get('summary', r); print({k: s.get(k) for k in ('succeeded', 'failed', 'output_tokens_per_s', 'ttft_ms', 'itl_ms')})" 2>&1 | head -c 600)"
}

for spec in "opt-125m /tmp/opt-125m f16" "llama-3.2-1b /tmp/llama-3.2-1b bf16"; do
  set -- $spec; name=$1 path=$2 dtype=$3
  serve_config "$name" "$path" "$dtype" > "$OUT/serve-$name.toml"
  log "serve $name"
  $WC serve --config "$OUT/serve-$name.toml" > "$OUT/serve-$name.log" 2>&1 &
  SERVER=$!
  for i in $(seq 1 120); do curl -sf http://127.0.0.1:8311/ready > /dev/null && break; sleep 0.5; done
  log "ready after ${i} polls"
  loadgen "$name-c1" "$name" 1 --requests 8
  loadgen "$name-c64" "$name" 64 --requests 256
  # Attach while serving: 16 clients for 20 s, alone, then again while `other` attaches and
  # detaches on the second worker of the same GPU.
  loadgen "$name-c16-alone" "$name" 16 --duration 15s
  ( sleep 3; for k in 1 2 3; do
      curl -s -X POST -H 'content-type: application/json' -d '{"model": "other"}' http://127.0.0.1:8311/engines > "$OUT/attach-$name-$k.json"
      sleep 1; curl -s -X DELETE http://127.0.0.1:8311/engines/other > /dev/null; sleep 1
    done ) &
  loadgen "$name-c16-attaching" "$name" 16 --duration 15s
  wait $!
  curl -s http://127.0.0.1:8311/metrics > "$OUT/metrics-$name.txt"
  kill -INT $SERVER; wait $SERVER
  log "serve $name stopped"
done

[ -n "${ONLY_SERVING:-}" ] && { log "done (serving only)"; exit 0; }
log "transformers batched generate (eager), batch 1 and 64, $TOKENS tokens"
python3 - "$OUT" "$TOKENS" <<'EOF' >> "$OUT/session.log" 2>&1
import json, sys, time, torch
from transformers import AutoModelForCausalLM
out, n = sys.argv[1], int(sys.argv[2])
results = {}
for name, path, dtype in [("opt-125m", "/tmp/opt-125m", torch.float16), ("llama-3.2-1b", "/tmp/llama-3.2-1b", torch.bfloat16)]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").to("cuda:0").eval()
    for batch in (1, 64):
        prompt = torch.full((batch, 8), 5, device="cuda:0")
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=1)
            torch.cuda.synchronize(); t = time.perf_counter()
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=1)
            torch.cuda.synchronize(); dt = time.perf_counter() - t
        results[f"{name}-batch{batch}"] = {"tokens_per_s": batch * n / dt, "seconds": dt}
    del model; torch.cuda.empty_cache()
json.dump(results, open(f"{out}/transformers-batched.json", "w"), indent=1)
print(json.dumps(results))
EOF
log "transformers rc=$?: $(cat "$OUT/transformers-batched.json" 2>/dev/null)"

log "process vs thread: bench OPT-125m f16, controller and controller_process, decode 64 tokens"
$WC bench --models /tmp/opt-125m --device cuda:0 --dtype f16 --scenario single --runs 20 \
  --modes controller,controller_process --decode-tokens 64 --no-peer ${CPUS:+--worker-cpus ${CPUS%%,*}} --out "$OUT/bench-isolation" >> "$OUT/session.log" 2>&1
log "bench isolation rc=$?"
grep -h "decode\|to first token" "$OUT/bench-isolation/report.md" | head -12 | tee -a "$OUT/session.log"
log "done"
