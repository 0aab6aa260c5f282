"""`load_video` against Qwen2.5-VL's reference utilities (qwen-vl-utils, decord backend): the same
frame indices, frame counts, resized shapes and pixels, on the shared real clip and on generated
clips of several lengths and sizes; plus the error paths."""
from __future__ import annotations

import gc
import importlib
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from vreason.data.synthetic import encode_mp4, undecodable_mp4
from vreason.data.video import VideoError, load_video, num_sampled_frames, smart_resize

# The shared folder beside the checkout (CI has one too); VREASON_SHARED_DIR points elsewhere.
SHARED = Path(os.environ.get("VREASON_SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared")
REAL_CLIP = SHARED / "data" / "real-clip-1.mp4"


@pytest.fixture(scope="module")
def qwen():
    # Skip only where the package is not installed at all (it is a test dependency, so CI fails
    # that skip); a failure inside its import is an error, not a skip of ~29 oracle tests.
    pytest.importorskip("qwen_vl_utils")
    vp = importlib.import_module("qwen_vl_utils.vision_process")
    # The oracle must read with decord too, whatever other readers are installed.
    saved = vp.FORCE_QWENVL_VIDEO_READER
    vp.FORCE_QWENVL_VIDEO_READER = "decord"
    vp.get_video_reader_backend.cache_clear()
    yield vp
    vp.FORCE_QWENVL_VIDEO_READER = saved
    vp.get_video_reader_backend.cache_clear()


def reference(vp, path, num_frames=None, fps=None, min_pixels=3136, max_pixels=200704):
    ele = {"video": str(path), "min_pixels": min_pixels, "max_pixels": max_pixels}
    if num_frames is not None:
        ele["nframes"] = num_frames
    else:
        ele["fps"] = fps
    (frames, meta), sample_fps = vp.fetch_video(ele, return_video_sample_fps=True, return_video_metadata=True)
    return frames, meta, sample_fps


def assert_same_as_reference(vp, path, **kw):
    frames, meta = load_video(path, **kw)
    ref, ref_meta, ref_sample_fps = reference(vp, path, **kw)
    assert meta["indices"] == list(ref_meta["frames_indices"])
    assert meta["total_num_frames"] == ref_meta["total_num_frames"]
    assert meta["fps"] == pytest.approx(ref_meta["fps"])
    assert meta["sampled_fps"] == pytest.approx(ref_sample_fps)
    assert meta["timestamps"] == pytest.approx([i / ref_meta["fps"] for i in meta["indices"]])
    assert frames.dtype == torch.uint8 and frames.shape == ref.shape
    assert frames.shape[-1] % 28 == 0 and frames.shape[-2] % 28 == 0
    # The reference resizes the uint8 frames and then casts: the same pixels, exactly.
    assert torch.equal(frames, ref.to(torch.uint8))
    return frames, meta


@pytest.mark.skipif(not REAL_CLIP.exists(), reason=f"shared real clip not found at {REAL_CLIP} (VREASON_SHARED_DIR sets the folder)")
@pytest.mark.parametrize("kw", [dict(num_frames=16), dict(num_frames=32), dict(num_frames=7),
                                dict(fps=2.0), dict(fps=0.5)])
def test_real_clip_matches_qwen_vl_utils(qwen, kw):
    frames, meta = assert_same_as_reference(qwen, REAL_CLIP, **kw)
    if kw.get("num_frames") == 16:
        assert frames.shape == (16, 3, 336, 588)  # 360x640 within 256*28*28 pixels
        assert meta["indices"][0] == 0 and meta["indices"][-1] == meta["total_num_frames"] - 1


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Clips of several lengths and sizes (odd counts, non-square, smaller than min_pixels)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    out = {}
    for frames, (h, w), fps in [(5, (48, 64), 10.0), (16, (64, 96), 8.0), (33, (96, 160), 12.0), (61, (112, 80), 25.0)]:
        video = rng.integers(0, 256, size=(frames, h, w, 3), dtype=np.uint8)
        path = root / f"clip_{frames}.mp4"
        encode_mp4(video, path, fps)
        out[frames] = path
    return out


# The reference rejects more frames than the clip has: such pairs are not generated (no skips).
@pytest.mark.parametrize("frames, kw", [
    (frames, kw) for frames in (16, 33, 61)
    for kw in (dict(num_frames=4), dict(num_frames=16), dict(num_frames=9), dict(fps=2.0),
               dict(fps=7.0), dict(num_frames=8, max_pixels=40 * 28 * 28 // 10))
    if kw.get("num_frames", 0) <= frames])
def test_generated_clips_match_qwen_vl_utils(qwen, clips, frames, kw):
    assert_same_as_reference(qwen, clips[frames], **kw)


def test_short_clip_small_frames_upscaled_like_reference(qwen, clips):
    # 5 frames of 48x64 (3072 px < min_pixels): fps sampling bounded by the clip, frames upscaled.
    assert_same_as_reference(qwen, clips[5], fps=2.0)
    assert_same_as_reference(qwen, clips[5], num_frames=4)


def test_more_frames_than_the_clip_has_gives_every_frame_and_repeats_the_last(clips):
    # The reference raises here; we take each of the 5 frames once and the last again, as
    # qwen-vl-utils pads a video given as frames to an even count.
    frames, meta = load_video(clips[5], num_frames=16)
    assert meta["indices"] == [0, 1, 2, 3, 4, 4]
    assert frames.shape[0] == 6
    every, _ = load_video(clips[5], num_frames=4)  # [0, 1, 3, 4]: frames 0, 1, 3 and 4 decoded alike
    assert torch.equal(frames[[0, 1, 3, 4]], every) and torch.equal(frames[5], frames[4])


def test_sampling_rules_match_reference_functions(qwen):
    for total in (2, 3, 7, 16, 31, 100, 491, 2000):
        for video_fps in (7.5, 22.29, 30.0):
            for n in (2, 3, 4, 15, 16, 32, 64):
                if qwen.round_by_factor(n, 2) <= total:
                    assert num_sampled_frames(total, video_fps, num_frames=n) == qwen.smart_nframes(
                        {"nframes": n}, total, video_fps)
            for fps in (0.1, 1.0, 2.0, 10.0):
                for lo, hi in ((4, 768), (6, 20)):
                    ele = {"fps": fps, "min_frames": lo, "max_frames": hi}
                    assert num_sampled_frames(total, video_fps, fps=fps, min_frames=lo, max_frames=hi) == \
                        qwen.smart_nframes(ele, total, video_fps)
    # Where the reference refuses (fewer frames than asked), every frame, rounded up to even.
    for total, n, expected in ((1, 16, 2), (1, 2, 2), (5, 16, 6), (6, 8, 6), (7, 64, 8)):
        with pytest.raises(ValueError):
            qwen.smart_nframes({"nframes": n}, total, 25.0)
        assert num_sampled_frames(total, 25.0, num_frames=n) == expected
    assert num_sampled_frames(1, 25.0, fps=2.0) == 2


def test_smart_resize_matches_reference(qwen):
    for h, w in [(360, 640), (1080, 1920), (28, 28), (10, 300), (479, 853), (2000, 50), (112, 112)]:
        for lo, hi in [(3136, 200704), (3136, 12845056), (100352, 602112), (784, 784 * 4)]:
            assert smart_resize(h, w, 28, lo, hi) == tuple(qwen.smart_resize(h, w, 28, lo, hi))


def test_frames_and_timestamps_are_consistent(clips):
    frames, meta = load_video(clips[33], fps=2.0)
    assert len(meta["indices"]) == frames.shape[0] == 4  # 33 frames at 12 fps: 2.75 s * 2 -> 5.5 -> 4
    assert meta["timestamps"][-1] == pytest.approx(32 / 12.0)
    assert meta["duration"] == pytest.approx(33 / 12.0)
    assert (meta["width"], meta["height"]) == (160, 96)
    assert meta["frames_indices"] == meta["indices"]


def test_one_reader_per_call_released(monkeypatch, clips):
    import decord

    readers = []
    real = decord.VideoReader

    def tracking_reader(*args, **kwargs):
        reader = real(*args, **kwargs)
        readers.append(weakref.ref(reader))
        assert kwargs.get("num_threads") == 3
        return reader

    monkeypatch.setattr(decord, "VideoReader", tracking_reader)
    load_video(clips[16], num_frames=4, num_threads=3, video_timeout=0)  # in this process, to be seen
    gc.collect()
    assert len(readers) == 1 and readers[0]() is None


def test_fps_wins_over_num_frames_and_bad_settings_are_refused_once(clips):
    _, by_rate = load_video(clips[16], num_frames=4, fps=1.0)  # 16 frames at 8 fps: 2 s at 1 fps -> 4
    _, by_rate_only = load_video(clips[16], fps=1.0, min_frames=2)
    assert by_rate["indices"] == load_video(clips[16], fps=1.0)[1]["indices"]
    assert by_rate_only["indices"] == [0, 15]  # min_frames reaches the sampling
    for bad, message in [(dict(num_frames=1), "num_frames must be >= 2"), (dict(fps=0.0), "fps must be > 0"),
                         (dict(num_frames=None), "set data.num_frames or data.fps"),
                         (dict(min_pixels=10), "min_pixels"), (dict(video_reader="ffmpeg"), "video_reader"),
                         (dict(video_timeout=-1), "video_timeout"), (dict(min_frames=9, max_frames=8), "min_frames")]:
        with pytest.raises(ValueError, match=message):
            load_video(clips[16], **bad)


def test_missing_and_garbage_files_raise_one_line_video_error(tmp_path):
    with pytest.raises(VideoError, match="video not found") as missing:
        load_video(tmp_path / "nope.mp4", num_frames=4)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(VideoError, match="cannot open video") as bad:
        load_video(garbage, num_frames=4)
    for err in (missing.value, bad.value):
        assert isinstance(err, RuntimeError) and "\n" not in str(err)


def test_failure_only_while_decoding_frames_is_a_video_error(tmp_path, clips):
    path = tmp_path / "undecodable.mp4"
    path.write_bytes(undecodable_mp4(clips[33].read_bytes()))
    import decord

    reader = decord.VideoReader(str(path))  # the container and its index still open
    assert len(reader) == 33
    del reader
    with pytest.raises(VideoError, match="cannot decode frames") as err:
        load_video(path, num_frames=16)
    assert "\n" not in str(err.value)


def test_decode_errors_from_get_batch_are_converted(monkeypatch, clips):
    import decord

    class FailingReader:
        def __init__(self, *args, **kwargs):
            pass

        def __len__(self):
            return 100

        def get_avg_fps(self):
            return 25.0

        def get_batch(self, indices):
            raise decord.DECORDError("[12:00:00] src/video.cc:1: [12:00:00] src/x.cc:2: boom\nsecond line")

    monkeypatch.setattr(decord, "VideoReader", FailingReader)
    with pytest.raises(VideoError) as err:
        load_video(clips[16], num_frames=4, video_reader="decord")  # auto would answer with PyAV
    assert str(err.value) == f"cannot decode frames of {clips[16]}: boom"


def test_aspect_ratio_limit_is_a_video_error():
    with pytest.raises(VideoError, match="aspect ratio"):
        smart_resize(10, 2100, 28, 3136, 200704)
