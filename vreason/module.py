"""`VReasonModule`: the LightningModule that wires a model, the generator and the scoring.

`trainer.predict` feeds it batches from `BenchmarkDataModule` (lists of items, one per sample);
each item becomes one record: the generated text, its score, its cost and the per-token traces
of entropy, EMA and α. A sample that cannot run (from the data side, or any failure of its
generation, out-of-memory included) becomes an error record scored as `<answer>error</answer>`,
and the run goes on.

The Hugging Face model is held outside the module's registered children: Lightning then neither
moves it (a model sharded over several GPUs stays where it was put), nor wraps it for DDP (there
is nothing to synchronize: no weight ever gets a gradient), nor counts it in checkpoints.
"""
from __future__ import annotations

import gc
import logging
import time
import zlib
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule

from vreason.config import ControllerConfig, DecodeConfig
from vreason.metrics import EvalMetrics
from vreason.batch_predict import BatchPrediction
from vreason.run_settings import plain

log = logging.getLogger(__name__)

# Traces are stored with this many decimals: enough for plots and statistics, and a record of
# 1,024 tokens stays a few tens of kB of JSON.
TRACE_DECIMALS = 5


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class VReasonModule(BatchPrediction, LightningModule):
    """Evaluation of one model in one controller mode over benchmark samples.

    model_path: a local Qwen2.5-VL / Qwen2-VL folder (`vreason.load_model`).
    controller: the test-time controller (`--model.controller.mode switch|minimize|maximize|off`, ...).
    decode: decoding (`--model.decode.max_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`, `min_p`, `seed`).
    dtype: weights' dtype: auto (the checkpoint's), bfloat16, float16 or float32.
    device_map: `auto` spreads the model's layers over the visible GPUs (one process per node);
        None keeps it whole on the process's device. max_memory: with it, a cap per GPU ("70GiB").
    plot_samples: per benchmark, how many of the first samples (on rank 0) get a TensorBoard
        figure of their entropy, EMA and α traces.
    max_seconds_per_sample: wall-clock budget of one sample's generation (None: no limit); past
        it the sample stops with `stop_reason` "time" and its answer is scored as it stands.
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
        self._generator = None
        self._plotted: dict[str, int] = {}
        self._run = {"n": 0, "tokens": 0, "seconds": 0.0, "reward": 0.0, "errors": 0}

    @property
    def hf_model(self):
        return self._hf_model

    @property
    def processor(self):
        return self._processor

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
        object.__setattr__(self, "_generator", VReasonGenerator(model, controller=self.controller, decode=self.decode,
                                                                   max_seconds=self.max_seconds_per_sample,
                                                                   logits_processors=extra))

    def run_settings(self) -> dict[str, Any]:
        """What of the module determines its records: the model folder, dtype, controller and
        decoding settings (the writer's resume key and the summary's header)."""
        return {"model_path": str(self.model_path), "dtype": str(self.dtype_name),
                "controller": plain(self.controller), "decode": plain(self.decode)}

    def add_finished(self, records: list[dict]) -> None:
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

    def predict_step(self, batch: list[dict], batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        # Padding items only keep DDP shards equally long (BenchmarkDataModule): no record. The
        # others are generated together (`batch_predict.py`; one at a time with batch_size 1).
        records = self._predict_items([item for item in batch if not item.get("padding")])
        for record in records:
            self.metrics.update(record)
            self._account(record)
            self._plot(record)
        return records

    def _predict_item(self, item: dict) -> dict:
        # The reader, cache, frame count and retry come from the data side; a retry's record
        # already carries its own, which win.
        from vreason.data.items import video_record_fields

        return {**video_record_fields(item), **self._run_item(item)}

    def _run_item(self, item: dict) -> dict:
        sample = item["sample"]
        error = item.get("error") or getattr(sample, "error", None)
        if error is None and item.get("inputs") is None:
            error = "no model inputs for this sample"
        if error is not None:
            return self._error_record(sample, error)
        out_of_memory = None
        try:
            # The controller needs autograd, which a Trainer left in inference mode forbids; tensors
            # made under inference mode are cloned into ordinary ones.
            with torch.inference_mode(False):
                device = self._hf_model.get_input_embeddings().weight.device  # also under a device_map
                inputs = {k: v.to(device).clone() if torch.is_tensor(v) and v.is_inference()
                          else v.to(device) if torch.is_tensor(v) else v
                          for k, v in item["inputs"].items()}
                self._synchronize()
                start = time.perf_counter()
                result = self._generator.generate(seed=self._sample_seed(sample.key), **inputs)
                self._synchronize()
                latency = time.perf_counter() - start
            new_tokens = result.sequences[:, result.prompt_length:]
            text = self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
        except torch.OutOfMemoryError as exc:
            # Only the message is kept: the exception's traceback holds the failed attempt's
            # frames, and with them its tensors, until this block ends.
            out_of_memory = f"out of memory: {_one_line(exc)}"
        except Exception as exc:  # any per-sample failure must not end a long run
            log.warning("sample %s failed: %s", sample.key, _one_line(exc))
            return self._error_record(sample, _one_line(exc))
        if out_of_memory is None:
            return self._record(sample, text, latency=latency, result=result)
        # Drop every reference to the failed attempt's tensors before freeing the cache.
        inputs = result = new_tokens = item["inputs"] = None  # noqa: F841
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self._retry_with_fewer_frames(item, out_of_memory)

    def _retry_with_fewer_frames(self, item: dict, error: str) -> dict:
        """**ours**: a video sample that ran out of memory runs once more with half its frames
        (uniformly re-sampled, rounded down to even, at least 2); a second failure, an image or
        a clip already at 2 frames is an error record. The record of the second attempt says
        so (`retried_with`, `num_frames`: `video_record_fields`)."""
        from vreason.data.items import prepare_item

        sample, meta, video = item["sample"], item.get("meta"), item.get("video")
        used = len(meta["indices"]) if meta else 0
        half = used // 4 * 2
        if item.get("retried_with") is not None or video is None or half < 2:
            log.warning("sample %s ran out of memory; recorded as an error", sample.key)
            return self._error_record(sample, error)
        log.warning("sample %s ran out of memory with %d frames; trying again with %d", sample.key, used, half)
        retry = prepare_item(sample, self._processor, video.with_num_frames(half))
        retry["retried_with"] = half
        return self._predict_item(retry)

    def _sample_seed(self, key: str) -> Optional[int]:
        # With sampling, each sample draws from its own stream, fixed by the run's seed and the
        # sample's key: the same output whatever the order, the shard or a resume.
        if not self.decode.do_sample:
            return None
        return (self.decode.seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63)

    def _synchronize(self) -> None:
        # Latency is wall time of the sample's generation, so queued GPU work must be finished.
        if self._hf_model is not None and self._hf_model.device.type == "cuda":
            torch.cuda.synchronize(self._hf_model.device)

    def _record(self, sample, output: str, latency: float, result=None, error: Optional[str] = None) -> dict:
        from vreason.scoring import extract_answer, score, think_process

        reward = 0.0 if error else float(score(output, sample.solution, sample.problem_type))

        def trace(name: str, cast=float) -> list:
            values = getattr(result, name, None) if result is not None else None
            if values is None:
                return []
            values = values.tolist() if torch.is_tensor(values) else list(values)
            return [round(float(v), TRACE_DECIMALS) for v in values] if cast is float else [int(cast(v)) for v in values]

        return {
            "key": sample.key,
            "benchmark": sample.benchmark,
            "index": sample.index,
            "problem_type": sample.problem_type,
            "entry": sample.entry,
            "output": output,
            "prediction": extract_answer(output),
            "solution": sample.solution,
            "reward": reward,
            "correct": reward == 1.0,
            "process": think_process(output),
            "error": error,
            "mode": self.controller.mode,
            "num_new_tokens": int(getattr(result, "num_new_tokens", 0) or 0),
            "prompt_length": int(getattr(result, "prompt_length", 0) or 0),
            "num_video_tokens": int(getattr(result, "num_video_tokens", 0) or 0),
            "num_video_tokens_kept": int(getattr(result, "num_video_tokens_kept", 0) or 0),
            "lite_layers": int(getattr(result, "lite_layers", 0) or 0),
            "num_layers": int(getattr(result, "num_layers", 0) or 0),
            "skipped_rounds": int(getattr(result, "skipped_rounds", 0) or 0),
            "stop_reason": getattr(result, "stop_reason", None),
            "latency_s": round(latency, 6),
            "tokens_per_s": round(int(getattr(result, "num_new_tokens", 0) or 0) / latency, 3) if latency > 0 else None,
            "rank": self.global_rank,
            "entropy": trace("entropy"),
            "entropy_after": trace("entropy_after"),
            "ema": trace("ema"),
            "alpha": trace("alpha", int),
            "updated": trace("updated", bool),
        }

    def _error_record(self, sample, error: str) -> dict:
        from vreason.scoring import ERROR_OUTPUT

        return self._record(sample, ERROR_OUTPUT, latency=0.0, result=None, error=" ".join(str(error).split()))

    # ------------------------------------------------------------------ progress and plots

    def _account(self, record: dict) -> None:
        run = self._run
        run["n"] += 1
        run["tokens"] += record["num_new_tokens"]
        run["seconds"] += record["latency_s"]
        run["reward"] += record["reward"]
        run["errors"] += bool(record["error"])
        experiment = self._experiment()
        if experiment is not None:
            experiment.add_scalar("running/tokens_per_s", self._tokens_per_s(), run["n"])
            experiment.add_scalar("running/score", run["reward"] / run["n"], run["n"])
            experiment.add_scalar("running/output_tokens", record["num_new_tokens"], run["n"])

    def _tokens_per_s(self) -> float:
        return self._run["tokens"] / self._run["seconds"] if self._run["seconds"] > 0 else 0.0

    def progress_stats(self) -> dict[str, Any]:
        """What the progress bar shows: this rank's generation speed, running score and errors."""
        run = self._run
        stats: dict[str, Any] = {"tok/s": f"{self._tokens_per_s():.1f}"}
        if run["n"]:
            stats["score"] = f"{run['reward'] / run['n']:.3f}"
        if run["errors"]:
            stats["errors"] = run["errors"]
        return stats

    def _experiment(self):
        # Only rank 0 holds a real TensorBoard writer; other ranks skip the figure work entirely.
        if not self.trainer.is_global_zero or self.logger is None:
            return None
        experiment = getattr(self.logger, "experiment", None)
        return experiment if hasattr(experiment, "add_image") else None

    def _plot(self, record: dict) -> None:
        if self.plot_samples <= 0 or record["error"] or not record["entropy"]:
            return
        done = self._plotted.get(record["benchmark"], 0)
        if done >= self.plot_samples:
            return
        experiment = self._experiment()
        if experiment is None:
            return
        from vreason.plots import figure_image, sample_trace_figure

        self._plotted[record["benchmark"]] = done + 1
        tag = f"samples/{record['benchmark']}/{record['index']:05d}" if isinstance(record["index"], int) else f"samples/{record['key']}"
        experiment.add_image(tag, figure_image(sample_trace_figure(record)), 0, dataformats="HWC")
