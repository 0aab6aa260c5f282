"""The evaluation Trainer: what `vreason predict`, the demo and the tests run predictions with.

Its settings are written once here: TensorBoard under `<root>/tb`, the resumable prediction
writer and the progress bar, no checkpoints or model summary (nothing is trained), autograd
available (the controller's optimization needs it; Lightning's inference mode forbids it), and
full float32 precision only (`precision.check_trainer_precision`: the weights' dtype is the
model's setting, and mixed precision would round the controller's float32 products).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

__all__ = ["TRAINER_DEFAULTS", "eval_callbacks", "eval_logger", "eval_trainer"]


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's "💡 Tip" about a cloud logging service, printed at every Trainer start:
    an evaluation run already logs to TensorBoard, and nothing in it is for the user to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_NO_ADVERTISEMENT = _NoAdvertisement()


def hide_lightning_tips() -> None:
    """Install the filter above on Lightning's rank-zero logger (idempotent)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_ADVERTISEMENT)


def eval_logger(root: str | os.PathLike):
    """TensorBoard under `<root>/tb`, one folder per root (a resumed run adds event files there)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    hide_lightning_tips()
    return TensorBoardLogger(save_dir=str(root), name="tb", version="", default_hp_metric=False)


# Settings every evaluation trainer gets: no checkpoints or model summary (nothing is trained),
# and autograd available (the controller's optimization needs it; inference mode forbids it).
TRAINER_DEFAULTS = {"enable_checkpointing": False, "enable_model_summary": False, "inference_mode": False}


def eval_callbacks(progress_bar: bool = True, retry_errors: bool = True) -> list:
    """The resumable writer and, unless turned off, the informative progress bar."""
    from vreason.callbacks import EvalProgressBar, PredictionWriter

    return [PredictionWriter(retry_errors=retry_errors)] + ([EvalProgressBar()] if progress_bar else [])


def eval_trainer(root: str | os.PathLike, accelerator: str = "cpu", devices: int | str = 1, strategy: str = "auto",
                 enable_progress_bar: bool = True, callbacks: Sequence = (), retry_errors: bool = True, **kwargs):
    """A Trainer set up for evaluation: outputs under `root`, TensorBoard logger, the evaluation
    callbacks (then `callbacks`) and `TRAINER_DEFAULTS` (overridable through `kwargs`)."""
    from lightning.pytorch import Trainer

    from vreason.precision import check_trainer_precision

    check_trainer_precision(kwargs.get("precision"))
    settings = {"logger": eval_logger(root), **TRAINER_DEFAULTS, **kwargs}
    return Trainer(default_root_dir=str(root), accelerator=accelerator, devices=devices, strategy=strategy,
                   callbacks=eval_callbacks(enable_progress_bar, retry_errors) + list(callbacks),
                   enable_progress_bar=enable_progress_bar, **settings)
