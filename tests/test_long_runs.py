"""What a multi-hour run meets in the field: a read that never returns, a decoder that crashes or
cannot open a file, the same clip decoded again for every mode, awkward files, and a sample that
runs out of memory. Oracles: the frames `load_video` gives with decord in-process, the other
reader, and hand-built clips whose frames are known."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from vreason.config import VideoConfig
from vreason.data import readers
from vreason.data.datamodule import BenchmarkDataModule
from vreason.data.frame_cache import FrameCache, cache_key
from vreason.data.synthetic import encode_mp4
from vreason.data.video import VideoError, load_video

SHARED = Path(os.environ.get("VREASON_SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared")
REAL_CLIP = SHARED / "data" / "real-clip-1.mp4"


def clip(path: Path, frames: int, h: int = 64, w: int = 96, fps: float = 8.0, seed: int = 0) -> Path:
    video = np.random.default_rng(seed).integers(0, 256, size=(frames, h, w, 3), dtype=np.uint8)
    encode_mp4(video, path, fps)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return {"one": clip(root / "one.mp4", 1), "three": clip(root / "three.mp4", 3, seed=1),
            "twenty": clip(root / "twenty.mp4", 20, seed=2)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vreason.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))


def children() -> set[str]:
    """This process's child pids, zombies included (Linux)."""
    tasks = Path("/proc/self/task")
    return {pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()}


def block_forever(self, *args, **kwargs):
    threading.Event().wait()


# ------------------------------------------------------------------ time limit and crashes

def test_a_read_that_never_returns_is_abandoned_with_one_line(monkeypatch, clips):
    monkeypatch.setattr(readers.DecordSource, "__init__", block_forever)
    before = children()
    with pytest.raises(VideoError) as err:
        load_video(clips["twenty"], num_frames=4, video_reader="decord", video_timeout=1)
    assert str(err.value) == "video read timed out after 1 s"
    assert children() == before  # the stuck child was killed and reaped, not left behind
    # auto: the stuck decord read is abandoned and PyAV answers, with decord's frames.
    monkeypatch.undo()
    expected, _ = load_video(clips["twenty"], num_frames=4, video_reader="decord", video_timeout=0)
    monkeypatch.setattr(readers.DecordSource, "__init__", block_forever)
    frames, meta = load_video(clips["twenty"], num_frames=4, video_timeout=1)
    assert meta["video_backend"] == "pyav" and torch.equal(frames, expected)


def test_a_crashing_decoder_is_an_error_not_the_end_of_the_run(monkeypatch, clips):
    def segfault(self, *args, **kwargs):
        import faulthandler

        faulthandler.disable()  # pytest's handler would print this child's stack
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(readers.DecordSource, "__init__", segfault)
    with pytest.raises(VideoError, match=r"^video read crashed \(signal 11\)$"):
        load_video(clips["twenty"], num_frames=4, video_reader="decord", video_timeout=30)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stuck_sample_becomes_its_error_record_and_the_others_are_answered(monkeypatch, tiny, clips, tmp_path, workers):
    for name, source in (("twenty.mp4", "twenty"), ("stuck.mp4", "twenty"), ("three.mp4", "three")):
        (tmp_path / name).write_bytes(clips[source].read_bytes())
    real_init = readers.DecordSource.__init__

    def hang_on_stuck(self, path, num_threads):
        if path.endswith("stuck.mp4"):
            threading.Event().wait()
        real_init(self, path, num_threads)

    monkeypatch.setattr(readers.DecordSource, "__init__", hang_on_stuck)
    bench = write_bench(tmp_path, ["twenty.mp4", "stuck.mp4", "three.mp4"])
    dm = BenchmarkDataModule(files=[str(bench)], model_path=tiny, num_frames=4, video_reader="decord",
                             video_timeout=1, num_workers=workers)
    items = [item for batch in dm.predict_dataloader() for item in batch]
    assert [it["error"] for it in items] == [None, "video read timed out after 1 s", None]
    assert items[0]["inputs"] is not None and items[2]["inputs"] is not None


# ------------------------------------------------------------------ two readers

