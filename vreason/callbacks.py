"""The two callbacks of an evaluation run: the prediction writer (records on disk, resume, and
the merge at the end) and the progress bar.

The writer appends each record to `predictions/<benchmark>.rank<R>.jsonl` as soon as it exists
(`records.py`), tells the datamodule which samples are finished before it shards the rest, and
on rank 0 at the end of predict merges every rank's records into the protocol's result files and
the summary (`report.py`) and TensorBoard (`tb_logging.py`). It learns what produced the run
from `run_settings()` of the module and of the datamodule.

With several ranks (DDP), ranks never synchronise while they predict, so at the end a fast rank
may wait hours for a slow one. It waits on the shared file system, not in a collective: each rank
writes a marker when its records are complete and waits for every rank's marker
(`records.wait_for_ranks`, up to `rank_wait`); only then do the collectives of the end (the live
metrics, the merge's barriers) run, all ranks present. A rank still missing after `rank_wait`
stops the run with one line; its records and everyone's stay, and the same command run again
resumes and merges (a re-run with nothing left to do only merges).

Resume (**ours**): finished samples are skipped; samples whose record is an error (a media root
that was wrong, a model that ran out of memory) run again by default, and their new record
supersedes the old one (`retry_errors=False` keeps error records as they are).
"""
from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from vreason.records import (DIST_TIMEOUT, PREDICTIONS_DIR, RUN_CONFIG, Record, clear_finished, json_default, mark_finished,
                             prediction_files, read_predictions, safe_name, truncate_partial_line, wait_for_ranks,
                             write_atomic)
from vreason.report import merge_predictions
from vreason.run_settings import flat_hparams, run_config, run_info

log = logging.getLogger(__name__)

__all__ = ["PredictionWriter", "EvalProgressBar", "ResumeMismatchError", "RanksDidNotFinishError"]


class ResumeMismatchError(ValueError):
    """The output folder holds predictions made with a different configuration."""


class RanksDidNotFinishError(RuntimeError):
    """Some ranks did not finish within the writer's `rank_wait`."""


def _settings(obj: Any) -> Optional[dict]:
    describe = getattr(obj, "run_settings", None)
    return describe() if callable(describe) else None


