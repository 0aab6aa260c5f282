"""Evaluation metrics as torchmetrics, so that several ranks combine their samples at `compute()`.

Every state is a sum (or a fixed-length vector of sums), so the cross-rank reduction is one
all-reduce and the result does not depend on how samples were sharded. One `BenchmarkMetric`
per benchmark; `EvalMetrics` holds them by name and agrees on the set of names across ranks
before computing (a rank may have seen none of a benchmark's samples).

Scores follow docs/protocol.md: `mean_acc` is the mean score over non-regression samples, `mean_mra`
the mean over regression samples; error samples count with score 0 (the protocol's denominator).
Cost figures (output tokens, latency, tokens/s, rounds) are means over the *answered* samples only
(`n_answered`, those without an error): a sample that never ran has no length, and counting it as
0 tokens would make the mode with more failures look shorter. `mean_score` is the one "score" of
the project (`score`): the mean of the accuracy and MRA columns present.
"""
from __future__ import annotations

import math
import re
import warnings
import zlib
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from vreason.protocol import REGRESSION
from vreason.records import Record


def _is_regression(record: Record) -> bool:
    # Exact match, as vreason.scoring.aggregate: the protocol's problem types are exact strings.
    return record.problem_type == REGRESSION


class BenchmarkMetric(Metric):
    """Sums over one benchmark's records: scores, MRA, output tokens (mean and histogram),
    entropy (overall mean and the mean ± std curve over generated-token index), latency, errors.

    max_tokens: length of the entropy curve and range of the token histogram (the run's
        `max_new_tokens`); longer traces are cut there.
    token_bins: number of equal-width histogram bins over [0, max_tokens].
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, max_tokens: int, token_bins: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.token_bins = int(max(1, min(token_bins, max_tokens)))
        # float64: sums of latencies and squared entropies over thousands of samples stay exact
        # enough that the synced result equals the one computed from the merged files.
        for name in ("n", "n_errors", "acc_sum", "acc_n", "mra_sum", "mra_n", "tokens_sum",
                     "latency_sum", "entropy_sum", "entropy_n", "rounds_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens_hist", default=torch.zeros(self.token_bins, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("curve_sum", "curve_sumsq", "curve_n"):
            self.add_state(name, default=torch.zeros(self.max_tokens, dtype=torch.float64), dist_reduce_fx="sum")

    def _bin(self, tokens: int) -> int:
        width = self.max_tokens / self.token_bins
        return min(self.token_bins - 1, max(0, int(tokens // width)))

    def update(self, record: Record) -> None:  # type: ignore[override]
        """Add one prediction record (what `VReasonModule.predict_step` returns)."""
        reward = float(record.reward or 0.0)
        self.n += 1
        if record.error:
            # Scored 0 in the protocol's denominator, but no part of the cost means (module docstring).
            self.n_errors += 1
            reward = 0.0
        if _is_regression(record):
            self.mra_sum += reward
            self.mra_n += 1
        else:
            self.acc_sum += reward
            self.acc_n += 1
        if record.error:
            return
        tokens = int(record.num_new_tokens or 0)
        self.tokens_sum += tokens
        self.tokens_hist[self._bin(tokens)] += 1
        self.latency_sum += float(record.latency_s or 0.0)
        self.rounds_sum += float(sum(bool(u) for u in record.updated))
        entropy = record.entropy
        if len(entropy):
            h = torch.as_tensor(entropy, dtype=torch.float64, device=self.curve_sum.device)[: self.max_tokens]
            self.entropy_sum += h.sum()
            self.entropy_n += h.numel()
            m = h.numel()
            self.curve_sum[:m] += h
            self.curve_sumsq[:m] += h * h
            self.curve_n[:m] += 1

    def compute(self) -> dict:  # type: ignore[override]
        n = int(self.n.item())
        answered = self.n - self.n_errors
        n_gen = self.curve_n
        mean = torch.where(n_gen > 0, self.curve_sum / n_gen.clamp(min=1), torch.nan)
        var = torch.where(n_gen > 0, self.curve_sumsq / n_gen.clamp(min=1) - mean * mean, torch.nan)
        length = int((n_gen > 0).sum().item())
        mean_acc, mean_mra = _ratio(self.acc_sum, self.acc_n), _ratio(self.mra_sum, self.mra_n)
        return {
            "n": n,
            "n_answered": int(answered.item()),
            "n_errors": int(self.n_errors.item()),
            "mean_score": score([mean_acc, mean_mra]),
            "mean_acc": mean_acc,
            "mean_mra": mean_mra,
            "n_acc": int(self.acc_n.item()),
            "n_mra": int(self.mra_n.item()),
            "mean_tokens": _ratio(self.tokens_sum, answered),
            "mean_latency_s": _ratio(self.latency_sum, answered),
            "tokens_per_s": _ratio(self.tokens_sum, self.latency_sum),
            "mean_entropy": _ratio(self.entropy_sum, self.entropy_n),
            "mean_rounds": _ratio(self.rounds_sum, answered),
            "tokens_hist": {
                "edges": [self.max_tokens * i / self.token_bins for i in range(self.token_bins + 1)],
                "counts": [int(c) for c in self.tokens_hist.tolist()],
            },
            "entropy_curve": {
                "mean": mean[:length].tolist(),
                "std": var[:length].clamp(min=0).sqrt().tolist(),
                "count": [int(c) for c in n_gen[:length].tolist()],
            },
        }


def _ratio(num: Tensor, den: Tensor) -> Optional[float]:
    d = float(den.item())
    return float(num.item()) / d if d > 0 else None


def _module_key(name: str) -> str:
    # nn.ModuleDict keys may not contain dots; benchmark names are free text. The checksum keeps
    # two names that sanitize alike apart, and is the same in every process (unlike hash()).
    return "b_" + re.sub(r"[^0-9A-Za-z_]", "_", name) + f"_{zlib.crc32(name.encode()):08x}"


class EvalMetrics(nn.Module):
    """One `BenchmarkMetric` per benchmark name, created on first use, plus the overall row."""

    def __init__(self, max_tokens: int, token_bins: int = 32, sync_on_compute: bool = True) -> None:
        super().__init__()
        self.sync_on_compute = sync_on_compute
        self.max_tokens = max_tokens
        self.token_bins = token_bins
        self.per_benchmark = nn.ModuleDict()
        self._names: dict[str, str] = {}
        # Tracks the device the parent module was moved to, for metrics created afterwards.
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def _metric(self, name: str) -> BenchmarkMetric:
        if name not in self._names:
            key = _module_key(name)
            metric = BenchmarkMetric(self.max_tokens, self.token_bins, sync_on_compute=self.sync_on_compute)
            metric.to(self._device_probe.device)
            self.per_benchmark[key] = metric
            self._names[name] = key
        return self.per_benchmark[self._names[name]]  # type: ignore[return-value]

    @property
    def names(self) -> list[str]:
        return sorted(self._names)

    def update(self, record: Record) -> None:
        self._metric(str(record.benchmark)).update(record)

    def ensure(self, names: Iterable[str]) -> None:
        for name in names:
            self._metric(name)

    def _agree_on_names(self) -> None:
        # compute() is a collective: every rank must compute the same metrics in the same order.
        if self.sync_on_compute and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.names)
            self.ensure(n for names in gathered for n in names)

    def compute(self) -> dict:
        """`{"benchmarks": {name: BenchmarkMetric.compute()}, "overall": overall_row(...)}`,
        synced across ranks when a process group exists (call it on every rank)."""
        self._agree_on_names()
        with warnings.catch_warnings():
            # A rank that saw no sample of a benchmark still takes part in its sync.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            per = {name: self.per_benchmark[self._names[name]].compute() for name in self.names}
        return {"benchmarks": per, "overall": overall_row(per)}

    def reset(self) -> None:
        for metric in self.per_benchmark.values():
            metric.reset()


SCORE_DEFINITION = ("score: the mean of the accuracy and MRA columns of the rows it covers (the paper's "
                    "average; a benchmark with both kinds of question, as VSI-Bench, gives both columns); "
                    "overall: over every benchmark's columns")


def score(columns: Iterable[Optional[float]]) -> Optional[float]:
    """The project's one "score" (`SCORE_DEFINITION`): the mean of the accuracy (`mean_acc`) and
    MRA (`mean_mra`) columns given, absent ones (None) left out. A benchmark's row, the overall row,
    the demo's table and the progress bar all use it."""
    present = [c for c in columns if c is not None]
    return sum(present) / len(present) if present else None


