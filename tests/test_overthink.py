"""The `overthink` recipe's chains (`vreason/training/overthink.py`): they answer with the solution,
reflect most of the time exactly where the clip is hard (judged here from the writer's own
ground truth), mostly without changing the claim, are longer than the default chains, and are
fixed by their random stream."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark
from vreason.scoring import extract_answer, score
from vreason.training.chains import chain_of_thought
from vreason.training.overthink import overthink_chain

REFLECT = re.compile(r"\. (Wait|Hmm),")


def hard(entry: dict) -> bool:
    """The clips the recipe calls ambiguous, restated from the synthetic facts."""
    f = entry["facts"]
    if entry["kind"] == "count":
        return f["count"] >= 3
    if entry["kind"] == "distance":
        return True
    return entry["kind"] == "direction" and f["distance"] < 20


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    path = write_synthetic_benchmark(tmp_path_factory.mktemp("synth"), n=40, seed=4, **TRAINED_CLIPS)
    return json.loads(path.read_text())


def test_chains_answer_with_the_solution(entries):
    for e in entries:
        for draw in range(5):
            text = overthink_chain(e["kind"], e["facts"], np.random.default_rng([7, e["problem_id"], draw]))
            assert score(text, e["solution"], e["problem_type"]) == 1.0
            assert f"So the answer is {extract_answer(e['solution'])}.</think>" in text


def test_reflects_mostly_on_hard_clips_and_mostly_needlessly(entries):
    first = {True: [], False: []}
    changed = []
    for e in entries:
        for draw in range(40):
            text = overthink_chain(e["kind"], e["facts"], np.random.default_rng([1, e["problem_id"], draw]))
            first[hard(e)].append(bool(REFLECT.search(text)))
            if REFLECT.search(text):
                changed.append("I may have missed one" in text)
    assert np.mean(first[True]) > 0.7 and np.mean(first[False]) < 0.3, {k: np.mean(v) for k, v in first.items()}
    assert sum(hard(e) for e in entries) / len(entries) >= 0.35  # a greedy decoder reflects on these
    assert 0 < np.mean(changed) < 0.15  # a few reflections correct a miscount; most repeat the claim


def test_longer_than_default_and_fixed_by_the_stream(entries):
    mine = [overthink_chain(e["kind"], e["facts"], np.random.default_rng([2, i])) for i, e in enumerate(entries)]
    default = [chain_of_thought(e["kind"], e["facts"], np.random.default_rng([2, i])) for i, e in enumerate(entries)]
    assert np.mean([len(t) for t in mine]) > 1.3 * np.mean([len(t) for t in default])
    again = [overthink_chain(e["kind"], e["facts"], np.random.default_rng([2, i])) for i, e in enumerate(entries)]
    assert again == mine


def test_trained_path_names_the_recipe():
    from vreason.models.tiny import trained_path

    assert trained_path().name == "trained" and trained_path("overthink").name == "trained_overthink"
    with pytest.raises(ValueError, match="recipe"):
        trained_path("nope")


def test_a_short_overthink_run_is_deterministic_and_starts_from_the_shipped_model(tmp_path):
    import torch
    from safetensors.torch import load_file

    from vreason.models.tiny import trained_path
    from vreason.training.train_tiny import train_tiny

    runs = [train_tiny(tmp_path / name, seed=5, steps=2, pool=4, batch_size=2, progress_bar=False, recipe="overthink")
            for name in ("a", "b")]
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in a.values() if v.is_floating_point())  # the shipped storage
    start = load_file(str(trained_path() / "model.safetensors"))
    assert a.keys() == start.keys()  # the default model's weights and shapes, fine-tuned
    assert json.loads((tmp_path / "a" / "training.json").read_text())["recipe"] == "overthink"
    with pytest.raises(ValueError, match="recipe"):
        train_tiny(tmp_path / "c", steps=1, recipe="nope")
