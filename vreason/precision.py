"""The precision a generation documents: the model in its weights' dtype (`--model.dtype`), the
controller's float32 products in float32.

Two process-wide settings would change that silently. Autocast (Lightning's `--trainer.precision
16-mixed` / `bf16-mixed`, or a caller's `torch.autocast`) runs the model's and the controller's
float32 matmuls in bf16/fp16, and `torch.set_float32_matmul_precision("high")` (which Lightning's
CUDA tip recommends) runs them as TF32 on a GPU: ~1e-3 relative, ten times the controller's
tolerance. So (**ours**):

- the evaluation trainer refuses any precision but 32-true in one line (`check_trainer_precision`):
  the weights' precision is `--model.dtype`;
- a generation runs under `float32_products()`: autocast off and float32 matmul precision
  "highest" for its duration, the caller's settings restored after, with one warning line the
  first time it overrides them. Set once per sample, nothing per token.
"""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch

__all__ = ["float32_products", "runs_in_float32", "check_trainer_precision", "FULL_PRECISION"]

# Lightning's spellings of full float32 precision (None: its default, 32-true).
FULL_PRECISION = (None, "32-true", "32", 32)
_noted: set[str] = set()


def _autocast_types() -> list[str]:
    """Device types whose autocast is on in this thread."""
    types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [t for t in types if torch.is_autocast_enabled(t)]


@contextlib.contextmanager
def float32_products():
    """Autocast off and float32 matmul precision "highest" inside; the caller's settings after."""
    previous = torch.get_float32_matmul_precision()
    autocast = _autocast_types()
    overridden = [f"autocast on {', '.join(autocast)}"] if autocast else []
    overridden += [f"float32 matmul precision {previous!r}"] if previous != "highest" else []
    note = "; ".join(overridden)
    if note and note not in _noted:
        _noted.add(note)
        warnings.warn(f"vreason: generation runs without {note} (the model in its weights' dtype, the controller "
                      "in float32); the setting is restored after", stacklevel=3)
    with contextlib.ExitStack() as stack:
        for device_type in autocast:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        if previous != "highest":
            torch.set_float32_matmul_precision("highest")
            stack.callback(torch.set_float32_matmul_precision, previous)
        yield


def runs_in_float32(method):
    """Decorator: the method runs under `float32_products()`."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with float32_products():
            return method(*args, **kwargs)
    return wrapper


def check_trainer_precision(precision) -> None:
    """ValueError (one line) for a Lightning precision other than full float32."""
    if precision not in FULL_PRECISION:
        raise ValueError(f"trainer precision {precision!r} is not supported: the model runs in its weights' dtype "
                         "(--model.dtype, e.g. bfloat16) and the controller in float32, which mixed or reduced "
                         "precision would round; leave --trainer.precision unset (32-true)")
