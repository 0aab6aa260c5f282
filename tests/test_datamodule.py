"""`BenchmarkDataModule` with the tiny model's real processor: processor-ready items whose video
grid, video tokens and temporal spacing agree with the decoded frames; broken samples become
items with a one-line error (a corrupted mp4 included); nothing raises."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vreason.data.datamodule import BenchmarkDataModule, collate_items
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.data.video import load_video

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vreason.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Synthetic samples plus every kind of broken entry, in one protocol file."""
    root = tmp_path_factory.mktemp("bench")
    synth = write_synthetic_benchmark(root, n=4, seed=1, with_errors=True)  # + missing, truncated, undecodable
    entries = json.loads(synth.read_text())
    base = dict(entries[0])
    entries += [
        {**base, "path": "../escape.mp4"},
        {k: v for k, v in base.items() if k != "solution"},
        {**base, "problem_type": "essay"},
    ]
    path = root / "eval_Mixed.json"
    path.write_text(json.dumps(entries))
    return path


def all_items(dm):
    return [item for batch in dm.predict_dataloader() for item in batch]


def test_items_are_processor_ready_and_agree_with_frames(tiny, mixed):
    from transformers import AutoConfig, AutoTokenizer

    dm = BenchmarkDataModule(files=[str(mixed)], model_path=tiny, num_frames=16)
    items = all_items(dm)
    assert [it["sample"].key for it in items] == [f"Mixed/{i}" for i in range(10)]
    video_token = AutoConfig.from_pretrained(tiny).video_token_id
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    for item in items[:4]:
        assert item["error"] is None
        inputs, meta, sample = item["inputs"], item["meta"], item["sample"]
        assert {"input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts",
                "mm_token_type_ids"} <= set(inputs)
        assert inputs["input_ids"].shape[0] == 1
        frames, _ = load_video(sample.media_path, num_frames=16)
        t, h, w = inputs["video_grid_thw"][0].tolist()
        assert (t, h, w) == (frames.shape[0] // 2, frames.shape[2] // 14, frames.shape[3] // 14) == (8, 8, 8)
        is_video = inputs["input_ids"][0] == video_token
        assert int(is_video.sum()) == t * h * w // 4  # 2x2 spatial merge
        assert torch.equal(inputs["mm_token_type_ids"][0] == 2, is_video)
        assert inputs["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 14 * 14)
        # 16 of 24 frames at 8 fps: frames 1/(16/24*8) s apart, two per temporal patch.
        assert meta["sampled_fps"] == pytest.approx(16 / 24 * 8)
        assert float(inputs["second_per_grid_ts"][0]) == pytest.approx(2 / (16 / 24 * 8))
        # The first patch is frames 0-1, rows and columns 0-13, normalized: no re-sampling, no resize.
        patch = frames[0:2, :, :14, :14].float().div(255).permute(1, 0, 2, 3)
        patch = (patch - CLIP_MEAN[:, None, None, None]) / CLIP_STD[:, None, None, None]
        assert torch.allclose(inputs["pixel_values_videos"][0], patch.reshape(-1), atol=1e-5)
        text = tokenizer.decode(inputs["input_ids"][0])
        assert sample.question in text and text.endswith("<|im_start|>assistant\n")
    errors = {it["sample"].entry.get("kind", it["sample"].index): it["error"] for it in items[4:]}
    assert all(it["inputs"] is None for it in items[4:])
    assert errors["missing video"].startswith("media not found")
    assert errors["truncated video"].startswith("cannot open video")
    assert errors["undecodable video"].startswith("cannot decode frames")
    assert [it["error"].split(" ")[0] for it in items[7:]] == ["media", "missing", "unknown"]
    assert "escapes the media root" in items[7]["error"]
    assert all("\n" not in it["error"] for it in items[4:])


def test_skipped_samples_drop_before_loading(tiny, mixed):
    dm = BenchmarkDataModule(files=[str(mixed)], model_path=tiny)
    dm.skip_samples({"Mixed/0", "Mixed/2", "Mixed/5"})
    keys = [it["sample"].key for it in all_items(dm)]
    assert keys == [f"Mixed/{i}" for i in (1, 3, 4, 6, 7, 8, 9)]
    assert len(dm.samples) == 10


def test_two_workers_give_the_same_items_in_order(tiny, mixed):
    one = all_items(BenchmarkDataModule(files=[str(mixed)], model_path=tiny, num_workers=0, batch_size=3))
    two = all_items(BenchmarkDataModule(files=[str(mixed)], model_path=tiny, num_workers=2, batch_size=3))
    assert [a["sample"].key for a in one] == [b["sample"].key for b in two]
    for a, b in zip(one, two):
        assert a["error"] == b["error"]
        if a["inputs"] is not None:
            assert all(torch.equal(a["inputs"][k], b["inputs"][k]) for k in a["inputs"])


def test_fps_sampling_wins_over_num_frames(tiny, mixed):
    dm = BenchmarkDataModule(files=[str(mixed)], model_path=tiny, num_frames=16, fps=4.0, max_pixels=56 * 56)
    item = dm.predict_dataset()[0]
    # 24 frames at 8 fps = 3 s; 4 fps -> 12 frames, 0.5 s per temporal patch; 112 px -> 56 px.
    assert item["inputs"]["video_grid_thw"][0].tolist() == [6, 4, 4]
    assert float(item["inputs"]["second_per_grid_ts"][0]) == pytest.approx(0.5)


def test_several_files_in_order_and_image_samples(tiny, mixed, tmp_path):
    from PIL import Image

    image = np.zeros((60, 100, 3), dtype=np.uint8)
    image[:, 50:] = 255
    Image.fromarray(image).save(tmp_path / "pic.png")
    entry = {"problem": "Which half is white?", "problem_type": "multiple choice", "options": ["A. left", "B. right"],
             "solution": "<answer>B</answer>", "data_type": "image", "path": "pic.png"}
    (tmp_path / "eval_Pics.json").write_text(json.dumps([entry]))
    dm = BenchmarkDataModule(files=[str(tmp_path / "eval_Pics.json"), str(mixed)], model_path=tiny)
    items = all_items(dm)
    assert [it["sample"].benchmark for it in items] == ["Pics"] + ["Mixed"] * 10
    first = items[0]
    assert first["error"] is None and "pixel_values" in first["inputs"]
    assert first["inputs"]["image_grid_thw"][0].tolist() == [1, 4, 8]  # 60x100 -> 56x112 (sides rounded to multiples of 28)
    assert collate_items([first]) == [first]


def test_configuration_errors(tiny, mixed):
    with pytest.raises(ValueError, match="both give benchmark name"):
        BenchmarkDataModule(files=[str(mixed), str(mixed)], model_path=tiny).samples
    with pytest.raises(ValueError, match="model_path"):
        BenchmarkDataModule(files=[str(mixed)]).predict_dataloader()
    with pytest.raises(ValueError, match="at least one"):
        BenchmarkDataModule(files=[])


def test_a_connected_processor_is_used_and_none_is_loaded(tiny, mixed, monkeypatch):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny, local_files_only=True)
    calls = []
    real_call = type(processor).__call__

    def counting(self, *args, **kwargs):
        calls.append(self)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", counting)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: pytest.fail("processor loaded twice"))
    dm = BenchmarkDataModule(files=[str(mixed)], model_path=None, num_frames=4)
    dm.connect(processor)
    item = dm.predict_dataset()[0]
    assert item["error"] is None and calls == [processor]
    # Frames arrive sized already: the processor's own per-frame cap is off, so its grid is theirs.
    assert processor.video_processor.cap_pixels_per_frame is False


def test_every_video_setting_reaches_the_reads(tiny, mixed, monkeypatch):
    from vreason.config import VideoConfig
    from vreason.data import items

    seen = []
    real = items.load_video

    def spy(path, video):
        seen.append(video)
        return real(path, video)

    monkeypatch.setattr(items, "load_video", spy)
    settings = dict(num_frames=None, fps=1.0, min_frames=6, max_frames=8, max_pixels=56 * 56, min_pixels=28 * 28,
                    num_threads=2, video_reader="pyav", video_timeout=7.5, frame_cache=None)
    dm = BenchmarkDataModule(files=[str(mixed)], model_path=tiny, **settings)
    item = dm.predict_dataset()[0]
    assert seen == [VideoConfig(**settings)] and dm.video_config() == VideoConfig(**settings)
    # 3 s at 1 fps is 3 frames, raised to min_frames 6; read by PyAV.
    assert len(item["meta"]["indices"]) == 6 and item["meta"]["video_backend"] == "pyav"


def test_bad_video_settings_are_refused_once_with_one_line(mixed):
    for bad, message in [(dict(num_frames=None), "set data.num_frames or data.fps"),
                         (dict(video_reader="opencv"), "data.video_reader must be auto|decord|pyav"),
                         (dict(max_pixels=1000, min_pixels=2000), "data.min_pixels and data.max_pixels")]:
        with pytest.raises(ValueError, match=message):
            BenchmarkDataModule(files=[str(mixed)], **bad)


def test_run_settings_identify_the_inputs(tiny, mixed, tmp_path):
    import hashlib

    dm = BenchmarkDataModule(files=[str(mixed)], media_root=str(mixed.parent), num_frames=8, video_timeout=3,
                             frame_cache=str(tmp_path / "cache"))
    settings = dm.run_settings()
    assert settings == {
        "files": [{"path": str(mixed), "sha256": hashlib.sha256(mixed.read_bytes()).hexdigest()}],
        "media_root": str(mixed.parent), "template": None, "num_frames": 8, "fps": None, "min_frames": 4,
        "max_frames": 768, "max_pixels": 200704, "min_pixels": 3136, "video_reader": "auto"}
    json.dumps(settings)  # plain values
    # How a run goes (time limit, cache, threads) is not what identifies it.
    assert BenchmarkDataModule(files=[str(mixed)], media_root=str(mixed.parent), num_frames=8).run_settings() == settings
    copy = tmp_path / mixed.name
    entries = json.loads(mixed.read_text())
    entries[0]["problem"] += " (edited)"
    copy.write_text(json.dumps(entries))
    assert BenchmarkDataModule(files=[str(copy)], num_frames=8).run_settings()["files"][0]["sha256"] != \
        settings["files"][0]["sha256"]


def test_frames_are_resized_by_the_processor_unless_it_takes_qwen_sized_frames():
    from types import SimpleNamespace

    from vreason.data.items import sized_for

    def proc(patch, merge):
        return SimpleNamespace(video_processor=SimpleNamespace(patch_size=patch, merge_size=merge))

    assert sized_for(proc(14, 2))  # Qwen2-VL / Qwen2.5-VL: 28-pixel merged patches
    assert not sized_for(proc(16, 2))  # Qwen3-VL / Qwen3.5: 32
    assert not sized_for(SimpleNamespace(image_processor=SimpleNamespace(size={"height": 384})))  # fixed-size towers
