"""A generated benchmark in the protocol format: short clips of moving coloured shapes.

Frames are drawn with numpy, encoded to H.264 mp4 with imageio-ffmpeg's bundled ffmpeg and read
back by decord like any benchmark video. Four question kinds cycle over the samples:
direction (multiple choice), colour (multiple choice), count (numerical) and distance travelled
in pixels (regression), so every scoring rule is exercised. Clips are tiny so that a CPU run
over the whole benchmark takes seconds, and the same seed gives the same questions, answers and
pixels.

Objects are large for the frame (a moving shape spans about a third of its side; counted shapes
sit one per cell of a 2×2 grid in small frames): at 56×56 pixels a video token covers a 28-pixel
cell, and a shape that fills much of its cell is what a small model learns to see in minutes
(**ours**: smaller objects stayed at chance for the same training budget). `TRAINED_CLIPS` are the
clip settings the shipped trained model (`vreason.models.tiny.trained_path()`) learned from, and
what `vreason synth` writes by default.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SHAPES = ("square", "circle")
KINDS = ("direction", "colour", "count", "distance")
BACKGROUND = (24, 24, 24)
LETTERS = "ABCD"
# The clips the shipped trained model saw: 4 frames of 56×56 (4 video tokens per frame pair).
TRAINED_CLIPS = {"num_frames": 4, "size": 56, "fps": 8.0}


def _draw(frame: np.ndarray, shape: str, colour: tuple[int, int, int], cy: int, cx: int, radius: int) -> None:
    ys, xs = np.ogrid[: frame.shape[0], : frame.shape[1]]
    if shape == "square":
        mask = (np.abs(ys - cy) <= radius) & (np.abs(xs - cx) <= radius)
    else:
        mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius * radius
    frame[mask] = colour


def _render(tracks: list[dict[str, Any]], num_frames: int, size: int) -> np.ndarray:
    """Frames `[T, H, W, 3]` uint8; each track has shape, colour, radius and per-frame centres."""
    video = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUND
    for t in range(num_frames):
        for track in tracks:
            cy, cx = track["centres"][t]
            _draw(video[t], track["shape"], COLOURS[track["colour"]], cy, cx, track["radius"])
    return video


def _linear_centres(start: tuple[int, int], step: tuple[int, int], distance: int, num_frames: int) -> list[tuple[int, int]]:
    """Integer centres moving `distance` pixels along `step` from the first to the last frame."""
    out = []
    for t in range(num_frames):
        d = round(distance * t / (num_frames - 1))
        out.append((start[0] + step[0] * d, start[1] + step[1] * d))
    return out


def encode_mp4(video: np.ndarray, path: str | os.PathLike, fps: float) -> None:
    """H.264 (yuv420p) mp4, single-threaded and bit-exact so that a seed gives the same bytes. The
    index (moov) goes first, as in streamable files, so a damaged payload opens and fails only
    when frames are decoded."""
    import imageio_ffmpeg

    t, h, w, _ = video.shape
    writer = imageio_ffmpeg.write_frames(
        os.fspath(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=8, ffmpeg_log_level="error",
        output_params=["-crf", "12", "-threads", "1", "-g", "8", "-fflags", "+bitexact",
                       "-flags:v", "+bitexact", "-map_metadata", "-1", "-movflags", "+faststart"],
    )
    writer.send(None)
    for frame in video:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()


def truncated_mp4(data: bytes) -> bytes:
    """The first half of an mp4: decord refuses to open it."""
    return data[: len(data) // 2]


def undecodable_mp4(data: bytes) -> bytes:
    """An mp4 with its index intact and the second half of its frame data zeroed: it opens, then
    fails while decoding frames. `data` must have its moov box first (see `encode_mp4`)."""
    start = data.find(b"mdat")
    if start < 0 or data.find(b"moov") > start:
        raise ValueError("need an mp4 whose moov box precedes its mdat box")
    cut = start + 4 + (len(data) - start - 4) // 2
    return data[:cut] + bytes(len(data) - cut)


def _question(kind: str, rng: np.random.Generator, num_frames: int, size: int) -> tuple[list[dict], dict[str, Any]]:
    """Tracks to render and the protocol fields (problem, type, options, solution) of one sample."""
    radius = max(3, size // 7)
    margin = radius + 2
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    if kind in ("direction", "colour", "distance"):
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        step = DIRECTIONS[direction]
        max_travel = size - 2 * margin - 1
        distance = int(rng.integers(max_travel // 3, max_travel + 1))
        # Start where the whole path stays inside the frame; the other axis is free.
        lo_hi = [(margin, size - margin - 1)] * 2
        start = []
        for axis in range(2):
            lo, hi = lo_hi[axis]
            if step[axis] > 0:
                hi -= distance
            elif step[axis] < 0:
                lo += distance
            start.append(int(rng.integers(lo, hi + 1)))
        tracks = [dict(shape=shape, colour=colour, radius=radius,
                       centres=_linear_centres((start[0], start[1]), step, distance, num_frames))]
        if kind == "direction":
            names = list(DIRECTIONS)
            fields = dict(problem=f"Which direction does the {colour} {shape} move?", problem_type="multiple choice",
                          options=[f"{LETTERS[i]}. {d}" for i, d in enumerate(names)],
                          solution=f"<answer>{LETTERS[names.index(direction)]}</answer>")
        elif kind == "colour":
            names = list(COLOURS)
            fields = dict(problem=f"What colour is the moving {shape}?", problem_type="multiple choice",
                          options=[f"{LETTERS[i]}. {c}" for i, c in enumerate(names)],
                          solution=f"<answer>{LETTERS[names.index(colour)]}</answer>")
        else:
            fields = dict(problem=f"How many pixels does the {colour} {shape} travel from the first frame to the last?",
                          problem_type="regression", solution=f"<answer>{distance}</answer>")
        centres = tracks[0]["centres"]
        fields["facts"] = {"direction": direction, "colour": colour, "shape": shape, "distance": distance,
                           "start": list(centres[0]), "end": list(centres[-1]), "size": size}
        return tracks, fields

    # count: shapes in distinct cells of a grid (2×2 in small frames), each drifting a little
    # inside its own cell.
    cells_per_side = 2 if size < 96 else 4
    cell = size // cells_per_side
    radius = cell // 4
    count = int(rng.integers(1, min(6, cells_per_side * cells_per_side) + 1))
    cells = rng.choice(cells_per_side * cells_per_side, size=count, replace=False)
    tracks = []
    drift = max(0, cell // 2 - radius - 2)
    for c in cells:
        cy0 = int(c // cells_per_side) * cell + cell // 2
        cx0 = int(c % cells_per_side) * cell + cell // 2
        step = DIRECTIONS[list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]]
        start = (cy0 - step[0] * drift // 2, cx0 - step[1] * drift // 2)
        tracks.append(dict(shape=SHAPES[rng.integers(len(SHAPES))], colour=list(COLOURS)[rng.integers(len(COLOURS))],
                           radius=radius, centres=_linear_centres(start, step, drift, num_frames)))
    objects = [{"shape": t["shape"], "colour": t["colour"], "cell": [int(c // cells_per_side), int(c % cells_per_side)]}
               for t, c in zip(tracks, cells)]
    fields = dict(problem="How many shapes are there in the video?", problem_type="numerical",
                  solution=f"<answer>{count}</answer>",
                  facts={"count": count, "objects": objects, "grid": cells_per_side, "size": size})
    return tracks, fields


def synthetic_clip(kind: str, rng: np.random.Generator, num_frames: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One clip `[T, H, W, 3]` uint8 of question `kind` and its protocol fields (with `facts`),
    drawn from `rng` exactly as `write_synthetic_benchmark` draws its samples."""
    tracks, fields = _question(kind, rng, num_frames, size)
    return _render(tracks, num_frames, size), fields


