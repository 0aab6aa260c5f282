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


def value_update_(cache: torch.Tensor, positions: torch.Tensor, v0: torch.Tensor, delta: torch.Tensor,
                  counts: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Writes `value_update(v0, delta)` into `cache[:, :, positions, :]` (or per row, as the
    compiled op) and returns `cache`. Per row without a sync: one scatter, where a row's unwritten
    slots write its first slot's new vector at its first slot's position (the same value twice),
    or, for a row writing nothing, that position's current value back."""
    new = value_update(v0, delta).to(cache.dtype)
    if positions.dim() == 1:
        cache[:, :, positions, :] = new
        return cache
    batch, heads, n, dim = new.shape
    first = positions[:, :1]
    valid = torch.arange(n, device=positions.device) < (counts if counts is not None else torch.full_like(first[:, 0], n))[:, None]
    index = torch.where(valid, positions, first)[:, None, :, None].expand(batch, heads, n, dim)
    current = cache.gather(2, first[:, None, :, None].expand(batch, heads, 1, dim))
    fill = torch.where(valid[:, :1, None, None], new[:, :, :1], current)
    cache.scatter_(2, index, torch.where(valid[:, None, :, None], new, fill))
    return cache
