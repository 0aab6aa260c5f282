"""What produced a run's records, as plain JSON values: the resume key, the summary's header and
TensorBoard's hyperparameters.

The module and the datamodule each describe themselves (`VReasonModule.run_settings()`,
`BenchmarkDataModule.run_settings()`); this file only combines the two. The resume key
(`run_config`) holds what determines the predictions (model, controller, decoding, the benchmark
files with a hash of their contents, the media root, the video settings), never where outputs go
or how fast they are made, so a resume with the same inputs is accepted and anything else is
refused with one line.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from vreason.records import json_default

__all__ = ["plain", "run_label", "run_config", "run_info", "flat_hparams"]


def plain(value: Any) -> Any:
    """Dataclasses and namespaces as plain dicts: LightningCLI stores init args as dicts, direct
    construction keeps the dataclasses, and both must compare and print alike."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def run_label(controller: dict) -> str:
    """The mode as a run is labelled in summaries: `switch`, `off`, and `+lite<r>` whenever Lite
    prunes, whatever the mode (plain decoding over a pruned cache is not plain `off`)."""
    mode = controller.get("mode") or "run"
    prune = float(controller.get("prune_ratio") or 0.0)
    return f"{mode}+lite{prune:g}" if prune > 0 else mode


def run_config(module_settings: dict, data_settings: Optional[dict]) -> dict:
    """The resume key: the module's settings and, under `data`, the datamodule's, as JSON values."""
    cfg = {**plain(module_settings), "data": plain(data_settings or {})}
    return json.loads(json.dumps(cfg, default=json_default, sort_keys=True))


def run_info(module_settings: dict, data_settings: Optional[dict] = None) -> dict:
    """The header of summary.json: which model and settings produced it."""
    settings = run_config(module_settings, data_settings)
    controller = settings.get("controller") or {}
    label = run_label(controller)
    model = Path(str(settings.get("model_path") or "")).name or None
    return {"model": model, "model_path": settings.get("model_path"), "mode": controller.get("mode"),
            "label": label, "controller": controller, "decode": settings.get("decode"),
            "data": settings["data"], "title": f"{model or 'model'} · {label}"}


def flat_hparams(module_settings: dict, data_settings: Optional[dict] = None) -> dict:
    """Scalar hyperparameters with dotted names (`controller.mode`, ...), as TensorBoard's HParams
    plugin shows them; lists (the benchmark files) become one string."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float, str, bool)):
            out[prefix] = value
        else:
            out[prefix] = "None" if value is None else json.dumps(value, default=json_default)

    walk("", {**run_config(module_settings, data_settings), "label": run_label(plain(module_settings).get("controller") or {})})
    return out
