#!/usr/bin/env bash
# Issue 24 on one GPU: `serve` with two worker processes on cuda:0 and one shared host cache
# ($CACHE, default 40GiB): /ready time, background pinning progress, a model ($PRESET, default
# llama-3.2-1b; llama-3.1-8b for the targets) attached on worker 0 (a fill, before pinning), then
# on worker 1 (a hit), again once pinned, and after SIGKILL of worker 1 (its replacement
# re-attaches from the cache); each attach's phases and bandwidth from `POST /engines`, the
# machine's shared memory and the workers' resident memory. Run from the repo root with wc-cuda
# packed in $GPU_BIN (default .gpu/); writes under $OUT/shared-cache (output: stdout).
set -u
source "$(dirname "$0")/gpu_unpack.sh"
B=/tmp/wc/wc-cuda
dt() { python3 -c "print(round($1-$2,3))"; }
OUTD=${OUT:-/tmp/wc-out}/shared-cache; mkdir -p $OUTD
nvidia-smi -L; nproc; free -g | head -2
M=/tmp/models/${PRESET:-llama-3.2-1b}
if [ ! -f $M/config.json ]; then
  t=$(date +%s.%N); $B make-model --preset ${PRESET:-llama-3.2-1b} --out $M > /dev/null || exit 1
  echo "make-model $(dt $(date +%s.%N) $t) s"; du -sh $M
fi
cat > $OUTD/cfg.toml <<CFG
[server]
model_roots = ["/tmp/models"]
[runtime]
restart_backoff = "100ms"
[prewarm]
dtypes = ["bf16"]
host_cache = "${CACHE:-40GiB}"
kv_cache_tokens = 4096
[[workers]]
device = "cuda:0"
count = 2
CFG
t0=$(date +%s.%N)
$B serve --config $OUTD/cfg.toml --host 127.0.0.1 --port 8123 > $OUTD/serve.log 2>&1 &
SP=$!
for i in $(seq 1 6000); do curl -sf localhost:8123/ready > /dev/null && break; sleep 0.02; done
t1=$(date +%s.%N); echo "READY_S $(dt $t1 $t0)"
j() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }
curl -s localhost:8123/workers | j 'print([(w["worker"], w["prewarm"]["total_ms"], w["memory"]["host_cache_pinned_bytes"]>>20) for w in d["workers"]]); print(d["host_cache"])'
attach() {
  curl -s -X POST localhost:8123/engines -H 'content-type: application/json' \
    -d "{\"model\":\"$M\",\"worker\":$1,\"name\":\"m\"}" > $OUTD/attach-$2.json
  j 'print("ATTACH", d.get("worker"), "total_ms", round(d.get("total_ms",0),1), "GB/s", round(d.get("bandwidth_gb_per_s",0),1), [(p["anchor"], round(p["ms"],1)) for p in d.get("phases",[])], d.get("error"))' < $OUTD/attach-$2.json
  curl -s localhost:8123/v1/completions -H 'content-type: application/json' \
    -d '{"model":"m","prompt":[1,2,3,4],"max_tokens":8,"temperature":0}' | j 'print("TEXT", repr(d["choices"][0]["text"]))'
  curl -s localhost:8123/workers | j 'h=d["host_cache"]; print("CACHE hits",h["hits"],"misses",h["misses"],"used_GiB",h["used_bytes"]/2**30)'
  curl -s -X DELETE localhost:8123/engines/m > /dev/null
}
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && echo "dropped page cache"
# Before the cache is pinned: a fill through the ring, then a hit on the other worker.
curl -s localhost:8123/workers | j 'print("PINNED_MiB_BEFORE", [w["memory"]["host_cache_pinned_bytes"]>>20 for w in d["workers"]])'
attach 0 cold_unpinned
attach 1 hit_unpinned
curl -s localhost:8123/workers | j 'print("PINNED_MiB_AFTER", [w["memory"]["host_cache_pinned_bytes"]>>20 for w in d["workers"]])'
# Background pinning progress.
for i in $(seq 1 200); do
  p=$(curl -s localhost:8123/workers | j 'print(" ".join(str(w["memory"]["host_cache_pinned_bytes"]>>30) for w in d["workers"]))')
  echo "t=$(dt $(date +%s.%N) $t0) pinned_GiB $p"
  [ "$p" = "40 40" ] && break; sleep 1
done
grep -i shmem /proc/meminfo
attach 0 hit0
attach 1 hit1
attach 0 hit0b
pid=$(curl -s localhost:8123/workers | j 'print(d["workers"][1]["prewarm"]["pid"])')
kill -9 $pid; tk=$(date +%s.%N)
for i in $(seq 1 1200); do [ "$(curl -s localhost:8123/workers | j 'print(d["workers"][1]["state"], d["workers"][1]["restarts"])')" = "idle 1" ] && break; sleep 0.05; done
echo "RESTARTED_S $(dt $(date +%s.%N) $tk)"
attach 1 after_kill
attach 1 after_kill2
grep -i shmem /proc/meminfo
for p in $(pgrep -f "worker-controller worker"); do echo "worker $p $(grep -E '^(Rss|Pss)' /proc/$p/smaps_rollup | tr '\n' ' ')"; done
curl -s localhost:8123/metrics | grep wc_host_cache
kill $SP; wait $SP
