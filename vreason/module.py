"""`VReasonModule`: the LightningModule that wires a model, the generator and the scoring.

`trainer.predict` feeds it batches from `BenchmarkDataModule` (lists of items, one per sample);
each item becomes one `Record`: the generated text, its score, its cost and the per-token traces
of entropy, EMA and α. Running the items, and what a failure costs, is `Predictor`'s
(`predict.py`); this module loads the model, and keeps the live metrics, the progress figures
and the per-sample TensorBoard plots.

The Hugging Face model is held outside the module's registered children: Lightning then neither
moves it (a model sharded over several GPUs stays where it was put), nor wraps it for DDP (there
is nothing to synchronize: no weight ever gets a gradient), nor counts it in checkpoints.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule

from vreason.config import ControllerConfig, DecodeConfig
from vreason.metrics import EvalMetrics
from vreason.predict import Predictor
from vreason.records import Record
from vreason.run_settings import plain, run_label

log = logging.getLogger(__name__)


class VReasonModule(LightningModule):
    """Evaluation of one model in one controller mode over benchmark samples.

    Args:
        model_path: a local model folder (`vreason.load_model`; Qwen2.5-VL, Qwen2-VL and README's families).
        controller: the test-time controller (--model.controller.mode switch|minimize|maximize|off, ...).
        decode: decoding (--model.decode.max_new_tokens, do_sample, temperature, top_k, top_p, min_p, seed).
        dtype: weights' dtype: auto (the checkpoint's), bfloat16, float16 or float32.
        plot_samples: per benchmark, how many of the first samples (on rank 0) get a TensorBoard
            figure of their entropy, EMA and alpha traces.
        device_map: auto spreads the model's layers over the visible GPUs (one process per node);
            null keeps it whole on the process's device.
        max_memory: with device_map, a cap per GPU ("70GiB").
        max_seconds_per_sample: wall-clock budget of one sample's generation (null: no limit); past
            it the sample stops with stop_reason "time" and its answer is scored as it stands.
    """

    def __init__(
        self,
        model_path: str,
        controller: ControllerConfig = ControllerConfig(),
        decode: DecodeConfig = DecodeConfig(),
        dtype: str = "auto",
        plot_samples: int = 4,
        device_map: Optional[str] = None,
        max_memory: Optional[str] = None,
        max_seconds_per_sample: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_path = model_path
        self.controller = controller
        self.decode = decode
        self.dtype_name = dtype
        self.plot_samples = plot_samples
        self.device_map, self.max_memory = device_map, max_memory
        if max_seconds_per_sample is not None and not max_seconds_per_sample > 0:
            raise ValueError(f"model.max_seconds_per_sample must be > 0 seconds (or null: no limit), got {max_seconds_per_sample}")
        self.max_seconds_per_sample = max_seconds_per_sample
        self.metrics = EvalMetrics(max_tokens=decode.max_new_tokens)
        self._hf_model = None
        self._processor = None
        self._predictor = None
        self._plotted: dict[str, int] = {}
        self._run = {"n": 0, "tokens": 0, "seconds": 0.0, "reward": 0.0, "errors": 0}

    @property
    def hf_model(self):
        return self._hf_model

    @property
    def processor(self):
        return self._processor

    @property
    def predictor(self) -> Optional[Predictor]:
        """What runs the samples (`predict.py`); None before `configure_model`."""
        return self._predictor

    def configure_model(self) -> None:
        # Called once per process, on the process's device; a second predict call reuses the model.
        if self._hf_model is not None:
            return
        from vreason import VReasonGenerator, load_model, nowait

        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        if self.device_map is not None and self._trainer is not None and self.trainer.num_devices > 1:
            raise ValueError("model.device_map spreads one model over a node's GPUs: run one process per node")
        model, processor = load_model(self.model_path, dtype=self.dtype_name, device=device,
                                      device_map=self.device_map, max_memory=self.max_memory)
        # object.__setattr__ keeps the model out of nn.Module's registry (see the module docstring).
        object.__setattr__(self, "_hf_model", model)
        self._processor = processor
        # The data side prepares inputs with this same processor instead of loading its own.
        connect = getattr(self._trainer.datamodule, "connect", None) if self._trainer is not None else None
        if callable(connect):
            connect(processor)
        extra = [nowait.NoWaitLogitsProcessor(processor.tokenizer)] if self.decode.nowait else None
        generator = VReasonGenerator(model, controller=self.controller, decode=self.decode,
                                     max_seconds=self.max_seconds_per_sample, logits_processors=extra)
        self._predictor = Predictor(generator, processor, self.controller.mode, self.decode,
                                    rank=self.global_rank, synchronize=self._synchronize)

    def run_settings(self) -> dict[str, Any]:
        """What of the module determines its records: the model folder, dtype, controller and
        decoding settings (the writer's resume key and the summary's header)."""
        return {"model_path": str(self.model_path), "dtype": str(self.dtype_name),
                "controller": plain(self.controller), "decode": plain(self.decode)}

    def add_finished(self, records: list[Record]) -> None:
        """Count records finished by an earlier run into the live metrics (a resume)."""
        for record in records:
            self.metrics.update(record)

    def compute_metrics(self) -> dict:
        """The live metrics over every rank (a collective: all ranks call it)."""
        return self.metrics.compute()

    def on_predict_start(self) -> None:
        self._plotted.clear()
        self._run = {"n": 0, "tokens": 0, "seconds": 0.0, "reward": 0.0, "errors": 0}

    # ------------------------------------------------------------------ per sample

    def predict_step(self, batch: list[dict], batch_idx: int, dataloader_idx: int = 0) -> list[Record]:
        # Padding items only keep DDP shards equally long (BenchmarkDataModule): no record. The
        # others run through the predictor (`predict.py`), together where they can.
        records = self._predictor.predict([item for item in batch if not item.get("padding")])
        for record in records:
            self.metrics.update(record)
            self._account(record)
            self._plot(record)
        return records

    def _synchronize(self) -> None:
        # Latency is wall time of the sample's generation, so queued GPU work must be finished.
        if self._hf_model is not None and self._hf_model.device.type == "cuda":
            torch.cuda.synchronize(self._hf_model.device)

    # ------------------------------------------------------------------ progress and plots

    def _account(self, record: Record) -> None:
        run = self._run
        run["n"] += 1
        run["tokens"] += record.num_new_tokens
        run["seconds"] += record.latency_s
        run["reward"] += record.reward
        run["errors"] += bool(record.error)
        experiment = self._experiment()
        if experiment is not None:
            experiment.add_scalar("running/tokens_per_s", self._tokens_per_s(), run["n"])
            # The mean reward over samples so far, not the summary's score (a mean over columns).
            experiment.add_scalar("running/mean_reward", run["reward"] / run["n"], run["n"])
            experiment.add_scalar("running/output_tokens", record.num_new_tokens, run["n"])

    def _tokens_per_s(self) -> float:
        return self._run["tokens"] / self._run["seconds"] if self._run["seconds"] > 0 else 0.0

    def _experiment(self):
        # Only rank 0 holds a real TensorBoard writer; other ranks skip the figure work entirely.
        if not self.trainer.is_global_zero or self.logger is None:
            return None
        experiment = getattr(self.logger, "experiment", None)
        return experiment if hasattr(experiment, "add_image") else None

    def _plot(self, record: Record) -> None:
        if self.plot_samples <= 0 or record.error or not record.entropy:
            return
        done = self._plotted.get(record.benchmark, 0)
        if done >= self.plot_samples:
            return
        experiment = self._experiment()
        if experiment is None:
            return
        from vreason.plots import figure_image, sample_trace_figure

        self._plotted[record.benchmark] = done + 1
        tag = f"samples/{record.benchmark}/{record.index:05d}" if isinstance(record.index, int) else f"samples/{record.key}"
        experiment.add_image(tag, figure_image(sample_trace_figure(record, run_label(plain(self.controller)))), 0, dataformats="HWC")
