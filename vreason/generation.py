"""`VReasonGenerator`: the public entry to generation with V-Reason (README, "Using it").

One sample (`generate`), per-sample inputs decoded together (`generate_samples`) and a collated
left-padded batch (`generate_batch`) all run the one engine (`decode.py`): `generate(seed, **s)` is
`generate_samples([s], seeds=[seed])[0]`, a batch of one. Families with a batch layout
(`DecoderAdapter.batch_keys`) decode several samples in one batch; the others run a list of
samples one batch of one after another, through the same engine.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from vreason.config import ControllerConfig, DecodeConfig
from vreason.decode import DecodeRun, GenerationResult
from vreason.models import adapter_for
from vreason.precision import runs_in_float32

__all__ = ["VReasonGenerator", "GenerationResult"]


class VReasonGenerator:
    """Generate with V-Reason on a vision-language model.

    The model's parameters are frozen here (`requires_grad_(False)`): the controller never needs
    a weight gradient and frozen weights keep autograd from recording anything for them.

    max_seconds: a wall-clock budget per call (prefill included; None: none). Past it, the
    samples stop after their current token with `stop_reason="time"`.
    logits_processors: transformers `LogitsProcessor`s applied after the ones `DecodeConfig`
    asks for (`sampling.py`), to every row of every batch.
    """

    def __init__(self, model: torch.nn.Module, controller: ControllerConfig | None = None, decode: DecodeConfig | None = None,
                 max_seconds: float | None = None, logits_processors: Sequence | None = None):
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds_per_sample must be > 0 seconds (or None: no limit), got {max_seconds}")
        self.max_seconds = max_seconds
        self.model = model
        self.adapter = adapter_for(model)
        self.controller_config = controller if controller is not None else ControllerConfig()
        self.decode_config = decode if decode is not None else DecodeConfig()
        self.logits_processors = list(logits_processors or [])
        model.requires_grad_(False)

    def generate(self, seed: int | None = None, **inputs) -> GenerationResult:
        """Generate for one sample given the processor's outputs as keywords.

        seed: overrides `DecodeConfig.seed` for this sample's sampling generator (e.g. a
        per-sample seed); unused with greedy decoding.
        """
        return self.generate_samples([inputs], seeds=[seed])[0]

    def generate_samples(self, samples: list[dict], seeds: Sequence | None = None) -> list[GenerationResult]:
        """Generate for per-sample processor outputs, one result each, each equal to that sample
        generated alone: as one batch where the family batches, else one batch of one at a time."""
        seeds = list(seeds) if seeds is not None else [None] * len(samples)
        if len(seeds) != len(samples):
            raise ValueError(f"{len(seeds)} seeds for {len(samples)} samples: give one per sample")
        for sample in samples:
            ids = torch.as_tensor(sample["input_ids"]) if "input_ids" in sample else None
            if ids is not None and ids.ndim == 2 and ids.shape[0] != 1:
                raise ValueError(f"a sample of batch size {ids.shape[0]}: pass one sample per entry "
                                 "(generate_batch takes a collated batch)")
        if len(samples) > 1 and self.adapter.batch_keys is not None:
            return self.generate_batch(seeds=seeds, **self.adapter.collate_inputs(samples))
        return [self._run(self.adapter.collate_inputs([sample]), [seed])[0] for sample, seed in zip(samples, seeds)]

    def generate_batch(self, seeds: Sequence | None = None, **inputs) -> list[GenerationResult]:
        """Generate for a left-padded batch of B samples (the processor's batched outputs, or
        `adapter.collate_inputs` of per-sample ones) as keywords: one result per row, each equal
        to that sample generated alone. seeds: one per row (None entries: `DecodeConfig.seed`).
        A family without a batch layout takes a batch of one row only (ValueError otherwise)."""
        ids = torch.as_tensor(inputs["input_ids"]) if "input_ids" in inputs else None
        rows = 1 if ids is None or ids.ndim < 2 else ids.shape[0]
        return self._run(inputs, list(seeds) if seeds is not None else [None] * rows)

    @runs_in_float32  # no autocast, float32 matmul precision "highest" (`precision.py`)
    def _run(self, inputs: dict, seeds: list) -> list[GenerationResult]:
        deadline = None if self.max_seconds is None else time.monotonic() + self.max_seconds
        run = DecodeRun(self.adapter, self.controller_config, self.decode_config, seeds, self.logits_processors, deadline)
        return run.run(inputs)
