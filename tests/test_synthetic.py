"""The synthetic benchmark: written, read back through `load_benchmark` and decord, every solution
scores 1 against itself, and the answers agree with what the decoded pixels show."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from vreason.data import load_benchmark
from vreason.data.synthetic import BACKGROUND, COLOURS, write_synthetic_benchmark
from vreason.data.video import VideoError, load_video
from vreason.scoring import extract_answer, score

N = 12


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_synthetic_benchmark(tmp_path_factory.mktemp("synth"), n=N, seed=0, with_errors=True)


def full_frames(path):
    """Every frame at full size (112x112 is within the default pixel bounds)."""
    frames, meta = load_video(path, num_frames=frame_count(path))
    return frames.permute(0, 2, 3, 1).numpy().astype(np.int32), meta


def frame_count(path):
    import decord

    reader = decord.VideoReader(str(path))
    n = len(reader)
    del reader
    return n


def foreground(frame: np.ndarray) -> np.ndarray:
    return np.abs(frame - np.array(BACKGROUND)).sum(-1) > 90


def components(mask: np.ndarray) -> int:
    """4-connected components of a boolean mask (plain BFS: an oracle independent of numpy tricks)."""
    seen = np.zeros_like(mask)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return count


def centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(foreground(frame))
    return np.array([ys.mean(), xs.mean()])


def test_round_trip_every_solution_scores_one(bench):
    samples = load_benchmark(bench)
    assert len(samples) == N + 3
    good, broken = samples[:N], samples[N:]
    assert {s.problem_type for s in good} == {"multiple choice", "numerical", "regression"}
    for s in good:
        assert s.error is None and s.benchmark == "Synthetic"
        assert score(s.solution, s.solution, s.problem_type) == 1.0
        frames, meta = load_video(s.media_path, num_frames=16)
        assert frames.shape == (16, 3, 112, 112) and meta["total_num_frames"] == 24
    assert broken[0].error.startswith("media not found")
    for s in broken[1:]:  # present on disk: they fail only when decoded
        assert s.error is None
        with pytest.raises(VideoError):
            load_video(s.media_path, num_frames=16)


def test_answers_agree_with_decoded_pixels(bench):
    for s in load_benchmark(bench)[:N]:
        frames, _ = full_frames(s.media_path)
        first, last = frames[0], frames[-1]
        kind, answer = s.entry["kind"], extract_answer(s.solution)
        if kind == "count":
            assert components(foreground(first)) == components(foreground(last)) == int(answer)
            continue
        move = centroid(last) - centroid(first)
        if kind == "distance":
            assert np.abs(move).max() == pytest.approx(float(answer), abs=1.5)
        elif kind == "direction":
            label = dict(o.split(". ") for o in s.entry["options"])[answer]
            dy, dx = move
            seen = ("down" if dy > 0 else "up") if abs(dy) > abs(dx) else ("right" if dx > 0 else "left")
            assert seen == label
        else:  # colour
            label = dict(o.split(". ") for o in s.entry["options"])[answer]
            mean = first[foreground(first)].mean(0)
            nearest = min(COLOURS, key=lambda c: np.abs(mean - np.array(COLOURS[c])).sum())
            assert nearest == label


def test_deterministic_for_a_seed(tmp_path):
    a = write_synthetic_benchmark(tmp_path / "a", n=4, seed=5)
    b = write_synthetic_benchmark(tmp_path / "b", n=4, seed=5)
    c = write_synthetic_benchmark(tmp_path / "c", n=4, seed=6)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    for name in ("synthetic_0000.mp4", "synthetic_0003.mp4"):
        assert (a.parent / "videos" / name).read_bytes() == (b.parent / "videos" / name).read_bytes()
    va, _ = load_video(a.parent / "videos" / "synthetic_0000.mp4", num_frames=4)
    vb, _ = load_video(b.parent / "videos" / "synthetic_0000.mp4", num_frames=4)
    assert torch.equal(va, vb)


def test_size_and_frames_options(tmp_path):
    path = write_synthetic_benchmark(tmp_path, n=2, num_frames=10, size=64, fps=5.0)
    s = load_benchmark(path)[0]
    frames, meta = load_video(s.media_path, num_frames=10)
    assert meta["total_num_frames"] == 10 and meta["fps"] == pytest.approx(5.0)
    assert frames.shape[-2:] == (56, 56)  # 64 rounds to the nearest multiple of 28
    with pytest.raises(ValueError):
        write_synthetic_benchmark(tmp_path, size=100)


def test_trained_clips_are_few_large_and_match_their_facts(tmp_path):
    from vreason.data.synthetic import TRAINED_CLIPS

    path = write_synthetic_benchmark(tmp_path, n=8, seed=2, **TRAINED_CLIPS)
    for s in load_benchmark(path):
        frames, meta = full_frames(s.media_path)
        assert frames.shape == (4, 56, 56, 3) and meta["total_num_frames"] == 4
        facts, first = s.entry["facts"], frames[0]
        if s.entry["kind"] == "count":
            assert components(foreground(first)) == facts["count"] == len(facts["objects"]) <= 4
            continue
        # Salient: the moving shape covers a good share of a 28-pixel video-token cell.
        assert foreground(first).sum() >= 150
        assert centroid(first) == pytest.approx(facts["start"], abs=1.5)
        assert centroid(frames[-1]) == pytest.approx(facts["end"], abs=1.5)
