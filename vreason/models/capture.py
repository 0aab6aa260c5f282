"""The last decoder layer's input and activations of the current token, kept by forward hooks.

A controller round needs, for the token the model just ran, the last layer's input (residual
stream and rotary `cos`/`sin`), its query projection and, for a dense tail, the tail's
activations (`vreason/tail.py`): all of them are computed by the model's own forward anyway, so
hooks keep references (a one-token forward's tensors are fresh and never written in place; a
prompt's last position is copied) instead of the round computing them again.

Layout relied on (Hugging Face decoder layers of the Qwen / Llama kind): the layer is called with
`hidden_states` first and `position_embeddings=(cos, sin)` as a keyword, and has
`self_attn.q_proj`.
"""
from __future__ import annotations

import torch

from vreason.models.adapter import LayerInput
from vreason.tail import DenseTail, TailCapture, last_position

__all__ = ["LastLayerCapture"]


class LastLayerCapture:
    """The hooks behind `capture_last_layer_input`: a pre-hook on the last decoder layer keeps its
    input at the last position (`latest`, a `LayerInput`; None before the first forward); as the
    same forward goes on, a hook on `q_proj` fills `latest.q` and, for a dense tail, the tail's
    hooks fill `latest.tail`. `.remove()` uninstalls them all."""

    def __init__(self, layer: torch.nn.Module, tail: DenseTail | None = None) -> None:
        self.latest: LayerInput | None = None
        self._device = next(layer.parameters()).device
        self._tail = TailCapture(tail) if tail is not None else None
        self._handles = [layer.register_forward_pre_hook(self._hook, with_kwargs=True),
                         layer.self_attn.q_proj.register_forward_hook(self._query)]

    def _query(self, module, args, output) -> None:
        self.latest.q = last_position(output)

    def _hook(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"]
        # The last position only (a prompt's is copied: holding views would keep the prefill's
        # whole [1, P, hidden] activations alive for the rest of the sample). Under a device_map
        # this pre-hook runs before accelerate moves the inputs: move them here (a no-op where
        # they already are, as device_map auto arranges).
        hidden, cos, sin = (last_position(t).to(self._device) for t in (hidden, cos, sin))
        tail = self._tail.begin() if self._tail is not None else None
        self.latest = LayerInput(hidden, cos, sin, tail)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._tail is not None:
            self._tail.remove()
