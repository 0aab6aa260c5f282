"""What every supported family shares: transformers' standard decoder layout under the vision
tower. Each adapter (`qwen2_5_vl.py`, `text_decoder.py` and the families built on them) adds its
own inputs, positions and visual tokens; the last layer, the cache and the lm_head are reached
the same way in all of them, so they are written once, here.

Layout relied on (transformers 5.x): `model.model.language_model` holds `layers` (each with
`input_layernorm`, `self_attn.{q,k,v,o}_proj`, optionally a per-head `self_attn.q_norm` as in
Qwen3, `post_attention_layernorm`, `mlp`) and the final `norm`; `model.lm_head` has no bias; the
text model computes `(cos, sin)` before the layers (laid out for the family's RoPE: 1-D, M-RoPE
or interleaved M-RoPE), so each attention applies plain rotate-half rotary with them, and so does
`query`. The cache keeps one entry per layer with `.keys` / `.values` (`DynamicCache`; a hybrid
cache's full-attention entries too).

Sharding (`device_map`): the modules the controller calls directly (the last layer, the final
norm, the lm_head) must hold real weights on one device; `check_placement` refuses otherwise.
"""
from __future__ import annotations

import inspect
from abc import abstractmethod

import torch

from vreason.models.adapter import BatchPrefill, DecoderAdapter, LayerInput
from vreason.models.capture import LastLayerCapture
from vreason.models.sharding import check_placement
from vreason.tail import DenseTail

__all__ = ["HFDecoderLayout", "checked_ids", "rotate_half", "eos_token_ids"]


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


def checked_ids(inputs: dict, accepted: frozenset, batch: bool = False) -> tuple[dict, torch.Tensor | None]:
    """The checks every adapter's `prepare_inputs` starts with: known keys only (None values
    dropped), `input_ids` given and made `[rows, seq]` (one row unless `batch`). Returns the inputs
    without `attention_mask` and that mask; at batch size 1 it must be all ones (then dropped:
    `generate` drops an all-ones mask too), a batch's padding is the caller's to check."""
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
    if input_ids.shape[0] != 1 and not batch:
        raise ValueError(f"batch size {input_ids.shape[0]} is not supported yet: pass one sample at a time")
    inputs["input_ids"] = input_ids
    mask = inputs.pop("attention_mask", None)
    if not batch and mask is not None:
        if mask.shape[-1] != input_ids.shape[-1] or not bool((mask != 0).all()):
            raise ValueError("attention_mask must be all ones over input_ids (padding is not supported at batch size 1)")
        mask = None
    return inputs, mask


class HFDecoderLayout(DecoderAdapter):
    """The last layer piece by piece, the cache entries, the lm_head and left-padded batches;
    subclasses add inputs (`checked_inputs`), prefill, decode and the visual positions, and
    declare their processor's batch layout (`DecoderAdapter.batch_keys`, `token_rows`)."""

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
        # transformers 5.24 renamed the cache keyword and output field `past_key_values` to `cache`
        # (and warns on every call with the old name); 5.23 knows only the old one.
        self.cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ---- inputs, one sample or a left-padded batch ----------------------------------------------

    @abstractmethod
    def checked_inputs(self, inputs: dict, batch: bool) -> dict:
        """`prepare_inputs`' checks; with `batch`, any number of left-padded rows (the padding
        given by `attention_mask`, kept: `batching.checked_left_padding`), each with its own visual
        tokens."""

    @abstractmethod
    def visual_positions(self, row: torch.Tensor) -> torch.Tensor:
        """1-D int64 indices, in one row of input ids, of the tokens ΔV and Lite act on."""

    def prepare_inputs(self, inputs: dict) -> dict:
        return self.checked_inputs(inputs, batch=False)

    def prepare_batch(self, inputs: dict) -> dict:
        """One row: `prepare_inputs` (no mask passed on, as `generate` at batch size 1). Several
        left-padded rows (`collate_inputs`' layout): the same checks, every row with its own visual
        tokens; the attention mask is kept."""
        ids = torch.as_tensor(inputs["input_ids"])
        if self.batch_keys is None or ids.ndim == 1 or ids.shape[0] == 1:
            return super().prepare_batch(inputs)
        return self.checked_inputs(inputs, batch=True)

    def prefill_batch(self, inputs: dict) -> BatchPrefill:
        """The batch's prompt forward (the family's `prefill`, which takes the attention mask and
        gives each row its own positions) and each row's visual positions."""
        prefill = self.prefill(inputs)
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        return BatchPrefill(logits=prefill.logits, cache=prefill.cache, next_position_ids=prefill.next_position_ids,
                            attention_mask=torch.ones_like(ids) if mask is None else mask,
                            visual_positions=[self.visual_positions(row) for row in ids])

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
        """The last layer's query for the current token(s), rotated and scaled, grouped per KV head:
        `[rows, kv_heads, groups, head_dim]` in float32."""
        layer = self.last_layer
        q = layer_input.q
        if q is None:  # not captured: the projection again
            q = layer.self_attn.q_proj(layer.input_layernorm(layer_input.hidden))
        rows = q.shape[0]
        q = q.view(rows, 1, self.num_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        q = q.transpose(1, 2)  # [rows, heads, 1, head_dim]
        cos, sin = layer_input.cos.unsqueeze(1), layer_input.sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        groups = self.num_heads // self.num_kv_heads
        return q.float().reshape(rows, self.num_kv_heads, groups, self.head_dim) * self.scaling

    def tail(self, layer_input: LayerInput, attn: torch.Tensor) -> torch.Tensor:
        layer = self.last_layer
        hidden = layer_input.hidden + layer.self_attn.o_proj(attn)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.text_model.norm(hidden)

    def lm_head_weight(self) -> torch.Tensor:
        return self.model.lm_head.weight
