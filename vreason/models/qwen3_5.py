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

Lite. The recurrent state of a linear-attention layer cannot drop tokens: Lite drops video
tokens from the full-attention layers' caches only (`kv_layers`; the run summary says how many
layers that is), and its re-run of the last prompt token must not feed that token to the
recurrent states a second time (`rerun_last_prompt_token` rewinds them first).

Memory (**ours**). The adapter keeps only weak references to a prompt's tensors (the caller holds
them for the sample's duration), so no input of a sample outlives its generation, also when it
failed (an out-of-memory retry then starts with them freed). The re-run keeps only what it is
for: its full-attention layers attend over the prompt and store nothing (the sample's pruned
cache is the one kept), and its recurrent states replace the sample's.

Batches (Qwen2.5-VL's layout and positions): transformers multiplies the linear-attention layers'
inputs by the 2-D padding mask in prompt forwards, so left padding never enters a row's
convolution or recurrent state; a finished row leaves those states as well as the key/value
entries (`keep_cache_rows`).
"""
from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from vreason.models.adapter import LayerInput
from vreason.models.qwen2_5_vl import QwenVLAdapter
from vreason.models.hf_layout import rotate_half

__all__ = ["Qwen3_5Adapter"]

_FULL = "full_attention"


class _KeepNothingLayer(DynamicLayer):
    """A full-attention cache entry for a forward from an empty cache that stores nothing: the
    attention gets the chunk's own keys and values, as from a fresh entry, and they are freed
    with the layer's activations."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return key_states, value_states


class Qwen3_5Adapter(QwenVLAdapter):
    def __init__(self, model: torch.nn.Module) -> None:
        self.layer_types = tuple(model.config.get_text_config().layer_types)
        if self.layer_types[-1] != _FULL:
            raise ValueError(f"the last decoder layer is {self.layer_types[-1]!r}: V-Reason needs full attention there")
        super().__init__(model)
        self.full_layers = tuple(i for i, kind in enumerate(self.layer_types) if kind == _FULL)
        self._prompt: dict | None = None  # weak references to the last prefill's inputs, for Lite's re-run

    def cache_kv(self, cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layer_types[layer] != _FULL:
            raise ValueError(f"Qwen3.5 layer {layer} is linear attention: a recurrent state, no per-token "
                             "key/value cache (kv_layers() lists the layers that have one)")
        return super().cache_kv(cache, layer)

    # ---- Lite over a hybrid cache ------------------------------------------------------------------

    def prefill(self, inputs: dict):
        self._prompt = {k: weakref.ref(v) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return super().prefill(inputs)

    def _last_prompt(self, input_ids: torch.Tensor) -> dict:
        """The last prefill's inputs, if they are still alive and are this prompt's."""
        refs = self._prompt or {}
        prompt = {k: v() if isinstance(v, weakref.ref) else v for k, v in refs.items()}
        gone = any(isinstance(v, weakref.ref) and prompt[k] is None for k, v in refs.items())
        if gone or prompt.get("input_ids") is None or not torch.equal(prompt["input_ids"], input_ids):
            raise ValueError("rerun_last_prompt_token needs the prefill of this same prompt first, its inputs still held")
        return prompt

    def kv_layers(self) -> tuple[int, ...]:
        """The layers with a per-token key/value cache, the only ones Lite can prune."""
        return self.full_layers

    def rerun_last_prompt_token(self, cache, input_ids: torch.Tensor, last_position_ids: torch.Tensor,
                                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Lite's re-run of the last prompt token over a (pruned) hybrid cache; its logits `[rows, vocab]`.

        The full-attention layers drop the token's entry; the linear-attention layers get their
        states from before it back, from the prompt without its last token run into a fresh cache
        (one more prompt forward, once per sample or batch); then the token is fed again. In a
        left-padded batch every row's last token is the last column: the prompt without it keeps
        each row's padding masked, and transformers zeroes padded positions' inputs to the
        recurrent layers (its 2-D padding mask), so their states hold each row's tokens only."""
        prompt = self._last_prompt(input_ids)
        positions = self._prompt_position_ids(prompt)[..., :-1]
        head = {k: v for k, v in prompt.items() if k not in ("input_ids", "second_per_grid_ts")}
        for key in ("mm_token_type_ids", "attention_mask"):
            if key in head:
                head[key] = head[key][:, :-1]
        before = DynamicCache(config=self.model.config)
        for layer in self.full_layers:
            before.layers[layer] = _KeepNothingLayer()
        self.model(input_ids=input_ids[:, :-1], position_ids=positions, use_cache=True, logits_to_keep=1,
                   return_dict=True, **head, **{self.cache_key: before})
        del prompt, head
        for layer, kind in enumerate(self.layer_types):
            if kind == _FULL:
                keys, values = self.cache_kv(cache, layer)
                self.set_cache_kv(cache, layer, keys[..., :-1, :], values[..., :-1, :])
            else:
                cache.layers[layer] = before.layers[layer]
        return self.decode_step(input_ids[:, -1:], cache, last_position_ids, attention_mask=attention_mask)

    def keep_cache_rows(self, cache, rows: torch.Tensor) -> None:
        """The full-attention entries' rows and the linear-attention layers' conv and recurrent
        states' rows (their cache entries' own `reorder_cache`)."""
        super().keep_cache_rows(cache, rows)
        for layer, kind in enumerate(self.layer_types):
            if kind != _FULL:
                cache.layers[layer].reorder_cache(rows)

    def dense_tail(self) -> None:
        """None: the output gate sits between the attention and `o_proj`, which the hand-written
        dense tail does not have, so the controller differentiates `tail` by autograd."""
        return None

    def _query_and_gate(self, layer_input: LayerInput) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.last_layer
        both = layer_input.q  # the q_proj output the capture hook kept: queries and gates
        if both is None:  # not captured: the projection again
            both = layer.self_attn.q_proj(layer.input_layernorm(layer_input.hidden))
        rows = both.shape[0]
        query, gate = torch.chunk(both.view(rows, 1, self.num_heads, 2 * self.head_dim), 2, dim=-1)
        return query, gate.reshape(rows, 1, -1)

    def query(self, layer_input: LayerInput) -> torch.Tensor:
        q, _ = self._query_and_gate(layer_input)
        q = self.q_norm(q).transpose(1, 2)  # [rows, heads, 1, head_dim]
        cos, sin = layer_input.cos.unsqueeze(1), layer_input.sin.unsqueeze(1)
        rot = cos.shape[-1]
        q_rot, q_pass = q[..., :rot], q[..., rot:]
        q = torch.cat([q_rot * cos + rotate_half(q_rot) * sin, q_pass], dim=-1)
        groups = self.num_heads // self.num_kv_heads
        return q.float().reshape(q.shape[0], self.num_kv_heads, groups, self.head_dim) * self.scaling

    def tail(self, layer_input: LayerInput, attn: torch.Tensor) -> torch.Tensor:
        layer = self.last_layer
        _, gate = self._query_and_gate(layer_input)
        hidden = layer_input.hidden + layer.self_attn.o_proj(attn * torch.sigmoid(gate))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.text_model.norm(hidden)
