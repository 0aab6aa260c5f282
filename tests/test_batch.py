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
