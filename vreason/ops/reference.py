"""The vreason operators in plain torch: the oracle the compiled kernels are tested against.

Written for clarity, not speed; same contracts as `vreason.ops` (float32 math for float32,
float16 and bfloat16 inputs, float64 math for float64).
"""
from __future__ import annotations

import torch

__all__ = ["entropy", "value_update", "value_update_", "vecmat"]


def _math_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax over the last dim. `-inf` logits have p = 0 and add 0;
    a row that is all `-inf` or holds NaN/+inf raises ValueError."""
    z = logits.to(_math_dtype(logits))
    bad = ~(torch.isfinite(z.amax(-1)) & ~torch.isnan(z).any(-1))
    if bad.any():
        row = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(f"row {row} of logits is all -inf or contains NaN/+inf")
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    # p·log p → 0 where p = 0; masking log p (not the product) keeps autograd free of 0·(−inf).
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(-1)


def value_update(v0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`(v0+delta)/‖v0+delta‖·‖v0‖` over the last dim; rows where ‖v0+delta‖ == 0 return v0."""
    v0 = v0.to(_math_dtype(v0))
    u = v0 + delta.to(v0.dtype)
    n = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    s = torch.linalg.vector_norm(v0, dim=-1, keepdim=True)
    scaled = u / torch.where(n > 0, n, torch.ones_like(n)) * s
    return torch.where(n > 0, scaled, v0)


def value_update_(cache: torch.Tensor, positions: torch.Tensor, v0: torch.Tensor, delta: torch.Tensor,
                  counts: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Writes `value_update(v0, delta)` into `cache[:, :, positions, :]` (rounded to the cache's
    dtype), or per row for `[batch, n]` positions: row b's first `counts[b]` slots (all n without
    counts) at `cache[b, :, positions[b, j], :]`; returns `cache`. (`check` is the compiled op's;
    the reference trusts its positions.)"""
    new = value_update(v0, delta).to(cache.dtype)
    if positions.dim() == 1:
        cache[:, :, positions, :] = new
        return cache
    for row in range(cache.shape[0]):
        n = positions.shape[1] if counts is None else int(counts[row])
        cache[row, :, positions[row, :n], :] = new[row, :, :n]
    return cache


def vecmat(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`g @ weight` computed in float64 and returned in float32 (float64 for a float64 weight)."""
    out = g.double() @ weight.double()
    return out if weight.dtype == torch.float64 else out.float()
