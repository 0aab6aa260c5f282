"""A Qwen-VL batch back into one sample's inputs per row (the inverse of `collate_inputs` for the
Qwen families, whose visual tensors are concatenated patches described by `*_grid_thw`).

The batch layout itself is `batching.py`'s (declared in `qwen2_5_vl.py`): token rows
(`input_ids`, `attention_mask`, `mm_token_type_ids`) left-padded, `pixel_values_videos` with
`video_grid_thw` (and `second_per_grid_ts`), `pixel_values` with `image_grid_thw` concatenated in
sample order. Splitting needs the grids: each row takes the grids whose tokens it holds.
"""
from __future__ import annotations

import torch

__all__ = ["split_qwen_batch"]

_PIXELS = {"video_grid_thw": "pixel_values_videos", "image_grid_thw": "pixel_values"}


def split_qwen_batch(batch: dict, spatial_merge: int, token_of_grid: dict[str, int]) -> list[dict]:
    """One sample's inputs per row (padding removed, each row's own grids and pixel patches);
    `token_of_grid` names each grid key's placeholder token id."""
    ids = torch.as_tensor(batch["input_ids"])
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    samples = [{"input_ids": ids[r][mask[r] != 0][None], "attention_mask": mask[r][mask[r] != 0][None]}
               for r in range(ids.shape[0])]
    for sample, r in zip(samples, range(ids.shape[0])):
        if batch.get("mm_token_type_ids") is not None:
            sample["mm_token_type_ids"] = torch.as_tensor(batch["mm_token_type_ids"])[r][mask[r] != 0][None]
    for grid_key, token in token_of_grid.items():
        if batch.get(grid_key) is None:
            continue
        pixels_key = _PIXELS[grid_key]
        grid = torch.as_tensor(batch[grid_key])
        tokens_per = (grid.prod(-1) // spatial_merge**2).tolist()
        patches_per = grid.prod(-1).tolist()
        item = patch = 0
        for sample in samples:
            count, first = int((sample["input_ids"] == token).sum()), item
            while count > 0 and item < len(tokens_per):
                count -= tokens_per[item]
                item += 1
            if item == first:
                continue
            n_patches = sum(patches_per[first:item])
            sample[grid_key] = grid[first:item]
            sample[pixels_key] = batch[pixels_key][patch:patch + n_patches]
            patch += n_patches
            if grid_key == "video_grid_thw" and batch.get("second_per_grid_ts") is not None:
                sample["second_per_grid_ts"] = batch["second_per_grid_ts"][first:item]
    return samples
