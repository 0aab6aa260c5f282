"""Video reading, sampling and resizing frames exactly as Qwen2.5-VL's reference utilities
(qwen-vl-utils' `fetch_video` with the decord backend) do, with what a long run needs around it:
a time limit per read, a second decoder, bounded memory and a frame cache (README, "Long runs").

The anchors' numbers were produced with those utilities, so the frame indices, the frame count
rounding and the resized shapes are reproduced rule for rule (tests compare against the package
itself). The metadata returned beside the frames is what the transformers processor needs to put
the video tokens at the right temporal positions (`second_per_grid_ts` derives from the sampled
fps, i.e. from `indices`, `total_num_frames` and the source `fps`).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from vreason.config import VideoConfig
from vreason.data.errors import VideoError
from vreason.data.frame_cache import FrameCache, cache_key
from vreason.data.readers import open_source
from vreason.data.timeout import call_with_timeout

# Qwen2.5-VL's constants (qwen-vl-utils): frames come in pairs (temporal patch 2), sides are
# multiples of patch 14 x spatial merge 2.
FRAME_FACTOR = 2
IMAGE_FACTOR = 28
DEFAULT_FPS = 2.0
MAX_RATIO = 200
# Per-frame ceiling and whole-video pixel budget that qwen-vl-utils applies on top of the
# caller's max_pixels (768 tokens a frame; 90% of a 128k-token context for the whole clip).
VIDEO_FRAME_MAX_PIXELS = 768 * IMAGE_FACTOR * IMAGE_FACTOR
VIDEO_TOTAL_PIXELS = 128000 * IMAGE_FACTOR * IMAGE_FACTOR * 0.9
# **ours**: frames are decoded and resized in chunks of at most this many source bytes, so a long
# or very large video never sits whole in memory at its source resolution; and a video whose
# frames exceed MAX_SOURCE_PIXELS (past 8K) is refused at its first frame, before any chunk.
DECODE_CHUNK_BYTES = 256 * 2**20
MAX_SOURCE_PIXELS = 8192 * 8192


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's resize rule: both sides multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise VideoError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def num_sampled_frames(total_frames: int, video_fps: float, num_frames: int | None = None,
                       fps: float | None = None, min_frames: int = 4, max_frames: int = 768) -> int:
    """How many frames to sample (qwen-vl-utils' `smart_nframes`): `num_frames` rounded to the
    nearest even count when given, else `fps` (default 2) frames per second bounded by
    `min_frames`/`max_frames` and the clip length, rounded down to even.

    **ours**: where the reference fails because the clip is shorter than that (a one-frame clip,
    16 frames asked of 5), the answer is every frame once, rounded up to an even count: the last
    frame is repeated, as qwen-vl-utils pads a video given as frames (`sample_indices`).
    """
    if num_frames is not None:
        n = round(num_frames / FRAME_FACTOR) * FRAME_FACTOR
    else:
        fps = DEFAULT_FPS if fps is None else fps
        lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
        n = min(min(max(total_frames / video_fps * fps, lo), hi), total_frames)
        n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if n > total_frames or n < FRAME_FACTOR:
        n = math.ceil(total_frames / FRAME_FACTOR) * FRAME_FACTOR
    return int(n)


def sample_indices(total_frames: int, num: int) -> list[int]:
    """`num` frame indices spread uniformly over the whole clip, first and last included; a clip
    with fewer frames gives each once and its last frame again to make up the count."""
    if num > total_frames:
        return list(range(total_frames)) + [total_frames - 1] * (num - total_frames)
    return torch.linspace(0, total_frames - 1, num).round().long().tolist()


def frame_size(height: int, width: int, num: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Resized (height, width) of each of `num` frames: qwen-vl-utils caps max_pixels by a per-frame
    ceiling and by an even share of the whole-video budget before `smart_resize`."""
    cap = max(min(VIDEO_FRAME_MAX_PIXELS, VIDEO_TOTAL_PIXELS / num * FRAME_FACTOR), int(min_pixels * 1.05))
    return smart_resize(height, width, IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=min(max_pixels, cap))


def decode_video(path: str, video: VideoConfig, reader: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Open `path` with `reader` (decord or pyav), sample and resize: frames `[T, C, H, W]` uint8
    and their metadata (see `load_video`). Runs without a time limit; `load_video` adds one."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    source = open_source(reader, path, video.num_threads)
    try:
        total, video_fps = source.total, source.fps
        if total < 1 or not video_fps > 0:
            raise VideoError(f"video {path} reports {total} frames at {video_fps} fps")
        n = num_sampled_frames(total, video_fps, video.num_frames, video.fps, video.min_frames, video.max_frames)
        indices = sample_indices(total, n)
        resized, size = [], None
        for array in source.chunks(sorted(set(indices)), DECODE_CHUNK_BYTES):
            if array.ndim != 4 or array.shape[-1] != 3:
                raise VideoError(f"decoding {path} gave frames of shape {tuple(array.shape)}, expected (T, H, W, 3)")
            if size is None:
                height, width = array.shape[1:3]
                if height * width > MAX_SOURCE_PIXELS:
                    raise VideoError(f"video {path} is {width}x{height}, above the {MAX_SOURCE_PIXELS} pixels a frame "
                                     f"read here may have")
                size = frame_size(height, width, n, video.min_pixels, video.max_pixels)
            chunk = torch.from_numpy(array).permute(0, 3, 1, 2)
            resized.append(resize(chunk, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True))
            del array, chunk
    finally:
        source.close()
    distinct = sorted(set(indices))
    frames = torch.cat(resized) if len(resized) > 1 else resized[0]
    if frames.shape[0] != len(distinct):
        raise VideoError(f"decoding {path} gave {frames.shape[0]} frames, expected {len(distinct)}")
    if len(distinct) != n:  # a short clip: its last frame again, to make up the count
        position = {index: k for k, index in enumerate(distinct)}
        frames = frames[[position[i] for i in indices]]
    meta = {
        "indices": indices,
        "frames_indices": indices,
        "timestamps": [i / video_fps for i in indices],
        "fps": video_fps,
        "sampled_fps": n / total * video_fps,
        "total_num_frames": total,
        "width": int(width),
        "height": int(height),
        "duration": total / video_fps,
        "video_backend": source.name,
    }
    return frames.contiguous().numpy(), meta


def _check_file(path: str) -> None:
    """One-line reasons for what no decoder needs to see."""
    if os.path.isdir(path):
        raise VideoError(f"video path is a folder, not a file: {path}")
    if not os.path.isfile(path):
        raise VideoError(f"video not found: {path}")
    if os.path.getsize(path) == 0:
        raise VideoError(f"video file is empty: {path}")


def load_video(path: str | os.PathLike, video: VideoConfig | None = None, **settings: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a video and sample frames the Qwen2.5-VL way.

    `video` holds every setting (default `VideoConfig()`); keyword `settings` replace some of its
    fields (`load_video(path, num_frames=8)`). Frames are sampled by count or by rate, then resized
    with bicubic antialiased interpolation to sides that are multiples of 28 and between
    `min_pixels` and `max_pixels` pixels a frame.

    Returns `frames` (uint8, `[T, C, H, W]`) and `meta`: `indices`, `timestamps` (seconds),
    `fps` (source rate), `total_num_frames`, `width`/`height` (source), `duration` (seconds),
    `sampled_fps`, `video_backend` (the reader that produced the frames), `frames_indices` (the
    same as `indices`, under the name transformers' `VideoMetadata` uses) and `from_cache`.
    Raises `VideoError` with a one-line reason when the file is missing, cannot be opened or
    decoded by any allowed reader, or a read takes longer than `video_timeout`.
    """
    if video is None or settings:
        video = VideoConfig(**{**(vars(video) if video is not None else {}), **settings})
    path = os.fspath(path)
    _check_file(path)
    cache = FrameCache(video.frame_cache) if video.frame_cache else None
    key = cache_key(path, video.sampling()) if cache is not None else None
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        frames, meta = hit
        return torch.from_numpy(frames.copy()), {**meta, "from_cache": True}
    readers = ("decord", "pyav") if video.video_reader == "auto" else (video.video_reader,)
    first_error = None
    for reader in readers:
        try:
            frames, meta = call_with_timeout(decode_video, (path, video, reader), video.video_timeout, "video read")
            break
        except VideoError as exc:
            first_error = first_error or exc
    else:
        raise first_error
    if cache is not None:
        cache.put(key, frames, meta)
    return torch.from_numpy(frames), {**meta, "from_cache": False}
