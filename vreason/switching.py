"""Entropy switching (docs/method.md §2.3–2.4): the EMA of the entropy, its running peak and α.

`E_0 = H_0`, `E_k = β·E_{k−1} + (1−β)·H_k`, `P_k = max_{j≤k} E_j`, and in `switch` mode
`α_k = −1` if `E_k < P_k` else `+1`; `minimize` fixes α ≡ −1, `maximize` α ≡ +1.

Everything stays a device tensor so the decode loop never waits on the host for the rule.
In `off` mode the switch rule's α is still reported (what `switch` would have done at that
token, **ours**): the baseline's entropy/EMA/α curves are what the method is compared with.
"""
from __future__ import annotations

import torch

__all__ = ["EntropySwitch", "switch_trace"]

_FIXED_ALPHA = {"minimize": -1.0, "maximize": 1.0}


class EntropySwitch:
    """Per-sample switching state. `update(H_k)` returns `(E_k, α_k)` as float32 tensors of H_k's
    shape: 0-d for one sample, `[B]` with `batch=True` (element-wise: each sample its own state)."""

    def __init__(self, mode: str, beta: float, device: torch.device | str = "cpu", batch: bool = False) -> None:
        if mode not in ("switch", "minimize", "maximize", "off"):
            raise ValueError(f"mode must be switch|minimize|maximize|off, got {mode!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"ema beta must be in [0, 1), got {beta}")
        self.mode = mode
        self.beta = float(beta)
        self.device = torch.device(device)
        self.batch = batch
        self.ema: torch.Tensor | None = None
        self.peak: torch.Tensor | None = None

    def update(self, entropy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = entropy.detach().to(device=self.device, dtype=torch.float32)
        h = h.reshape(-1) if self.batch else h.reshape(())
        if self.ema is None:
            self.ema = h.clone()
            self.peak = h.clone()
        else:
            self.ema = self.beta * self.ema + (1.0 - self.beta) * h
            self.peak = torch.maximum(self.peak, self.ema)
        if self.mode in _FIXED_ALPHA:
            alpha = torch.full(h.shape, _FIXED_ALPHA[self.mode], dtype=torch.float32, device=self.device)
        else:
            alpha = torch.where(self.ema < self.peak, -1.0, 1.0).to(torch.float32)
        return self.ema, alpha

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the state of these rows of a batch only (samples leaving it)."""
        if self.ema is not None:
            self.ema, self.peak = self.ema.index_select(0, rows), self.peak.index_select(0, rows)


def switch_trace(entropies, mode: str = "switch", beta: float = 0.9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EMA, running peak and α for a whole entropy sequence (1-D float32 tensors), e.g. to replay
    a recorded trace."""
    state = EntropySwitch(mode, beta)
    emas, peaks, alphas = [], [], []
    for h in torch.as_tensor(entropies, dtype=torch.float32).reshape(-1):
        ema, alpha = state.update(h)
        emas.append(ema.clone())
        peaks.append(state.peak.clone())
        alphas.append(alpha)
    if not emas:
        empty = torch.zeros(0, dtype=torch.float32)
        return empty, empty.clone(), empty.clone()
    return torch.stack(emas), torch.stack(peaks), torch.stack(alphas)
