"""Left-padded batches of samples, the same for every family: what a family's processor gives
for several samples with `padding_side="left"`, and the checks and positions that go with it.

A family declares its processor's batch rule as data (`BatchLayout`): which keys are token rows
(padded on the left to the longest row: `input_ids` with the pad id, the others with 0) and how
each visual tensor is joined (concatenated in sample order along its first dimension, or stacked
with its second dimension zero-padded to the longest). A sample without a visual key
contributes nothing to it. Each row keeps the positions it would have alone (the padding is
skipped), so a row's tokens and logits do not depend on its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BatchLayout", "collate", "check_left_padding", "pad_token_id", "text_positions"]


@dataclass(frozen=True)
class BatchLayout:
    """A processor's batched layout. `rows`: per-token keys, left-padded (the first is
    `input_ids`; a row key a sample lacks is asked of `fill(key, ids)`). `joined`: visual tensors
    concatenated along dim 0. `stacked`: per-sample visual tensors `[n, k, ...]` concatenated
    along dim 0 after zero-padding dim 1 to the largest k."""

    rows: tuple[str, ...] = ("input_ids", "attention_mask")
    joined: tuple[str, ...] = ()
    stacked: tuple[str, ...] = ()


def pad_token_id(model: torch.nn.Module, eos_token_ids: tuple[int, ...]) -> int:
    """The id padding positions hold (never attended): the generation config's pad id, else the
    text config's, else the first eos id, as `generate` falls back."""
    for source in (model.generation_config, model.config.get_text_config()):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad[0] if isinstance(pad, (list, tuple)) else pad)
    return eos_token_ids[0]


def _stack_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.cat([p, p.new_zeros(p.shape[0], width - p.shape[1], *p.shape[2:])], dim=1) for p in parts])


def collate(samples: list[dict], layout: BatchLayout, pad_id: int, fill) -> dict:
    """One left-padded batch from per-sample processor outputs (each one sample, as the processor
    gives it alone). `fill(key, ids)` gives a row key a sample lacks (e.g. an all-ones mask)."""
    if not samples:
        raise ValueError("an empty batch")
    rows: dict[str, list[torch.Tensor]] = {key: [] for key in layout.rows}
    for sample in samples:
        ids = torch.as_tensor(sample["input_ids"]).reshape(-1)
        for key in layout.rows:
            value = sample.get(key)
            value = fill(key, ids) if value is None else torch.as_tensor(value).reshape(-1)
            if value.numel() != ids.numel():
                raise ValueError(f"{key} has {value.numel()} entries but input_ids {ids.numel()}")
            rows[key].append(value.to(ids.dtype))
    length = max(ids.numel() for ids in rows["input_ids"])
    batch = {}
    for key, values in rows.items():
        value = pad_id if key == "input_ids" else 0
        batch[key] = torch.stack([torch.cat([v.new_full((length - v.numel(),), value), v]) for v in values])
    for key in layout.joined + layout.stacked:
        parts = [torch.as_tensor(s[key]) for s in samples if s.get(key) is not None]
        if parts:
            batch[key] = torch.cat(parts) if key in layout.joined else _stack_padded(parts)
    return batch


def check_left_padding(input_ids: torch.Tensor, mask) -> torch.Tensor:
    """The batch's attention mask (all ones where none is given), checked to be left padding:
    per row zeros, then ones, with at least one real token."""
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
