"""The test-time controller for a batch of samples decoded together (`batch_generation.py`).

Each row of the batch is one sample with its own ΔV over its own video tokens, its own Adam state
(step and skip counts included) and its own numerical guard; only the tensor operations are
shared. The rows' video tokens are laid out `[B, n_max]` (row i's n_i first, the rest padding
slots); a padding slot attends with probability 0, so its gradient is exactly 0, its ΔV stays 0
and nothing is ever written to the cache for it. The cache's left padding is masked out of the
attention (probability exactly 0), so a row's softmax is over its own tokens only.

The loss of a batched round is the SUM of the rows' losses (never their mean): rows share no
parameter, so ∂(Σ L_j)/∂ΔV_i = ∂L_i/∂ΔV_i, and each row's step is the one it would take alone.
Everything else (the exact one-token gradient, the hand-written tail, Adam's arithmetic, the
write into the cache) is `ValueController`'s, applied row-wise.
"""
from __future__ import annotations

import torch

from vreason import ops
from vreason.config import ControllerConfig
from vreason.controller import AttentionConstants, GuardedAdam, ValueController
from vreason.models.adapter import DecoderAdapter, LayerInput

__all__ = ["BatchValueController"]


class BatchValueController(ValueController):
    """ΔV for B samples at once. `video_index` lists each row's (kept) video tokens' cache indices
    in the last layer of the padded batch cache; `set_attention_mask` gives the current mask
    (0 at padding) before a round; `keep(rows)` drops the samples that left the batch."""

    def __init__(self, adapter: DecoderAdapter, config: ControllerConfig, cache, video_index: list[torch.Tensor]) -> None:
        self._padding: torch.Tensor | None = None
        super().__init__(adapter, config, cache, video_index)

    def _init_values(self, cache, video_index: list[torch.Tensor]) -> None:
        config = self.config
        _, values = self.adapter.cache_kv(cache, self.layer)
        rows, kv, _, head_dim = values.shape
        n_max = max(1, max(int(index.numel()) for index in video_index))
        index = torch.zeros(rows, n_max, dtype=torch.int64, device=values.device)
        valid = torch.zeros(rows, n_max, dtype=torch.bool, device=values.device)
        for row, positions in enumerate(video_index):
            index[row, : positions.numel()] = positions
            valid[row, : positions.numel()] = True
        self.video_index, self.valid = index, valid
        gathered = values.gather(2, index[:, None, :, None].expand(rows, kv, n_max, head_dim)).float()
        # Padding slots hold ones (any finite, nonzero vector): V(ΔV) and its backward stay finite
        # there, and their gradient is exactly 0 (they attend with probability 0).
        self.v0 = torch.where(valid[:, None, :, None], gathered, torch.ones_like(gathered))
        self.delta = torch.zeros_like(self.v0)
        self.adam = GuardedAdam(self.v0, config.lr, (config.adam_beta1, config.adam_beta2), config.adam_eps, rows=True)
        self._flatten()

    def _flatten(self) -> None:
        """The valid (row, slot) pairs and their cache positions, for the writes into the cache."""
        self._rows, self._slots = torch.nonzero(self.valid, as_tuple=True)
        self._positions = self.video_index[self._rows, self._slots]

    def set_attention_mask(self, mask: torch.Tensor) -> None:
        """`[B, seq]` (0 at padding) over the current cache: the keys a round may attend to."""
        self._padding = (mask == 0)[:, None, None, :]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep these rows (1-D int64, ascending) of every per-sample state."""
        self.v0, self.delta = self.v0.index_select(0, rows), self.delta.index_select(0, rows)
        self.video_index, self.valid = self.video_index.index_select(0, rows), self.valid.index_select(0, rows)
        self.adam.keep(rows)
        self._values = None
        self._padding = None
        self._flatten()

    @property
    def skipped(self) -> torch.Tensor:
        """Adam steps the guard skipped, per row (`[B]` int64 on the device)."""
        return self.adam.skipped.reshape(-1)

    def attention_constants(self, layer_input: LayerInput, cache) -> AttentionConstants:
        keys, values = self.adapter.cache_kv(cache, self.layer)
        query = self.adapter.query(layer_input)  # [B, kv, groups, head_dim], scaled
        scores = query @ keys.float().transpose(-1, -2)  # [B, kv, groups, seq]
        if self._padding is not None:
            scores = scores.masked_fill(self._padding, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        rows, kv, groups, seq = probs.shape
        index = self.video_index[:, None, None, :].expand(rows, kv, groups, self.video_index.shape[-1])
        a_video = probs.gather(-1, index).masked_fill(~self.valid[:, None, None, :], 0.0)
        video = torch.zeros(rows, seq, dtype=torch.bool, device=probs.device)
        video[self._rows, self._positions] = True
        o_rest = probs.masked_fill(video[:, None, None, :], 0.0) @ values.float()
        return AttentionConstants(a_video, o_rest)

    def _step(self, loss: torch.Tensor, grad: torch.Tensor, values_cache: torch.Tensor) -> None:
        """One guarded Adam step per row (each row's own guard), written into the cache at the
        rows' valid video tokens only."""
        total = loss.reshape(-1) + grad.sum(dim=(1, 2, 3))
        ok = ((total - total) == 0).view(-1, 1, 1, 1)
        self.delta = self.adam.step(self.delta, grad, ok)
        rows, slots = self._rows, self._slots
        new = ops.value_update(self.v0[rows, :, slots], self.delta[rows, :, slots])  # [n, kv, head_dim]
        values_cache[rows, :, self._positions] = new.to(values_cache.dtype)
