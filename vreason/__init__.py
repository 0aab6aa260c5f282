"""vreason: V-Reason, training-free video reasoning (see README.md).

Public API (README, "Using it"): `ControllerConfig`, `DecodeConfig`, `VideoConfig`, `VReasonGenerator`,
`GenerationResult`, `load_model`, and the subpackages `vreason.ops`, `vreason.data`,
`vreason.scoring`, `vreason.models`. Heavy imports (transformers, the compiled ops) happen on
first use, so `import vreason` stays cheap for the CLI and for data-loader workers.
"""
from __future__ import annotations

import importlib

from vreason.config import ControllerConfig, DecodeConfig, VideoConfig

__version__ = "0.1.0"

_LAZY = {
    "VReasonGenerator": "vreason.generation",
    "GenerationResult": "vreason.generation",
    "load_model": "vreason.models",
}

__all__ = ["ControllerConfig", "DecodeConfig", "VideoConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vreason' has no attribute {name!r}")
