#!/usr/bin/env bash
# One GPU session, run from the repo root on the GPU machine with the CUDA build's gzipped binaries
# in .gpu/ (wc-cuda, cuda_reference, bad_input): GPU tests, decode speed against transformers, and
# the cold-start bench (JIT cache warm, then cold). Everything is written under $OUT.
# ONLY_BENCH=1 skips the tests and the decode measurement; SKIP_COLD=1 the JIT-cold bench.
set -u
FINAL=${OUT:-/tmp/wc-out}; OUT=/tmp/wc-session; mkdir -p "$OUT" "$FINAL"
# Everything is packed into one archive at the end ($FINAL/session.tgz), the log also beside it.
trap 'tar czf "$FINAL/session.tgz" -C "$OUT" . ; cp "$OUT/session.log" "$FINAL/"' EXIT
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
# The test binaries and the bench name files by the build machine's checkout path.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
mkdir -p /tmp/wc && for f in .gpu/*.gz; do gunzip -c "$f" > "/tmp/wc/$(basename "$f" .gz)"; chmod +x "/tmp/wc/$(basename "$f" .gz)"; done
WC=/tmp/wc/wc-cuda
log() { echo "== $*" | tee -a "$OUT/session.log"; }
{ nvidia-smi; nproc; free -g; } > "$OUT/machine.txt" 2>&1
log "JIT cache before: $(ls ~/.nv/ComputeCache 2>/dev/null | wc -l) entries"
log "first process on this machine (JIT cache cold), tiny f16 on cuda:0"
$WC generate --device cuda:0 --dtype f16 --model tests/fixtures/tiny-opt-prenorm --prompt-ids 2 --max-new-tokens 4 --ignore-eos --json > "$OUT/first-process.json" 2>> "$OUT/session.log"
log "second process (JIT cache warm)"
$WC generate --device cuda:0 --dtype f16 --model tests/fixtures/tiny-opt-prenorm --prompt-ids 2 --max-new-tokens 4 --ignore-eos --json > "$OUT/second-process.json" 2>> "$OUT/session.log"
log "make-model presets"
$WC make-model --preset opt-125m --dtype f16 --force --out /tmp/opt-125m >> "$OUT/session.log" 2>&1
$WC make-model --preset opt-350m --dtype f16 --force --out /tmp/opt-350m >> "$OUT/session.log" 2>&1
log "transformers loads them"
python3 -c "
from transformers import OPTForCausalLM
for d in ['/tmp/opt-125m', '/tmp/opt-350m']:
    m = OPTForCausalLM.from_pretrained(d)
    print(d, 'loaded by transformers:', sum(p.numel() for p in m.parameters()), 'parameters')
" >> "$OUT/session.log" 2>&1
if [ -z "${ONLY_BENCH:-}" ]; then
log "GPU tests"
/tmp/wc/cuda_reference --test-threads 1 --nocapture > "$OUT/test-cuda_reference.txt" 2>&1; log "cuda_reference rc=$?"
/tmp/wc/bad_input --test-threads 1 > "$OUT/test-bad_input.txt" 2>&1; log "bad_input rc=$?"
log "decode tokens/s, OPT-125m preset f16, batch 1, 256 new tokens: ours x5"
for i in 1 2 3 4 5; do
  $WC generate --device cuda:0 --dtype f16 --model /tmp/opt-125m --prompt-ids 2 --max-new-tokens 256 --ignore-eos --json \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['timings']['decode_tokens_per_s'])" >> "$OUT/decode-ours.txt"
done
log "decode tokens/s: transformers (eager) peer"
python3 bench/peer_decode.py --model /tmp/opt-125m --device cuda:0 --dtype f16 --new-tokens 256 > "$OUT/decode-transformers.json" 2>> "$OUT/session.log"
fi
log "bench, JIT cache warm"
$WC bench --models /tmp/opt-125m,/tmp/opt-350m --device cuda:0 --dtype f16 --runs 20 --rounds 3 --peer-runs 5 --out "$OUT/bench-warm" >> "$OUT/session.log" 2>&1
log "bench rc=$?"
[ -n "${SKIP_COLD:-}" ] && exit 0
log "bench, JIT cache cold for every standard process"
$WC bench --models /tmp/opt-125m --device cuda:0 --dtype f16 --scenario single --runs 5 --no-peer --cold-jit --out "$OUT/bench-cold" >> "$OUT/session.log" 2>&1
log "bench cold rc=$?"
