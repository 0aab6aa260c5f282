"""The InternVL adapter (InternVL3 / InternVL3.5 through transformers' `InternVLForConditionalGeneration`;
a Qwen2 decoder for InternVL3, a Qwen3 one, with q/k norms, for InternVL3.5).

1-D RoPE. Every visual input becomes image tiles: an image is `<img>` + `image_seq_length`
context tokens per tile + `</img>`, a video one such block per frame (`FrameN: <img>...</img>`),
all with the same `<IMG_CONTEXT>` token filled by the vision features before the decoder runs.

Visual tokens (**ours**): the frames are images to the model, and `input_ids` cannot tell a
frame's context tokens from an image's, so ΔV and Lite act on every `<IMG_CONTEXT>` position.
For the benchmarks' prompts (one video, or one image) these are exactly the video's (the
image's) tokens; a prompt holding both a video and an image gets both.

Batches: the processor's layout, token rows left-padded and every sample's tiles concatenated
into one `pixel_values` (the model encodes tiles independently and fills the context tokens in
order). The processor itself stacks a batch's videos, so it cannot batch videos of different
frame counts; the model can, and `collate_inputs` does.
"""
from __future__ import annotations

import torch

from vreason.models import batching
from vreason.models.hf_layout import checked_ids
from vreason.models.text_decoder import TextDecoderAdapter

__all__ = ["InternVLAdapter"]

_ACCEPTED_KEYS = frozenset({"input_ids", "attention_mask", "pixel_values"})


class InternVLAdapter(TextDecoderAdapter):
    batch_keys = ("pixel_values",)

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.context_token_id = int(model.config.image_token_id)
        self.tokens_per_tile = int(model.config.image_seq_length)

    def checked_inputs(self, inputs: dict, batch: bool) -> dict:
        inputs, mask = checked_ids(inputs, _ACCEPTED_KEYS, batch)
        if batch:
            inputs["attention_mask"] = batching.checked_left_padding(inputs["input_ids"], mask)
        per_row = (inputs["input_ids"] == self.context_token_id).sum(-1)
        if not bool((per_row > 0).all()):
            rows = torch.nonzero(per_row == 0).reshape(-1).tolist()
            where = f" (batch row(s) {rows})" if batch else ""
            raise ValueError(f"the prompt{where} has no image context tokens (<IMG_CONTEXT>, id {self.context_token_id}): "
                             "V-Reason needs a video (or an image) in the prompt")
        n_context = int(per_row.sum())
        if "pixel_values" not in inputs:
            raise ValueError("the prompt has image context tokens but pixel_values is missing")
        tiles = int(inputs["pixel_values"].shape[0])
        if tiles * self.tokens_per_tile != n_context:
            raise ValueError(f"pixel_values holds {tiles} tiles ({tiles * self.tokens_per_tile} context tokens) "
                             f"but the prompt has {n_context}")
        device = self.device
        return {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}

    def visual_positions(self, row: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(row == self.context_token_id).squeeze(-1)
