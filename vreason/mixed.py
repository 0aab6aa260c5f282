"""Products of float32 rows with a reduced-precision (bf16 / fp16) tensor, accumulated in
float32, without a float32 copy of that tensor: a controller round reads the last layer's whole
key/value cache twice (scores, and the attention output's fixed part), and at 7B, B = 8 a float32
copy of it is ~0.5 GB per round.

On CUDA the product runs in the tensor's dtype with a float32 output (cuBLAS accumulates in
float32 inside). The float32 rows `a` are split into a high and a low part in that dtype
(`a = hi + lo` up to ~2⁻¹⁶ relative), stacked into one product, and the two halves summed in
float32: the result keeps float32-level accuracy, where rounding `a` once would keep 8 bits.
On the CPU (no such product in torch) and for float32 / float64 tensors the tensor is widened
to float32 as before: a CPU run's memory is not what bounds it.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["f32_product", "split_product"]

_REDUCED = (torch.bfloat16, torch.float16)


def _cuda_mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.bmm(x, y, out_dtype=torch.float32)


def split_product(a: torch.Tensor, b: torch.Tensor, mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`a @ b` for float32 `a` `[..., m, k]` and reduced-precision `b` `[..., k, n]` (same leading
    dims), as one `mm(x, y)` of 3-D tensors in b's dtype with a float32 result: `[hi; lo] @ b`."""
    hi = a.to(b.dtype)
    lo = (a - hi.float()).to(b.dtype)
    lead, m = a.shape[:-2], a.shape[-2]
    both = torch.cat([hi, lo], dim=-2).flatten(0, -3)  # [batch, 2m, k]
    out = mm(both, b.expand(*lead, *b.shape[-2:]).flatten(0, -3))
    return (out[:, :m] + out[:, m:]).view(*lead, m, b.shape[-1])


def f32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` in float32 for float32 `a` and `b` of any float dtype (see the module docstring)."""
    if b.dtype in _REDUCED and b.is_cuda:
        return split_product(a, b, _cuda_mm)
    return a @ b.float()
