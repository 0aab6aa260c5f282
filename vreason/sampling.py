"""Choosing the next token: repetition penalty, then greedy, or sampling with temperature →
top-k → top-p → min-p.

The filters follow transformers' logits warpers exactly (same order as `generate` applies them,
same tie and boundary rules, `min_tokens_to_keep=1`), and the logits are first copied to
float32 as `generate` does, so that `mode="off"` reproduces `model.generate` token for token.
Sampling draws from a `torch.Generator` seeded per sample from `DecodeConfig.seed`: a sample's
tokens do not depend on what ran before it (another sample, another process's RNG use).
Extra transformers `LogitsProcessor`s (NoWait, `vreason/nowait.py`) apply after the repetition
penalty and before the choice, as `generate` applies a user's processors after its own.
"""
from __future__ import annotations

import torch

from typing import Callable, Sequence

from vreason.config import DecodeConfig

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["TokenSampler", "filter_logits", "penalize_repetition"]


def penalize_repetition(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty over a `[vocab]` mask of the tokens seen so far: their
    scores are divided by `penalty` when positive and multiplied by it otherwise."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p to `[batch, vocab]` scores; removed entries
    become `-inf`. A filter at its neutral value (1.0, 0, 1.0, 0.0) is skipped, as in `generate`."""
    scores = logits
    if temperature != 1.0:
        scores = scores / temperature
    if top_k > 0:
        k = min(top_k, scores.size(-1))
        kth_best = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth_best, -float("inf"))
    if top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cumulative <= (1 - top_p)
        sorted_remove[..., -1:] = False  # the most likely token always survives
        remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
        scores = scores.masked_fill(remove, -float("inf"))
    if min_p > 0.0:
        probs = torch.softmax(scores, dim=-1)
        remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
        remove.scatter_(-1, torch.topk(probs, 1, dim=-1).indices, False)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


class TokenSampler:
    """`sampler(logits[batch, vocab]) -> LongTensor[batch]`; one instance per sample.

    With a repetition penalty the sampler keeps a `[vocab]` mask of the tokens seen (the prompt's,
    then each chosen token's, marked on the device without a host sync), rather than the growing
    sequence: the penalty depends only on which tokens occurred.

    logits_processors: `processor(input_ids[1, n], scores[1, V]) -> scores` each, in order; the
    sampler then keeps the sample's ids (prompt, then each chosen token) in a preallocated
    device buffer and hands them a view, so they cost no host sync either.
    """

    def __init__(self, decode: DecodeConfig, device: torch.device | str = "cpu",
                 prompt_ids: torch.Tensor | None = None, vocab_size: int | None = None,
                 logits_processors: Sequence[LogitsProcessor] = ()) -> None:
        self.decode = decode
        self.processors = list(logits_processors)
        self.ids: torch.Tensor | None = None
        if self.processors:
            if prompt_ids is None:
                raise ValueError("logits processors need the prompt ids")
            prompt = prompt_ids.reshape(-1)
            self.length = prompt.numel()
            self.ids = torch.zeros(1, self.length + decode.max_new_tokens, dtype=torch.long, device=torch.device(device))
            self.ids[0, : self.length] = prompt.to(self.ids.device)
        self.generator: torch.Generator | None = None
        if decode.do_sample:
            self.generator = torch.Generator(device=torch.device(device))
            self.generator.manual_seed(int(decode.seed))
        self.seen: torch.Tensor | None = None
        if decode.repetition_penalty != 1.0:
            if prompt_ids is None or vocab_size is None:
                raise ValueError("a repetition penalty needs the prompt ids and the vocabulary size")
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=torch.device(device))
            self.seen[prompt_ids.reshape(-1).to(self.seen.device)] = True

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        scores = logits.to(dtype=torch.float32, copy=True)
        if self.seen is not None:
            scores = penalize_repetition(scores, self.seen, self.decode.repetition_penalty)
        for processor in self.processors:
            scores = processor(self.ids[:, : self.length], scores)
        token = self._choose(scores)
        if self.seen is not None:
            self.seen.index_fill_(0, token.reshape(-1), True)
        if self.ids is not None and self.length < self.ids.shape[1]:
            self.ids[0, self.length] = token.reshape(-1)[0]
            self.length += 1
        return token

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.decode.do_sample:
            return torch.argmax(scores, dim=-1)
        d = self.decode
        scores = filter_logits(scores, d.temperature, d.top_k, d.top_p, d.min_p)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(-1)
