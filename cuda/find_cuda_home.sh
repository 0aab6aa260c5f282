#!/usr/bin/env bash
# Prints the CUDA toolkit folder (the one holding include/cuda_runtime.h), or nothing.
# torch's own guess follows `nvcc` on PATH, which can be a wrapper script outside the toolkit.
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-* /opt/cuda; do
  if [ -n "$d" ] && [ -f "$d/include/cuda_runtime.h" ] && [ -x "$d/bin/nvcc" ]; then
    echo "$d"; exit 0
  fi
done
exit 0