def assert_readers_agree(path, **kw):
    a, meta_a = load_video(path, video_reader="decord", **kw)
    b, meta_b = load_video(path, video_reader="pyav", **kw)
    assert (meta_a["video_backend"], meta_b["video_backend"]) == ("decord", "pyav")
    assert {k: v for k, v in meta_a.items() if k != "video_backend"} == {k: v for k, v in meta_b.items() if k != "video_backend"}
    assert a.shape == b.shape
    # Both convert with FFmpeg's swscale: measured identical; two levels allowed for other builds.
    assert (a.int() - b.int()).abs().max() <= 2


@pytest.mark.parametrize("kw", [dict(num_frames=4), dict(num_frames=16), dict(fps=2.0), dict(num_frames=32)])
def test_decord_and_pyav_give_the_same_indices_sizes_metadata_and_pixels(clips, kw):
    for path in clips.values():
        assert_readers_agree(path, **kw)


@pytest.mark.skipif(not REAL_CLIP.exists(), reason="shared real clip not present")
def test_readers_agree_on_the_real_clip():
    assert_readers_agree(REAL_CLIP, num_frames=16)


def test_auto_falls_back_to_pyav_where_decord_cannot_open(monkeypatch, clips):
    expected, _ = load_video(clips["twenty"], num_frames=8, video_reader="decord")

    def refuse(self, path, num_threads):
        raise VideoError(f"cannot open video {path}: unsupported")

    monkeypatch.setattr(readers.DecordSource, "__init__", refuse)
    frames, meta = load_video(clips["twenty"], num_frames=8)
    assert meta["video_backend"] == "pyav" and torch.equal(frames, expected)
    with pytest.raises(VideoError, match="unsupported"):  # decord only: its own error
        load_video(clips["twenty"], num_frames=8, video_reader="decord")


# ------------------------------------------------------------------ frame cache