class PredictionWriter(BasePredictionWriter):
    """Writes records as they finish, resumes, and merges at the end (see the module docstring).

    output_dir: the run's root; None means `trainer.default_root_dir`.
    fsync: force each line to disk, so a power loss or a killed node loses at most one sample.
    retry_errors: on resume, run error samples again (default) instead of keeping their records.
    rank_wait: with several ranks, how long the first to finish waits for the others at the end.
    """

    def __init__(self, output_dir: Optional[str] = None, fsync: bool = True, retry_errors: bool = True,
                 rank_wait: timedelta = DIST_TIMEOUT) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.fsync = fsync
        self.retry_errors = retry_errors
        self.rank_wait = rank_wait
        self._files: dict[str, Any] = {}
        self._written = 0
        self._kept: list[Record] = []
        self._attempts: dict[str, int] = {}
        self.summary: Optional[dict] = None
        self.live_metrics: Optional[dict] = None

    def root(self, trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def setup(self, trainer, pl_module, stage: str) -> None:
        pred_dir = self.root(trainer) / PREDICTIONS_DIR
        self._check_run_config(trainer, pl_module, pred_dir)
        # Lightning's barrier after every rank's setup keeps this before any rank's wait.
        clear_finished(pred_dir, trainer.global_rank)
        self._written = 0
        # Only this rank writes its own files, so only it may cut their partial last lines; the
        # reads below skip partial lines anyway, whichever rank wrote them.
        for _, rank, path in prediction_files(pred_dir):
            if rank == trainer.global_rank:
                truncate_partial_line(path)
        existing = [r for recs in read_predictions(pred_dir).values() for r in recs]
        self._attempts = {str(r.key): r.attempt for r in existing}
        self._kept = [r for r in existing if not (self.retry_errors and r.error)]
        skip = getattr(trainer.datamodule, "skip_samples", None)
        remaining = None
        if callable(skip):
            # Every rank reads every rank's files, so all ranks drop the same keys before sharding.
            remaining = skip({str(r.key) for r in self._kept})
        elif self._kept:
            log.warning("predictions exist under %s but the data cannot skip samples: they will run again", pred_dir)
        if existing and trainer.is_global_zero:
            retried = len(existing) - len(self._kept)
            rank_zero_info(f"resuming from {pred_dir}: {len(self._kept)} samples done, "
                           f"{'?' if remaining is None else remaining} to run"
                           + (f" ({retried} of them error samples run again)" if retried else ""))

    def _check_run_config(self, trainer, pl_module, pred_dir: Path) -> None:
        current = run_config(_settings(pl_module) or {}, _settings(trainer.datamodule))
        path = pred_dir / RUN_CONFIG
        stored = None
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError:
                stored = None
            # Only records make a folder a resume: a run that failed before its first sample (a
            # mistyped model path, say) must not lock the folder to its settings.
            if stored is not None and stored != current and not any(prediction_files(pred_dir)):
                stored = None
            if stored is not None and stored != current:
                diff = sorted(_differences(stored, current))
                raise ResumeMismatchError(
                    f"{pred_dir} holds predictions made with a different {', '.join(diff)}; "
                    f"use another --trainer.default_root_dir (or delete {path} to mix them)"
                )
        if trainer.is_global_zero and stored is None:
            write_atomic(path, json.dumps(current, indent=2, sort_keys=True))

    def on_predict_start(self, trainer, pl_module) -> None:
        # The live metrics cover the whole run, resumed samples included; rank 0 alone adds them
        # so that the cross-rank sum counts each once.
        add = getattr(pl_module, "add_finished", None)
        if trainer.is_global_zero and callable(add):
            add(self._kept)

    def _file(self, trainer, benchmark: str):
        f = self._files.get(benchmark)
        if f is None:
            path = self.root(trainer) / PREDICTIONS_DIR / f"{safe_name(benchmark)}.rank{trainer.global_rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self._files[benchmark] = open(path, "a", encoding="utf-8")
        return f

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        for record in prediction or ():
            record.attempt = self._attempts.get(str(record.key), 0) + 1
            f = self._file(trainer, str(record.benchmark))
            f.write(json.dumps(record.to_dict(), ensure_ascii=False, default=json_default) + "\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            self._written += 1

    def _close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _wait_for_other_ranks(self, trainer) -> None:
        pred_dir = self.root(trainer) / PREDICTIONS_DIR
        mark_finished(pred_dir, trainer.global_rank, self._written)
        missing = wait_for_ranks(pred_dir, trainer.world_size, self.rank_wait.total_seconds())
        if missing:
            raise RanksDidNotFinishError(
                f"rank(s) {', '.join(map(str, missing))} did not finish within {self.rank_wait} of rank "
                f"{trainer.global_rank}; every finished record stays under {pred_dir}: run the same command again "
                "to resume and merge")

    def on_predict_end(self, trainer, pl_module) -> None:
        self._close()
        if trainer.world_size > 1:
            self._wait_for_other_ranks(trainer)
        compute = getattr(pl_module, "compute_metrics", None)
        # A collective: every rank computes, so the synced values are the whole run's.
        self.live_metrics = compute() if callable(compute) else None
        trainer.strategy.barrier("vreason_merge")
        if trainer.is_global_zero:
            module_settings, data_settings = _settings(pl_module) or {}, _settings(trainer.datamodule)
            info = run_info(module_settings, data_settings)
            max_tokens = (info.get("decode") or {}).get("max_new_tokens")
            self.summary = merge_predictions(self.root(trainer), run_info=info, max_tokens=max_tokens,
                                             live_metrics=self.live_metrics)
            logger = trainer.logger
            experiment = getattr(logger, "experiment", None) if logger is not None else None
            if experiment is not None and hasattr(experiment, "add_scalar"):
                from vreason.tb_logging import log_summary_to_tensorboard

                log_summary_to_tensorboard(experiment, self.summary, label=str(info["label"]),
                                           hparams=flat_hparams(module_settings, data_settings), logger=logger)
        trainer.strategy.barrier("vreason_merged")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._close()


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ (`data.files`, `controller.mode`, ...)."""
    out = []
    for key in set(stored) | set(current):
        a, b = stored.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


class EvalProgressBar(TQDMProgressBar):
    """Lightning's bar, with this process's running score, generation speed and errors beside it.

    The figures come from the records the module returns, through the same metric classes as the
    summary (`vreason.metrics`): "score" is the summary's score (`SCORE_DEFINITION`), "tok/s" its
    tokens/s over answered samples, both over the samples this process has run so far (a resume's
    finished samples are in the summary, not here). The bar is made at the first batch, when its
    length is known, so no empty `0/?` bar is printed before it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running = None

    def init_predict_tqdm(self):
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

        # Lightning's own settings, plus the length, which Lightning only sets after printing.
        return Tqdm(desc=self.predict_description, total=convert_inf(self.total_predict_batches_current_dataloader), position=2 * self.process_position,
                    disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
                    bar_format=self.BAR_FORMAT)

    def on_predict_start(self, trainer, pl_module) -> None:
        from vreason.metrics import EvalMetrics

        self._running = EvalMetrics(max_tokens=1, token_bins=1, sync_on_compute=False)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        if self._predict_progress_bar is not None:
            self._predict_progress_bar.close()
        self.predict_progress_bar = self.init_predict_tqdm()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._running is not None:
            for record in outputs or ():
                self._running.update(record)
        bar = self._predict_progress_bar
        if bar is not None and not bar.disable and self._running is not None and self._running.names:
            bar.set_postfix(self.stats(), refresh=False)
        if bar is not None:
            super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def stats(self) -> dict[str, Any]:
        """What the bar shows: score, tokens/s and (if any) errors of the samples run so far."""
        overall = self._running.compute()["overall"] if self._running is not None else {}
        out: dict[str, Any] = {}
        if overall.get("mean_score") is not None:
            out["score"] = f"{overall['mean_score']:.3f}"
        out["tok/s"] = f"{overall.get('tokens_per_s') or 0.0:.1f}"
        if overall.get("n_errors"):
            out["errors"] = overall["n_errors"]
        return out

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._predict_progress_bar is not None:
            self._predict_progress_bar.close()
        self.reset_dataloader_idx_tracker()
