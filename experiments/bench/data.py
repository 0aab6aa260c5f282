"""Data-path throughput: frames/s of reading 16 and 32 uniformly sampled frames from the shared real
clip with decord vs PyAV (one decode thread each), and samples/s of `BenchmarkDataModule` with 0 and 2 loader workers over
the synthetic benchmark (tiny model's processor). Prints a table and the machine.

    python experiments/bench/data.py [--clip PATH] [--repeats 5] [--samples 24]

(with the project installed, or `PYTHONPATH=.` from the repository root)
"""
from __future__ import annotations

import argparse
import os
import platform
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


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: file cache, codec set-up
    times = []
    for _ in range(repeats):
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
                         ("load_video (decord + resize)", lambda: load_video(clip, num_frames=n))):
            seconds = timed(fn, repeats)
            rows.append((f"{name}, {n} frames", f"{n / seconds:8.1f} frames/s  ({seconds * 1e3:6.1f} ms/clip)"))
    return rows


def bench_datamodule(samples: int, repeats: int) -> list[tuple[str, str]]:
    from vreason.models.tiny import build_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        bench = write_synthetic_benchmark(Path(tmp) / "bench", n=samples, seed=0)
        for workers in (0, 2):
            dm = BenchmarkDataModule(files=[str(bench)], model_path=str(model), num_frames=16, num_workers=workers)

            def run():
                count = sum(len(batch) for batch in dm.predict_dataloader())
                assert count == samples

            seconds = timed(run, repeats)
            rows.append((f"datamodule, {workers} workers", f"{samples / seconds:8.1f} samples/s  "
                                                             f"({samples} synthetic samples, 16 frames, incl. worker start)"))
    return rows


def machine() -> str:
    import decord

    try:
        import av
        av_version = av.__version__
    except ImportError:
        av_version = "absent"
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"decord {decord.__version__}, av {av_version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(DEFAULT_CLIP))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=24)
    args = parser.parse_args()

    rows = []
    if Path(args.clip).is_file():
        rows += bench_readers(args.clip, args.repeats)
    else:
        rows.append(("readers", f"skipped: {args.clip} not found"))
    rows += bench_datamodule(args.samples, max(1, args.repeats // 2))
    width = max(len(name) for name, _ in rows)
    print(f"machine: {machine()}")
    print(f"clip: {args.clip}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
