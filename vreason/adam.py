"""Adam for the controller: torch.optim.Adam's arithmetic on one float32 tensor, with the
numerical guard (docs/method.md §2.5), all state on the device so a step never waits on the host.
One independent state per leading row (`rows=True`): a batch's samples never share a step count,
a moment or a skip count.
"""
from __future__ import annotations

import torch

__all__ = ["GuardedAdam"]


class GuardedAdam:
    """torch.optim.Adam's update (no weight decay, no amsgrad) on one float32 tensor, with the
    numerical guard: `step(param, grad, ok)` returns the new parameter, and where the 0-d bool
    `ok` is false the parameter and the state stay as they were and `skipped` counts it. All state
    lives on the device, so a guarded step never waits on the host."""

    def __init__(self, like: torch.Tensor, lr: float, betas: tuple[float, float], eps: float, rows: bool = False) -> None:
        # rows: one independent state per leading row of `like` (a batch of samples): step count,
        # skip count and `ok` are then `[rows, 1, ...]`, broadcast over each row's tensor.
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.exp_avg = torch.zeros_like(like)
        self.exp_avg_sq = torch.zeros_like(like)
        state = (like.shape[0],) + (1,) * (like.ndim - 1) if rows else ()
        self.steps = torch.zeros(state, dtype=torch.float32, device=like.device)
        self.skipped = torch.zeros(state, dtype=torch.int64, device=like.device)
        self._betas = torch.tensor([self.beta1, self.beta2], dtype=torch.float32, device=like.device).view(2, *(1 for _ in state))

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the state of these rows only (a per-row state: samples leaving a batch)."""
        self.exp_avg, self.exp_avg_sq = self.exp_avg.index_select(0, rows), self.exp_avg_sq.index_select(0, rows)
        self.steps, self.skipped = self.steps.index_select(0, rows), self.skipped.index_select(0, rows)

    def step(self, param: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        # torch.optim.Adam's arithmetic (lerp for the first moment, addcmul for the second; both
        # bias corrections from one pow); a non-finite gradient only reaches values the final
        # selects discard.
        t = self.steps + 1
        exp_avg = torch.lerp(self.exp_avg, grad, 1 - self.beta1)
        exp_avg_sq = torch.addcmul(self.exp_avg_sq * self.beta2, grad, grad, value=1 - self.beta2)
        correction = 1 - torch.pow(self._betas, t)  # [1 − β1^t, 1 − β2^t]
        denom = exp_avg_sq.sqrt() / correction[1].sqrt() + self.eps
        new_param = param - exp_avg / denom * (self.lr / correction[0])
        self.exp_avg = torch.where(ok, exp_avg, self.exp_avg)
        self.exp_avg_sq = torch.where(ok, exp_avg_sq, self.exp_avg_sq)
        self.steps = torch.where(ok, t, self.steps)
        self.skipped = torch.where(ok, self.skipped, self.skipped + 1)
        return torch.where(ok, new_param, param)
