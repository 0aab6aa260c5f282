"""A base adapter for vision-language models whose language model is a plain HF causal decoder with
1-D RoPE (Qwen2 / Qwen2.5 / Qwen3 layers): LLaVA-OneVision and InternVL build on it.

The decoder layout, the cache and the last layer's pieces are `hf_layout.py`'s.

Positions: `generate` builds `position_ids = arange(P)` for the prompt and `P + k` for the k-th
new token. We pass exactly those at every call, so after Lite pruning (a shorter cache) the
positions stay those of the unpruned sequence; at batch size 1 the attention mask is not passed
(no padding). A left-padded batch passes it, and each row's positions count its real tokens only
(`generate`'s rule: 0 at the padding), so a row is laid out as if alone. Positions are kept
`[1, rows, 1]` between calls (one position row, as the M-RoPE families keep theirs `[4, rows, 1]`).
A subclass says which inputs its processor gives, how it batches them, and which prompt tokens
are visual.

Sharding (`device_map`): the prompt goes to the embedding's device; the last layer's input is
brought to the last layer's device when captured.
"""
from __future__ import annotations

import torch

from vreason.models.adapter import Prefill
from vreason.models import batching
from vreason.models.hf_layout import HFDecoderLayout

__all__ = ["TextDecoderAdapter"]


class TextDecoderAdapter(HFDecoderLayout):
    """Everything but the inputs: subclasses implement `checked_inputs` (starting from
    `hf_layout.checked_ids`), `visual_positions` and, where the processor's tensors are not
    the model's inputs as they are, `model_inputs`."""

    def model_inputs(self, inputs: dict) -> dict:
        """The prompt forward's keywords besides `input_ids` and positions: the inputs as given."""
        return {k: v for k, v in inputs.items() if k != "input_ids"}

    # ---- forward passes -----------------------------------------------------------------------

    def prefill(self, inputs: dict) -> Prefill:
        input_ids = inputs["input_ids"]
        positions = batching.text_positions(input_ids, inputs.get("attention_mask"))
        out = self.model(input_ids=input_ids, position_ids=positions, use_cache=True, logits_to_keep=1,
                         return_dict=True, **self.model_inputs(inputs))
        return Prefill(
            logits=out.logits[:, -1],
            cache=getattr(out, self.cache_key),
            next_position_ids=positions[None, :, -1:] + 1,
            video_positions=self.visual_positions(input_ids[0]),
        )

    def decode_step(self, token: torch.Tensor, cache: object, position_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        masks = {} if attention_mask is None else {"attention_mask": attention_mask}
        rows = token.shape[0]
        out = self.model(input_ids=token.view(rows, 1), **{self.cache_key: cache}, **masks,
                         position_ids=position_ids.reshape(rows, 1), use_cache=True, logits_to_keep=1, return_dict=True)
        return out.logits[:, -1]
