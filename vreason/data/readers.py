"""The two video decoders behind `load_video`: decord (what Qwen2.5-VL's reference utilities use)
and PyAV (FFmpeg's own API), for files decord cannot open or decode.

Both answer the same questions the same way: the frame count, the average frame rate and RGB
frames at given indices, counted from the first decoded frame. On H.264 clips the frames are the
same pixels (both convert with FFmpeg's swscale); README "Long runs" states the measured bound.
Frames come in chunks of bounded size so that a long or very large video is never held whole at
its source resolution: the caller resizes each chunk before asking for the next.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from vreason.data.errors import VideoError

READERS = ("decord", "pyav")


def one_line(exc: BaseException) -> str:
    """decord's messages carry a timestamp, a source location and sometimes several lines;
    PyAV's an errno prefix."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"^(\[[\d:]+\]\s+\S+:\d+:\s*)+", "", text)
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text)


def chunk_length(height: int, width: int, budget_bytes: int) -> int:
    """How many RGB frames of this size fit in `budget_bytes` (at least one)."""
    return max(1, budget_bytes // max(1, height * width * 3))


class DecordSource:
    """A decord `VideoReader`; frames by `get_batch`, which seeks frame-accurately."""

    name = "decord"

    def __init__(self, path: str, num_threads: int) -> None:
        import decord

        self.path = path
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as exc:  # DECORDError or RuntimeError
            detail = one_line(exc)
            if detail.startswith("Error reading"):  # decord printed the real reason to stderr
                detail = "not a readable video (corrupted, truncated or unsupported)"
            raise VideoError(f"cannot open video {path}: {detail}") from None
        self.total, self.fps = len(self._reader), float(self._reader.get_avg_fps())

    def chunks(self, indices: list[int], budget_bytes: int) -> Iterator[np.ndarray]:
        # decord does not report the frame size before decoding: the first frame alone tells it.
        start, step = 0, 1
        while start < len(indices):
            wanted = indices[start:start + step]
            try:
                array = self._reader.get_batch(wanted).asnumpy()
            except Exception as exc:
                raise VideoError(f"cannot decode frames of {self.path}: {one_line(exc)}") from None
            yield array
            start += len(wanted)
            if array.ndim == 4:
                step = chunk_length(array.shape[1], array.shape[2], budget_bytes)

    def close(self) -> None:
        self._reader = None


class PyAVSource:
    """A PyAV container decoded front to back: the wanted frames are converted, the rest only
    decoded (seeking lands on keyframes and would decode the same frames anyway)."""

    name = "pyav"

    def __init__(self, path: str, num_threads: int) -> None:
        import av

        self.path = path
        try:
            self._container = av.open(path)
            streams = self._container.streams.video
            if not streams:
                raise VideoError(f"cannot open video {path}: no video stream")
            self._stream = streams[0]
            self._stream.codec_context.thread_count = num_threads
            rate = self._stream.average_rate or self._stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            self.total = self._stream.frames or self._count_packets()
        except VideoError:
            self.close()
            raise
        except Exception as exc:  # av.FFmpegError and friends
            self.close()
            raise VideoError(f"cannot open video {path}: {one_line(exc)}") from None

    def _count_packets(self) -> int:
        # Containers without a frame count in their header (some mkv, webm): one demux pass,
        # no decoding, then back to the start.
        count = sum(1 for packet in self._container.demux(self._stream) if packet.size)
        self._container.seek(0, stream=self._stream)
        return count

    def chunks(self, indices: list[int], budget_bytes: int) -> Iterator[np.ndarray]:
        out: list[np.ndarray] = []
        step, position = 1, 0
        try:
            decoded = self._container.decode(self._stream)
            for i, frame in enumerate(decoded):
                while position < len(indices) and indices[position] == i:  # indices may repeat
                    out.append(frame.to_ndarray(format="rgb24"))
                    position += 1
                    if len(out) >= step:
                        yield np.stack(out)
                        step = chunk_length(out[0].shape[0], out[0].shape[1], budget_bytes)
                        out = []
                if position == len(indices):
                    break
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"cannot decode frames of {self.path}: {one_line(exc)}") from None
        if out:
            yield np.stack(out)
        if position < len(indices):
            raise VideoError(f"cannot decode frames of {self.path}: the stream ended before frame "
                             f"{indices[position]} of {self.total}")

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


def open_source(reader: str, path: str, num_threads: int):
    """A `DecordSource` or `PyAVSource` (an unknown name is a caller error)."""
    sources = {"decord": DecordSource, "pyav": PyAVSource}
    if reader not in sources:
        raise ValueError(f"unknown video reader {reader!r} (expected one of {', '.join(READERS)})")
    return sources[reader](path, num_threads)
