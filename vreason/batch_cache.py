"""The KV cache of a left-padded batch: Lite per row, and dropping the rows of finished samples.

Lite in a batch. Row i drops d_i = floor(r · n_i) of its own n_i video tokens in every layer,
ranked by its own values exactly as `pruning.py` ranks one sample's (squared L2 norm over KV
heads and head_dim, stable sort, earlier token kept on ties). Which tokens are dropped differs
per layer, how many does not, so after pruning row i holds `len_i − d_i` entries in every layer.
Each row is compacted and left-padded again to the longest row: the padding of a row is then the
same in every layer, and one attention mask (0 at padding) serves all of them. Nothing is
renumbered: the rows' positions are passed explicitly, as at batch size 1.
"""
from __future__ import annotations

import torch

from vreason.models.adapter import DecoderAdapter
from vreason.pruning import num_pruned

__all__ = ["prune_batch", "rerun_last_prompt_tokens", "keep_rows"]


def _kept(values: torch.Tensor, row: int, start: int, video: torch.Tensor, n_drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row `row`'s kept cache positions (ascending; real tokens from `start` on) and which of its
    video tokens are kept (`[n_video]` bool)."""
    seq = values.shape[-2]
    keep = torch.zeros(seq, dtype=torch.bool, device=values.device)
    keep[start:] = True
    keep_video = torch.ones(video.numel(), dtype=torch.bool, device=values.device)
    if n_drop > 0:
        norms = values[row : row + 1].index_select(-2, video).float().square().sum(dim=(0, 1, 3))
        order = torch.sort(norms, descending=True, stable=True).indices
        keep_video = torch.zeros_like(keep_video)
        keep_video[order[: video.numel() - n_drop]] = True
        keep[video] = keep_video
    return keep, keep_video


def prune_batch(adapter: DecoderAdapter, cache, mask: torch.Tensor, video: list[torch.Tensor],
                ratio: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Prune every row of every `kv_layers()` cache in place; return the new attention mask
    `[B, seq']` and, per row, the last layer's kept video tokens' cache indices (ascending)."""
    drops = [num_pruned(int(v.numel()), ratio) for v in video]
    rows, seq = mask.shape
    lengths = [int(n) for n in mask.sum(-1).tolist()]
    width = max(length - d for length, d in zip(lengths, drops))
    new_mask = torch.zeros(rows, width, dtype=mask.dtype, device=mask.device)
    for row, (length, d) in enumerate(zip(lengths, drops)):
        new_mask[row, width - (length - d):] = 1
    kept_index: list[torch.Tensor] = []
    for layer in adapter.kv_layers():
        keys, values = adapter.cache_kv(cache, layer)
        gather = torch.zeros(rows, width, dtype=torch.int64, device=keys.device)
        kept_index = []
        for row, (length, d) in enumerate(zip(lengths, drops)):
            keep, keep_video = _kept(values, row, seq - length, video[row], d)
            pad = width - (length - d)
            gather[row, pad:] = torch.nonzero(keep).squeeze(-1)
            # A kept token's new index: the padding, then the kept tokens before it.
            new_index = torch.cumsum(keep, 0) - 1 + pad
            kept_index.append(new_index[video[row][keep_video]])
        index = gather[:, None, :, None].expand(rows, keys.shape[1], width, keys.shape[-1])
        adapter.set_cache_kv(cache, layer, keys.gather(2, index), values.gather(2, index))
    return new_mask, kept_index


def rerun_last_prompt_tokens(adapter: DecoderAdapter, cache, mask: torch.Tensor, prompt: torch.Tensor,
                             last_position_ids: torch.Tensor) -> torch.Tensor:
    """`pruning.rerun_last_prompt_token` for a batch, through the adapter's own re-run (which
    rewinds a hybrid decoder's recurrent states): every row's last prompt token is its cache's
    last entry (left padding), so the last column goes from every layer and the tokens are fed
    again at their own positions over the pruned cache (`mask` covers it and them)."""
    return adapter.rerun_last_prompt_token(cache, prompt, last_position_ids, attention_mask=mask)


def keep_rows(adapter: DecoderAdapter, cache, rows: torch.Tensor) -> None:
    """Keep only these batch rows (1-D int64, ascending) of the cache (`adapter.keep_cache_rows`:
    every per-row state): finished samples stop costing decode work."""
    adapter.keep_cache_rows(cache, rows)
