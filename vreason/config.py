"""Dataclass configs: the knobs of the method (docs/method.md §2), of decoding and of video input.

They are plain dataclasses so that LightningCLI turns their fields into flags
(`--model.controller.mode`, `--model.decode.top_p`, ...) and YAML keys.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Literal, Optional

Mode = Literal["switch", "minimize", "maximize", "off"]


@dataclass
class ControllerConfig:
    """The test-time controller (docs/method.md §2).

    Args:
        mode: switch (entropy switching, the method), minimize (alpha = -1), maximize (alpha = +1),
            off (plain decoding, identical to transformers' generate).
        every_k: run an optimization round every every_k-th generated token (k = 0, every_k, 2*every_k, ...).
        steps: Adam steps per round.
        lr: Adam learning rate.
        ema_beta: beta of the entropy EMA that the switch compares with its running peak.
        prune_ratio: V-Reason (Lite): fraction of video tokens dropped from every layer's cache after
            prefill (0 disables Lite; the paper uses 0.5).
        adam_beta1: Adam's first-moment decay.
        adam_beta2: Adam's second-moment decay.
        adam_eps: Adam's epsilon.
    """

    mode: Mode = "switch"
    every_k: int = 2
    steps: int = 1
    lr: float = 1e-2
    ema_beta: float = 0.9
    prune_ratio: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.mode not in ("switch", "minimize", "maximize", "off"):
            raise ValueError(f"controller.mode must be switch|minimize|maximize|off, got {self.mode!r}")
        if self.every_k < 1:
            raise ValueError(f"controller.every_k must be >= 1, got {self.every_k}")
        if self.steps < 0:
            raise ValueError(f"controller.steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"controller.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"controller.ema_beta must be in [0, 1), got {self.ema_beta}")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"controller.prune_ratio must be in [0, 1), got {self.prune_ratio}")


@dataclass
class DecodeConfig:
    """Decoding. Greedy by default (the anchors decode effectively greedily).

    With `do_sample=True` the filters apply in transformers' order: temperature, top-H, top-k,
    top-p, min-p (transformers' own processors, `sampling.py`). `top_h` (Top-H decoding, arXiv
    2509.02510; None: off) keeps the most likely tokens while the entropy of the kept, renormalised
    distribution stays within `top_h` times the full distribution's. `seed` seeds a per-sample
    generator so a sample's output does not depend on the order samples run in. `repetition_penalty` (transformers' rule: the logits of every token already in
    the prompt or the output are divided by it when positive, multiplied when negative) applies
    before them, greedy included; 1.0 turns it off. Real Qwen2.5-VL checkpoints ship 1.05 in their
    generation config, which `model.generate` applies by default: set it here for parity.

    Args:
        max_new_tokens: most tokens generated per sample.
        do_sample: sample instead of greedy decoding.
        temperature: divides the logits before sampling.
        top_k: keep the k most likely tokens when sampling (0: all).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1: all).
        min_p: drop tokens below min_p times the most likely token's probability (0: none).
        top_h: Top-H decoding's entropy bound, in (0, 1] (null: off).
        seed: run seed; each sample draws from its own stream fixed by this seed and its key.
        repetition_penalty: transformers' rule on tokens already in the prompt or output (1: off).
        nowait: the NoWait baseline (`vreason/nowait.py`): tokens that would write a reflection word
            ("wait", "hmm", ...) are never chosen; it combines with every controller mode.
    """

    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    top_h: Optional[float] = None
    seed: int = 0
    repetition_penalty: float = 1.0
    nowait: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"decode.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"decode.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"decode.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"decode.top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"decode.min_p must be in [0, 1), got {self.min_p}")
        if self.top_h is not None and not 0.0 < self.top_h <= 1.0:
            raise ValueError(f"decode.top_h must be in (0, 1] (or None: off), got {self.top_h}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"decode.repetition_penalty must be > 0, got {self.repetition_penalty}")

    def seed_for(self, key: str) -> Optional[int]:
        """The sampling seed of the sample named `key` (None when greedy): each sample draws from
        its own stream, fixed by `seed` and the key, so its output does not depend on the order,
        the shard or the batch it runs in (`vreason predict` and the lmms-eval model alike)."""
        if not self.do_sample:
            return None
        return (self.seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63)


@dataclass
class VideoConfig:
    """How videos are read: uniform `num_frames`, or `fps` with frame bounds, each frame resized
    the Qwen way (sides multiples of 28) within [min_pixels, max_pixels], as Qwen2.5-VL's
    reference utilities do. The data module takes it whole; defaults live here only.

    Args:
        num_frames: frames per video, sampled uniformly (rounded to even). fps, when set, wins
            (both are CLI keys with defaults, so setting --data.fps alone must be enough).
        fps: frames per second of video instead of a fixed count (null: use num_frames).
        min_frames: lower bound on the count fps gives.
        max_frames: upper bound on the count fps gives.
        max_pixels: per-frame pixel bound (images use it too).
        min_pixels: per-frame lower pixel bound.
        num_threads: decoder threads per read (0: the decoder's choice).
        video_reader: decord, pyav, or auto (decord, and PyAV where decord cannot open or decode
            a file). The two give the same frame indices, sizes and metadata (README, "Long runs").
        video_timeout: seconds one read may take before it is abandoned and the sample becomes an
            error record; 0 reads in-process without a limit. **ours**: 120 s, far above a normal
            read (well under a second for a 1080p clip), far below a stalled run.
        frame_cache: folder of decoded, resized frames reused by later runs with the same settings
            (null: no cache).
    """

    num_frames: Optional[int] = 16
    fps: Optional[float] = None
    min_frames: int = 4
    max_frames: int = 768
    max_pixels: int = 256 * 28 * 28
    min_pixels: int = 4 * 28 * 28
    num_threads: int = 1
    video_reader: Literal["auto", "decord", "pyav"] = "auto"
    video_timeout: float = 120.0
    frame_cache: Optional[str] = None

    def __post_init__(self) -> None:
        if self.fps is not None:
            if not self.fps > 0:
                raise ValueError(f"data.fps must be > 0, got {self.fps}")
            self.num_frames = None
        elif self.num_frames is None:
            raise ValueError("set data.num_frames or data.fps")
        elif self.num_frames < 2:
            # Frames come in pairs (Qwen's temporal patch): one frame would round to none.
            raise ValueError(f"data.num_frames must be >= 2, got {self.num_frames}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"data.min_frames and data.max_frames need 1 <= min_frames <= max_frames, "
                             f"got {self.min_frames} and {self.max_frames}")
        if not 28 * 28 <= self.min_pixels <= self.max_pixels:
            raise ValueError(f"data.min_pixels and data.max_pixels need 784 <= min_pixels <= max_pixels, "
                             f"got {self.min_pixels} and {self.max_pixels}")
        if self.num_threads < 0:
            raise ValueError(f"data.num_threads must be >= 0, got {self.num_threads}")
        if self.video_reader not in ("auto", "decord", "pyav"):
            raise ValueError(f"data.video_reader must be auto|decord|pyav, got {self.video_reader!r}")
        if not self.video_timeout >= 0:
            raise ValueError(f"data.video_timeout must be >= 0 seconds (0: no limit), got {self.video_timeout}")

    def sampling(self) -> dict:
        """What decides the frames a read returns (the frame cache's key, the resume check): not
        where they are cached, how long a read may take, or how many threads decode."""
        return {"num_frames": self.num_frames, "fps": self.fps, "min_frames": self.min_frames,
                "max_frames": self.max_frames, "max_pixels": self.max_pixels, "min_pixels": self.min_pixels,
                "video_reader": self.video_reader}

    def with_num_frames(self, num_frames: int) -> "VideoConfig":
        """The same settings sampling `num_frames` uniformly (the out-of-memory retry)."""
        return replace(self, num_frames=num_frames, fps=None)
