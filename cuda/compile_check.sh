#!/usr/bin/env bash
# Compiles every cuda/gpu/*.cu with nvcc for sm_80 and sm_90, plus compute_90 PTX (the default
# TORCH_CUDA_ARCH_LIST, "8.0;9.0+PTX"), with no GPU needed, and fails on the first error. The
# toolkit comes from CUDA_HOME / CUDA_PATH, else cuda/find_cuda_home.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${CUDA_HOME:-${CUDA_PATH:-$(bash "$here/find_cuda_home.sh")}}"
nvcc="$home/bin/nvcc"
[ -x "$nvcc" ] || { echo "compile_check: no nvcc under '$home' (set CUDA_HOME to the CUDA toolkit's folder)" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
sources=("$here"/gpu/*.cu)
[ "${#sources[@]}" -gt 0 ] || { echo "compile_check: no .cu files in $here/gpu" >&2; exit 1; }
"$nvcc" --version | tail -1
for src in "${sources[@]}"; do
  name="$(basename "$src" .cu)"
  echo "nvcc sm_80 sm_90 compute_90: gpu/$name.cu"
  if ! "$nvcc" -std=c++20 -O3 -Werror all-warnings -I"$here" \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -gencode arch=compute_90,code=compute_90 \
      -c "$src" -o "$out/$name.o"; then
    echo "compile_check: FAILED to compile $name.cu" >&2
    exit 1
  fi
done
echo "compile_check: all ${#sources[@]} .cu files compiled for sm_80, sm_90 and compute_90 PTX"
