"""Sampling draws from the right distribution: many seeded draws against the filtered
distribution computed by hand (plain Python, the filter rules written out), and a long sequence
of draws against `generate`'s (transformers' warpers, softmax, multinomial on the seeded global
RNG). A single draw can agree with any distribution that gives its token some mass."""
from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vreason.config import DecodeConfig
from vreason.sampling import TokenSampler

# Distinct logits (no ties, so every filter boundary is unambiguous).
LOGITS = [2.0, 1.7, 1.1, 0.9, 0.5, 0.2, -0.1, -0.4, -1.0, -1.5, -2.2, -3.0]
DRAWS = 40_000


def softmax(xs):
    m = max(x for x in xs if x is not None)
    e = [math.exp(x - m) if x is not None else 0.0 for x in xs]
    s = sum(e)
    return [v / s for v in e]


def filtered_distribution(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The sampling distribution by the rules: temperature divides; top-k keeps the k largest;
    top-p keeps the smallest set of largest tokens whose mass reaches top_p; min-p keeps tokens
    with probability ≥ min_p × the largest (each filter on the survivors of the previous one)."""
    z = [x / temperature for x in logits]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    if top_k:
        for i in order[top_k:]:
            z[i] = None
    if top_p < 1.0:
        p = softmax(z)
        mass, keep = 0.0, set()
        for i in order:
            if z[i] is None:
                continue
            keep.add(i)
            mass += p[i]
            if mass >= top_p:
                break
        z = [x if i in keep else None for i, x in enumerate(z)]
    if min_p > 0.0:
        p = softmax(z)
        top = max(p)
        z = [x if p[i] >= min_p * top else None for i, x in enumerate(z)]
    return softmax(z)


@pytest.mark.parametrize("settings", [
    dict(),
    dict(temperature=0.7, top_k=6),
    dict(temperature=1.3, top_p=0.8),
    dict(min_p=0.15),
    dict(temperature=0.6, top_k=8, top_p=0.9, min_p=0.05),
])
def test_draws_follow_the_filtered_distribution(settings):
    expected = filtered_distribution(LOGITS, **settings)
    sampler = TokenSampler(DecodeConfig(do_sample=True, **settings), seeds=range(DRAWS))
    # One batched draw: DRAWS independent rows (each its own seed) with the same logits.
    tokens = sampler(torch.zeros(DRAWS, 1, dtype=torch.long), torch.tensor(LOGITS).expand(DRAWS, -1))
    counts = torch.bincount(tokens, minlength=len(LOGITS)).tolist()
    for i, (count, p) in enumerate(zip(counts, expected)):
        if p == 0.0:
            assert count == 0, (i, settings)  # a filtered-out token is never drawn
        else:
            sigma = math.sqrt(p * (1 - p) / DRAWS)
            assert abs(count / DRAWS - p) <= 5 * sigma + 1 / DRAWS, (i, count / DRAWS, p, settings)
    # The settings above differ from plain softmax where a filter acts: the check can tell.
    if settings:
        plain = filtered_distribution(LOGITS)
        assert max(abs(a - b) for a, b in zip(expected, plain)) > 0.02


def hf_probs(logits, temperature, top_k, top_p, min_p):
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    procs.append(MinPLogitsWarper(min_p))
    return torch.softmax(procs(torch.zeros(1, 1, dtype=torch.long), logits.float()), -1)


def test_a_long_sequence_of_draws_is_generates_with_the_same_seed():
    logits = torch.randn(1, 400, generator=torch.Generator().manual_seed(2)) * 2
    settings = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02)
    sampler = TokenSampler(DecodeConfig(do_sample=True, **settings), seeds=[5])
    ours = [int(sampler(torch.zeros(1, 1, dtype=torch.long), logits)) for _ in range(200)]
    torch.manual_seed(5)
    probs = hf_probs(logits, **settings)
    theirs = [int(torch.multinomial(probs, 1)) for _ in range(200)]
    assert ours == theirs
    assert len(set(ours)) >= 5  # many different tokens: the draws really are random
