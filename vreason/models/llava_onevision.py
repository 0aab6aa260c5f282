"""The LLaVA-OneVision adapter (`LlavaOnevisionForConditionalGeneration`, a Qwen2 decoder).

1-D RoPE; a video is one contiguous block of `<video>` placeholder tokens (each frame's pooled
patches, then one `image_newline` token closing the clip), an image a block of `<image>` tokens.
Both are filled with the vision features before the decoder runs, so the decoder only sees
embeddings: the adapter is `TextDecoderAdapter` with this family's inputs.

Visual tokens (**ours**): ΔV and Lite act on all `<video>` positions, the closing newline token
included (it is part of the video's features); an image-only prompt uses its `<image>` tokens.
"""
from __future__ import annotations

import torch

from vreason.models.hf_layout import checked_ids
from vreason.models.text_decoder import TextDecoderAdapter

__all__ = ["LlavaOnevisionAdapter"]

_ACCEPTED_KEYS = frozenset({"input_ids", "attention_mask", "pixel_values", "image_sizes", "pixel_values_videos",
                            "batch_num_images"})


class LlavaOnevisionAdapter(TextDecoderAdapter):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.video_token_id = int(model.config.video_token_id)
        self.image_token_id = int(model.config.image_token_id)

    def prepare_inputs(self, inputs: dict) -> dict:
        inputs, _ = checked_ids(inputs, _ACCEPTED_KEYS)
        input_ids = inputs["input_ids"]
        n_video = int((input_ids == self.video_token_id).sum())
        n_image = int((input_ids == self.image_token_id).sum())
        if n_video == 0 and n_image == 0:
            raise ValueError(f"the prompt has no video tokens (<video>, id {self.video_token_id}) and no image tokens: "
                             "V-Reason needs a video (or an image) in the prompt")
        if n_video and "pixel_values_videos" not in inputs:
            raise ValueError("the prompt has video tokens but pixel_values_videos is missing")
        if n_image and ("pixel_values" not in inputs or "image_sizes" not in inputs):
            raise ValueError("the prompt has image tokens but pixel_values / image_sizes are missing")
        if not n_video:
            inputs.pop("pixel_values_videos", None)
        # The model checks that the features fill the placeholders exactly; its message names both.
        device = self.device
        return {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        visual = input_ids[0] == self.video_token_id
        if not bool(visual.any()):
            visual = input_ids[0] == self.image_token_id
        return torch.nonzero(visual).squeeze(-1)