def overall_row(per_benchmark: dict[str, dict]) -> dict:
    """The paper table's average: `score` of every benchmark's accuracy and MRA columns (a
    benchmark with both multiple-choice and regression samples, as VSI-Bench, contributes both, as
    the paper's table lists both); token and latency means are over the answered samples."""
    columns = [row.get(k) for row in per_benchmark.values() for k in ("mean_acc", "mean_mra")]
    n = sum(r["n"] for r in per_benchmark.values())

    def answered(r: dict) -> int:
        return int(r.get("n_answered", r["n"] - r.get("n_errors", 0)))

    def weighted(field: str) -> Optional[float]:
        pairs = [(r[field], answered(r)) for r in per_benchmark.values() if r.get(field) is not None]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else None

    latency = weighted("mean_latency_s")
    tokens = weighted("mean_tokens")
    return {
        "n": n,
        "n_answered": sum(answered(r) for r in per_benchmark.values()),
        "n_errors": sum(r["n_errors"] for r in per_benchmark.values()),
        "mean_score": score(columns),
        "mean_tokens": tokens,
        "mean_latency_s": latency,
        "tokens_per_s": tokens / latency if tokens is not None and latency else None,
    }


def is_close(a: Optional[float], b: Optional[float], tol: float = 1e-9) -> bool:
    """Equality of two summary values, either of which may be None (no samples of that kind)."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
