"""Choosing the next token of every row of a batch: transformers' logits processors, then greedy
(argmax) or a draw.

The processors are transformers' own (`LogitsProcessorList`), built from `DecodeConfig` in the
order `generate` builds them: the repetition penalty (greedy included), then, when sampling,
temperature → top-H → top-k → top-p → min-p; any extra processors a caller gives come last. The
logits are first copied to float32 as `generate` does, so `mode="off"` reproduces `model.generate`
token for token. One list runs over the whole batch (each transformers processor treats rows
independently); draws come from one `torch.Generator` per row, seeded per sample, so a sample's
tokens depend neither on its batch nor on what ran before it (another sample, another process's RNG
use). Greedy decoding is the argmax of the same processed scores: one rule, here only.

Top-H (arXiv 2509.02510, "Top-H Decoding: Adapting the Creativity and Coherence with Bounded
Entropy in Text Generation"): `top_h` keeps the most likely tokens while the entropy of the kept,
renormalised distribution stays within `top_h` times the full distribution's
(`transformers.TopHLogitsWarper`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vreason.config import DecodeConfig

__all__ = ["TokenSampler", "logits_processors"]


def logits_processors(decode: DecodeConfig, extra: Sequence[LogitsProcessor] = ()) -> LogitsProcessorList:
    """transformers' processors for `decode`, in `generate`'s order (a filter at its neutral value
    is left out, as `generate` leaves it out), then `extra`."""
    processors = LogitsProcessorList()
    if decode.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=decode.repetition_penalty))
    if decode.do_sample:
        if decode.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(decode.temperature))
        if decode.top_h is not None:
            processors.append(TopHLogitsWarper(top_h=decode.top_h))
        if decode.top_k > 0:
            processors.append(TopKLogitsWarper(top_k=decode.top_k))
        if decode.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=decode.top_p))
        if decode.min_p > 0.0:
            processors.append(MinPLogitsWarper(min_p=decode.min_p))
    processors.extend(extra)
    return processors


class TokenSampler:
    """`sampler(input_ids[B, seq], logits[B, vocab]) -> LongTensor[B]` for a batch of samples.

    input_ids: each row's tokens so far (prompt, then the generated ones), what the processors
    read (the repetition penalty: which tokens occurred). seeds: one per row (sampling only);
    `keep(rows)` drops the rows of samples that left the batch.
    """

    def __init__(self, decode: DecodeConfig, seeds: Sequence[int], device: torch.device | str = "cpu",
                 extra: Sequence[LogitsProcessor] = ()) -> None:
        self.processors = logits_processors(decode, extra)
        self.generators: list[torch.Generator] | None = None
        if decode.do_sample:
            self.generators = [torch.Generator(device=torch.device(device)).manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        scores = self.processors(input_ids, logits.to(dtype=torch.float32, copy=True))
        if self.generators is None:
            return torch.argmax(scores, dim=-1)
        probs = torch.softmax(scores, dim=-1)
        return torch.cat([torch.multinomial(probs[row : row + 1], num_samples=1, generator=generator)
                          for row, generator in enumerate(self.generators)]).view(-1)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep the generators of these rows only, in this order."""
        if self.generators is not None:
            self.generators = [self.generators[row] for row in rows]
