"""Video reading with decord, sampling and resizing frames exactly as Qwen2.5-VL's reference
utilities (qwen-vl-utils' `fetch_video` with the decord backend) do.

The anchors' numbers were produced with those utilities, so the frame indices, the frame count
rounding and the resized shapes are reproduced rule for rule (tests compare against the package
itself). The metadata returned beside the frames is what the transformers processor needs to put
the video tokens at the right temporal positions (`second_per_grid_ts` derives from the sampled
fps, i.e. from `indices`, `total_num_frames` and the source `fps`).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any

import torch

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


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded; the message is one line."""


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = 4 * 28 * 28,
                 max_pixels: int = 256 * 28 * 28) -> tuple[int, int]:
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
    """How many frames to sample (qwen-vl-utils' `smart_nframes`).

    `num_frames` is rounded to the nearest even count. Where the reference would fail because the
    clip has fewer frames than that, the count is lowered to the clip's largest even count instead,
    so a short clip still yields an answer. Without `num_frames`, `fps` (default 2) frames per
    second, bounded by `min_frames`/`max_frames` and the clip length, rounded down to even.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("pass either num_frames or fps, not both")
    if num_frames is not None:
        n = round(num_frames / FRAME_FACTOR) * FRAME_FACTOR
        n = min(n, math.floor(total_frames / FRAME_FACTOR) * FRAME_FACTOR)
    else:
        fps = DEFAULT_FPS if fps is None else fps
        lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
        n = total_frames / video_fps * fps
        n = min(min(max(n, lo), hi), total_frames)
        n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= total_frames:
        raise VideoError(f"cannot sample {n} frames from a clip of {total_frames} frames")
    return int(n)


def sample_indices(total_frames: int, num: int) -> list[int]:
    """`num` frame indices spread uniformly over the whole clip, first and last included."""
    return torch.linspace(0, total_frames - 1, num).round().long().tolist()


def frame_size(height: int, width: int, num: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Resized (height, width) of each of `num` frames: qwen-vl-utils caps max_pixels by a per-frame
    ceiling and by an even share of the whole-video budget before `smart_resize`."""
    cap = max(min(VIDEO_FRAME_MAX_PIXELS, VIDEO_TOTAL_PIXELS / num * FRAME_FACTOR), int(min_pixels * 1.05))
    return smart_resize(height, width, IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=min(max_pixels, cap))


def _one_line(exc: BaseException) -> str:
    """decord's messages carry a timestamp, a source location and sometimes several lines."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return re.sub(r"^(\[[\d:]+\]\s+\S+:\d+:\s*)+", "", text)


def load_video(path: str | os.PathLike, num_frames: int | None = None, fps: float | None = None,
               max_pixels: int = 256 * 28 * 28, min_pixels: int = 4 * 28 * 28, min_frames: int = 4,
               max_frames: int = 768, num_threads: int = 1) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a video and sample frames the Qwen2.5-VL way.

    Frames are sampled by count (`num_frames`, uniform over the whole clip) or by rate (`fps`,
    default 2 when neither is given, bounded by `min_frames`/`max_frames`), then resized with
    bicubic antialiased interpolation so that sides are multiples of 28 and each frame has
    between `min_pixels` and `max_pixels` pixels.

    Returns `frames` (uint8, `[T, C, H, W]`) and `meta`: `indices`, `timestamps` (seconds),
    `fps` (source rate), `total_num_frames`, `width`/`height` (source), `duration` (seconds),
    `sampled_fps`, `video_backend`, and `frames_indices` (the same as `indices`, under the name
    transformers' `VideoMetadata` uses). Raises `VideoError` when the file is missing, cannot be
    opened or fails while decoding the sampled frames.
    """
    import decord
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"video not found: {path}")
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as exc:  # DECORDError or RuntimeError
        detail = _one_line(exc)
        if detail.startswith("Error reading"):  # decord printed the real reason to stderr
            detail = "not a readable video (corrupted, truncated or unsupported)"
        raise VideoError(f"cannot open video {path}: {detail}") from None
    try:
        total, video_fps = len(reader), float(reader.get_avg_fps())
        if total < 1 or not video_fps > 0:
            raise VideoError(f"video {path} reports {total} frames at {video_fps} fps")
        n = num_sampled_frames(total, video_fps, num_frames, fps, min_frames, max_frames)
        indices = sample_indices(total, n)
        try:
            array = reader.get_batch(indices).asnumpy()
        except Exception as exc:
            raise VideoError(f"cannot decode frames of {path}: {_one_line(exc)}") from None
    finally:
        del reader
    if array.ndim != 4 or array.shape[0] != n or array.shape[-1] != 3:
        raise VideoError(f"decoding {path} gave frames of shape {tuple(array.shape)}, expected ({n}, H, W, 3)")
    frames = torch.from_numpy(array).permute(0, 3, 1, 2)
    height, width = frames.shape[-2:]
    new_h, new_w = frame_size(height, width, n, min_pixels, max_pixels)
    frames = resize(frames, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True).contiguous()
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
        "video_backend": "decord",
    }
    return frames, meta
