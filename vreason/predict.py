"""Running samples: a data batch's items in, one `Record` per item out, whatever fails.

`Predictor.predict(items)` is the only place samples are executed (`VReasonModule.predict_step`
calls it; a batch size of 1 is a batch of one item). The items that can run (no error from the
data side, model inputs present) are generated together by one `generate_samples` call; the
others become error records at once.

What a failure costs (**ours**, each decision in one place here):

- An exception while generating a batch of several samples costs only that batch: it is logged
  and the samples run again one by one, so no sample is marked an error before it failed alone.
- A sample that fails alone is an error record (`error`: the one-line reason) and the run goes on.
- A sample that runs out of memory (`is_out_of_memory`) runs once more with half its frames
  (uniformly re-sampled, rounded down to even, at least 2) after its memory is released; a
  second failure, an image or a clip already at 2 frames is an error record.
- A fatal accelerator error (`is_fatal`: after it the device cannot run anything more in this
  process) stops the run with `FatalAcceleratorError`, one line saying a re-run resumes; the
  records already written stay.

Latency (**ours**): the samples of a batch share its wall time, so each record's `latency_s` is
the batch's wall time divided by the number of samples in it; summed over a run, latencies are
still the run's generation time, and tokens per second the run's throughput. The per-sample
time budget (`max_seconds`) is the generator's (`VReasonGenerator(max_seconds=...)`).
"""
from __future__ import annotations

import gc
import logging
import time
from typing import Any, Callable, Optional

import torch

from vreason.data.items import one_line, prepare_item, video_record_fields
from vreason.records import Record, result_fields
from vreason.scoring import ERROR_OUTPUT, extract_answer, score, think_process

log = logging.getLogger(__name__)

__all__ = ["FatalAcceleratorError", "Predictor", "is_fatal", "is_out_of_memory"]

# **ours**: allocator failures that are not `torch.OutOfMemoryError` but mean the same thing,
# as their messages say them: a CUDA call that could not allocate (`cudaErrorMemoryAllocation`,
# "CUDA error: out of memory"), a math library's workspace (cuBLAS, cuDNN, cuSOLVER, cuSPARSE),
# ROCm's, and the CPU allocator's. Matched case-insensitively in a RuntimeError's message.
OUT_OF_MEMORY_TEXTS = ("out of memory", "cudaErrorMemoryAllocation", "hipErrorOutOfMemory",
                       "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUSOLVER_STATUS_ALLOC_FAILED",
                       "CUSPARSE_STATUS_ALLOC_FAILED", "can't allocate memory")

# **ours**: errors after which the accelerator's context is lost for this process (every later
# sample would fail too): any `torch.AcceleratorError` that is not out of memory, and, for
# libraries and torch versions that raise a plain RuntimeError, these texts of CUDA's and ROCm's
# sticky errors and of the math libraries' failed kernels.
FATAL_TEXTS = ("CUDA error", "CUDA driver error", "HIP error", "illegal memory access", "device-side assert",
               "unspecified launch failure", "misaligned address", "illegal instruction", "uncorrectable ECC",
               "CUBLAS_STATUS_EXECUTION_FAILED", "CUBLAS_STATUS_INTERNAL_ERROR", "CUDNN_STATUS_EXECUTION_FAILED")


class FatalAcceleratorError(RuntimeError):
    """The accelerator failed in a way this process cannot recover from: the run stops."""


def _says(exc: BaseException, texts: tuple[str, ...]) -> bool:
    message = str(exc).lower()
    return any(text.lower() in message for text in texts)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure, which a retry with fewer frames may avoid."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and _says(exc, OUT_OF_MEMORY_TEXTS)


def is_fatal(exc: BaseException) -> bool:
    """Whether `exc` leaves the accelerator unusable for this process (out of memory does not)."""
    if is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and _says(exc, FATAL_TEXTS)


def _stop(where: str, exc: BaseException) -> FatalAcceleratorError:
    return FatalAcceleratorError(
        f"sample {where}: {one_line(exc)}; the accelerator cannot run more samples in this process, so the run "
        "stops here. The records finished so far are kept: run the same command again to resume")


