"""The LLaVA-OneVision adapter (`LlavaOnevisionForConditionalGeneration`, a Qwen2 decoder).

1-D RoPE; a video is one contiguous block of `<video>` placeholder tokens (each frame's pooled
patches, then one `image_newline` token closing the clip), an image a block of `<image>` tokens.
Both are filled with the vision features before the decoder runs, so the decoder only sees
embeddings: the adapter is `TextDecoderAdapter` with this family's inputs.

Visual tokens (**ours**): ΔV and Lite act on all `<video>` positions, the closing newline token
included (it is part of the video's features); an image-only prompt uses its `<image>` tokens.

Batches: the processor's layout, token rows left-padded, videos stacked `[videos, frames, ...]`,
images stacked `[images, patches, ...]` with `image_sizes` and `batch_num_images` joined. The
model reshapes a video batch to `videos · frames` frames, so the processor can only batch videos
of one frame count. **ours**: `collate_inputs` zero-pads shorter videos' frames (as the
processor pads images' patches); the prompt forward then encodes each video alone, over its own
frames (its count read back from its placeholder tokens: `frames · pooled + 1`), with the
model's own `get_video_features`, and hands the features to the model (`mm_encoder_outputs`,
images encoded the same way beside them): exactly what it computes for that sample alone.
"""
from __future__ import annotations

import math

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vreason.models import batching
from vreason.models.hf_layout import checked_ids
from vreason.models.text_decoder import TextDecoderAdapter

__all__ = ["LlavaOnevisionAdapter"]

_ACCEPTED_KEYS = frozenset({"input_ids", "attention_mask", "pixel_values", "image_sizes", "pixel_values_videos",
                            "batch_num_images"})


class LlavaOnevisionAdapter(TextDecoderAdapter):
    batch_keys = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")
    batch_padded_keys = ("pixel_values", "pixel_values_videos")  # images' patches, videos' frames

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.video_token_id = int(model.config.video_token_id)
        self.image_token_id = int(model.config.image_token_id)
        vision = model.config.vision_config
        self.tokens_per_frame = math.ceil(vision.image_size // vision.patch_size / 2) ** 2

    def checked_inputs(self, inputs: dict, batch: bool) -> dict:
        inputs, mask = checked_ids(inputs, _ACCEPTED_KEYS, batch)
        input_ids = inputs["input_ids"]
        if batch:
            inputs["attention_mask"] = batching.checked_left_padding(input_ids, mask)
        is_video, is_image = input_ids == self.video_token_id, input_ids == self.image_token_id
        if not bool((is_video | is_image).any(-1).all()):
            rows = torch.nonzero(~(is_video | is_image).any(-1)).reshape(-1).tolist()
            where = f" (batch row(s) {rows})" if batch else ""
            raise ValueError(f"the prompt{where} has no video tokens (<video>, id {self.video_token_id}) and no image "
                             "tokens: V-Reason needs a video (or an image) in the prompt")
        n_video, n_image = int(is_video.sum()), int(is_image.sum())
        if n_video and "pixel_values_videos" not in inputs:
            raise ValueError("the prompt has video tokens but pixel_values_videos is missing")
        if n_image and ("pixel_values" not in inputs or "image_sizes" not in inputs):
            raise ValueError("the prompt has image tokens but pixel_values / image_sizes are missing")
        if not n_video:
            inputs.pop("pixel_values_videos", None)
        # The model checks that the features fill the placeholders exactly; its message names both.
        device = self.device
        return {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}

    def model_inputs(self, inputs: dict) -> dict:
        """The inputs as given, unless the batch's videos were padded to a common frame count:
        then every video's and image's features, each video encoded over its own frames."""
        kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
        videos = kwargs.get("pixel_values_videos")
        if videos is None:
            return kwargs
        tokens = (inputs["input_ids"] == self.video_token_id).sum(-1)
        if int(tokens.sum()) == videos.shape[0] * (videos.shape[1] * self.tokens_per_frame + 1):
            return kwargs  # every video fills its frames (no video is shorter than the longest)
        frames = [(int(n) - 1) // self.tokens_per_frame for n in tokens if n > 0]
        if len(frames) != videos.shape[0]:
            raise ValueError(f"{videos.shape[0]} videos for {len(frames)} rows with video tokens: a batch row holds one video")
        inner = self.model.model
        features = [inner.get_video_features(videos[v : v + 1, :f], return_dict=True).pooler_output
                    for v, f in enumerate(frames)]
        encoded = {"video": BaseModelOutputWithPooling(pooler_output=torch.cat(features, dim=1))}
        if kwargs.get("pixel_values") is not None:
            encoded["image"] = inner.get_image_features(kwargs["pixel_values"], kwargs["image_sizes"], return_dict=True,
                                                        batch_num_images=kwargs.get("batch_num_images"))
        for key in ("pixel_values", "pixel_values_videos", "image_sizes", "batch_num_images"):
            kwargs.pop(key, None)
        return dict(kwargs, mm_encoder_outputs=encoded)

    def visual_positions(self, row: torch.Tensor) -> torch.Tensor:
        visual = row == self.video_token_id
        if not bool(visual.any()):
            visual = row == self.image_token_id
        return torch.nonzero(visual).squeeze(-1)
