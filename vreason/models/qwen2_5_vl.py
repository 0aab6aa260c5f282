"""The Qwen2.5-VL and Qwen2-VL adapter: every Qwen-specific detail the generator relies on.

Both families (transformers 5.x) share the layout used here: `model.model.language_model`
holds `layers` (each with `input_layernorm`, `self_attn.{q,k,v,o}_proj`,
`post_attention_layernorm`, `mlp`) and the final `norm`; `model.lm_head` has no bias; the text
model lays cos/sin out for M-RoPE before the layers, so each attention applies plain
rotate-half rotary with them.

Positions. `generate` builds 4-row position ids for the prompt (a text row `0..P-1` and the
three M-RoPE rows from `get_rope_index`, which needs `mm_token_type_ids`) and, at every decode
step, each row's last value + 1. We pass exactly those rows explicitly at every call, so the model
never rebuilds positions from the attention mask or the cache length: this is what keeps
`mode="off"` bit-identical to `generate`, and after Lite pruning (a shorter cache) it is the only
correct source of positions. At batch size 1 the attention mask is not passed (no padding: it is
all ones, and `generate` drops an all-ones mask as well); a left-padded batch
(`qwen_batch.py`) passes it.

Visual tokens (**ours**): ΔV and Lite act on the video tokens; a prompt with images but no
video (benchmarks hold a few image samples) uses its image tokens instead, so such samples run
the same method rather than failing. A prompt with neither is refused.
"""
from __future__ import annotations

import inspect

import torch

from vreason.models.adapter import DecoderAdapter, LayerInput, Prefill
from vreason.models.capture import LastLayerCapture
from vreason.models.qwen_batch import QwenBatching
from vreason.tail import DenseTail

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


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class QwenVLAdapter(QwenBatching, DecoderAdapter):
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.is_qwen2_5 = getattr(model.config, "model_type", "") == "qwen2_5_vl"
        self.text_model = model.model.language_model
        self.layers = self.text_model.layers
        self.last_layer = self.layers[-1]
        attn = self.last_layer.self_attn
        text_cfg = model.config.get_text_config()
        self.num_heads = int(text_cfg.num_attention_heads)
        self.num_kv_heads = int(text_cfg.num_key_value_heads)
        self.head_dim = int(attn.head_dim)
        self.scaling = float(attn.scaling)
        self.vocab_size = int(model.lm_head.weight.shape[0])
        self.video_token_id = int(model.config.video_token_id)
        self.image_token_id = int(model.config.image_token_id)
        self.spatial_merge = int(model.config.vision_config.spatial_merge_size)
        if getattr(model.lm_head, "bias", None) is not None:
            raise ValueError("lm_head with a bias is not supported")
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = getattr(text_cfg, "eos_token_id", None)
        if eos is None:
            raise ValueError("the model's generation config names no eos_token_id: generation could not stop")
        self.eos_token_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
        # transformers 5.24 renamed the cache keyword and output field `past_key_values` to `cache`
        # (and warns on every call with the old name); 5.23 knows only the old one.
        self.cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ---- inputs -------------------------------------------------------------------------------

    def prepare_inputs(self, inputs: dict) -> dict:
        return self._checked(inputs, batch=False)

    def _checked(self, inputs: dict, batch: bool) -> dict:
        """The checks of `prepare_inputs`; with `batch`, any number of left-padded rows (the
        padding given by `attention_mask`, kept), each with its own video or image tokens."""
        unknown = sorted(k for k in inputs if k not in _ACCEPTED_KEYS)
        if unknown:
            raise ValueError(f"unexpected input(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_ACCEPTED_KEYS))}")
        inputs = {k: v for k, v in inputs.items() if v is not None}
        if "input_ids" not in inputs:
            raise ValueError("input_ids is required")
        input_ids = torch.as_tensor(inputs["input_ids"])
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] != 1 and not batch:
            raise ValueError(f"batch size {input_ids.shape[0]} is not supported yet: pass one sample at a time")
        inputs["input_ids"] = input_ids
        mask = inputs.pop("attention_mask", None)
        if batch:
            inputs["attention_mask"] = self._left_padding(input_ids, mask)
        elif mask is not None and (mask.shape[-1] != input_ids.shape[-1] or not bool((mask != 0).all())):
            raise ValueError("attention_mask must be all ones over input_ids (padding is not supported at batch size 1)")

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
        types = torch.zeros_like(input_ids)
        types[is_image] = _IMAGE_TYPE
        types[is_video] = _VIDEO_TYPE
        given = inputs.get("mm_token_type_ids")
        if given is not None and not torch.equal(torch.as_tensor(given).to(types.device).long(), types):
            raise ValueError("mm_token_type_ids disagree with the image/video tokens of input_ids")
        inputs["mm_token_type_ids"] = types if given is None else torch.as_tensor(given)

        device = self.device
        return {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}

    # ---- forward passes -----------------------------------------------------------------------

    def _prompt_position_ids(self, inputs: dict) -> torch.Tensor:
        """The 4 rows `generate` builds: text positions (counting real tokens only; 0 at left
        padding, as `generate`) and `get_rope_index`'s three, each row laid out as if alone."""
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.long()
        text = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0).unsqueeze(0)
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

    # ---- cache ---------------------------------------------------------------------------------

    def cache_kv(self, cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = cache.layers[layer]
        return entry.keys, entry.values

    def set_cache_kv(self, cache, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        entry = cache.layers[layer]
        entry.keys, entry.values = keys, values

    # ---- the last layer, piece by piece ----------------------------------------------------------

    def capture_last_layer_input(self) -> LastLayerCapture:
        return LastLayerCapture(self.last_layer, self.dense_tail())

    def dense_tail(self) -> DenseTail | None:
        if not hasattr(self, "_dense_tail"):
            self._dense_tail = DenseTail.of(self.last_layer, self.text_model.norm)
        return self._dense_tail

    def query(self, layer_input: LayerInput) -> torch.Tensor:
        layer = self.last_layer
        q = layer_input.q
        if q is None:  # not captured: the projection again
            q = layer.self_attn.q_proj(layer.input_layernorm(layer_input.hidden))
        rows = q.shape[0]
        q = q.view(rows, 1, self.num_heads, self.head_dim).transpose(1, 2)  # [rows, heads, 1, head_dim]
        cos, sin = layer_input.cos.unsqueeze(1), layer_input.sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        groups = self.num_heads // self.num_kv_heads
        return q.float().reshape(rows, self.num_kv_heads, groups, self.head_dim) * self.scaling

    def tail(self, layer_input: LayerInput, attn: torch.Tensor) -> torch.Tensor:
        layer = self.last_layer
        hidden = layer_input.hidden + layer.self_attn.o_proj(attn)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.text_model.norm(hidden)

    def lm_head_weight(self) -> torch.Tensor:
        return self.model.lm_head.weight

