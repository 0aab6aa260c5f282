"""The `lmms_eval.models` entry point (pyproject.toml): lmms-eval calls `manifest()` when it builds
its model registry, so `--model vreason` resolves to the chat class without a fork of lmms-eval."""
from __future__ import annotations

MODEL_ID = "vreason"
CHAT_CLASS = "vreason.lmms_eval.model.VReason"


def manifest():
    """lmms-eval's `ModelManifest` for `--model vreason` (a chat model: `is_simple = False`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS)
