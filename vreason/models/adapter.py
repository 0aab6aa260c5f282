"""What the generator needs from a model, and nothing more.

The generator (prefill, Lite, the decode loop, the controller) is written against this
interface; one implementation per architecture family holds every model-specific detail
(layer names, special token ids, position ids, how the last layer's attention is laid out).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch

from vreason.models import batching

if TYPE_CHECKING:  # only for annotations: the interface imports no implementation
    from vreason.tail import DenseTail, TailActivations

__all__ = ["BatchPrefill", "DecoderAdapter", "LayerInput", "LayerInputCapture", "Prefill"]


@dataclass
class LayerInput:
    """The last decoder layer's input at the current (last) position, captured by a hook:
    the residual stream `[1, 1, hidden]` and the rotary `(cos, sin)` `[1, 1, head_dim]`; and,
    where the adapter captures them, the same forward's query projection `q` (before any norm or
    rotary) and tail activations (`tail.py`), which let a controller round start without
    recomputing either."""

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    tail: "TailActivations | None" = None
    q: torch.Tensor | None = None


class LayerInputCapture(Protocol):
    """What `capture_last_layer_input` returns: `latest` is the `LayerInput` of the most recent
    forward (None before the first); `remove()` uninstalls the hooks."""

    latest: LayerInput | None

    def remove(self) -> None: ...


@dataclass
class Prefill:
    """The result of the prompt's forward pass."""

    logits: torch.Tensor  # [1, vocab], model dtype: the distribution of the first new token
    cache: object  # the model's KV cache
    next_position_ids: torch.Tensor  # [P, 1, 1]: positions of the first generated token
    video_positions: torch.Tensor  # 1-D int64, prompt indices of the video (else image) tokens


@dataclass
class BatchPrefill:
    """The prompt forward of a left-padded batch of B samples (`DecoderAdapter.prefill_batch`)."""

    logits: torch.Tensor  # [B, vocab], model dtype: each row's first new token's distribution
    cache: object  # the model's KV cache, [B, kv_heads, seq, head_dim] per layer, padding included
    next_position_ids: torch.Tensor  # [..., B, 1]: each row's first generated token's positions (rows: dim -2)
    attention_mask: torch.Tensor  # [B, seq] int: 0 at each row's left padding (all ones: none)
    visual_positions: list  # per row, 1-D int64 indices (in the padded row) of its video (else image) tokens


