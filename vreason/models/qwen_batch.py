"""Batches for the Qwen2.5-VL / Qwen2-VL adapter: the processor's left-padded layout, its checks,
the batched prefill, and the way back to one sample's inputs.

A batch is what the processor itself gives for several samples with `padding_side="left"`:
token rows (`input_ids`, `attention_mask`, `mm_token_type_ids`) padded on the left to the
longest, and the visual tensors of all samples concatenated in sample order (`pixel_values_videos`
with `video_grid_thw` and `second_per_grid_ts`, `pixel_values` with `image_grid_thw`), a sample
without them contributing nothing. Each row's positions are those it would have alone
(`get_rope_index` skips the padding), so a row's tokens and logits do not depend on its batch.
"""
from __future__ import annotations

import torch

from vreason.models.adapter import BatchPrefill

__all__ = ["QwenBatching"]

_IMAGE_TYPE, _VIDEO_TYPE = 1, 2
_VISUAL_KEYS = (("pixel_values_videos", "video_grid_thw", "video_token_id"), ("pixel_values", "image_grid_thw", "image_token_id"))


class QwenBatching:
    """The batch half of `QwenVLAdapter` (a mixin: it uses the adapter's own checks, prefill and
    token ids)."""

    def batches(self) -> bool:
        # Qwen3-VL and Qwen3.5 inherit the adapter but have their own positions and caches: they
        # run their samples one at a time.
        return getattr(self.model.config, "model_type", "") in ("qwen2_5_vl", "qwen2_vl")

    def pad_token_id(self) -> int:
        """The id padding positions hold (never attended): the generation config's pad id, else
        the text config's, else the first eos id, as `generate` falls back."""
        for source in (self.model.generation_config, self.model.config.get_text_config()):
            pad = getattr(source, "pad_token_id", None)
            if pad is not None:
                return int(pad[0] if isinstance(pad, (list, tuple)) else pad)
        return self.eos_token_ids[0]

    def collate_inputs(self, samples: list[dict]) -> dict:
        """Token rows (`input_ids`, `attention_mask`, `mm_token_type_ids`) left-padded to the
        longest; the visual tensors concatenated in sample order, samples without them
        contributing nothing: the processor's own layout for a batch."""
        if not samples:
            raise ValueError("an empty batch")
        rows = []
        for sample in samples:
            ids = torch.as_tensor(sample["input_ids"]).reshape(-1)
            mask = sample.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).reshape(-1).to(ids.dtype)
            types = sample.get("mm_token_type_ids")
            if types is None:
                types = torch.zeros_like(ids)
                types[ids == self.image_token_id] = _IMAGE_TYPE
                types[ids == self.video_token_id] = _VIDEO_TYPE
            rows.append((ids, mask, torch.as_tensor(types).reshape(-1).to(ids.dtype)))
        length = max(ids.numel() for ids, _, _ in rows)
        pad = self.pad_token_id()

        def left_pad(tensors, value):
            return torch.stack([torch.cat([t.new_full((length - t.numel(),), value), t]) for t in tensors])

        batch = {"input_ids": left_pad([r[0] for r in rows], pad), "attention_mask": left_pad([r[1] for r in rows], 0),
                 "mm_token_type_ids": left_pad([r[2] for r in rows], 0)}
        for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "pixel_values", "image_grid_thw"):
            parts = [torch.as_tensor(s[key]) for s in samples if s.get(key) is not None]
            if parts:
                batch[key] = torch.cat(parts)
        return batch

    def split_inputs(self, batch: dict) -> list[dict]:
        """The inverse of `collate_inputs`: one sample's inputs per row (padding removed, each
        row's own grids and pixel patches)."""
        ids = torch.as_tensor(batch["input_ids"])
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
        samples = [{"input_ids": ids[r][mask[r] != 0][None], "attention_mask": mask[r][mask[r] != 0][None]}
                   for r in range(ids.shape[0])]
        for sample, r in zip(samples, range(ids.shape[0])):
            if batch.get("mm_token_type_ids") is not None:
                sample["mm_token_type_ids"] = torch.as_tensor(batch["mm_token_type_ids"])[r][mask[r] != 0][None]
        for pixels_key, grid_key, token in _VISUAL_KEYS:
            if batch.get(grid_key) is None:
                continue
            grid = torch.as_tensor(batch[grid_key])
            tokens_per = (grid.prod(-1) // self.spatial_merge**2).tolist()
            patches_per = grid.prod(-1).tolist()
            item = patch = 0
            for sample in samples:
                count, first = int((sample["input_ids"] == getattr(self, token)).sum()), item
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

    # ---- checks and the prefill ------------------------------------------------------------------

    def _left_padding(self, input_ids: torch.Tensor, mask) -> torch.Tensor:
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

    def prepare_batch(self, inputs: dict) -> dict:
        """`prepare_inputs` for a left-padded batch (`collate_inputs`' layout): the same checks,
        every row with video or image tokens; the attention mask is kept."""
        return self._checked(inputs, batch=True)

    def prefill_batch(self, inputs: dict) -> BatchPrefill:
        """The batch's prompt forward with its attention mask and each row's own positions."""
        prefill = self.prefill(inputs)
        return BatchPrefill(logits=prefill.logits, cache=prefill.cache, next_position_ids=prefill.next_position_ids,
                            attention_mask=inputs["attention_mask"],
                            visual_positions=[self.visual_positions(row) for row in inputs["input_ids"]])
