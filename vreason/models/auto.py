"""Which adapter serves which checkpoint: a registry keyed by `config.model_type`.

As transformers' auto classes do, the mapping names each family's adapter by module and class,
and the module is imported only when a model of that family is used. Adding a family is one
line here and one file beside it (its adapter); nothing else in the package lists model types.
"""
from __future__ import annotations

import importlib

import torch

__all__ = ["ADAPTER_MAPPING", "adapter_class", "adapter_for", "supported_model_types"]

# config.model_type -> (module under vreason.models, adapter class)
ADAPTER_MAPPING: dict[str, tuple[str, str]] = {
    "qwen2_5_vl": ("qwen2_5_vl", "QwenVLAdapter"),
    "qwen2_vl": ("qwen2_5_vl", "QwenVLAdapter"),
    "llava_onevision": ("llava_onevision", "LlavaOnevisionAdapter"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLAdapter"),
    "qwen3_vl_moe": ("qwen3_vl", "Qwen3VLAdapter"),
    "internvl": ("internvl", "InternVLAdapter"),
    "qwen3_5": ("qwen3_5", "Qwen3_5Adapter"),
    "qwen3_5_moe": ("qwen3_5", "Qwen3_5Adapter"),
}


def supported_model_types() -> tuple[str, ...]:
    """The `model_type`s an adapter is registered for, in registration order."""
    return tuple(ADAPTER_MAPPING)


def adapter_class(model_type: str | None) -> type:
    """The adapter class registered for `model_type`; ValueError naming the supported ones."""
    if model_type not in ADAPTER_MAPPING:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}")
    module, name = ADAPTER_MAPPING[model_type]
    return getattr(importlib.import_module(f"vreason.models.{module}"), name)


def adapter_for(model: torch.nn.Module):
    """The adapter of a loaded model, chosen by its `config.model_type`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return adapter_class(model_type)(model)
