"""The Qwen3.5 adapter (`Qwen3_5ForConditionalGeneration`): a hybrid decoder.

Most layers are linear attention (Gated DeltaNet: a convolution and a recurrent state, no
per-token cache); every few layers, the last one included, is a full-attention layer with a
key/value cache. transformers keeps both in one cache (`DynamicCache` built from the config:
`LinearAttentionLayer` entries for the former, `DynamicLayer` ones for the latter); keys and
values are reached through the cache's per-layer entries, and only full-attention layers have
them. Inputs, M-RoPE positions (`get_rope_index` as Qwen3-VL's, explicit at every call), prefill
and decode are Qwen2.5-VL's (`qwen2_5_vl.py`); Qwen3.5 has no DeepStack.

The full-attention layer differs from Qwen2.5-VL's in three ways, all in `query` and `tail`:
- `q_proj` gives each head's query and an output gate side by side; the attention output is
  multiplied by `sigmoid(gate)` before `o_proj`. The gate depends on the layer's input only, so
  it is a constant of the controller's one-token graph.
- per-head RMSNorm of queries (and keys, cached after it) before rotary;
- partial rotary: only the first `cos.shape[-1]` dimensions of each head rotate.

Lite is not supported for this family (**ours**, a refusal rather than a silent error): the
recurrent state of the linear-attention layers cannot drop tokens, and Lite's re-run of the last
prompt token would feed that token to the recurrent state a second time. Asking for a linear
layer's cache (which Lite does) raises a one-line ValueError, so such a sample becomes an error
record naming the reason.
"""
from __future__ import annotations

import torch

from vreason.models.adapter import LayerInput
from vreason.models.qwen2_5_vl import QwenVLAdapter
from vreason.models.sharding import check_placement
from vreason.models.text_decoder import rotate_half

__all__ = ["Qwen3_5Adapter"]

_FULL = "full_attention"


class Qwen3_5Adapter(QwenVLAdapter):
    def __init__(self, model: torch.nn.Module) -> None:
        self.layer_types = tuple(model.config.get_text_config().layer_types)
        if self.layer_types[-1] != _FULL:
            raise ValueError(f"the last decoder layer is {self.layer_types[-1]!r}: V-Reason needs full attention there")
        super().__init__(model)
        check_placement(model)
        self.q_norm = self.last_layer.self_attn.q_norm

    @property
    def device(self) -> torch.device:
        """The token embedding's device: where inputs go, also under a device_map."""
        return self.model.get_input_embeddings().weight.device

    def cache_kv(self, cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layer_types[layer] != _FULL:
            raise ValueError(f"Qwen3.5 layer {layer} is linear attention (a recurrent state, no per-token cache): "
                             "Lite (prune_ratio > 0) is not supported for Qwen3.5")
        return super().cache_kv(cache, layer)

    def dense_tail(self) -> None:
        """None: the output gate sits between the attention and `o_proj`, which the hand-written
        dense tail does not have, so the controller differentiates `tail` by autograd."""
        return None

    def _query_and_gate(self, layer_input: LayerInput) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.last_layer
        both = layer_input.q  # the q_proj output the capture hook kept: queries and gates
        if both is None:  # not captured: the projection again
            both = layer.self_attn.q_proj(layer.input_layernorm(layer_input.hidden))
        query, gate = torch.chunk(both.view(1, 1, self.num_heads, 2 * self.head_dim), 2, dim=-1)
        return query, gate.reshape(1, 1, -1)

    def query(self, layer_input: LayerInput) -> torch.Tensor:
        q, _ = self._query_and_gate(layer_input)
        q = self.q_norm(q).transpose(1, 2)  # [1, heads, 1, head_dim]
        cos, sin = layer_input.cos.unsqueeze(1), layer_input.sin.unsqueeze(1)
        rot = cos.shape[-1]
        q_rot, q_pass = q[..., :rot], q[..., rot:]
        q = torch.cat([q_rot * cos + rotate_half(q_rot) * sin, q_pass], dim=-1)
        groups = self.num_heads // self.num_kv_heads
        return q.float().reshape(1, self.num_kv_heads, groups, self.head_dim) * self.scaling

    def tail(self, layer_input: LayerInput, attn: torch.Tensor) -> torch.Tensor:
        layer = self.last_layer
        _, gate = self._query_and_gate(layer_input)
        hidden = layer_input.hidden + layer.self_attn.o_proj(attn * torch.sigmoid(gate))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.text_model.norm(hidden)
