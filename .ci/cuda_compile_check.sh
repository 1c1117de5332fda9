#!/usr/bin/env bash
# Compile-checks every CUDA source against torch's headers with the machine's nvcc,
# for sm_80 and sm_90 (compile only: CI has no GPU, and the CPU torch wheel has no
# CUDA libraries). Fails on any error, and on any warning that points into csrc/.
# The CPU wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h: a one-line shim
# stands in for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "cuda compile check: nvcc not found; skipped (set NVCC=... to enable)"
  exit 0
fi
TORCH_INC="$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "include"))')"
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/shim/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$work/shim/c10/cuda/impl/cuda_cmake_macros.h"
"$NVCC" --version | tail -n 1
status=0
for src in $(find csrc -name '*.cu' | sort); do
  for arch in 80 90; do
    log="$work/$(basename "$src").sm$arch.log"
    if ! "$NVCC" -c "$src" -o "$work/out.o" -std=c++20 -O3 --expt-relaxed-constexpr \
        -gencode "arch=compute_$arch,code=sm_$arch" -DBBAM_WITH_CUDA -DTORCH_EXTENSION_NAME=_C \
        -I csrc -I "$work/shim" -I "$TORCH_INC" -I "$TORCH_INC/torch/csrc/api/include" -I "$PYINC" \
        -Xcompiler -Wall -Xcompiler -Wno-unknown-pragmas > "$log" 2>&1; then
      echo "FAIL $src (sm_$arch)"; cat "$log"; status=1; continue
    fi
    if grep -E "^(\./)?csrc/.*(warning|error)" "$log" > /dev/null; then
      echo "WARN $src (sm_$arch): warnings in our code"; grep -E "^(\./)?csrc/" "$log"; status=1; continue
    fi
    echo "ok   $src (sm_$arch)"
  done
done
exit $status
