"""A base adapter for vision-language models whose language model is a plain HF causal decoder with
1-D RoPE (Qwen2 / Qwen2.5 / Qwen3 layers): LLaVA-OneVision and InternVL build on it.

The decoder layout, the cache and the last layer's pieces are `hf_layout.py`'s.

Positions: `generate` builds `position_ids = arange(P)` for the prompt and `P + k` for the k-th
new token. We pass exactly those at every call, so after Lite pruning (a shorter cache) the
positions stay those of the unpruned sequence; the attention mask is not passed (batch 1 without
padding). A subclass says which inputs its processor gives and which prompt tokens are visual.

Sharding (`device_map`): the prompt goes to the embedding's device; the last layer's input is
brought to the last layer's device when captured.
"""
from __future__ import annotations

from abc import abstractmethod

import torch

from vreason.models.adapter import Prefill
from vreason.models.hf_layout import HFDecoderLayout

__all__ = ["TextDecoderAdapter"]


class TextDecoderAdapter(HFDecoderLayout):
    """Everything but the inputs: subclasses implement `prepare_inputs` (starting from
    `hf_layout.checked_ids`) and `visual_positions`."""

    # ---- subclass hooks --------------------------------------------------------------------------

    @abstractmethod
    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1-D int64 prompt indices of the tokens ΔV and Lite act on."""

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

    def decode_step(self, token: torch.Tensor, cache: object, position_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        masks = {} if attention_mask is None else {"attention_mask": attention_mask}
        out = self.model(input_ids=token.view(-1, 1), **{self.cache_key: cache}, **masks, position_ids=position_ids,
                         use_cache=True, logits_to_keep=1, return_dict=True)
        return out.logits[:, -1]