class DecoderAdapter(ABC):
    """A causal vision-language decoder seen as: prefill, one-token decode steps, a KV cache of
    `[batch, kv_heads, seq, head_dim]` tensors per layer, and the last decoder layer split into the
    parts the exact one-token gradient needs (docs/method.md §3)."""

    model: torch.nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]

    @property
    def device(self) -> torch.device:
        """The token embedding's device: where inputs go, also when a device_map spreads the
        model (its first parameter may then sit elsewhere, or on `meta` if offloaded)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @abstractmethod
    def prepare_inputs(self, inputs: dict) -> dict:
        """Check the processor outputs (batch 1, video present, grids consistent, known keys) and
        move them to the model's device; raise ValueError with a one-line reason otherwise."""

    @abstractmethod
    def prefill(self, inputs: dict) -> Prefill:
        """Run the prompt, keeping the cache; logits only for the last position."""

    @abstractmethod
    def decode_step(self, token: torch.Tensor, cache: object, position_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row `[B, 1]` at `position_ids` (the prefill's `next_position_ids`
        layout: rows on the second-to-last dim); return the next-token logits `[B, vocab]`.
        `attention_mask` `[B, seq + 1]` (0 at left padding) is given only when a row is padded."""

    @abstractmethod
    def cache_kv(self, cache: object, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of one layer, `[1, kv_heads, seq, head_dim]`, the cache's own tensors."""

    @abstractmethod
    def set_cache_kv(self, cache: object, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace one layer's cached keys and values (Lite pruning)."""

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    def kv_layers(self) -> Sequence[int]:
        """The layers with a per-token key/value cache, the ones Lite prunes: all of them in a
        plain decoder; a hybrid decoder (recurrent layers beside attention) lists its attention
        layers, and the last layer must be one of them (the controller acts there)."""
        return range(self.num_layers)

    def rerun_last_prompt_token(self, cache: object, input_ids: torch.Tensor, last_position_ids: torch.Tensor,
                                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """After Lite: drop every row's last prompt token (the cache's last entry: left padding)
        from every `kv_layers()` cache and feed `input_ids[:, -1:]` again at `last_position_ids`
        over the pruned cache (`attention_mask` `[B, seq]` covers it and them; None: no padding);
        return its logits `[B, vocab]`. A family whose other layers hold state the token already
        entered must rewind it first."""
        for layer in self.kv_layers():
            keys, values = self.cache_kv(cache, layer)
            self.set_cache_kv(cache, layer, keys[..., :-1, :], values[..., :-1, :])
        return self.decode_step(input_ids[:, -1:], cache, last_position_ids, attention_mask=attention_mask)

    def keep_cache_rows(self, cache: object, rows: torch.Tensor) -> None:
        """Keep only these batch rows (1-D int64, ascending) of the cache, so that finished samples
        stop costing decode work: every `kv_layers()` entry here (the rows moved to the device of
        the cache they index, as under a `device_map`); a family with other per-row state
        (recurrent layers) keeps its rows too."""
        for layer in self.kv_layers():
            keys, values = self.cache_kv(cache, layer)
            index = rows.to(keys.device)
            self.set_cache_kv(cache, layer, keys.index_select(0, index), values.index_select(0, index))

    @abstractmethod
    def capture_last_layer_input(self) -> LayerInputCapture:
        """Install hooks that keep the last layer's `LayerInput` at the last position of every
        forward; return the handle (`.latest`, `.remove()`)."""

    # ---- batches (the engine always calls these; a batch of one is any family's sample) ----------

    batch_keys: tuple[str, ...] | None = None
    """The inputs a left-padded batch concatenates in sample order (visual tensors and their
    grids), as the processor's own batched call lays them out. None (the default): the family
    decodes one sample at a time, and the engine runs a batch of B > 1 as B batches of one. A
    family that sets it implements `prepare_batch` and `prefill_batch` for B rows, and
    `decode_step` / `rerun_last_prompt_token` with an attention mask."""

    batch_padded_keys: tuple[str, ...] = ()
    """Those of `batch_keys` that are per-sample `[n, k, ...]` tensors (a video's frames, an
    image's patches) zero-padded along dim 1 to the batch's largest k before concatenation."""

    def token_rows(self, sample: dict) -> dict[str, tuple[torch.Tensor, int]]:
        """One sample's per-token rows for `collate_inputs`, each 1-D with the value its left
        padding takes: `input_ids` (the pad id) and `attention_mask` (0). A family with more
        per-token inputs adds them."""
        ids = torch.as_tensor(sample["input_ids"]).reshape(-1)
        mask = sample.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).reshape(-1).to(ids.dtype)
        return {"input_ids": (ids, self.pad_token_id()), "attention_mask": (mask, 0)}

    def pad_token_id(self) -> int:
        """The id left padding holds (never attended): `batching.pad_token_id`."""
        return batching.pad_token_id(self.model, self.eos_token_ids)

    def collate_inputs(self, samples: list[dict]) -> dict:
        """One batch from per-sample processor outputs: a single sample as it is; several, left
        padded (`token_rows`) with `batch_keys` concatenated (`batch_padded_keys` padded first),
        as the processor's own batched call lays them out (`batching.py`). ValueError for several
        samples of a family without a batch layout."""
        if not samples:
            raise ValueError("an empty batch")
        if len(samples) == 1:
            return dict(samples[0])
        if self.batch_keys is None:
            raise ValueError(f"{type(self).__name__} decodes one sample at a time: give per-sample inputs to "
                             "generate_samples")
        return batching.left_padded([self.token_rows(s) for s in samples], samples, self.batch_keys,
                                    self.batch_padded_keys)

    def prepare_batch(self, inputs: dict) -> dict:
        """`prepare_inputs` for a batch: here a batch of one row (`prepare_inputs` itself); a family
        with a batch layout checks B left-padded rows (the attention mask kept where it pads)."""
        batching.one_row(type(self).__name__, inputs)
        return self.prepare_inputs(inputs)

    def prefill_batch(self, inputs: dict) -> BatchPrefill:
        """The prompt forward of a prepared batch: here one row (`prefill`); a family with a batch
        layout runs B left-padded rows at once."""
        prefill = self.prefill(inputs)
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        return BatchPrefill(logits=prefill.logits, cache=prefill.cache, next_position_ids=prefill.next_position_ids,
                            attention_mask=torch.ones_like(ids) if mask is None else mask,
                            visual_positions=[prefill.video_positions])

    def dense_tail(self) -> "DenseTail | None":
        """The last layer's tail as a dense SwiGLU block with a hand-written backward
        (`tail.DenseTail`), or None (the default) for the controller to use autograd over
        `tail`. An adapter returning one should also fill `LayerInput.tail` in its hook."""
        return None

    @abstractmethod
    def query(self, layer_input: LayerInput) -> torch.Tensor:
        """The last layer's rotated, scaled query of the current token, float32
        `[1, kv_heads, groups, head_dim]` (query head h = kv_head·groups + group)."""

    @abstractmethod
    def tail(self, layer_input: LayerInput, attn: torch.Tensor) -> torch.Tensor:
        """From the last layer's attention output (before `o_proj`) `[1, 1, heads·head_dim]` to the
        final-norm hidden state `[1, 1, hidden]`: o_proj, residual, MLP block, final norm."""

    @abstractmethod
    def lm_head_weight(self) -> torch.Tensor:
        """`[vocab, hidden]`: logits are `hidden @ weightᵀ` (no bias)."""
