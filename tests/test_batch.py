"""Batches: the adapter's left-padded batch from per-sample processor outputs equals the
processor's own batched call (padding on the left), for videos of different sizes and frame
counts and for a batch mixing an image sample with video samples."""
from __future__ import annotations

import pytest
import torch

import vreason
from vreason.models import adapter_for
from vreason.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return vreason.load_model(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0), device="cpu")


def frames(seed, count, side):
    return torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def prompt(processor, kind, question):
    msgs = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


# (kind, seed, frame count, side, question): different prompt lengths, video sizes, frame counts.
SAMPLES = {
    "videos": [("video", 0, 4, 112, "Which direction does the square move?"), ("video", 1, 6, 84, "Why?"),
               ("video", 2, 2, 140, "What colour is the moving object in this short clip?")],
    "image and videos": [("video", 3, 4, 112, "Where?"), ("image", 4, 1, 112, "What is shown in this picture?"),
                         ("video", 5, 2, 56, "How many squares?")],
}


def processor_call(processor, samples, **kwargs):
    texts = [prompt(processor, kind, q) for kind, _, _, _, q in samples]
    videos = [frames(seed, n, side) for kind, seed, n, side, _ in samples if kind == "video"]
    images = [frames(seed, 1, side)[0] for kind, seed, n, side, _ in samples if kind == "image"]
    return dict(processor(text=texts, videos=videos or None, images=images or None, return_tensors="pt",
                          do_sample_frames=False, **kwargs))


@pytest.mark.parametrize("name", list(SAMPLES))
def test_collated_batch_equals_the_processors_left_padded_batch(tiny, name):
    model, processor = tiny
    adapter = adapter_for(model)
    samples = SAMPLES[name]
    singles = [processor_call(processor, [s]) for s in samples]
    expected = processor_call(processor, samples, padding=True, padding_side="left")
    got = adapter.collate_inputs(singles)
    assert sorted(got) == sorted(expected)
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert len(set(lengths)) == len(lengths)  # the rows really need padding
    for key in expected:
        assert torch.equal(got[key], expected[key].to(got[key].dtype)), key
    # Padding is on the left, with the model's pad id, and masked.
    width = max(lengths)
    for row, length in enumerate(lengths):
        assert got["attention_mask"][row].tolist() == [0] * (width - length) + [1] * length
        assert (got["input_ids"][row, : width - length] == adapter.pad_token_id()).all()


def test_collate_rebuilds_missing_token_types_and_refuses_an_empty_batch(tiny):
    model, processor = tiny
    adapter = adapter_for(model)
    singles = [processor_call(processor, [s]) for s in SAMPLES["videos"][:2]]
    without = [{k: v for k, v in s.items() if k != "mm_token_type_ids"} for s in singles]
    assert torch.equal(adapter.collate_inputs(without)["mm_token_type_ids"],
                       adapter.collate_inputs(singles)["mm_token_type_ids"])
    with pytest.raises(ValueError, match="empty batch"):
        adapter.collate_inputs([])


# ---- generate_batch: every row equals its sample generated alone ---------------------------------

from vreason import ControllerConfig, DecodeConfig, VReasonGenerator  # noqa: E402
from test_generation import models, qwen2_vl  # noqa: E402,F401  (fixtures: a tiny Qwen2-VL)

