"""NoWait (`vreason/nowait.py`): the banned set against a brute-force oracle (decode the text with
each candidate token appended and look for a listed word it completes), and a tiny `vreason
predict` run in which no output contains a listed word while the same run without NoWait does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vreason.config import DecodeConfig
from vreason.models.tiny import trained_path
from vreason.nowait import NOWAIT_WORDS, NoWaitLogitsProcessor, banned_token_ids, reflection_words
from vreason.sampling import TokenSampler


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained_path(), local_files_only=True)


def completes_word(tokenizer, ids: list[int], token: int) -> bool:
    """Oracle: appending `token` writes a letter run, ending inside the new token's text, that is
    a listed word (case-insensitive); a run that goes on past the token (a longer word) is not."""
    before = tokenizer.decode(ids, clean_up_tokenization_spaces=False) if ids else ""
    text = tokenizer.decode(ids + [token], clean_up_tokenization_spaces=False)
    if not text.startswith(before):
        return False
    words, i = [], 0
    lower = text.lower()
    while i < len(lower):
        if lower[i].isalpha():
            j = i
            while j < len(lower) and lower[j].isalpha():
                j += 1
            if j > len(before):  # the run ends in the new token's text
                words.append(lower[i:j])
            i = j
        else:
            i += 1
    return any(w in NOWAIT_WORDS for w in words)


def test_paper_set_spells_the_words_and_spares_letters(tokenizer):
    names = {tokenizer.decode([i]) for i in banned_token_ids(tokenizer)}
    assert {" Wait", "Hmm", " again", " check"} <= names
    assert not names & {"W", "A", " A", "ait", "B"}  # word pieces and answer letters stay allowed


def test_processor_bans_exactly_what_would_complete_a_word(tokenizer):
    processor = NoWaitLogitsProcessor(tokenizer)
    vocab = len(tokenizer)
    rng = np.random.default_rng(0)
    texts = ["So it moves left. W", "Let me look. Wai", "Hm", "It is at the top. ", "I count them ag", "x"]
    prefixes = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    prefixes += [rng.integers(0, vocab - 20, size=int(rng.integers(1, 20))).tolist() for _ in range(6)]
    for ids in prefixes:
        banned = processor(torch.tensor([ids]), torch.zeros(1, vocab))[0].isinf()
        expected = torch.tensor([completes_word(tokenizer, ids, t) for t in range(vocab)])
        assert torch.equal(banned, expected), tokenizer.decode(ids)


def test_sampler_applies_extra_processors_to_the_ids_it_is_given():
    seen = []

    def record(ids, scores):
        seen.append(ids.tolist())
        return scores.masked_fill(torch.arange(scores.shape[-1]) == 3, -float("inf"))

    sampler = TokenSampler(DecodeConfig(max_new_tokens=3), seeds=[0, 0], extra=[record])
    ids = torch.tensor([[7, 8], [9, 2]])
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0], [0.0, 6.0, 2.0, 5.0]])
    assert sampler(ids, logits).tolist() == [2, 1]  # row 0's argmax (3) is banned, row 1's is not
    assert seen == [[[7, 8], [9, 2]]]


@pytest.mark.slow
def test_predict_with_nowait_writes_no_listed_word(tmp_path):
    """The over-thinking model reflects under greedy decoding; with NoWait no output holds a listed
    word, decoded as a batch (greedy: the batch's own argmax path) and one sample at a time (sampled)."""
    from vreason.cli import main
    from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark
    from vreason.records import read_predictions

    bench = write_synthetic_benchmark(tmp_path / "data", n=8, seed=3, **TRAINED_CLIPS)
    outputs = {}
    for nowait, sample, batch in (("false", "false", 4), ("true", "false", 4), ("true", "true", 1)):
        out = tmp_path / f"nowait-{nowait}-{sample}"
        code = main(["predict", "--model.model_path", str(trained_path("overthink")), "--data.files",
                     json.dumps([str(bench)]), "--data.num_frames", "4", "--data.batch_size", str(batch),
                     "--model.controller.mode", "switch", "--model.decode.do_sample", sample,
                     "--model.decode.nowait", nowait, "--model.decode.max_new_tokens", "256",
                     "--model.plot_samples", "0", "--trainer.default_root_dir", str(out),
                     "--trainer.enable_progress_bar", "false"])
        assert code == 0
        outputs[nowait, sample] = [r.output for recs in read_predictions(out / "predictions").values() for r in recs]
    assert any(reflection_words(o) for o in outputs["false", "false"])  # the model writes them unprompted
    for key in (("true", "false"), ("true", "true")):
        assert len(outputs[key]) == 8 and not any(reflection_words(o) for o in outputs[key]), outputs[key]
