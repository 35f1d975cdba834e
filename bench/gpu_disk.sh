#!/usr/bin/env bash
# Issue 24 items 4 and 5 on one GPU, in one call: where the 8B's bytes come from and how fast.
#   1. the disk's raw sequential read rate: each weight file read with O_DIRECT (dd) after the
#      page cache is dropped;
#   2. a fresh process (`generate`, 1 token) from a cold page cache and from a warm one,
#      alternating with transformers' fresh process (bench/peer_transformers.py: from_pretrained
#      + .to(device)) on the same checkpoint and card, $ROUNDS rounds each;
#   3. each phase's milliseconds and the weights' GB/s, beside the floors (bytes / the disk's rate,
#      bytes / the pinned host-to-device rate `generate` reports).
# Run from the repo root with wc-cuda packed in $GPU_BIN (default .gpu/). Dropping the page cache
# needs root (`/proc/sys/vm/drop_caches`); where it cannot be dropped the cold rows are skipped
# and the log says so. Writes $OUT/disk/ and prints a summary.
set -u
source "$(dirname "$0")/gpu_unpack.sh"
WC=/tmp/wc/wc-cuda
OUTD=${OUT:-/tmp/wc-out}/disk; mkdir -p "$OUTD"
MODEL=${MODEL:-/tmp/llama-8b}
ROUNDS=${ROUNDS:-3}
log() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$OUTD/session.log"; }
{ date -u; $WC --version; nvidia-smi; df -h "$(dirname "$MODEL")"; lsblk 2>/dev/null; } > "$OUTD/machine.txt" 2>&1
[ -f "$MODEL/config.json" ] || $WC make-model --preset llama-3.1-8b --dtype bf16 --force --out "$MODEL" > /dev/null 2>&1
BYTES=$(du -cb "$MODEL"/*.safetensors | tail -1 | cut -f1)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; }
if drop; then COLD=1; else COLD=; log "cannot drop the page cache (not root?): cold rows skipped"; fi
if [ -n "$COLD" ]; then
  for round in $(seq 1 "$ROUNDS"); do
    drop; t0=$(date +%s.%N)
    for f in "$MODEL"/*.safetensors; do dd if="$f" of=/dev/null bs=16M iflag=direct status=none; done
    python3 -c "print(round($BYTES / ($(date +%s.%N) - $t0) / 1e9, 3))" >> "$OUTD/disk-gbps.txt"
  done
  log "disk raw O_DIRECT read GB/s: $(tr '\n' ' ' < "$OUTD/disk-gbps.txt")"
fi
# One fresh process of ours: its phases (ms) and the weights' rate, as one JSON line.
ours() {
  $WC generate --device cuda:0 --dtype bf16 --model "$MODEL" --prompt-ids 2 --max-new-tokens 1 --json 2>> "$OUTD/generate.err" \
    | python3 -c "import json,sys; r=json.load(sys.stdin); t=r['timings']; print(json.dumps({'phases_ms': t['phases_ms'], 'total_ms': t['total_ms'], 'bytes': t['weight_bytes']}))"
}
peer() {
  python3 bench/peer_transformers.py --model "$MODEL" --device cuda:0 --dtype bf16 2>> "$OUTD/peer.err" \
    | python3 -c "
import json,sys
r=json.loads(sys.stdin.read().strip().splitlines()[-1]); m=r['marks']
order=['process_started','device_ready','weights_read','weights_on_device','first_token']
print(json.dumps({'phases_ms': {b: (m[b]-m[a])/1e6 for a,b in zip(order, order[1:])}, 'total_ms': (m['first_token']-m['process_started'])/1e6, 'bytes': r['bytes']}))"
}
for state in ${COLD:+cold} warm; do
  for round in $(seq 1 "$ROUNDS"); do
    [ $state = cold ] && drop
    ours >> "$OUTD/ours-$state.jsonl"
    [ $state = cold ] && drop
    peer >> "$OUTD/peer-$state.jsonl"
  done
done
python3 - "$OUTD" "$BYTES" <<'PY' | tee -a "$OUTD/session.log"
import json, os, statistics, sys
out, total = sys.argv[1], int(sys.argv[2])
def rows(name):
    path = os.path.join(out, name)
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []
disk = [float(x) for x in open(os.path.join(out, "disk-gbps.txt"))] if os.path.exists(os.path.join(out, "disk-gbps.txt")) else []
if disk:
    print(f"disk O_DIRECT: median {statistics.median(disk):.2f} GB/s; floor for {total/1e9:.2f} GB: {total/statistics.median(disk)/1e6:.0f} ms")
for who in ("ours", "peer"):
    for state in ("cold", "warm"):
        r = rows(f"{who}-{state}.jsonl")
        if not r:
            continue
        phases = sorted({k for x in r for k in x["phases_ms"]})
        med = {p: statistics.median(x["phases_ms"].get(p, 0) for x in r) for p in phases}
        weights = sum(v for p, v in med.items() if p in ("weights_read", "weights_on_device"))
        print(f"{who} {state}: total p50 {statistics.median(x['total_ms'] for x in r):.0f} ms; "
              f"weights (read + on device) {weights:.0f} ms = {total / weights / 1e6:.2f} GB/s; phases {json.dumps({k: round(v, 1) for k, v in med.items()})}")
PY
