#!/usr/bin/env bash
# Installs the CUDA 13.0 build toolchain that `--features cuda` needs (nvcc, headers, cudart,
# cuBLAS, cuRAND, NVRTC) from PyPI's nvidia-* wheels, on a machine with no GPU and no CUDA install,
# and prints the environment to build with:
#
#   eval "$(.ci/cuda-toolchain.sh)"       # then: cargo build --release --features cuda
#
# Installs once into ~/.cache/worker-controller/cuda-13.0 (or $WC_CUDA_TOOLCHAIN_DIR); later runs
# only check it and print the exports. Progress goes to stderr; a failed install exits non-zero.
# Needs python3 (with venv), gcc and network access to PyPI.
#
# 13.0 and not newer: the GPU machines run driver 580 (CUDA 13.0), which refuses PTX from a newer
# nvcc ("Unsupported .version"). It also makes a stub libcuda.so so that a binary links without a
# GPU driver (cudarc links libcuda dynamically); at run time the driver's libcuda.so.1 is loaded.
set -euo pipefail

# Pinned wheels; changing this list reinstalls.
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.5.25
)
PREFIX=${WC_CUDA_TOOLCHAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/worker-controller/cuda-13.0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "cuda-toolchain: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$(dirname "$PREFIX")"
# One installer at a time (two CI jobs sharing a cache).
exec 9>"$PREFIX.lock"
flock 9 2>/dev/null || true

stamp=$(printf '%s\n' "${PINS[@]}")
cu13() { ls -d "$PREFIX"/venv/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -n1; }

C=$(cu13 || true)
if [ "$(cat "$PREFIX/installed" 2>/dev/null || true)" != "$stamp" ] || [ -z "$C" ] \
   || [ ! -x "$C/bin/nvcc" ] || [ ! -f "$C/lib/libcuda.so" ]; then
  log "installing CUDA 13.0 wheels into $PREFIX"
  rm -rf "$PREFIX"
  command -v python3 >/dev/null || die "python3 not found"
  command -v gcc >/dev/null || die "gcc not found (nvcc's host compiler, and the stub libcuda)"
  python3 -m venv "$PREFIX/venv" >&2 || die "python3 -m venv failed (install python3-venv)"
  "$PREFIX/venv/bin/pip" install --quiet --no-input "${PINS[@]}" >&2 || die "pip install failed"
  C=$(cu13) || die "no nvidia/cu13 in the venv after pip install"

  # Stub driver library: every cu* entry point that cuda.h declares (macro names and the _v2/_v3
  # symbols they expand to) and that the locked cudarc binds, each returning an error code.
  # Only the linker sees it: its soname is libcuda.so.1, so the driver's own library is loaded.
  cudarc_sys=()
  if command -v cargo >/dev/null && (cd "$ROOT" && cargo fetch --locked -q) >&2; then
    v=$(grep -A1 '^name = "cudarc"$' "$ROOT/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p' | head -n1)
    [ -n "$v" ] && cudarc_sys=("${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$v"/src/driver/sys/mod.rs)
  fi
  {
    grep -ohP '\bcu[A-Z]\w*(?=\s*\()' "$C/include/cuda.h"
    gcc -E -P -x c -I "$C/include" "$C/include/cuda.h" | grep -oP '\bcu[A-Z]\w*(?=\s*\()'
    for f in "${cudarc_sys[@]}"; do
      if [ -f "$f" ]; then grep -oP '^pub unsafe fn \Kcu\w+(?=\()' "$f"; fi
    done
  } | sort -u | awk '{print "int " $1 "(void) { return 999; }"}' > "$PREFIX/libcuda_stub.c" \
    || die "listing the driver entry points failed"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$C/lib/libcuda.so" "$PREFIX/libcuda_stub.c" \
    || die "building the stub libcuda.so failed"
  # The wheels ship only versioned libraries; the linker wants the plain names.
  for l in cublas cublasLt nvrtc cudart; do ln -sf "lib$l.so.13" "$C/lib/lib$l.so"; done
  ln -sf libcurand.so.10 "$C/lib/libcurand.so"

  echo "$stamp" > "$PREFIX/installed"
fi

"$C/bin/nvcc" --version | grep -q 'release 13\.0' || die "$C/bin/nvcc is not CUDA 13.0"
log "CUDA 13.0 toolchain at $C"
echo "export CUDA_HOME='$C' CUDA_PATH='$C' PATH='$C/bin':\"\$PATH\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
