"""Predicting a data batch of several samples at once (`--data.batch_size B`): the part of
`VReasonModule.predict_step` that batches.

The samples of a data batch that can run (no error from the data side, model inputs present)
are generated together, one `generate_samples` call (`VReasonGenerator`: one left-padded batch
where the family batches, else one at a time); the others become error records as before. Each
result is the sample's own (the same tokens and traces it gets alone), so records, the writer,
resume and DDP shards are those of batch size 1.

A broken batch costs only itself: an exception while generating the batch (out of memory
included) is logged and the batch's samples then run one by one through the per-sample path
(with its own error records and out-of-memory retry), so no sample is marked an error before it
failed alone.

Latency (**ours**): the samples of a batch share its wall time, so each record's `latency_s` is
the batch's wall time divided by the number of samples in it; summed over a run, latencies are
still the run's generation time, and tokens per second the run's throughput.
"""
from __future__ import annotations

import gc
import logging
import time

import torch

log = logging.getLogger(__name__)

__all__ = ["BatchPrediction"]


def _ordinary(value):
    # Tensors made under a Trainer's inference mode cannot enter autograd: cloned outside it.
    return value.clone() if torch.is_tensor(value) and value.is_inference() else value


class BatchPrediction:
    """Mixin of `VReasonModule`: `_predict_items(items)` returns one record per item, in order."""

    def _predict_items(self, items: list[dict]) -> list[dict]:
        ready = [i for i, item in enumerate(items) if self._runnable(item)]
        if len(ready) < 2:
            return [self._predict_item(item) for item in items]
        failure = None
        try:
            batched = self._generate_together([items[i] for i in ready])
        except Exception as exc:  # the batch falls back to its samples one by one
            failure = " ".join(f"{type(exc).__name__}: {exc}".split())
        if failure is not None:
            batched = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("a batch of %d samples failed (%s); generating them one by one", len(ready), failure[:300])
            return [self._predict_item(item) for item in items]
        by_index = dict(zip(ready, batched))
        return [by_index[i] if i in by_index else self._predict_item(item) for i, item in enumerate(items)]

    @staticmethod
    def _runnable(item: dict) -> bool:
        sample = item["sample"]
        return not (item.get("error") or getattr(sample, "error", None)) and item.get("inputs") is not None

    def _generate_together(self, items: list[dict]) -> list[dict]:
        from vreason.data.items import video_record_fields

        samples = [item["sample"] for item in items]
        with torch.inference_mode(False):
            inputs = [{k: _ordinary(v) for k, v in item["inputs"].items()} for item in items]
            seeds = [self._sample_seed(sample.key) for sample in samples]
            self._synchronize()
            start = time.perf_counter()
            results = self._generator.generate_samples(inputs, seeds=seeds)
            self._synchronize()
            latency = (time.perf_counter() - start) / len(items)
        records = []
        for item, sample, result in zip(items, samples, results):
            text = self._processor.batch_decode(result.sequences[:, result.prompt_length:], skip_special_tokens=True)[0]
            records.append({**video_record_fields(item), **self._record(sample, text, latency=latency, result=result)})
        return records
