"""The vreason operators as compositions of torch ops, without the compiled kernels.

What a compiled op falls back to when its first-use self-test fails (`guard.py`), and what that
self-test compares it with. Unlike `reference` (the tests' oracle, which raises on a row without
entropy and so reads a flag back from the device), these never synchronize with the device: a
row without entropy gives NaN, as the CUDA kernels do without VREASON_CUDA_CHECKS=1.
"""
from __future__ import annotations

import torch

__all__ = ["entropy", "value_update", "value_update_"]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax over the last dim, float32 (float64 for float64 logits)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    # p·log p → 0 where p = 0; masking log p (not the product) keeps autograd free of 0·(−inf).
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(-1)


def value_update(v0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`(v0+delta)/‖v0+delta‖·‖v0‖` over the last dim; rows where ‖v0+delta‖ == 0 return v0."""
    u = v0 + delta
    n = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    s = torch.linalg.vector_norm(v0, dim=-1, keepdim=True)
    return torch.where(n > 0, u / torch.where(n > 0, n, torch.ones_like(n)) * s, v0)


def value_update_(cache: torch.Tensor, positions: torch.Tensor, v0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Writes `value_update(v0, delta)` into `cache[:, :, positions, :]` and returns `cache`."""
    cache[:, :, positions, :] = value_update(v0, delta).to(cache.dtype)
    return cache
