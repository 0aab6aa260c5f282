"""Data-path throughput, side by side from one run:

- frames/s of reading 16 and 32 uniformly sampled frames of the shared real clip with decord vs
  PyAV (one decode thread each), and `load_video` in-process vs under its time limit (a forked
  child per read: what the limit costs);
- samples/s of `BenchmarkDataModule` with 0 and 2 loader workers over the synthetic benchmark;
- samples/s with the frame cache cold (empty folder: decode and store) vs warm (a second run with
  the same settings: nothing decoded), over copies of the real clip and over the synthetic clips.

    python experiments/bench/data.py [--clip PATH] [--repeats 5] [--samples 24]

(with the project installed, or `PYTHONPATH=.` from the repository root)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vreason.data.datamodule import BenchmarkDataModule
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.data.video import load_video, num_sampled_frames, sample_indices

DEFAULT_CLIP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-clip-1.mp4"


def read_decord(path: str, num_frames: int) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    total = len(reader)
    frames = reader.get_batch(sample_indices(total, num_sampled_frames(total, reader.get_avg_fps(), num_frames))).asnumpy()
    del reader
    return frames


def read_pyav(path: str, num_frames: int) -> np.ndarray:
    """The same indices with PyAV: one sequential decode pass up to the last wanted frame (seeking
    per frame lands on keyframes and would need the same decoding anyway)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # as decord below: one decode thread each
        total = stream.frames
        wanted = sample_indices(total, num_sampled_frames(total, float(stream.average_rate), num_frames))
        out, want = [], iter(wanted)
        target = next(want)
        for i, frame in enumerate(container.decode(stream)):
            while i == target:  # an index can repeat when the clip is shorter than the request
                out.append(frame.to_ndarray(format="rgb24"))
                target = next(want, None)
            if target is None:
                break
    return np.stack(out)


def timed(fn, repeats: int, setup=None) -> float:
    """Median seconds of `fn()` after one warm-up call; `setup()` (untimed) runs before each."""
    if setup:
        setup()
    fn()  # warm-up: file cache, codec set-up
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_readers(clip: str, repeats: int) -> list[tuple[str, str]]:
    rows = []
    for n in (16, 32):
        shapes = read_decord(clip, n).shape, read_pyav(clip, n).shape
        if shapes[0] != shapes[1]:
            raise SystemExit(f"decord and PyAV disagree on the sampled frames: {shapes}")
        for name, fn in (("decord", lambda: read_decord(clip, n)), ("PyAV", lambda: read_pyav(clip, n)),
                         ("load_video, in-process (video_timeout 0)", lambda: load_video(clip, num_frames=n, video_timeout=0)),
                         ("load_video, forked, time limit (video_timeout 120)", lambda: load_video(clip, num_frames=n))):
            seconds = timed(fn, repeats)
            rows.append((f"{name}, {n} frames", f"{n / seconds:8.1f} frames/s  ({seconds * 1e3:6.1f} ms/clip)"))
    return rows


def count_items(dm: BenchmarkDataModule, expected: int) -> None:
    items = [item for batch in dm.predict_dataloader() for item in batch]
    errors = [item["error"] for item in items if item["error"]]
    if len(items) != expected or errors:
        raise SystemExit(f"expected {expected} items without errors, got {len(items)} ({errors[:1]})")


def bench_datamodule(model: str, bench: Path, samples: int, repeats: int) -> list[tuple[str, str]]:
    rows = []
    for workers in (0, 2):
        dm = BenchmarkDataModule(files=[str(bench)], model_path=model, num_frames=16, num_workers=workers)
        seconds = timed(lambda: count_items(dm, samples), repeats)
        rows.append((f"datamodule, {workers} workers", f"{samples / seconds:8.1f} samples/s  "
                                                       f"({samples} synthetic samples, 16 frames, incl. worker start)"))
    return rows


def bench_cache(model: str, bench: Path, samples: int, repeats: int, what: str, cache: Path) -> list[tuple[str, str]]:
    """Cold: the cache folder emptied before each timed run; warm: left as the last run left it."""
    dm = BenchmarkDataModule(files=[str(bench)], model_path=model, num_frames=16, frame_cache=str(cache))

    def empty() -> None:
        shutil.rmtree(cache, ignore_errors=True)

    cold = timed(lambda: count_items(dm, samples), repeats, setup=empty)
    warm = timed(lambda: count_items(dm, samples), repeats)
    entries = sum(1 for _ in cache.rglob("*.frames"))
    return [(f"frame cache cold, {what}", f"{samples / cold:8.1f} samples/s"),
            (f"frame cache warm, {what}", f"{samples / warm:8.1f} samples/s  (x{cold / warm:.1f} vs cold; "
                                          f"{entries} entries, {sum(p.stat().st_size for p in cache.rglob('*.frames')) / 2**20:.1f} MiB)")]


def real_clip_benchmark(clip: str, root: Path, copies: int) -> Path:
    """`copies` samples over distinct copies of the real clip (one cache entry each: the cache
    keys a file by its resolved path, so links to one file would share an entry)."""
    import json

    (root / "videos").mkdir(parents=True)
    entries = []
    for i in range(copies):
        shutil.copyfile(clip, root / "videos" / f"clip_{i}.mp4")
        entries.append({"problem": "What happens?", "problem_type": "free-form", "solution": "<answer>x</answer>",
                        "path": f"videos/clip_{i}.mp4", "data_type": "video"})
    path = root / "eval_Real.json"
    path.write_text(json.dumps(entries))
    return path


def machine() -> str:
    import av
    import decord

    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"decord {decord.__version__}, av {av.__version__}")


def main() -> None:
    from vreason.models.tiny import build_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(DEFAULT_CLIP))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=24)
    args = parser.parse_args()

    rows = []
    have_clip = Path(args.clip).is_file()
    if have_clip:
        rows += bench_readers(args.clip, args.repeats)
    else:
        rows.append(("readers", f"skipped: {args.clip} not found"))
    few = max(1, args.repeats // 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(build_tiny_model(tmp / "tiny"))
        synthetic = write_synthetic_benchmark(tmp / "bench", n=args.samples, seed=0)
        rows += bench_datamodule(model, synthetic, args.samples, few)
        if have_clip:
            real = real_clip_benchmark(args.clip, tmp / "real", 8)
            rows += bench_cache(model, real, 8, few, "8 x real clip (360x640, 16 frames)", tmp / "cache-real")
        rows += bench_cache(model, synthetic, args.samples, few, f"{args.samples} synthetic clips (112x112)",
                            tmp / "cache-synthetic")
    width = max(len(name) for name, _ in rows)
    print(f"machine: {machine()}")
    print(f"clip: {args.clip}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