TRACES = ("entropy", "entropy_after", "ema", "alpha")
# Three videos of different sizes and frame counts (so different prompt lengths and video token
# counts) and an image sample: the rows need padding and own different numbers of visual tokens.
MIXED = SAMPLES["videos"] + SAMPLES["image and videos"][1:2]


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny64"), seed=0)
    return vreason.load_model(path, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def singles64(tiny64):
    return [processor_call(tiny64[1], [s]) for s in MIXED]


def assert_rows_equal_alone(batch, alone, tol):
    assert len(batch) == len(alone)
    for row, (b, a) in enumerate(zip(batch, alone)):
        assert torch.equal(b.sequences, a.sequences), row
        for name in TRACES:
            assert torch.allclose(getattr(b, name).double(), getattr(a, name).double(), atol=tol, rtol=0), (row, name)
        assert torch.equal(b.updated, a.updated), row
        for name in ("num_new_tokens", "prompt_length", "stop_reason", "skipped_rounds", "num_video_tokens",
                     "num_video_tokens_kept", "lite_layers", "num_layers"):
            assert getattr(b, name) == getattr(a, name), (row, name)


CASES = {
    "off": dict(mode="off"),
    "switch k2": dict(mode="switch", every_k=2, lr=0.05),
    "minimize k1 steps2 lite": dict(mode="minimize", every_k=1, steps=2, lr=0.1, prune_ratio=0.5),
    "maximize k3 lite sampled": dict(mode="maximize", every_k=3, lr=0.05, prune_ratio=0.5, sample=True),
    "switch k1 steps2 sampled penalty": dict(mode="switch", every_k=1, steps=2, lr=0.1, sample=True, penalty=1.3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_row_equals_its_sample_alone_float64(tiny64, singles64, case):
    model, _ = tiny64
    cfg = dict(CASES[case])
    sample, penalty = cfg.pop("sample", False), cfg.pop("penalty", 1.0)
    decode = DecodeConfig(max_new_tokens=8, do_sample=sample, temperature=0.9, top_k=40, top_p=0.95, seed=7,
                          repetition_penalty=penalty)
    gen = VReasonGenerator(model, ControllerConfig(**cfg), decode)
    seeds = [101, 202, 303, 404] if sample else None
    batch = gen.generate_samples(singles64, seeds=seeds)
    alone = [gen.generate(seed=None if seeds is None else seeds[i], **s) for i, s in enumerate(singles64)]
    assert_rows_equal_alone(batch, alone, 1e-6)
    if cfg["mode"] != "off":
        assert all(r.updated.any() and not torch.equal(r.entropy, r.entropy_after) for r in batch)  # rounds ran
    if cfg.get("prune_ratio"):
        assert all(r.num_video_tokens_kept < r.num_video_tokens for r in batch)


def test_rows_that_stop_early_leave_the_batch(tiny64, singles64):
    """One row stops at its first token, another mid-way (eos ids taken from their runs alone):
    the others go on unchanged and the decode forwards shrink to the rows still running."""
    model, _ = tiny64
    controller = ControllerConfig(mode="switch", every_k=1, lr=0.1, prune_ratio=0.5)
    gen = VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=8))
    free = [gen.generate(**s) for s in singles64]
    firsts = [r.sequences[0, r.prompt_length].item() for r in free]
    new1 = free[1].sequences[0, free[1].prompt_length:].tolist()
    stop_ids = [firsts[0]] + [t for t in new1[3:5] if t not in firsts]
    assert stop_ids[1:], "the test needs a mid-way stop token"
    saved = model.generation_config.eos_token_id
    rows_seen = []
    handle = model.register_forward_pre_hook(lambda m, a, k: rows_seen.append(k["input_ids"].shape[0]), with_kwargs=True)
    model.generation_config.eos_token_id = list(saved) + stop_ids
    try:
        gen = VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=8))
        alone = [gen.generate(**s) for s in singles64]
        rows_seen.clear()
        batch = gen.generate_samples(singles64)
    finally:
        model.generation_config.eos_token_id = saved
        handle.remove()
    assert_rows_equal_alone(batch, alone, 1e-6)
    assert batch[0].num_new_tokens == 1 and batch[0].stop_reason == "eos"
    assert any(r.stop_reason == "eos" and 1 < r.num_new_tokens < 8 for r in batch[1:])
    # Prefill, Lite's re-run, then one forward per token: B rows, then fewer as rows stop.
    expected = [4, 4] + [4 - sum(r.num_new_tokens <= k for r in batch) for k in range(1, max(r.num_new_tokens for r in batch))]
    assert rows_seen == expected


