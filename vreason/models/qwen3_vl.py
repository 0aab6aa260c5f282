"""The Qwen3-VL adapter (dense `qwen3_vl` and MoE `qwen3_vl_moe`: both share the text decoder
layout; an MoE layer's `mlp` is its sparse block, which the tail calls like a dense MLP).

Against Qwen2.5-VL (`qwen2_5_vl.py`, whose inputs, positions, prefill, decode and cache handling
this adapter inherits) three things differ:

- Queries and keys pass through a per-head RMSNorm (`q_norm`, `k_norm`) before rotary; keys are
  cached after it, so only the query needs it (`hf_layout.py`'s `query` applies a layer's `q_norm`).
- Interleaved M-RoPE: the text model lays cos/sin out per head dimension before the layers, so
  the last layer's captured `(cos, sin)` already carry the interleaving and the rotation is the
  same rotate-half. Positions: `generate`'s 4 rows (text + `get_rope_index`'s three, which split
  each video into one grid per temporal patch), passed explicitly as for Qwen2.5-VL.
- Each frame's tokens are preceded by a timestamp text (`<1.5 seconds>`), so the video tokens
  are not contiguous: they are found by id in `input_ids`, never taken as one slice. The
  timestamps come from the processor's `video_metadata` (source fps, sampled indices); without
  it the processor assumes 24 fps.

DeepStack: visual features of early vision layers are added to the first decoder layers' hidden
states at the visual positions, at prefill only. Decode steps feed text tokens, and Lite's re-run
of the last prompt token feeds a text token too, which gets no DeepStack feature: so nothing extra
has to be passed when the model is re-entered. A prompt whose last token is visual (no generation
prompt after the media) would break that and is refused.
"""
from __future__ import annotations

from vreason.models.qwen2_5_vl import QwenVLAdapter

__all__ = ["Qwen3VLAdapter"]


class Qwen3VLAdapter(QwenVLAdapter):
    """Batches as Qwen2.5-VL does (the same processor layout; `get_rope_index` skips each row's
    left padding, and DeepStack's features go to each row's own visual positions)."""

    def checked_inputs(self, inputs: dict, batch: bool) -> dict:
        inputs = super().checked_inputs(inputs, batch)
        last = inputs["input_ids"][:, -1]
        if bool(((last == self.video_token_id) | (last == self.image_token_id)).any()):
            raise ValueError("the prompt ends with a visual token: add the generation prompt after the media")
        return inputs
