"""Every family decodes a left-padded batch at once, and each row is its sample generated alone.

Per family (Qwen3-VL dense and MoE, Qwen3.5 dense and MoE, LLaVA-OneVision, InternVL), on tiny
float64 checkpoints: three samples with prompts of different lengths and videos of different frame
counts and resolutions; `generate_samples` (one batch) against `generate` on each sample (the
oracle), in `off`, `switch` and `switch` with Lite; the language model runs once per step for the
whole batch; `collate_inputs` equals the family's processor called on the samples together
(`padding_side="left"`) wherever that processor can batch them.

The Qwen3.5 checkpoint interleaves its layers (linear, full, linear, full) so that the padded
positions' outputs of a full-attention layer reach a recurrent layer: transformers must keep
them out of its state."""
from __future__ import annotations

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.models import adapter_for
from vreason.models.tiny_families import TINY_BUILDERS

FAMILIES = ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "llava_onevision", "internvl"]
HYBRID = dict(layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"])
FPS = 8.0
# (seed, frames, side, question): different prompt lengths, frame counts and resolutions.
SAMPLES = [(0, 4, 112, "Which direction does the square move?"), (1, 6, 84, "Why?"),
           (2, 2, 140, "What colour is the moving object in this short clip, and where does it go?")]
# The processors of LLaVA-OneVision and InternVL stack a batch's videos: one frame count.
SAME_FRAMES = [(seed, 4, side, q) for seed, _, side, q in SAMPLES]
TRACES = ("entropy", "entropy_after", "ema", "alpha")
CASES = {"off": dict(mode="off"), "switch": dict(mode="switch", every_k=1, lr=0.1),
         "switch lite": dict(mode="switch", every_k=2, steps=2, lr=0.1, prune_ratio=0.5)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            extra = HYBRID if family.startswith("qwen3_5") else {}
            path = TINY_BUILDERS[family](tmp_path_factory.mktemp(family), seed=7, **extra)
            model, processor = vreason.load_model(path, dtype=torch.float64, device="cpu")
            if family.endswith("_moe"):  # torch's grouped matmul has no float64 kernel
                model.set_experts_implementation("eager")
            built[family] = model, processor
        return built[family]

    return get


def processor_call(processor, samples, **kwargs):
    """The processor on these samples together: `(seed, frames, side, question)` a video of
    `frames` frames of `side` pixels, frames 0 an image of `side` × `side // 2 + 30` pixels."""
    texts, videos, metadata, images = [], [], [], []
    for seed, frames, side, question in samples:
        content = [{"type": "video" if frames else "image"}, {"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                   add_generation_prompt=True))
        g = torch.Generator().manual_seed(seed)
        if not frames:
            images.append(torch.randint(0, 256, (3, side, side // 2 + 30), dtype=torch.uint8, generator=g))
            continue
        videos.append(torch.randint(0, 256, (frames, 3, side, side), dtype=torch.uint8, generator=g))
        metadata.append({"fps": FPS, "total_num_frames": 3 * frames, "frames_indices": list(range(0, 3 * frames, 3))})
    visual = dict(videos=videos, video_metadata=metadata) if videos else {}
    if images:
        visual["images"] = images
    return dict(processor(text=texts, do_sample_frames=False, return_tensors="pt", **visual, **kwargs))


def assert_rows_equal_alone(batch, alone):
    assert len(batch) == len(alone)
    for row, (b, a) in enumerate(zip(batch, alone)):
        assert torch.equal(b.sequences, a.sequences), row
        for name in TRACES:
            assert torch.allclose(getattr(b, name).double(), getattr(a, name).double(), atol=1e-6, rtol=0), (row, name)
        assert torch.equal(b.updated, a.updated), row
        for name in ("num_new_tokens", "prompt_length", "stop_reason", "num_video_tokens", "num_video_tokens_kept",
                     "lite_layers", "skipped_rounds"):
            assert getattr(b, name) == getattr(a, name), (row, name)


def count_decoder_calls(adapter):
    """The rows of every forward of the language model (the decoder layers' stack)."""
    rows = []
    handle = adapter.text_model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    return rows, handle


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_row_equals_its_sample_alone_and_the_decoder_runs_once_per_step(tiny, family, case):
    model, processor = tiny(family)
    adapter = adapter_for(model)
    assert adapter.batch_keys is not None
    singles = [processor_call(processor, [s]) for s in SAMPLES]
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert len(set(lengths)) == len(lengths)  # the rows really need padding
    gen = VReasonGenerator(model, ControllerConfig(**CASES[case]), DecodeConfig(max_new_tokens=6))
    rows, handle = count_decoder_calls(adapter)
    try:
        alone_calls = []
        alone = []
        for s in singles:
            rows.clear()
            alone.append(gen.generate(**s))
            alone_calls.append(list(rows))
        rows.clear()
        batch = gen.generate_samples(singles)
    finally:
        handle.remove()
    assert_rows_equal_alone(batch, alone)
    # One decoder forward per step for the batch: the prompt's (prefill, Lite's re-run) with
    # all three rows, then one per generated token with the rows still running.
    fixed = {len(calls) - (r.num_new_tokens - 1) for calls, r in zip(alone_calls, alone)}
    assert len(fixed) == 1 and all(set(calls) == {1} for calls in alone_calls)
    longest = max(r.num_new_tokens for r in batch)
    assert rows == [3] * fixed.pop() + [sum(r.num_new_tokens > k for r in batch) for k in range(1, longest)]
    if case != "off":
        assert all(r.updated.any() and not torch.equal(r.entropy, r.entropy_after) for r in batch)
    if "lite" in case:
        assert all(r.num_video_tokens_kept < r.num_video_tokens for r in batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_collate_equals_the_processors_left_padded_batch(tiny, family):
    model, processor = tiny(family)
    adapter = adapter_for(model)
    samples = SAME_FRAMES if family in ("llava_onevision", "internvl") else SAMPLES
    singles = [processor_call(processor, [s]) for s in samples]
    expected = processor_call(processor, samples, padding=True, padding_side="left")
    got = adapter.collate_inputs(singles)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key].to(got[key].dtype)), key
    # The processor's own batch decodes as the samples alone do.
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.1), DecodeConfig(max_new_tokens=4))
    assert_rows_equal_alone(gen.generate_batch(**expected), [gen.generate(**s) for s in singles])


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5", "llava_onevision", "internvl"])
def test_a_batch_mixing_an_image_with_videos(tiny, family):
    """An image sample between videos (LLaVA-OneVision: images stacked in patches beside videos
    stacked in frames; with frame counts that differ, both go through the per-video encoding)."""
    model, processor = tiny(family)
    adapter = adapter_for(model)
    samples = [SAMPLES[0], (5, 0, 200, "What is shown in this picture?"), SAMPLES[1]]
    same = [SAME_FRAMES[0], samples[1], SAME_FRAMES[1]]
    singles = [processor_call(processor, [s]) for s in same]
    expected = processor_call(processor, same, padding=True, padding_side="left")
    got = adapter.collate_inputs(singles)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key].to(got[key].dtype)), key
    singles = [processor_call(processor, [s]) for s in samples]
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.1, prune_ratio=0.5),
                           DecodeConfig(max_new_tokens=4))
    assert_rows_equal_alone(gen.generate_samples(singles), [gen.generate(**s) for s in singles])


