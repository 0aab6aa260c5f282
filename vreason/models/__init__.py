"""Models: loading local checkpoints and the adapter of each supported family.

`load_model` (in `loading.py`) reads a local folder; `adapter_for` (in `auto.py`) picks the
family's adapter by `config.model_type`. `adapter.py` is the interface the generator is written
against; each family's file (e.g. `qwen2_5_vl.py`) implements it; `tiny.py` writes tiny offline
checkpoints for tests and the demo.
"""
from vreason.models.auto import ADAPTER_MAPPING, adapter_for, supported_model_types
from vreason.models.loading import ModelLoadError, load_model

__all__ = ["ADAPTER_MAPPING", "ModelLoadError", "adapter_for", "load_model", "supported_model_types"]
