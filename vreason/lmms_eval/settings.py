"""lmms-eval's settings to the project's configs: the video settings of `--model_args`, and each
request's generation kwargs (the task's `generation_kwargs`, or `--gen_kwargs`) as a `DecodeConfig`
and stop strings.

Sampling follows transformers' `generate` (**ours**): `do_sample` decides, and with greedy
decoding temperature, top-p, top-k and min-p are ignored. Only when a request does not say
`do_sample` does a temperature above 0 mean sampling, as lmms-eval's own Qwen wrappers read it.
A task such as `mmvu_val` (`temperature: 0.7`, `do_sample: false`) is therefore decoded greedily
here. Beam search is refused; keys the decoder has no use for are reported back (and logged once).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from vreason.config import DecodeConfig, VideoConfig

_SAMPLING_KEYS = ("top_p", "top_k", "min_p")


def video_settings(max_frames: int, fps: Optional[float], max_pixels: int, min_pixels: int,
                   video_reader: str, video_timeout: float, frame_cache: Optional[str]) -> VideoConfig:
    """The project's video settings from the model arguments: `max_frames` frames sampled
    uniformly (the Video-R1 protocol: 16), or with `fps` set, frames at that rate up to
    `max_frames` (as lmms-eval's Qwen wrappers take `max_num_frames` and `fps`)."""
    if fps is None:
        return VideoConfig(num_frames=int(max_frames), max_pixels=int(max_pixels), min_pixels=int(min_pixels),
                           video_reader=video_reader, video_timeout=float(video_timeout), frame_cache=frame_cache)
    return VideoConfig(fps=float(fps), max_frames=int(max_frames), min_frames=min(4, int(max_frames)),
                       max_pixels=int(max_pixels), min_pixels=int(min_pixels), video_reader=video_reader,
                       video_timeout=float(video_timeout), frame_cache=frame_cache)


def stop_strings(until: Any) -> list[str]:
    """lmms-eval's `until`: a string, a list of strings, or nothing."""
    if until is None:
        return []
    if isinstance(until, str):
        return [until] if until else []
    if isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        return [s for s in until if s]
    raise ValueError(f"generation kwarg until must be a string or a list of strings, got {until!r}")


def decode_settings(gen_kwargs: Optional[dict], base: DecodeConfig) -> tuple[DecodeConfig, list[str], list[str]]:
    """`(decode config, stop strings, ignored keys)` of one request's generation kwargs over
    `base` (the model's defaults: max_new_tokens, seed, repetition penalty)."""
    kwargs = dict(gen_kwargs or {})
    until = stop_strings(kwargs.pop("until", None))
    num_beams = kwargs.pop("num_beams", None)
    if num_beams not in (None, 1):
        raise ValueError(f"vreason decodes one sequence per request: num_beams={num_beams} is not supported")
    temperature = kwargs.pop("temperature", None)
    do_sample = kwargs.pop("do_sample", None)
    if do_sample is None:
        do_sample = temperature is not None and float(temperature) > 0
    fields: dict[str, Any] = {"do_sample": bool(do_sample)}
    sampling = {key: kwargs.pop(key, None) for key in _SAMPLING_KEYS}
    if fields["do_sample"]:
        if temperature is not None:
            if not float(temperature) > 0:
                raise ValueError(f"do_sample=True needs a temperature above 0, got {temperature}")
            fields["temperature"] = float(temperature)
        fields.update({key: (int(value) if key == "top_k" else float(value))
                       for key, value in sampling.items() if value is not None})
    for key, cast in (("max_new_tokens", int), ("repetition_penalty", float)):
        value = kwargs.pop(key, None)
        if value is not None:
            fields[key] = cast(value)
    return dataclasses.replace(base, **fields), until, sorted(kwargs)


def settings_key(decode: DecodeConfig, until: list[str]) -> tuple:
    """Requests with equal keys decode under the same settings and may share a batch."""
    return tuple(sorted(dataclasses.asdict(decode).items())) + (("until", tuple(until)),)