@pytest.mark.parametrize("family", ["qwen3_5", "llava_onevision"])
def test_rows_that_stop_early_leave_the_batch(tiny, family):
    """A row that stops early (a stop id taken from the samples' own tokens, so that it ends one
    row before another) leaves the batch: the others go on as alone (Qwen3.5: its recurrent
    states lose that row too)."""
    model, processor = tiny(family)
    singles = [processor_call(processor, [s]) for s in SAMPLES]
    controller = ControllerConfig(mode="switch", every_k=1, lr=0.1, prune_ratio=0.5)
    free = [VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=6)).generate(**s) for s in singles]
    new = [r.sequences[0, r.prompt_length:].tolist() for r in free]

    def stops(token):
        return [row.index(token) + 1 if token in row else len(row) for row in new]

    stop = next((t for row in new for t in row if min(stops(t)) < max(stops(t))), None)
    assert stop is not None, "the test needs a token that ends one row before another"
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = list(saved) + [stop]
    try:
        gen = VReasonGenerator(model, controller, DecodeConfig(max_new_tokens=6))
        alone = [gen.generate(**s) for s in singles]
        batch = gen.generate_samples(singles)
    finally:
        model.generation_config.eos_token_id = saved
    assert [r.num_new_tokens for r in batch] == stops(stop)
    assert_rows_equal_alone(batch, alone)


def test_a_row_without_visual_tokens_is_refused(tiny):
    model, processor = tiny("internvl")
    adapter = adapter_for(model)
    singles = [processor_call(processor, [s]) for s in SAMPLES[:2]]
    text = dict(processor(text=["<|im_start|>user\nhello<|im_end|>\n"], return_tensors="pt"))
    gen = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"batch row\(s\) \[2\]\) has no image context tokens"):
        gen.generate_batch(**adapter.collate_inputs(singles + [text]))