def test_second_read_decodes_nothing_and_changes_miss(monkeypatch, clips, tmp_path):
    cache = str(tmp_path / "cache")
    path = tmp_path / "clip.mp4"
    path.write_bytes(clips["twenty"].read_bytes())
    cold, cold_meta = load_video(path, num_frames=8, frame_cache=cache)
    assert cold_meta["from_cache"] is False

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(readers.DecordSource, "__init__", no_decoding)
    monkeypatch.setattr(readers.PyAVSource, "__init__", no_decoding)
    warm, warm_meta = load_video(path, num_frames=8, frame_cache=cache, video_timeout=0)
    assert torch.equal(warm, cold) and warm_meta == {**cold_meta, "from_cache": True}
    # The time limit and the threads are not part of the key; the sampling and the pixels are.
    load_video(path, num_frames=8, frame_cache=cache, video_timeout=5, num_threads=2)
    for other in (dict(num_frames=6), dict(max_pixels=32 * 28 * 28), dict(fps=2.0), dict(video_reader="pyav")):
        with pytest.raises(AssertionError, match="decoded although cached"):
            load_video(path, frame_cache=cache, video_timeout=0, **{"num_frames": 8, **other})
    # A file rewritten in place (new modification time) is a miss too.
    os.utime(path, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_video(path, num_frames=8, frame_cache=cache, video_timeout=0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage header"])
def test_a_damaged_entry_is_decoded_again_never_trusted(clips, tmp_path, damage):
    cache = tmp_path / "cache"
    video = VideoConfig(num_frames=8, frame_cache=str(cache))
    frames, _ = load_video(clips["twenty"], video)
    [entry] = list(cache.rglob("*.frames"))
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        data[12:20] = b"\xff" * 8
    entry.write_bytes(bytes(data))
    key = cache_key(str(clips["twenty"]), video.sampling())
    assert FrameCache(cache).get(key) is None
    again, meta = load_video(clips["twenty"], video)
    assert meta["from_cache"] is False and torch.equal(again, frames)
    assert FrameCache(cache).get(key) is not None  # rewritten whole


def _hammer(path: str, cache: str, rounds: int, out) -> None:
    try:
        torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
        for _ in range(rounds):
            frames, _ = load_video(path, num_frames=8, frame_cache=cache, video_timeout=0)
            out.put(int(frames.sum()))
    except BaseException as exc:  # noqa: BLE001  (reported to the test)
        out.put(repr(exc))


def test_ranks_sharing_one_cache_folder_never_see_half_an_entry(clips, tmp_path):
    # Four processes (as four DDP ranks) read and write the same entry at once, over and over.
    cache = str(tmp_path / "cache")
    expected = int(load_video(clips["twenty"], num_frames=8, video_timeout=0)[0].sum())
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [context.Process(target=_hammer, args=(str(clips["twenty"]), cache, 6, out), daemon=True) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in range(24)]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert results == [expected] * 24
    files = [p.name for p in Path(cache).rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].endswith(".frames")  # no temporary file left behind


def test_an_unwritable_cache_costs_speed_not_the_sample(clips, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    frames, meta = load_video(clips["twenty"], num_frames=4, frame_cache=str(blocker))
    assert frames.shape[0] == 4 and meta["from_cache"] is False


def test_stale_temporary_files_are_swept_once_per_run(clips, tiny, tmp_path):
    # A writer killed before its rename leaves `<entry>.<pid>.<uuid>.tmp`; an hour later nothing
    # can still be writing it. A fresh temporary file (a writer at work) and the entries stay.
    cache = tmp_path / "cache"
    load_video(clips["twenty"], num_frames=4, frame_cache=str(cache))
    (entry,) = cache.rglob("*.frames")
    stale, fresh = entry.parent / (entry.name + ".1.a.tmp"), entry.parent / (entry.name + ".2.b.tmp")
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    two_hours_ago = os.path.getmtime(stale) - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    bench = write_bench(tmp_path, ["twenty.mp4"])
    dm = BenchmarkDataModule(files=[str(bench)], model_path=tiny, num_frames=4, frame_cache=str(cache))
    dm.predict_dataloader()
    assert not stale.exists() and fresh.exists() and entry.exists()
    assert FrameCache(str(tmp_path / "no-such-folder")).sweep_stale() == 0


# ------------------------------------------------------------------ awkward inputs

def write_bench(root: Path, paths: list[str]) -> Path:
    entries = [{"problem": "What moves?", "problem_type": "free-form", "solution": "<answer>x</answer>",
                "path": p, "data_type": "video"} for p in paths]
    path = root / "eval_Awkward.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def test_awkward_files_each_give_an_answer_or_one_line(monkeypatch, tiny, clips, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "one.mp4").write_bytes(clips["one"].read_bytes())
    (media / "three.mp4").write_bytes(clips["three"].read_bytes())
    (media / "empty.mp4").write_bytes(b"")
    (media / "notes.mp4").write_text("these are notes, not a video\n" * 20)
    (media / "folder.mp4").mkdir()
    clip(media / "huge.mp4", 2, h=2160, w=3840, fps=2.0)
    (media / "vidéo été 日本.mp4").write_bytes(clips["twenty"].read_bytes())
    names = ["one.mp4", "three.mp4", "empty.mp4", "notes.mp4", "folder.mp4", "huge.mp4", "vidéo été 日本.mp4",
             "../escape.mp4"]
    bench = write_bench(media, names)
    dm = BenchmarkDataModule(files=[str(bench)], model_path=tiny, num_frames=8, max_pixels=64 * 28 * 28)
    items = [item for batch in dm.predict_dataloader() for item in batch]
    by_name = dict(zip(names, items))
    for name in ("one.mp4", "three.mp4", "huge.mp4", "vidéo été 日本.mp4"):
        assert by_name[name]["error"] is None and by_name[name]["inputs"] is not None, name
    # A one-frame clip: its frame twice (frames come in pairs); three frames: all, the last again.
    assert by_name["one.mp4"]["meta"]["indices"] == [0, 0]
    assert by_name["three.mp4"]["meta"]["indices"] == [0, 1, 2, 2]
    assert by_name["one.mp4"]["inputs"]["video_grid_thw"][0, 0] == 1
    assert by_name["huge.mp4"]["meta"]["width"] == 3840
    t, h, w = by_name["huge.mp4"]["inputs"]["video_grid_thw"][0].tolist()
    assert h * w * 14 * 14 <= 64 * 28 * 28
    errors = {name: by_name[name]["error"] for name in ("empty.mp4", "notes.mp4", "folder.mp4", "../escape.mp4")}
    assert errors["empty.mp4"] == f"video file is empty: {media / 'empty.mp4'}"
    assert errors["notes.mp4"].startswith(f"cannot open video {media / 'notes.mp4'}")
    assert errors["folder.mp4"] == f"media path is a folder, not a file: {media / 'folder.mp4'}"
    assert "escapes the media root" in errors["../escape.mp4"]
    assert all("\n" not in e for e in errors.values())


def test_one_frame_clip_repeats_its_frame_exactly(clips):
    frames, meta = load_video(clips["one"], num_frames=16)
    assert frames.shape[0] == 2 and torch.equal(frames[0], frames[1]) and meta["total_num_frames"] == 1


def test_a_large_video_is_decoded_in_bounded_chunks_and_a_giant_one_refused(monkeypatch, tmp_path):
    from vreason.data import video as video_module

    path = clip(tmp_path / "big.mp4", 12, h=720, w=1280, fps=4.0, seed=3)
    whole, _ = load_video(path, num_frames=12, video_timeout=0)
    sizes = []
    real = readers.DecordSource.chunks

    def recording(self, indices, budget_bytes):
        for array in real(self, indices, budget_bytes):
            sizes.append(array.shape[0])
            yield array

    monkeypatch.setattr(readers.DecordSource, "chunks", recording)
    monkeypatch.setattr(video_module, "DECODE_CHUNK_BYTES", 720 * 1280 * 3 * 5)  # five source frames
    chunked, _ = load_video(path, num_frames=12, video_timeout=0)
    assert sizes == [1, 5, 5, 1] and torch.equal(chunked, whole)
    monkeypatch.setattr(video_module, "MAX_SOURCE_PIXELS", 1280 * 719)
    with pytest.raises(VideoError, match="is 1280x720, above the"):
        load_video(path, num_frames=12, video_reader="decord", video_timeout=0)


# ------------------------------------------------------------------ out of memory

OOM = "CUDA out of memory. Tried to allocate 9.00 GiB"


@pytest.fixture()
def oom_setup(tiny, clips, tmp_path):
    from vreason.config import ControllerConfig, DecodeConfig
    from vreason.module import VReasonModule

    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(clips["twenty"].read_bytes())
    bench = write_bench(tmp_path, ["a.mp4", "b.mp4"])
    module = VReasonModule(tiny, controller=ControllerConfig(mode="off"), decode=DecodeConfig(max_new_tokens=6),
                           plot_samples=0)
    module.configure_model()

    def items(num_frames):
        dm = BenchmarkDataModule(files=[str(bench)], model_path=tiny, num_frames=num_frames)
        dm.connect(module.processor)
        dataset = dm.predict_dataset()
        return [dataset[i] for i in range(len(dataset))]

    return module, items


def test_out_of_memory_runs_once_more_with_half_the_frames_after_releasing_memory(monkeypatch, oom_setup):
    from vreason.generation import VReasonGenerator

    module, items = oom_setup
    real = VReasonGenerator.generate_samples
    calls, scratch = [], []

    def attempt(inputs):
        # What a failed attempt allocates stays reachable from its traceback's frames.
        held = torch.empty(1 << 20)
        scratch.append(weakref.ref(held))
        raise torch.OutOfMemoryError(OOM)

    def flaky(self, samples, seeds=None):
        (inputs,) = samples
        calls.append({"frames": int(inputs["video_grid_thw"][0, 0]) * 2, "released": [r() is None for r in scratch],
                      "pixels": inputs["pixel_values_videos"]})
        if len(calls) == 1:
            attempt(inputs)
        return real(self, samples, seeds=seeds)

    monkeypatch.setattr(VReasonGenerator, "generate_samples", flaky)
    (record,) = module.predictor.predict([items(8)[0]])
    assert [c["frames"] for c in calls] == [8, 4]
    assert calls[1]["released"] == [True]  # the first attempt's memory is gone before the second
    assert record.error is None and record.retried_with == 4 and record.num_frames == 4
    # The second attempt is exactly a 4-frame run: the same inputs, the same answer.
    monkeypatch.setattr(VReasonGenerator, "generate_samples", real)
    fresh = items(4)[0]
    assert torch.equal(calls[1]["pixels"], fresh["inputs"]["pixel_values_videos"])
    assert record.output == module.predictor.predict([fresh])[0].output


def test_a_second_out_of_memory_is_an_error_record_and_the_next_sample_runs(monkeypatch, oom_setup):
    from vreason.generation import VReasonGenerator

    module, items = oom_setup
    real = VReasonGenerator.generate_samples
    frames = []

    def oom_on_first_sample(self, samples, seeds=None):
        frames.append(int(samples[0]["video_grid_thw"][0, 0]) * 2)
        if len(frames) <= 2:
            raise torch.OutOfMemoryError(OOM + "\nsecond line")
        return real(self, samples, seeds=seeds)

    monkeypatch.setattr(VReasonGenerator, "generate_samples", oom_on_first_sample)
    first, second = (module.predictor.predict([item])[0] for item in items(8))
    assert frames == [8, 4, 8]  # one retry only, then the next sample with its own frames
    assert first.error == f"out of memory: OutOfMemoryError: {OOM} second line"
    assert first.retried_with == 4 and first.num_frames == 4
    assert second.error is None and second.retried_with is None and second.num_frames == 8
    assert second.video_reader == "decord" and second.from_cache is False


# Allocator failures that are not torch.OutOfMemoryError, as torch and the CUDA libraries word them.
ALLOCATION_FAILURES = [
    lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    lambda: torch.AcceleratorError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    lambda: RuntimeError("cudaErrorMemoryAllocation: out of memory"),
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                         "to allocate 9663676416 bytes"),
    lambda: MemoryError(),
]


@pytest.mark.parametrize("failure", ALLOCATION_FAILURES, ids=["cublas", "accelerator", "cudart", "cpu", "python"])
def test_other_allocation_failures_are_retried_like_out_of_memory(monkeypatch, oom_setup, failure):
    from vreason.generation import VReasonGenerator

    module, items = oom_setup
    real = VReasonGenerator.generate_samples
    frames = []

    def fails_once(self, samples, seeds=None):
        frames.append(int(samples[0]["video_grid_thw"][0, 0]) * 2)
        if len(frames) == 1:
            raise failure()
        return real(self, samples, seeds=seeds)

    monkeypatch.setattr(VReasonGenerator, "generate_samples", fails_once)
    (record,) = module.predictor.predict([items(8)[0]])
    assert frames == [8, 4] and record.error is None and record.retried_with == 4


def test_an_ordinary_failure_is_not_retried(monkeypatch, oom_setup):
    from vreason.generation import VReasonGenerator

    module, items = oom_setup
    frames = []

    def broken(self, samples, seeds=None):
        frames.append(int(samples[0]["video_grid_thw"][0, 0]) * 2)
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (5)")

    monkeypatch.setattr(VReasonGenerator, "generate_samples", broken)
    (record,) = module.predictor.predict([items(8)[0]])
    assert frames == [8] and record.retried_with is None
    assert record.error == "RuntimeError: The size of tensor a (4) must match the size of tensor b (5)"


def test_no_child_to_fork_reads_here_without_the_limit(monkeypatch, clips):
    from vreason.data import timeout

    expected, _ = load_video(clips["twenty"], num_frames=4, video_timeout=0)

    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(timeout.os, "fork", no_fork)
    frames, _ = load_video(clips["twenty"], num_frames=4, video_timeout=5)
    assert torch.equal(frames, expected)


@pytest.mark.parametrize("preset", [{}, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"},
                                    {"PYTORCH_ALLOC_CONF": "max_split_size_mb:128"}])
def test_predict_asks_for_expandable_segments_unless_the_user_chose(monkeypatch, capsys, preset):
    from vreason.cli import main

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    for name, value in preset.items():
        monkeypatch.setenv(name, value)
    assert main(["predict", "--model.controller.bogus", "1"]) == 2  # set before anything is parsed or loaded
    want = preset.get("PYTORCH_CUDA_ALLOC_CONF", None if preset else "expandable_segments:True")
    assert os.environ.get("PYTORCH_CUDA_ALLOC_CONF") == want
    assert os.environ.get("PYTORCH_ALLOC_CONF") == preset.get("PYTORCH_ALLOC_CONF")
