"""V-Reason (Lite) after prefill (docs/method.md §2.7). (A decode's other cache edit, dropping the
rows of samples that finished, is the adapter's `keep_cache_rows`: a family may hold more per-row
state than key/value entries.)

In every layer independently, a row's video tokens are ranked by the L2 norm of their
value vectors taken over all KV heads and head_dim together; the `floor(r · n_video)` smallest are
removed from that layer's keys and values (**ours**: rounding down, so r < 1/n_video prunes
nothing and no layer ever loses all its video tokens). Ties are broken towards keeping the earlier
token (stable sort, **ours**). Every layer drops the same number of a row's tokens, so a row keeps
the same length in all layers. In a batch, row i drops d_i = floor(r · n_i) of its own n_i video
tokens; each row is compacted and left-padded again to the longest row, so one attention mask (0
at padding) serves every layer. Nothing is renumbered: later tokens keep the positions of the
unpruned sequence (the engine passes them explicitly).

The first new token (**ours**): the prefill's logits saw the unpruned cache, so after pruning the
last prompt token is run once more over the pruned cache, through the adapter's
`rerun_last_prompt_token` (which also rewinds any state the token already entered). Every
generated token, and every controller round (whose exact gradient assumes the current logits come
from the current cache), then sees the same pruned cache; it costs one one-token forward.

Under a `device_map` each layer's cache lives on that layer's device: positions are moved to the
device of the cache they index.
"""
from __future__ import annotations

import torch

from vreason.models.adapter import DecoderAdapter

__all__ = ["prune_video_tokens", "num_pruned"]


def num_pruned(n_video: int, ratio: float) -> int:
    """How many of `n_video` video tokens Lite drops at `ratio` (rounded down)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {ratio}")
    return int(n_video * ratio)


def _kept(values: torch.Tensor, row: int, start: int, video: torch.Tensor, n_drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row `row`'s kept cache positions (a `[seq]` bool mask; real tokens from `start` on) and the
    indices into `video` of its kept video tokens (ascending). No data-dependent shapes: the counts
    are known on the host."""
    seq, n = values.shape[-2], video.numel()
    keep = torch.zeros(seq, dtype=torch.bool, device=values.device)
    keep[start:] = True
    if n_drop == 0:
        return keep, torch.arange(n, device=values.device)
    norms = values[row : row + 1].index_select(-2, video).float().square().sum(dim=(0, 1, 3))  # squared: same order
    kept_video = torch.sort(norms, descending=True, stable=True).indices[: n - n_drop].sort().values
    keep[video] = False
    keep[video.index_select(0, kept_video)] = True
    return keep, kept_video


def prune_video_tokens(adapter: DecoderAdapter, cache, video: list[torch.Tensor], ratio: float,
                       attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """Prune every row of every `kv_layers()` cache in place (all layers of a plain decoder; the
    attention layers of a hybrid one, whose recurrent layers hold no per-token entries to drop).

    video: per row, the prompt indices of its video tokens (1-D int64); attention_mask: `[B, seq]`
    (0 at left padding; None: no padding). Returns the new attention mask `[B, seq']` and, per
    pruned layer in `kv_layers()` order, per row, the cache indices of its kept video tokens (1-D
    int64, ascending, on that layer's device; the last layer's are the controller's). With nothing
    to drop the cache is untouched."""
    layers = list(adapter.kv_layers())
    if not layers or layers[-1] != adapter.num_layers - 1:
        raise ValueError("Lite needs the last decoder layer among the layers with a key/value cache")
    keys, _ = adapter.cache_kv(cache, layers[-1])
    rows, seq = keys.shape[0], keys.shape[-2]
    mask = attention_mask if attention_mask is not None else torch.ones(rows, seq, dtype=torch.int64, device=keys.device)
    drops = [num_pruned(int(v.numel()), ratio) for v in video]
    if not any(drops):
        return mask, [list(video) for _ in layers]
    lengths = [int(n) for n in mask.sum(-1).tolist()]
    width = max(length - d for length, d in zip(lengths, drops))
    new_mask = torch.zeros(rows, width, dtype=mask.dtype, device=mask.device)
    for row, (length, d) in enumerate(zip(lengths, drops)):
        new_mask[row, width - (length - d):] = 1
    kept_per_layer = []
    for layer in layers:
        keys, values = adapter.cache_kv(cache, layer)
        gather = torch.zeros(rows, width, dtype=torch.int64, device=keys.device)
        kept_index = []
        for row, (length, d) in enumerate(zip(lengths, drops)):
            positions = video[row].to(values.device)
            keep, kept_video = _kept(values, row, seq - length, positions, d)
            pad = width - (length - d)
            # The kept positions, ascending: a stable sort puts the kept (False in ~keep) first.
            gather[row, pad:] = torch.sort((~keep).to(torch.uint8), stable=True).indices[: length - d]
            # A kept token's new index: the padding, then the kept tokens before it.
            new_index = torch.cumsum(keep, 0) - 1 + pad
            kept_index.append(new_index.index_select(0, positions.index_select(0, kept_video)))
        index = gather[:, None, :, None].expand(rows, keys.shape[1], width, keys.shape[-1])
        adapter.set_cache_kv(cache, layer, keys.gather(2, index), values.gather(2, index))
        kept_per_layer.append(kept_index)
    return new_mask, kept_per_layer

