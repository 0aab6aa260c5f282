"""Decoding through transformers' logits processors: the list `DecodeConfig` builds against the
filter rules written out in plain torch (the oracle) and against transformers' processors built in
`generate`'s order; top-H; greedy; per-row seeding; extra processors."""
from __future__ import annotations

import math

import pytest
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
from vreason.sampling import TokenSampler, logits_processors


def oracle(scores, ids, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty=1.0):
    """The rules by hand: the penalty divides a seen token's positive score and multiplies its
    negative one; temperature divides; top-k keeps the k best; top-p keeps the smallest set of
    best tokens reaching mass top_p (the best always); min-p keeps p ≥ min_p · p_max."""
    scores = scores.clone()
    for row in range(scores.shape[0]):
        for token in set(ids[row].tolist()):
            s = scores[row, token]
            scores[row, token] = s * penalty if s < 0 else s / penalty
    scores = scores / temperature if temperature != 1.0 else scores
    if top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[..., -1] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), -math.inf)
    if min_p > 0.0:
        probs = scores.softmax(-1)
        remove = probs < min_p * probs.amax(-1, keepdim=True)
        remove.scatter_(-1, probs.argmax(-1, keepdim=True), False)
        scores = scores.masked_fill(remove, -math.inf)
    return scores


def generate_order(temperature, top_k, top_p, min_p, penalty):
    """transformers' processors in the order `generate` builds them (`_get_logits_processor`)."""
    procs = LogitsProcessorList()
    if penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty))
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    if min_p:
        procs.append(MinPLogitsWarper(min_p))
    return procs


SETTINGS = [(1.0, 0, 1.0, 0.0, 1.0), (0.7, 0, 1.0, 0.0, 1.0), (1.0, 5, 1.0, 0.0, 1.0), (1.0, 0, 0.9, 0.0, 1.0),
            (1.0, 0, 1.0, 0.1, 1.0), (1.0, 0, 1.0, 0.0, 1.3), (0.6, 20, 0.8, 0.05, 1.0), (1.3, 3, 0.5, 0.2, 0.8),
            (1.0, 1, 1.0, 0.0, 1.0), (1.0, 0, 0.01, 0.0, 1.0), (0.5, 1000, 0.95, 0.9, 2.0)]


@pytest.mark.parametrize("temperature, top_k, top_p, min_p, penalty", SETTINGS)
def test_processors_follow_the_rules_and_generates_order(temperature, top_k, top_p, min_p, penalty):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 500, generator=g) * 3
    ids = torch.randint(0, 500, (3, 40), generator=g)
    decode = DecodeConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repetition_penalty=penalty)
    ours = logits_processors(decode)(ids, scores.clone())
    for want in (oracle(scores, ids, temperature, top_k, top_p, min_p, penalty),
                 generate_order(temperature, top_k, top_p, min_p, penalty)(ids, scores.clone())):
        assert torch.equal(torch.isinf(ours), torch.isinf(want))
        assert torch.allclose(ours[~torch.isinf(ours)], want[~torch.isinf(want)], rtol=1e-6, atol=0)
    assert (~torch.isinf(ours)).any(-1).all()
    # Greedy decoding applies the penalty only (transformers' warpers are sampling's).
    greedy = logits_processors(DecodeConfig(temperature=temperature, top_k=top_k, repetition_penalty=penalty))
    assert torch.equal(greedy(ids, scores.clone()), oracle(scores, ids, penalty=penalty))


def top_h_oracle(scores, top_h, top_n=100):
    """Top-H by hand (arXiv 2509.02510, transformers' variant over the top_n best): keep the best
    tokens, in order, while the cumulated −p log p of the top_n distribution stays ≤ top_h · its
    entropy (the best always)."""
    out = torch.full_like(scores, -math.inf)
    for row in range(scores.shape[0]):
        best, index = torch.topk(scores[row].double(), top_n)
        p = torch.softmax(best, -1)
        terms = -(p * p.log())
        tau, total = top_h * float(terms.sum()), 0.0
        for j in range(top_n):
            total += float(terms[j])
            if j > 0 and total > tau:
                break
            out[row, index[j]] = scores[row, index[j]]
    return out


