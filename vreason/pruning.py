"""V-Reason (Lite), docs/method.md §2.7: after prefill, drop low value-norm video tokens from the cache.

In every layer independently, the video tokens are ranked by the L2 norm of their value vectors
taken over all KV heads and head_dim together; the `floor(r · n_video)` smallest are removed
from that layer's keys and values (**ours**: rounding down, so r < 1/n_video prunes nothing and
no layer ever loses all its video tokens). Ties are broken towards keeping the earlier token
(stable sort, **ours**). Every layer drops the same number of tokens, so all layers keep the
same length. Nothing is renumbered: later tokens keep the positions of the unpruned sequence
(the generator passes them explicitly), and the attention mask, all ones at batch size 1, is
implied by the shorter cache.

The first new token (**ours**): the prefill's logits saw the unpruned cache, so after pruning the
last prompt token is run once more over the pruned cache (`rerun_last_prompt_token`). Every
generated token, and every controller round (whose exact gradient assumes the current logits
come from the current cache), then sees the same pruned cache; it costs one one-token forward.
"""
from __future__ import annotations

import torch

from vreason.models.adapter import DecoderAdapter

__all__ = ["prune_video_tokens", "num_pruned", "rerun_last_prompt_token"]


def num_pruned(n_video: int, ratio: float) -> int:
    """How many of `n_video` video tokens Lite drops at `ratio` (rounded down)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {ratio}")
    return int(n_video * ratio)


def prune_video_tokens(
    adapter: DecoderAdapter, cache, video_positions: torch.Tensor, ratio: float
) -> list[torch.Tensor]:
    """Prune the cache of every layer in `adapter.kv_layers()` in place (all layers of a plain
    decoder; the attention layers of a hybrid one, whose recurrent layers hold no per-token
    entries to drop); return, per pruned layer in that order, the cache indices of its kept video
    tokens (1-D int64, ascending; the last entry is the last layer's, which the controller covers).
    With nothing to drop the cache is untouched."""
    layers = list(adapter.kv_layers())
    if not layers or layers[-1] != adapter.num_layers - 1:
        raise ValueError("Lite needs the last decoder layer among the layers with a key/value cache")
    n_video = int(video_positions.numel())
    n_drop = num_pruned(n_video, ratio)
    if n_drop == 0:
        return [video_positions for _ in layers]
    kept_video_index = []
    for layer in layers:
        keys, values = adapter.cache_kv(cache, layer)
        seq = keys.shape[-2]
        video_values = values.index_select(-2, video_positions).float()  # [1, kv, n_video, head_dim]
        norms = video_values.square().sum(dim=(0, 1, 3))  # squared norm: same order, no sqrt
        order = torch.sort(norms, descending=True, stable=True).indices
        keep_video = torch.zeros(n_video, dtype=torch.bool, device=norms.device)
        keep_video[order[: n_video - n_drop]] = True
        keep = torch.ones(seq, dtype=torch.bool, device=keys.device)
        keep[video_positions] = keep_video
        keep_index = torch.nonzero(keep).squeeze(-1)
        adapter.set_cache_kv(
            cache, layer, keys.index_select(-2, keep_index).contiguous(), values.index_select(-2, keep_index).contiguous()
        )
        # A kept token's new index is the number of kept tokens before it.
        new_index = torch.cumsum(keep, 0) - 1
        kept_video_index.append(new_index[video_positions[keep_video]])
    return kept_video_index


def rerun_last_prompt_token(
    adapter: DecoderAdapter, cache, input_ids: torch.Tensor, last_position_ids: torch.Tensor
) -> torch.Tensor:
    """Run the last prompt token again over the pruned cache (the adapter's
    `rerun_last_prompt_token`: its entries dropped, state the token entered rewound where a
    family has such state); return its next-token logits `[1, vocab]`."""
    return adapter.rerun_last_prompt_token(cache, input_ids, last_position_ids)
