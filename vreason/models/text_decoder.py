"""A base adapter for vision-language models whose language model is a plain HF causal decoder with
1-D RoPE (Qwen2 / Qwen2.5 / Qwen3 layers): LLaVA-OneVision and InternVL build on it.

Layout relied on (transformers 5.x): `model.model.language_model` holds `layers` (each with
`input_layernorm`, `self_attn.{q,k,v,o}_proj`, optionally `self_attn.q_norm` as in Qwen3,
`post_attention_layernorm`, `mlp`) and the final `norm`; `model.lm_head` has no bias; the text
model computes `(cos, sin)` once before the layers and each attention applies rotate-half rotary
with them.

Positions: `generate` builds `position_ids = arange(P)` for the prompt and `P + k` for the k-th
new token. We pass exactly those at every call, so after Lite pruning (a shorter cache) the
positions stay those of the unpruned sequence; the attention mask is not passed (batch 1 without
padding). A subclass says which inputs its processor gives and which prompt tokens are visual.

Sharding (`device_map`): the prompt goes to the embedding's device; the last layer's input is
brought to the last layer's device when captured. The modules the controller calls directly (the
last layer, the final norm, the lm_head) must hold real weights on one device (`sharding.py`).
"""
from __future__ import annotations

import inspect

import torch

from vreason.models.adapter import DecoderAdapter, LayerInput, Prefill
from vreason.models.sharding import check_placement
from vreason.models.capture import LastLayerCapture
from vreason.tail import DenseTail

__all__ = ["TextDecoderAdapter", "rotate_half", "eos_token_ids"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def eos_token_ids(model: torch.nn.Module) -> tuple[int, ...]:
    """The generation config's eos ids (else the text config's); ValueError when there are none."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config.get_text_config(), "eos_token_id", None)
    if eos is None:
        raise ValueError("the model's generation config names no eos_token_id: generation could not stop")
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


class TextDecoderAdapter(DecoderAdapter):
    """Everything but the inputs: subclasses implement `prepare_inputs` and `visual_positions`,
    and may extend `model_kwargs` (what the prefill forward gets besides input ids and positions)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.text_model = model.model.language_model
        self.layers = self.text_model.layers
        self.last_layer = self.layers[-1]
        attn = self.last_layer.self_attn
        text_cfg = model.config.get_text_config()
        self.num_heads = int(text_cfg.num_attention_heads)
        self.num_kv_heads = int(text_cfg.num_key_value_heads)
        self.head_dim = int(attn.head_dim)
        self.scaling = float(attn.scaling)
        self.q_norm = getattr(attn, "q_norm", None)
        self.vocab_size = int(model.lm_head.weight.shape[0])
        if getattr(model.lm_head, "bias", None) is not None:
            raise ValueError("lm_head with a bias is not supported")
        self.eos_token_ids = eos_token_ids(model)
        check_placement(model)
        # transformers 5.24 renamed the cache keyword and output field `past_key_values` to `cache`.
        self.cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ---- subclass hooks --------------------------------------------------------------------------

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1-D int64 prompt indices of the tokens ΔV and Lite act on."""
        raise NotImplementedError

    # ---- forward passes -----------------------------------------------------------------------

    def prefill(self, inputs: dict) -> Prefill:
        input_ids = inputs["input_ids"]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).view(1, -1)
        kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
        out = self.model(input_ids=input_ids, position_ids=positions, use_cache=True, logits_to_keep=1,
                         return_dict=True, **kwargs)
        return Prefill(
            logits=out.logits[:, -1],
            cache=getattr(out, self.cache_key),
            next_position_ids=positions[:, -1:] + 1,
            video_positions=self.visual_positions(input_ids),
        )

    def decode_step(self, token: torch.Tensor, cache: object, position_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=token.view(1, 1), **{self.cache_key: cache}, position_ids=position_ids,
                         use_cache=True, logits_to_keep=1, return_dict=True)
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
        """The hand-written SwiGLU tail where the last layer has one (Qwen2/Qwen3 MLPs do)."""
        if not hasattr(self, "_dense_tail"):
            self._dense_tail = DenseTail.of(self.last_layer, self.text_model.norm)
        return self._dense_tail

    def query(self, layer_input: LayerInput) -> torch.Tensor:
        layer = self.last_layer
        q = layer_input.q
        if q is None:  # not captured: the projection again
            q = layer.self_attn.q_proj(layer.input_layernorm(layer_input.hidden))
        q = q.view(1, 1, self.num_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        q = q.transpose(1, 2)  # [1, heads, 1, head_dim]
        cos, sin = layer_input.cos.unsqueeze(1), layer_input.sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        groups = self.num_heads // self.num_kv_heads
        return q.float().reshape(1, self.num_kv_heads, groups, self.head_dim) * self.scaling

    def tail(self, layer_input: LayerInput, attn: torch.Tensor) -> torch.Tensor:
        layer = self.last_layer
        hidden = layer_input.hidden + layer.self_attn.o_proj(attn)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.text_model.norm(hidden)

    def lm_head_weight(self) -> torch.Tensor:
        return self.model.lm_head.weight


def check_batch_one(inputs: dict, accepted: frozenset) -> dict:
    """Shared input checks: known keys only, `input_ids` `[1, seq]`, an all-ones mask (dropped)."""
    unknown = sorted(k for k in inputs if k not in accepted)
    if unknown:
        raise ValueError(f"unexpected input(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}")
    inputs = {k: v for k, v in inputs.items() if v is not None}
    if "input_ids" not in inputs:
        raise ValueError("input_ids is required")
    input_ids = torch.as_tensor(inputs["input_ids"])
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[0] != 1:
        raise ValueError(f"batch size {input_ids.shape[0]} is not supported yet: pass one sample at a time")
    inputs["input_ids"] = input_ids
    mask = inputs.pop("attention_mask", None)
    if mask is not None and (mask.shape[-1] != input_ids.shape[-1] or not bool((mask != 0).all())):
        raise ValueError("attention_mask must be all ones over input_ids (padding is not supported at batch size 1)")
    return inputs