def _ordinary(value):
    # Tensors made under a Trainer's inference mode cannot enter autograd: cloned outside it.
    return value.clone() if torch.is_tensor(value) and value.is_inference() else value


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Predictor:
    """Runs data items through a `VReasonGenerator` and scores them into records.

    generator: the `VReasonGenerator`; processor: its processor (decodes the new tokens).
    mode: the controller mode each record names; decode: the `DecodeConfig` (per-sample seeds).
    rank: the process's global rank, kept in each record.
    synchronize: waits for queued device work, so that latencies are wall times of the work.
    """

    def __init__(self, generator, processor, mode: str, decode, rank: int = 0,
                 synchronize: Callable[[], None] = lambda: None) -> None:
        self.generator, self.processor = generator, processor
        self.mode, self.decode, self.rank = mode, decode, rank
        self.synchronize = synchronize

    def predict(self, items: list[dict]) -> list[Record]:
        """One record per item, in order (see the module docstring for failures)."""
        records: list[Optional[Record]] = [None] * len(items)
        ready = []
        for i, item in enumerate(items):
            problem = self._problem(item)
            if problem is None:
                ready.append(i)
            else:
                records[i] = self.error_record(item, problem)
        if len(ready) > 1:
            failure = None
            try:
                for i, record in zip(ready, self._generate([items[i] for i in ready])):
                    records[i] = record
                ready = []
            except Exception as exc:
                if is_fatal(exc):
                    keys = [items[i]["sample"].key for i in ready]
                    raise _stop(f"{keys[0]} (in a batch of {len(keys)})", exc) from exc
                # Only the message is kept: the traceback holds the batch's tensors.
                failure = one_line(exc)
            if failure is not None:
                _release_memory()
                log.warning("a batch of %d samples failed (%s); generating them one by one", len(ready), failure[:300])
        for i in ready:
            records[i] = self._alone(items[i])
        return records  # type: ignore[return-value]

    @staticmethod
    def _problem(item: dict) -> Optional[str]:
        error = item.get("error") or getattr(item["sample"], "error", None)
        if error is None and item.get("inputs") is None:
            error = "no model inputs for this sample"
        return error

    def _alone(self, item: dict) -> Record:
        sample = item["sample"]
        out_of_memory = None
        try:
            return self._generate([item])[0]
        except Exception as exc:  # a failing sample must not end a long run (unless the device is lost)
            if is_fatal(exc):
                raise _stop(sample.key, exc) from exc
            if not is_out_of_memory(exc):
                log.warning("sample %s failed: %s", sample.key, one_line(exc))
                return self.error_record(item, one_line(exc))
            # Only the message is kept: the exception's traceback holds the failed attempt's
            # frames, and with them its tensors, until this block ends.
            out_of_memory = f"out of memory: {one_line(exc)}"
        item["inputs"] = None  # the failed attempt's inputs go before the cache is freed
        _release_memory()
        return self._retry_with_fewer_frames(item, out_of_memory)

    def _retry_with_fewer_frames(self, item: dict, error: str) -> Record:
        sample, meta, video = item["sample"], item.get("meta"), item.get("video")
        used = len(meta["indices"]) if meta else 0
        half = used // 4 * 2
        if item.get("retried_with") is not None or video is None or half < 2:
            log.warning("sample %s ran out of memory; recorded as an error", sample.key)
            return self.error_record(item, error)
        log.warning("sample %s ran out of memory with %d frames; trying again with %d", sample.key, used, half)
        retry = prepare_item(sample, self.processor, video.with_num_frames(half))
        retry["retried_with"] = half
        problem = self._problem(retry)
        return self.error_record(retry, problem) if problem is not None else self._alone(retry)

    def _generate(self, items: list[dict]) -> list[Record]:
        samples = [item["sample"] for item in items]
        # The controller needs autograd, which a Trainer left in inference mode forbids.
        with torch.inference_mode(False):
            inputs = [{k: _ordinary(v) for k, v in item["inputs"].items()} for item in items]
            seeds = [self.decode.seed_for(sample.key) for sample in samples]
            self.synchronize()
            start = time.perf_counter()
            results = self.generator.generate_samples(inputs, seeds=seeds)
            self.synchronize()
            latency = (time.perf_counter() - start) / len(items)
        records = []
        for item, result in zip(items, results):
            text = self.processor.batch_decode(result.sequences[:, result.prompt_length:], skip_special_tokens=True)[0]
            records.append(self.record(item, text, latency=latency, result=result))
        return records

    def record(self, item: dict, output: str, latency: float, result: Any = None, error: Optional[str] = None) -> Record:
        """The record of one item: its sample, the generated text scored against the solution
        (0 for an error), the result's counts and traces, and how its frames were read."""
        sample = item["sample"]
        reward = 0.0 if error else float(score(output, sample.solution, sample.problem_type))

        fields = result_fields(result)
        return Record(
            **video_record_fields(item),
            key=sample.key, benchmark=sample.benchmark, index=sample.index, problem_type=sample.problem_type,
            entry=sample.entry, output=output, prediction=extract_answer(output), solution=sample.solution,
            reward=reward, correct=reward == 1.0, process=think_process(output), error=error, mode=self.mode,
            **fields, latency_s=round(latency, 6),
            tokens_per_s=round(fields["num_new_tokens"] / latency, 3) if latency > 0 else None, rank=self.rank,
        )

    def error_record(self, item: dict, error: str) -> Record:
        """The record of an item that could not run: `ERROR_OUTPUT`, score 0, the one-line reason."""
        return self.record(item, ERROR_OUTPUT, latency=0.0, error=" ".join(str(error).split()))
