"""Builds `vreason._C`: the vreason operators (CPU kernels always, CUDA kernels when available).

    pip install -e . --no-build-isolation     # against the torch already installed

Environment:
- FORCE_CUDA=1: build the CUDA kernels or fail (CI); FORCE_CUDA=0: CPU kernels only (fast local
  iteration). Unset: CUDA kernels when torch is a CUDA build and nvcc is found under CUDA_HOME.
- CUDA_HOME (or CUDA_PATH): the CUDA toolkit's folder. torch's own guess follows `nvcc` on PATH,
  which can be a wrapper script outside the toolkit; a folder counts only if it holds both
  bin/nvcc and include/cuda_runtime.h (then torch's guess and /usr/local/cuda are tried).
- TORCH_CUDA_ARCH_LIST: GPU architectures, default "8.0;9.0+PTX" (A100, H100, and PTX for the
  newest, which the driver compiles for newer GPUs such as sm_100/sm_120 instead of failing with
  "no kernel image" at their first launch).
- MAX_JOBS: parallel compile jobs (ninja).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent
CSRC = "cuda"  # shared schemas and checks; each backend beside them in cpu/ and gpu/
CPU_SOURCES = [f"{CSRC}/ops.cpp", f"{CSRC}/python_module.cpp", f"{CSRC}/cpu/cpu_ops.cpp",
               f"{CSRC}/cpu/entropy_avx2.cpp", f"{CSRC}/cpu/entropy_avx512.cpp", f"{CSRC}/cpu/vecmat.cpp",
               f"{CSRC}/vecmat_split.cpp"]
CUDA_SOURCES = [f"{CSRC}/gpu/cuda_ops.cpp", f"{CSRC}/gpu/entropy.cu", f"{CSRC}/gpu/value_update.cu"]
INCLUDE_DIRS = [str(ROOT / CSRC)]


def cuda_home() -> str | None:
    """The toolkit folder: one holding bin/nvcc and include/cuda_runtime.h (not a wrapper's)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    for home in candidates:
        if home and (Path(home) / "bin" / "nvcc").exists() and (Path(home) / "include" / "cuda_runtime.h").exists():
            return home
    return None


def want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA", "")
    home = cuda_home()
    if force == "0":
        return False
    if force == "1":
        if torch.version.cuda is None:
            raise SystemExit("FORCE_CUDA=1 but the installed torch is a CPU-only build")
        if home is None:
            raise SystemExit("FORCE_CUDA=1 but no CUDA toolkit found: set CUDA_HOME to the folder holding bin/nvcc")
        return True
    return torch.version.cuda is not None and home is not None


def extension():
    # -fopenmp: at::parallel_for is a header template over `#pragma omp parallel`; without it
    # the CPU kernels would silently run on one thread.
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    if not want_cuda():
        return cpp_extension.CppExtension(
            "vreason._C", CPU_SOURCES, include_dirs=INCLUDE_DIRS, extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    # torch.utils.cpp_extension read CUDA_HOME at import; point it at the toolkit found above.
    cpp_extension.CUDA_HOME = cuda_home()
    return cpp_extension.CUDAExtension(
        "vreason._C",
        CPU_SOURCES + CUDA_SOURCES,
        include_dirs=INCLUDE_DIRS,
        define_macros=[("VREASON_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20"]},
        extra_link_args=["-fopenmp"],
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": cpp_extension.BuildExtension})