def test_the_time_budget_stops_every_row(tiny64, singles64):
    model, _ = tiny64
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.1), DecodeConfig(max_new_tokens=8),
                           max_seconds=1e-9)
    batch = gen.generate_samples(singles64)
    assert [(r.stop_reason, r.num_new_tokens) for r in batch] == [("time", 1)] * len(singles64)
    assert_rows_equal_alone(batch, [gen.generate(**s) for s in singles64], 1e-6)


def test_batch_of_one_and_image_only_batch(tiny64):
    model, processor = tiny64
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.1, prune_ratio=0.5),
                           DecodeConfig(max_new_tokens=6))
    one = processor_call(processor, MIXED[:1])
    assert_rows_equal_alone(gen.generate_batch(**one), [gen.generate(**one)], 1e-6)
    images = [("image", 4, 1, 112, "What is shown in this picture?"), ("image", 6, 1, 84, "Colour?")]
    singles = [processor_call(processor, [s]) for s in images]
    batch = gen.generate_batch(**processor_call(processor, images, padding=True, padding_side="left"))
    assert_rows_equal_alone(batch, [gen.generate(**s) for s in singles], 1e-6)


def test_off_batch_equals_generate_on_the_padded_batch(tiny):
    model, processor = tiny
    batch = processor_call(processor, SAMPLES["image and videos"], padding=True, padding_side="left")
    expected = model.generate(**batch, do_sample=False, max_new_tokens=8)
    results = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=8)).generate_batch(**batch)
    width = batch["input_ids"].shape[1]
    for row, res in enumerate(results):
        assert res.stop_reason == "max_new_tokens"
        assert torch.equal(res.sequences[0, res.prompt_length:], expected[row, width:])
        assert torch.equal(res.sequences[0, : res.prompt_length], batch["input_ids"][row, width - res.prompt_length:])


def test_float32_rows_equal_alone_within_float32_tolerance(tiny):
    model, processor = tiny
    singles = [processor_call(processor, [s]) for s in MIXED]
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.05, prune_ratio=0.5),
                           DecodeConfig(max_new_tokens=6))
    assert_rows_equal_alone(gen.generate_samples(singles), [gen.generate(**s) for s in singles], 1e-4)


def test_bad_batches_fail_clearly(tiny):
    model, processor = tiny
    adapter = adapter_for(model)
    singles = [processor_call(processor, [s]) for s in SAMPLES["image and videos"]]
    gen = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=2))
    batch = adapter.collate_inputs(singles)
    text = dict(processor(text=["<|im_start|>user\nhello<|im_end|>\n"], return_tensors="pt"))
    with pytest.raises(ValueError, match=r"batch row\(s\) \[2\] have no video and no image tokens"):
        gen.generate_batch(**adapter.collate_inputs(singles[:2] + [text]))
    right = dict(batch, attention_mask=batch["attention_mask"].flip(-1))
    with pytest.raises(ValueError, match="left padding"):
        gen.generate_batch(**right)
    with pytest.raises(ValueError, match="2 seeds for a batch of 3 samples"):
        gen.generate_batch(seeds=[1, 2], **batch)


# ---- predict_step with --data.batch_size B --------------------------------------------------------

N_GOOD = 4


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from vreason.data.synthetic import write_synthetic_benchmark

    root = tmp_path_factory.mktemp("bench")
    model = build_tiny_model(root / "model")
    return {"model": str(model), "bench": str(write_synthetic_benchmark(root / "data", n=N_GOOD, seed=1, num_frames=8,
                                                                        with_errors=True))}