@pytest.mark.parametrize("top_h", [0.2, 0.5, 0.9])
def test_top_h_keeps_tokens_within_the_entropy_bound(top_h):
    scores = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)) * 2
    ours = logits_processors(DecodeConfig(do_sample=True, top_h=top_h))(torch.zeros(4, 1, dtype=torch.long), scores)
    want = top_h_oracle(scores, top_h)
    assert torch.equal(torch.isinf(ours), torch.isinf(want)) and torch.equal(ours[~torch.isinf(ours)], want[~torch.isinf(want)])
    assert (~torch.isinf(ours)).sum() > 4  # more than the best token of each row: the bound is active
    assert any(isinstance(p, TopHLogitsWarper) for p in logits_processors(DecodeConfig(do_sample=True, top_h=top_h)))
    with pytest.raises(ValueError, match="top_h"):
        DecodeConfig(top_h=0.0)


def test_top_h_with_a_tiny_threshold_is_greedy():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 700, generator=g) * 3
    sampler = TokenSampler(DecodeConfig(do_sample=True, top_h=1e-6, temperature=1.5), seeds=range(5))
    ids = torch.zeros(5, 1, dtype=torch.long)
    for _ in range(20):
        assert torch.equal(sampler(ids, logits), logits.argmax(-1))


def test_greedy_is_argmax_of_the_float32_copy():
    logits = torch.randn(2, 300, dtype=torch.bfloat16)
    logits[0, 17], logits[1, 5] = 50.0, 60.0
    token = TokenSampler(DecodeConfig(), seeds=[0, 0])(torch.zeros(2, 1, dtype=torch.long), logits)
    assert token.tolist() == [17, 5] and token.dtype == torch.int64
    assert logits.dtype == torch.bfloat16  # the caller's logits are not modified


def test_each_row_draws_from_its_own_seed_and_stays_in_the_kept_set():
    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(1))
    cfg = DecodeConfig(do_sample=True, top_k=10)
    ids = torch.zeros(1, 1, dtype=torch.long)
    alone = {seed: [int(s(ids, logits)) for s in [TokenSampler(cfg, seeds=[seed])] for _ in range(30)] for seed in (7, 8, 9)}
    torch.manual_seed(123)  # the global RNG plays no part
    batch = TokenSampler(cfg, seeds=[7, 8, 9])
    rows = [batch(ids.expand(3, 1), logits.expand(3, -1)).tolist() for _ in range(30)]
    for row, seed in enumerate((7, 8, 9)):
        assert [r[row] for r in rows] == alone[seed]
    assert alone[7] != alone[8]
    allowed = set(torch.topk(logits[0], 10).indices.tolist())
    assert set(alone[7]) <= allowed and len(set(alone[7])) > 1
    batch.keep([2])  # a row leaving the batch takes its generator with it
    fresh = TokenSampler(cfg, seeds=[9])
    for _ in range(30):
        fresh(ids, logits)
    assert batch(ids, logits).tolist() == fresh(ids, logits).tolist()


def test_sampling_draws_like_generate_with_the_same_seed():
    # generate: float32 copy -> processors -> softmax -> multinomial on the seeded global RNG.
    logits = torch.randn(1, 400, generator=torch.Generator().manual_seed(2))
    cfg = DecodeConfig(do_sample=True, temperature=0.8, top_p=0.9, min_p=0.02, seed=5)
    ours = TokenSampler(cfg, seeds=[5])(torch.zeros(1, 1, dtype=torch.long), logits).tolist()
    torch.manual_seed(5)
    probs = torch.softmax(generate_order(0.8, 0, 0.9, 0.02, 1.0)(None, logits.float()), -1)
    assert ours == torch.multinomial(probs, 1).squeeze(-1).tolist()


def test_repetition_penalty_reads_the_tokens_so_far_and_extra_processors_come_last():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    sampler = TokenSampler(DecodeConfig(repetition_penalty=4.0), seeds=[0])
    assert sampler(torch.tensor([[0]]), logits).item() == 1  # 5.0 beats 4.0 before 1 was seen
    assert sampler(torch.tensor([[0, 1]]), logits).item() == 2  # now 5.0 / 4 < 4.0

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.index_fill(-1, torch.tensor([2]), -math.inf)

    banned = TokenSampler(DecodeConfig(repetition_penalty=4.0), seeds=[0], extra=[Ban()])
    assert isinstance(banned.processors[-1], Ban)
    assert banned(torch.tensor([[0, 1]]), logits).item() == 1  # 2 banned: 1.25 beats 0.0
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        DecodeConfig(repetition_penalty=0.0)
