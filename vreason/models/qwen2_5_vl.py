"""The Qwen2.5-VL and Qwen2-VL adapter: every Qwen-specific detail the generator relies on.

Both families (transformers 5.x) keep the decoder layout of `hf_layout.py` (the cache, the last
layer's pieces and the lm_head are reached there); the text model lays cos/sin out for M-RoPE
before the layers, so each attention applies plain rotate-half rotary with them.

Positions. `generate` builds 4-row position ids for the prompt (a text row `0..P-1` and the
three M-RoPE rows from `get_rope_index`, which needs `mm_token_type_ids`) and, at every decode
step, each row's last value + 1. We pass exactly those rows explicitly at every call, so the model
never rebuilds positions from the attention mask or the cache length: this is what keeps
`mode="off"` bit-identical to `generate`, and after Lite pruning (a shorter cache) it is the only
correct source of positions. At batch size 1 the attention mask is not passed (no padding: it is
all ones, and `generate` drops an all-ones mask as well); a left-padded batch passes it.

Batches: the processor's left-padded layout (`batching.py`): token rows padded on the left
(`mm_token_type_ids` too, rebuilt from the ids where missing, by the rule the input check uses),
the visual tensors of all samples concatenated in sample order (`batch_keys`). Each row's
positions are those it would have alone (`get_rope_index` skips the padding), so a row's tokens
and logits do not depend on its batch.

Visual tokens (**ours**): ΔV and Lite act on the video tokens; a prompt with images but no
video (benchmarks hold a few image samples) uses its image tokens instead, so such samples run
the same method rather than failing. A prompt with neither is refused.
"""
from __future__ import annotations

import torch

from vreason.models import batching
from vreason.models.adapter import Prefill
from vreason.models.hf_layout import HFDecoderLayout, checked_ids

__all__ = ["QwenVLAdapter"]

_ACCEPTED_KEYS = frozenset(
    {
        "input_ids",
        "attention_mask",
        "mm_token_type_ids",
        "pixel_values_videos",
        "video_grid_thw",
        "second_per_grid_ts",
        "pixel_values",
        "image_grid_thw",
    }
)
# mm_token_type_ids values (transformers' processors): 0 text, 1 image, 2 video.
_IMAGE_TYPE, _VIDEO_TYPE = 1, 2


