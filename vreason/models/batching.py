"""The left-padded batch layout every family shares (`DecoderAdapter.collate_inputs`,
`prepare_batch`): the processor's own layout for several samples with `padding_side="left"`.

Per-token rows (`input_ids`, `attention_mask`, and whatever else a family's `token_rows` adds)
are padded on the left to the longest row, each with its own padding value; the family's
`batch_keys` (visual tensors and their grids) are concatenated in sample order along their first
dimension, a sample without them contributing nothing. Those of `batch_padded_keys` are per-sample
tensors `[n, k, ...]` (a video's frames, an image's patches) whose second dimension is first
zero-padded to the batch's largest k, as a processor pads them. A family declares those keys;
nothing here knows a family. Each row keeps the positions it would have alone (the padding is
skipped: `text_positions`), so a row's tokens and logits do not depend on its batch.
"""
from __future__ import annotations

import torch

__all__ = ["left_padded", "checked_left_padding", "one_row", "pad_token_id", "text_positions"]


def pad_token_id(model: torch.nn.Module, eos_token_ids: tuple[int, ...]) -> int:
    """The id padding positions hold (never attended): the generation config's pad id, else the
    text config's, else the first eos id, as `generate` falls back."""
    for source in (model.generation_config, model.config.get_text_config()):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad[0] if isinstance(pad, (list, tuple)) else pad)
    return eos_token_ids[0]


def _padded_dim1(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    width = max(p.shape[1] for p in parts)
    return [torch.cat([p, p.new_zeros(p.shape[0], width - p.shape[1], *p.shape[2:])], dim=1) for p in parts]


def left_padded(rows: list[dict[str, tuple[torch.Tensor, int]]], samples: list[dict], batch_keys: tuple[str, ...],
                padded_keys: tuple[str, ...] = ()) -> dict:
    """The batch of `rows` (per sample, per key: a 1-D token row and its padding value), each key
    left-padded to the longest row, and of the samples' `batch_keys` concatenated in order (those
    in `padded_keys` zero-padded along dim 1 to the largest first)."""
    for row in rows:
        n = row["input_ids"][0].numel()
        for key, (tensor, _) in row.items():
            if tensor.numel() != n:
                raise ValueError(f"{key} has {tensor.numel()} entries but input_ids {n}")
    length = max(row["input_ids"][0].numel() for row in rows)

    def pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([tensor.new_full((length - tensor.numel(),), value), tensor])

    batch = {key: torch.stack([pad(*row[key]) for row in rows]) for key in rows[0]}
    for key in batch_keys:
        parts = [torch.as_tensor(s[key]) for s in samples if s.get(key) is not None]
        if parts:
            batch[key] = torch.cat(_padded_dim1(parts) if key in padded_keys else parts)
    return batch


def checked_left_padding(input_ids: torch.Tensor, mask) -> torch.Tensor:
    """A batch's attention mask (all ones where none is given), checked to be left padding: per
    row zeros, then ones, with at least one real token."""
    if mask is None:
        return torch.ones_like(input_ids)
    mask = torch.as_tensor(mask).to(input_ids.device).long()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(input_ids.shape)}")
    left = mask.cummax(-1).values == mask
    if not bool(((mask == 0) | (mask == 1)).all() and left.all() and mask[:, -1].all()):
        raise ValueError("attention_mask must be left padding (per row zeros, then ones)")
    return mask


def text_positions(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`generate`'s 1-D positions `[rows, seq]`: real tokens counted from 0, 0 at left padding."""
    if mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    mask = mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def one_row(family: str, inputs: dict) -> None:
    """ValueError unless `inputs` hold one sample (a family without a batch layout)."""
    ids = torch.as_tensor(inputs["input_ids"])
    if ids.ndim == 2 and ids.shape[0] != 1:
        raise ValueError(f"{family} decodes one sample at a time, got a batch of {ids.shape[0]}: give per-sample "
                         "inputs to generate_samples")