def write_synthetic_benchmark(out_dir: str | os.PathLike, n: int = 12, seed: int = 0, num_frames: int = 24,
                              size: int = 112, fps: float = 8.0, with_errors: bool = False) -> Path:
    """Write `eval_Synthetic.json` and its clips (`videos/`) under `out_dir`; return the JSON path.

    `n` samples cycle through direction, colour, count and distance questions; each clip has
    `num_frames` frames of `size`×`size` pixels at `fps`. With `with_errors`, three broken entries
    follow the good ones (for demos of error samples): a missing video, a truncated mp4 (fails to
    open) and an mp4 whose frame data is zeroed (opens, fails while decoding). Entries carry their
    ground truth under `facts` beside the protocol fields.
    """
    if n < 0 or num_frames < 2 or size < 32 or size % 8:
        raise ValueError("need n >= 0, num_frames >= 2 and size >= 32, a multiple of 8")
    out = Path(out_dir)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        tracks, fields = _question(kind, rng, num_frames, size)
        name = f"synthetic_{i:04d}.mp4"
        encode_mp4(_render(tracks, num_frames, size), videos / name, fps)
        entries.append({"problem_id": i, "kind": kind, "data_type": "video", "path": f"./videos/{name}", **fields})
    if with_errors:
        mc = dict(problem="Which direction does the red square move?", problem_type="multiple choice",
                  options=["A. left", "B. right", "C. up", "D. down"], solution="<answer>A</answer>", data_type="video")
        entries.append({"problem_id": n, "kind": "missing video", **mc, "path": "./videos/missing.mp4"})
        tracks, _ = _question("direction", np.random.default_rng(seed), num_frames, size)
        encode_mp4(_render(tracks, num_frames, size), videos / "truncated.mp4", fps)
        data = (videos / "truncated.mp4").read_bytes()
        (videos / "truncated.mp4").write_bytes(truncated_mp4(data))
        (videos / "undecodable.mp4").write_bytes(undecodable_mp4(data))
        for offset, name in enumerate(("truncated", "undecodable"), start=1):
            entries.append({"problem_id": n + offset, "kind": f"{name} video", **mc, "path": f"./videos/{name}.mp4"})
    path = out / "eval_Synthetic.json"
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return path