class QwenVLAdapter(HFDecoderLayout):
    batch_keys = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "pixel_values", "image_grid_thw")

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.is_qwen2_5 = getattr(model.config, "model_type", "") == "qwen2_5_vl"
        self.video_token_id = int(model.config.video_token_id)
        self.image_token_id = int(model.config.image_token_id)
        self.spatial_merge = int(model.config.vision_config.spatial_merge_size)

    # ---- inputs -------------------------------------------------------------------------------

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """`mm_token_type_ids` as the processor gives them, from the token ids."""
        types = torch.zeros_like(ids)
        types[ids == self.image_token_id] = _IMAGE_TYPE
        types[ids == self.video_token_id] = _VIDEO_TYPE
        return types

    def checked_inputs(self, inputs: dict, batch: bool) -> dict:
        inputs, mask = checked_ids(inputs, _ACCEPTED_KEYS, batch)
        input_ids = inputs["input_ids"]
        if batch:
            inputs["attention_mask"] = batching.checked_left_padding(input_ids, mask)

        is_video = input_ids == self.video_token_id
        is_image = input_ids == self.image_token_id
        n_video, n_image = int(is_video.sum()), int(is_image.sum())
        if batch and not bool((is_video | is_image).any(-1).all()):
            rows = torch.nonzero(~(is_video | is_image).any(-1)).reshape(-1).tolist()
            raise ValueError(f"batch row(s) {rows} have no video and no image tokens: V-Reason needs a video (or an image)")
        if n_video == 0 and n_image == 0:
            raise ValueError(
                f"the prompt has no video tokens (<|video_pad|>, id {self.video_token_id}) and no image tokens: "
                "V-Reason needs a video (or an image) in the prompt"
            )
        for kind, count, pixels_key, grid_key in (
            ("video", n_video, "pixel_values_videos", "video_grid_thw"),
            ("image", n_image, "pixel_values", "image_grid_thw"),
        ):
            if count == 0:
                continue
            grid = inputs.get(grid_key)
            if grid is None or pixels_key not in inputs:
                raise ValueError(f"the prompt has {kind} tokens but {pixels_key} / {grid_key} are missing")
            grid = torch.as_tensor(grid)
            if grid.ndim != 2 or grid.shape[-1] != 3:
                raise ValueError(f"{grid_key} must be [num_{kind}s, 3], got shape {tuple(grid.shape)}")
            expected = int((grid.prod(-1) // self.spatial_merge**2).sum())
            if expected != count:
                raise ValueError(f"{grid_key} {grid.tolist()} implies {expected} {kind} tokens but the prompt has {count}")
            patches = int(grid.prod(-1).sum())
            if inputs[pixels_key].shape[0] != patches:
                raise ValueError(f"{pixels_key} has {inputs[pixels_key].shape[0]} patches but {grid_key} implies {patches}")

        # Without mm_token_type_ids the model silently gives video tokens text positions; the
        # processor's own ids are checked, missing ones are rebuilt from input_ids.
        types = self.token_types(input_ids)
        given = inputs.get("mm_token_type_ids")
        if given is not None and not torch.equal(torch.as_tensor(given).to(types.device).long(), types):
            raise ValueError("mm_token_type_ids disagree with the image/video tokens of input_ids")
        inputs["mm_token_type_ids"] = types if given is None else torch.as_tensor(given)

        device = self.device
        return {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}

    # ---- batches ------------------------------------------------------------------------------

    def token_rows(self, sample: dict) -> dict[str, tuple[torch.Tensor, int]]:
        """The base's rows and `mm_token_type_ids` (0 at padding; rebuilt from the ids where missing)."""
        rows = super().token_rows(sample)
        ids = rows["input_ids"][0]
        types = sample.get("mm_token_type_ids")
        types = self.token_types(ids) if types is None else torch.as_tensor(types).reshape(-1)
        rows["mm_token_type_ids"] = (types.to(ids.dtype), 0)
        return rows

    # ---- forward passes -----------------------------------------------------------------------

    def _prompt_position_ids(self, inputs: dict) -> torch.Tensor:
        """The 4 rows `generate` builds: text positions (counting real tokens only; 0 at left
        padding, as `generate`) and `get_rope_index`'s three, each row laid out as if alone."""
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.long()
        text = batching.text_positions(input_ids, mask).unsqueeze(0)
        rope_kwargs = dict(
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=mask,
        )
        if self.is_qwen2_5:
            rope_kwargs["second_per_grid_ts"] = inputs.get("second_per_grid_ts")
        mrope, _ = self.model.model.get_rope_index(input_ids, **rope_kwargs)
        return torch.cat([text, mrope], dim=0)

    def prefill(self, inputs: dict) -> Prefill:
        input_ids = inputs["input_ids"]
        position_ids = self._prompt_position_ids(inputs)
        kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
        if not self.is_qwen2_5:
            kwargs.pop("second_per_grid_ts", None)
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
            **kwargs,
        )
        return Prefill(
            logits=out.logits[:, -1],
            cache=getattr(out, self.cache_key),
            next_position_ids=position_ids[..., -1:] + 1,
            video_positions=self.visual_positions(input_ids[0]),
        )

    def visual_positions(self, row: torch.Tensor) -> torch.Tensor:
        """The controller's tokens in one row of input ids: the video's, or for an image-only
        prompt the image's (ours)."""
        visual = row == self.video_token_id
        if not bool(visual.any()):
            visual = row == self.image_token_id
        return torch.nonzero(visual).squeeze(-1)

    def decode_step(self, token: torch.Tensor, cache: object, position_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        masks = {} if attention_mask is None else {"attention_mask": attention_mask}
        out = self.model(
            input_ids=token.view(-1, 1),
            **{self.cache_key: cache},
            **masks,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
        )
        return out.logits[:, -1]
