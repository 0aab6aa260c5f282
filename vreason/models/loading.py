"""Loading local checkpoints of the supported families (`auto.py`).

Only local folders: nothing is fetched (`local_files_only=True`), no remote code runs
(`trust_remote_code=False`) and only safetensors weights are read, so a folder that is
incomplete fails at once with a one-line `ModelLoadError` naming what is missing instead of a
download attempt or a pickle load.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from vreason.models.auto import supported_model_types

__all__ = ["ModelLoadError", "load_model"]


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded; the message is one line naming the cause."""


def _check_folder(path: Path) -> dict:
    if not path.is_dir():
        raise ModelLoadError(f"model folder not found: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"model folder {path} has no config.json")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {cfg_file}: {exc}") from None
    model_type = cfg.get("model_type")
    if model_type not in supported_model_types():
        raise ModelLoadError(
            f"model folder {path} holds model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
        )
    if not (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").is_file():
        what = "only .bin weights (safetensors required)" if any(path.glob("*.bin")) else "no weights"
        raise ModelLoadError(f"model folder {path} has {what}: expected model.safetensors or model.safetensors.index.json")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelLoadError(f"model folder {path} lacks weight shard(s): {', '.join(missing[:3])}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise ModelLoadError(f"model folder {path} has no tokenizer (tokenizer.json or vocab.json)")
    if not any((path / f).is_file() for f in ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")):
        raise ModelLoadError(f"model folder {path} has no processor config (preprocessor_config.json)")
    return cfg


def _resolve_dtype(dtype: str | torch.dtype, cfg: dict):
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return table[dtype]


def _weights_dtype(torch_dtype, config) -> torch.dtype:
    """The dtype the weights will have: the one asked for, else the checkpoint's (float32 if unsaid)."""
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    saved = getattr(config, "dtype", None) or getattr(config.get_text_config(), "dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    return saved if isinstance(saved, torch.dtype) else torch.float32


def load_model(path: str | Path, dtype: str | torch.dtype = "auto", device: str | torch.device | None = None,
               device_map: str | dict | None = None, max_memory: str | dict | None = None,
               offload_folder: str | Path | None = None):
    """Load `(model, processor)` from a local folder of a supported family.

    dtype: "auto" (the checkpoint's own dtype), "float32", "bfloat16", "float16" or a torch dtype.
    device: where the model goes; None means CUDA when available, else CPU. The model is in eval
    mode with every parameter frozen: V-Reason never computes a weight gradient.
    device_map: None (the whole model on `device`), "auto" (layers spread over the visible GPUs,
    `sharding.py`) or an explicit accelerate map {module name: device}; `device` is then unused.
    max_memory: with device_map "auto", a cap per GPU ("70GiB") or accelerate's {device: cap}.
    offload_folder: where weights a map sends to "disk" are kept.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = Path(path).expanduser()
    cfg = _check_folder(path)
    torch_dtype = _resolve_dtype(dtype, cfg)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device_map is not None and not (device_map == "auto" or isinstance(device_map, dict)):
        raise ModelLoadError(f"device_map must be 'auto' or a {{module: device}} mapping, got {device_map!r}")
    if max_memory is not None and device_map is None:
        raise ModelLoadError("max_memory needs device_map (e.g. device_map='auto')")
    placement, planned = {}, False
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if device_map is not None:
            from vreason.models import sharding

            config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            if device_map == "auto":
                device_map = sharding.plan_device_map(config, _weights_dtype(torch_dtype, config), max_memory)
                planned = True
            else:  # refused before any weight is read
                sharding.check_device_map(device_map, int(config.get_text_config().num_hidden_layers))
            placement = dict(device_map=device_map, offload_folder=None if offload_folder is None else str(offload_folder))
        with warnings.catch_warnings():
            if planned:  # our plan names a parameter (LLaVA-OneVision's image_newline) on purpose;
                # accelerate's check knows modules only and would warn about it on every load.
                warnings.filterwarnings("ignore", message="The following device_map keys do not match any submodules")
            model = AutoModelForImageTextToText.from_pretrained(
                path,
                dtype=torch_dtype,
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
                **placement,
            )
        if device_map is not None:
            sharding.check_placement(model)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model folder {path}: {first}") from exc
    model.requires_grad_(False)
    model.eval()
    if device_map is None:
        model.to(device)
    return model, processor
