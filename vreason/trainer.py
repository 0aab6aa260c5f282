"""The evaluation Trainer: what `vreason predict`, the demo and the tests run predictions with.

Its settings are written once here: TensorBoard under `<root>/tb`, the resumable prediction
writer and the progress bar, no checkpoints or model summary (nothing is trained), autograd
available (the controller's optimization needs it; Lightning's inference mode forbids it), and
full float32 precision only (`precision.check_trainer_precision`: the weights' dtype is the
model's setting, and mixed precision would round the controller's float32 products).

Long runs on several GPUs (**ours**): ranks never synchronise while they predict, so the first
collective at the end waits for the slowest rank. Lightning's process group gives up after 30
minutes; an evaluation's process group (`set_process_group_timeout`) and the writer's wait for
the other ranks (`PredictionWriter(rank_wait=...)`) both allow `DIST_TIMEOUT` (12 hours,
`records.py`) instead, `--dist_timeout_hours` on the command line.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Sequence

from vreason.records import DIST_TIMEOUT

__all__ = ["DIST_TIMEOUT", "TRAINER_DEFAULTS", "choose_cpu_threads", "eval_callbacks", "eval_logger", "eval_trainer", "long_run_allocator",
           "set_process_group_timeout"]


class _QuietLightning(logging.Filter):
    """Drops Lightning's "💡 Tip" about a cloud logging service, printed at every Trainer start (an
    evaluation run already logs to TensorBoard), and lets its device lines ("GPU available: ...",
    "TPU available: ...") through once per process: the demo makes one Trainer per mode, and the
    same lines five times over say nothing new."""

    DEVICE_LINES = ("GPU available:", "TPU available:", "HPU available:")

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("💡 Tip"):
            return False
        if message.startswith(self.DEVICE_LINES):
            if message in self._seen:
                return False
            self._seen.add(message)
        return True


_QUIET = _QuietLightning()


def hide_lightning_tips() -> None:
    """Install the filter above on Lightning's rank-zero logger (idempotent)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_QUIET)


def eval_logger(root: str | os.PathLike):
    """TensorBoard under `<root>/tb`, one folder per root (a resumed run adds event files there)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    hide_lightning_tips()
    return TensorBoardLogger(save_dir=str(root), name="tb", version="", default_hp_metric=False)


# Settings every evaluation trainer gets: no checkpoints or model summary (nothing is trained),
# and autograd available (the controller's optimization needs it; inference mode forbids it).
TRAINER_DEFAULTS = {"enable_checkpointing": False, "enable_model_summary": False, "inference_mode": False}


def eval_callbacks(progress_bar: bool = True, retry_errors: bool = True, rank_wait: timedelta = DIST_TIMEOUT) -> list:
    """The resumable writer and, unless turned off, the informative progress bar."""
    from vreason.callbacks import EvalProgressBar, PredictionWriter

    writer = PredictionWriter(retry_errors=retry_errors, rank_wait=rank_wait)
    return [writer] + ([EvalProgressBar()] if progress_bar else [])


def set_process_group_timeout(trainer, timeout: timedelta) -> None:
    """Give the process group the trainer will create `timeout` instead of Lightning's 30 minutes.
    Lightning's distributed strategies keep the timeout they pass to `init_process_group` in
    `_timeout` and take it as a constructor argument only; a strategy without one (one device)
    has no process group. Call it before `trainer.predict`."""
    if hasattr(trainer.strategy, "_timeout"):
        trainer.strategy._timeout = timeout


def long_run_allocator() -> None:
    """**ours**: with neither `PYTORCH_CUDA_ALLOC_CONF` nor `PYTORCH_ALLOC_CONF` set, use PyTorch's
    expandable segments, so memory fragmented by thousands of samples of different sizes is not
    an out-of-memory error (and a retry with fewer frames) hours into a run. Must run before the
    first CUDA allocation; a user's own setting is left alone."""
    if not os.environ.get("PYTORCH_CUDA_ALLOC_CONF") and not os.environ.get("PYTORCH_ALLOC_CONF"):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def eval_trainer(root: str | os.PathLike, accelerator: str = "cpu", devices: int | str = 1, strategy: str = "auto",
                 enable_progress_bar: bool = True, callbacks: Sequence = (), retry_errors: bool = True,
                 dist_timeout: timedelta = DIST_TIMEOUT, **kwargs):
    """A Trainer set up for evaluation: outputs under `root`, TensorBoard logger, the evaluation
    callbacks (then `callbacks`) and `TRAINER_DEFAULTS` (overridable through `kwargs`); with
    several processes, ranks wait for each other up to `dist_timeout`."""
    from lightning.pytorch import Trainer

    from vreason.precision import check_trainer_precision

    check_trainer_precision(kwargs.get("precision"))
    hide_lightning_tips()
    settings = {"logger": eval_logger(root), **TRAINER_DEFAULTS, **kwargs}
    trainer = Trainer(default_root_dir=str(root), accelerator=accelerator, devices=devices, strategy=strategy,
                      callbacks=eval_callbacks(enable_progress_bar, retry_errors, dist_timeout) + list(callbacks),
                      enable_progress_bar=enable_progress_bar, **settings)
    set_process_group_timeout(trainer, dist_timeout)
    return trainer


# **ours**: below this much weight on disk a model's CPU ops are too small to split over threads.
SMALL_MODEL_BYTES = 256 * 2**20


def choose_cpu_threads(model_path: str | os.PathLike) -> int | None:
    """One CPU thread for a small model, as the demo always ran: the tiny model's ops are too small
    to split, and on a busy machine a second OpenMP thread mostly waits at barriers (its decode
    ran several times slower with two). Larger models keep torch's default. `OMP_NUM_THREADS`,
    when set, is the user's choice and wins. Returns the thread count set, or None."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return None
    folder = os.fspath(model_path)
    try:
        weights = sum(e.stat().st_size for e in os.scandir(folder)
                      if e.is_file() and e.name.endswith((".safetensors", ".bin", ".pt")))
    except OSError:
        return None  # a missing folder is reported when the model loads
    if not 0 < weights < SMALL_MODEL_BYTES:
        return None
    torch.set_num_threads(1)
    return 1