def predict(bench, root, batch_size, mode="switch", **decode):
    import json

    from vreason.cli import eval_trainer
    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.module import VReasonModule

    module = VReasonModule(bench["model"], controller=ControllerConfig(mode=mode, every_k=1, prune_ratio=0.5),
                           decode=DecodeConfig(max_new_tokens=8, **decode), plot_samples=0)
    data = BenchmarkDataModule(files=[bench["bench"]], model_path=bench["model"], num_frames=4,
                               max_pixels=64 * 28 * 28, batch_size=batch_size)
    eval_trainer(root, enable_progress_bar=False).predict(module, datamodule=data, return_predictions=False)
    lines = (root / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()
    return {r["key"]: r for r in map(json.loads, lines)}


def assert_same_records(got, expected):
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        for field in ("output", "error", "num_new_tokens", "stop_reason", "prompt_length", "num_video_tokens_kept",
                      "updated", "alpha", "skipped_rounds", "reward"):
            assert have[field] == want[field], (key, field)
        for field in ("entropy", "entropy_after", "ema"):
            assert have[field] == pytest.approx(want[field], abs=2e-5), (key, field)


def test_predict_with_a_batch_size_gives_the_records_of_batch_size_one(bench, tmp_path, monkeypatch):
    """Sampled, so each sample's seed matters; the benchmark's broken entries sit in the batches
    beside good ones and cost only themselves."""
    calls = []
    real = VReasonGenerator.generate_samples

    def spy(self, samples, seeds=None):
        calls.append(len(samples))
        return real(self, samples, seeds=seeds)

    monkeypatch.setattr(VReasonGenerator, "generate_samples", spy)
    one = predict(bench, tmp_path / "one", 1, do_sample=True, seed=3)
    assert calls == [1] * N_GOOD  # a sample alone is a batch of one
    calls.clear()
    five = predict(bench, tmp_path / "five", 5, do_sample=True, seed=3)  # 4 good + 1 broken, then 2 broken
    assert calls == [N_GOOD]  # the good samples of the first batch were generated together
    assert_same_records(five, one)
    assert sum(bool(r["error"]) for r in five.values()) == len(five) - N_GOOD


def test_a_failing_batch_falls_back_to_its_samples_one_by_one(bench, tmp_path, monkeypatch):
    real = VReasonGenerator.generate_samples

    def broken(self, samples, seeds=None):
        if len(samples) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory while decoding the batch")
        return real(self, samples, seeds=seeds)

    one = predict(bench, tmp_path / "one", 1)
    monkeypatch.setattr(VReasonGenerator, "generate_samples", broken)
    fell_back = predict(bench, tmp_path / "fallback", 4)
    assert_same_records(fell_back, one)
    assert sum(not r["error"] for r in fell_back.values()) == N_GOOD


@pytest.mark.parametrize("family", ["qwen3_vl", "llava_onevision"])
def test_families_without_batching_run_a_batch_one_sample_at_a_time(family, tmp_path):
    """A family without a batch layout (`batch_keys` None; every registered family has one, so
    the generator's adapter has it taken away) runs `generate_samples` as batches of one through
    the same engine, each row identical to the sample alone; a batch of one row is any family's;
    several rows at once are refused in one line."""
    from test_families import family_inputs
    from vreason.models.tiny_families import TINY_BUILDERS

    model, processor = vreason.load_model(TINY_BUILDERS[family](tmp_path / family, seed=7), dtype="float32", device="cpu")
    singles = [family_inputs(processor, seed=1, frames=4), family_inputs(processor, seed=2, frames=6)]
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.05), DecodeConfig(max_new_tokens=4))
    adapter = gen.adapter
    assert adapter.batch_keys is not None
    adapter.batch_keys = None
    with pytest.raises(ValueError, match="decodes one sample at a time"):
        gen.generate_batch(**type(adapter)(model).collate_inputs(singles))
    alone = [gen.generate(**s) for s in singles]
    assert_rows_equal_alone(gen.generate_samples(singles), alone, 0.0)
    assert_rows_equal_alone(gen.generate_batch(**singles[0]), alone[:1], 0.0)
    with pytest.raises(ValueError, match="decodes one sample at a time"):
        adapter.collate_inputs(singles)


def test_qwen2_vl_batches_too(qwen2_vl):
    model, processor = qwen2_vl
    singles = [processor_call(processor, [s]) for s in MIXED[:3]]
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.05, prune_ratio=0.5),
                           DecodeConfig(max_new_tokens=5))
    assert adapter_for(model).batch_keys is not None
    assert_rows_equal_alone(gen.generate_samples(singles), [gen.generate(**s) for s in singles], 1e-4)
