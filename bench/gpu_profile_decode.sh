#!/usr/bin/env bash
# Where an 8B decode step's GPU time goes, run from the repo root on the GPU machine with the CUDA
# build's gzipped binary in .gpu/wc-cuda.gz: Nsight Compute times every kernel of a window of
# `generate` (llama-3.1-8b preset, bf16, batch 1) past the load and prefill, then the kernels are
# summed by name. Writes $OUT/profile-decode.{csv.gz,txt}.
set -u
OUT=${OUT:-/tmp/wc-out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
gunzip -c .gpu/wc-cuda.gz > /tmp/wc-cuda && chmod +x /tmp/wc-cuda
MODEL=${MODEL:-llama-3.1-8b}
[ -f /tmp/$MODEL/config.json ] || /tmp/wc-cuda make-model --preset "$MODEL" --dtype bf16 --force --out /tmp/$MODEL > /dev/null
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
# SKIP kernels (load, prefill, first steps) then COUNT kernels: several whole decode steps.
timeout ${LIMIT:-240} "$NCU" --launch-skip ${SKIP:-3000} --launch-count ${COUNT:-800} \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --clock-control none \
  /tmp/wc-cuda generate --device cuda:0 --dtype bf16 --model /tmp/$MODEL --prompt-ids 1 \
  --max-new-tokens 64 --ignore-eos > /tmp/profile.csv 2> /tmp/profile.err
echo "ncu rc=$?" | tee "$OUT/profile-decode.txt"
tail -3 /tmp/profile.err >> "$OUT/profile-decode.txt"
gzip -c /tmp/profile.csv > "$OUT/profile-decode.csv.gz"
python3 - /tmp/profile.csv >> "$OUT/profile-decode.txt" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; rows = rows[1:]
k, m, v = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
t = collections.defaultdict(float); b = collections.defaultdict(float); n = collections.Counter()
for r in rows:
    val = float(r[v].replace(",", ""))
    if r[m] == "gpu__time_duration.sum": t[r[k][:90]] += val; n[r[k][:90]] += 1
    else: b[r[k][:90]] += val
total = sum(t.values())
print(f"{sum(n.values())} kernels, {total/1e6:.3f} ms GPU time in the window")
for name, ns in sorted(t.items(), key=lambda x: -x[1])[:20]:
    print(f"{ns/total*100:5.1f}%  {ns/1e6:8.3f} ms  x{n[name]:4d}  {b[name]/ns if ns else 0:7.1f} GB/s  {name}")
PY
cat "$OUT/profile-decode.txt"
