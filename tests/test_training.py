"""`vreason train-tiny`'s parts: chains of thought agree with the synthetic ground truth, training
items are the benchmark path's prompt plus the chain, and a few-step run is deterministic for a
seed and leaves a folder that loads and generates like any checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vreason.data import load_benchmark
from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark
from vreason.scoring import extract_answer, score
from vreason.training.chains import MAX_REFLECTIONS, REFLECTIONS, chain_of_thought

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vision_depth=1, vision_hidden_size=32,
             vision_intermediate_size=64)


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    path = write_synthetic_benchmark(tmp_path_factory.mktemp("synth"), n=16, seed=4, **TRAINED_CLIPS)
    return path, json.loads(path.read_text())


def test_chains_answer_with_the_solution_and_vary_in_length(entries):
    _, items = entries
    lengths = set()
    for e in items:
        for draw in range(6):
            text = chain_of_thought(e["kind"], e["facts"], np.random.default_rng([7, e["problem_id"], draw]))
            assert text.startswith("<think>") and text.count("</think><answer>") == 1 and text.endswith("</answer>")
            assert score(text, e["solution"], e["problem_type"]) == 1.0
            # The conclusion inside the thought names the same answer as the answer tag.
            assert f"So the answer is {extract_answer(e['solution'])}.</think>" in text
            assert sum(text.count(r) for r in REFLECTIONS) <= MAX_REFLECTIONS
            lengths.add(len(text))
    assert len(lengths) > len(items)  # the same question gets chains of different lengths


def test_count_chain_lists_every_shape(entries):
    _, items = entries
    for e in (e for e in items if e["kind"] == "count"):
        text = chain_of_thought("count", e["facts"], np.random.default_rng(0))
        assert text.count("I see a ") == e["facts"]["count"]


def test_training_items_are_the_benchmark_prompt_plus_the_chain(tmp_path):
    from transformers import AutoProcessor

    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.models.tiny import build_tiny_model
    from vreason.training.chains import corpus
    from vreason.training.data import IGNORE, ChainDataset, Collate, build_pool

    model = build_tiny_model(tmp_path / "m", bpe_vocab_size=1000, extra_corpus=tuple(corpus(per_kind=20)), **SMALL)
    clips = build_pool(tmp_path / "pool", n=4, seed=9, model_dir=model)
    tokenizer = AutoProcessor.from_pretrained(model).tokenizer
    data = ChainDataset(clips, tokenizer, length=8, seed=3)
    item = data[5]
    target = item["labels"][item["labels"] != IGNORE]
    prompt = item["input_ids"][: len(item["input_ids"]) - len(target)]
    assert tokenizer.decode(target[:-1]).startswith("<think>") and int(target[-1]) == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The pool draws its questions like the writer does for the same seed: the benchmark data
    # module, reading the written files, gives the same prompt and video grid, and frames that
    # differ only by where the codec split the clips.
    bench = write_synthetic_benchmark(tmp_path / "again", n=4, seed=9, **TRAINED_CLIPS)
    reference = BenchmarkDataModule(files=[str(bench)], model_path=str(model), num_frames=4).predict_dataset()
    for clip, ref, sample in zip(clips, reference, load_benchmark(bench)):
        assert clip["kind"] == sample.entry["kind"] and clip["facts"] == sample.entry["facts"]
        for key in ("input_ids", "video_grid_thw", "second_per_grid_ts"):
            assert torch.equal(clip["inputs"][key], ref["inputs"][key])
        diff = (clip["inputs"]["pixel_values_videos"] - ref["inputs"]["pixel_values_videos"]).abs()
        assert diff.mean() < 0.05
    assert torch.equal(prompt, clips[5 % 4]["inputs"]["input_ids"][0])
    batch = Collate(tokenizer.pad_token_id)([data[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values_videos"].shape[0] == 4 * clips[0]["inputs"]["pixel_values_videos"].shape[0]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


def test_a_short_run_is_deterministic_and_loads(tmp_path):
    from vreason.models import load_model
    from vreason.training.train_tiny import train_tiny

    runs = [train_tiny(tmp_path / name, seed=5, steps=3, pool=8, batch_size=4, threads=1, progress_bar=False, **SMALL)
            for name in ("a", "b")]
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    init = json.loads((tmp_path / "a" / "training.json").read_text())
    assert init["steps_done"] == 3 and init["final_loss"] > 0
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "a" / "tb").glob("events.out.tfevents.*"))
    model, processor = load_model(runs[0], device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert all(not p.requires_grad for p in model.parameters())
