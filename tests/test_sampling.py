"""Decoding filters against transformers' logits warpers (the oracle), greedy and seeding."""
from __future__ import annotations

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
from vreason.sampling import TokenSampler, filter_logits, penalize_repetition


def hf_filter(scores, temperature, top_k, top_p, min_p):
    # The same order generate() builds them in (_get_logits_processor).
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    procs.append(MinPLogitsWarper(min_p))
    return procs(torch.zeros(scores.shape[0], 1, dtype=torch.long), scores)


@pytest.mark.parametrize(
    "temperature, top_k, top_p, min_p",
    [
        (1.0, 0, 1.0, 0.0),
        (0.7, 0, 1.0, 0.0),
        (1.0, 5, 1.0, 0.0),
        (1.0, 0, 0.9, 0.0),
        (1.0, 0, 1.0, 0.1),
        (0.6, 20, 0.8, 0.05),
        (1.3, 3, 0.5, 0.2),
        (1.0, 1, 1.0, 0.0),
        (1.0, 0, 0.01, 0.0),
        (0.5, 1000, 0.95, 0.9),
    ],
)
def test_filters_match_transformers_warpers(temperature, top_k, top_p, min_p):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 500, generator=g) * 3
    ours = filter_logits(scores.clone(), temperature, top_k, top_p, min_p)
    theirs = hf_filter(scores.clone(), temperature, top_k, top_p, min_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.equal(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])
    assert (~torch.isinf(ours)).any(-1).all()


def test_greedy_is_argmax_of_the_float32_copy():
    logits = torch.randn(1, 300, dtype=torch.bfloat16)
    logits[0, 17] = 50.0
    token = TokenSampler(DecodeConfig())(logits)
    assert token.tolist() == [17] and token.dtype == torch.int64
    assert logits.dtype == torch.bfloat16  # the caller's logits are not modified


def test_sampling_is_seeded_per_sampler_and_stays_in_the_kept_set():
    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(1))
    cfg = DecodeConfig(do_sample=True, top_k=10, seed=7)
    a = [int(TokenSampler(cfg)(logits)) for _ in range(3)]
    torch.manual_seed(123)  # the global RNG plays no part
    s1, s2 = TokenSampler(cfg), TokenSampler(cfg)
    seq1 = [int(s1(logits)) for _ in range(30)]
    seq2 = [int(s2(logits)) for _ in range(30)]
    assert seq1 == seq2 and seq1[0] == a[0]
    allowed = set(torch.topk(logits[0], 10).indices.tolist())
    assert set(seq1) <= allowed and len(set(seq1)) > 1
    other = TokenSampler(DecodeConfig(do_sample=True, top_k=10, seed=8))
    assert [int(other(logits)) for _ in range(30)] != seq1


def test_sampling_draws_like_generate_with_the_same_seed():
    # generate: float32 copy -> warpers -> softmax -> multinomial on the seeded global RNG.
    logits = torch.randn(1, 400, generator=torch.Generator().manual_seed(2))
    cfg = DecodeConfig(do_sample=True, temperature=0.8, top_p=0.9, min_p=0.02, seed=5)
    ours = [int(t) for t in (TokenSampler(cfg)(logits) for _ in range(1))]
    torch.manual_seed(5)
    probs = torch.softmax(hf_filter(logits.float(), 0.8, 0, 0.9, 0.02), -1)
    assert ours == torch.multinomial(probs, 1).squeeze(-1).tolist()


def test_repetition_penalty_matches_transformers_processor():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 300, generator=g) * 4
    ids = torch.tensor([[3, 17, 17, 250, 299, 0]])
    seen = torch.zeros(300, dtype=torch.bool)
    seen[ids[0]] = True
    for penalty in (0.7, 1.05, 2.0):
        expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
        assert torch.equal(penalize_repetition(scores, seen, penalty), expected)


def test_sampler_marks_chosen_tokens_as_seen():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    sampler = TokenSampler(DecodeConfig(repetition_penalty=4.0), prompt_ids=torch.tensor([[0]]), vocab_size=4)
    assert sampler(logits).item() == 1  # 5.0 beats 4.0 before 1 was seen
    assert sampler(logits).item() == 2  # now 5.0 / 4 < 4.0
    assert sampler.seen.tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        DecodeConfig(repetition_penalty=0.0)
