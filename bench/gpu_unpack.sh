#!/usr/bin/env bash
# Sourced by the bench/gpu_*.sh scripts on the GPU machine: the CUDA runtime's library path, and
# every packed binary of $GPU_BIN (default .gpu/; each .xz or .gz) unpacked into /tmp/wc/.
GPU_BIN=${GPU_BIN:-.gpu}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
mkdir -p /tmp/wc
for f in "$GPU_BIN"/*; do
  name=$(basename "$f"); name=${name%.gz}; name=${name%.xz}
  case "$f" in *.xz) xz -dc "$f" > "/tmp/wc/$name" ;; *.gz) gunzip -c "$f" > "/tmp/wc/$name" ;; *) continue ;; esac
  chmod +x "/tmp/wc/$name"
done
