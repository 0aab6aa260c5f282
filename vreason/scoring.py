"""Answer extraction, per-sample scores and per-benchmark aggregation, exactly as docs/protocol.md.

The rules are the anchors' evaluation script's, edge cases included: a different rule gives
different numbers, so nothing here is "improved" (no lower-casing, no number extraction from
prose). MRA is computed in float32 because answers that sit exactly on a threshold (7 vs 10)
fall on the other side of it in float64.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import torch

from vreason.protocol import ERROR_OUTPUT, MULTIPLE_CHOICE, NUMERICAL, PROBLEM_TYPES, REGRESSION  # noqa: F401  (re-exported)

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_THINK = re.compile(r"<think>\s*(.*?)\s*</think>", re.DOTALL)


def extract_answer(text: str | None) -> str:
    """The first `<answer> … </answer>` span, stripped; the whole text (stripped) when there is
    none. An empty span counts as none, as in the anchors' script."""
    text = text or ""
    match = _ANSWER.search(text)
    if match and match.group(1):
        return match.group(1).strip()
    return text.strip()


def think_process(text: str | None) -> str:
    """The first `<think> … </think>` span, stripped; empty when there is none."""
    match = _THINK.search(text or "")
    return match.group(1).strip() if match else ""


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def mean_relative_accuracy(pred: float, target: float) -> float:
    """Fraction of the thresholds 0.50, 0.55, …, 0.95 with relative error below 1 − θ (float32)."""
    p = torch.tensor(pred, dtype=torch.float32)
    t = torch.tensor(target, dtype=torch.float32)
    rel = torch.abs(p - t) / (torch.abs(t) + 1e-8)
    thresholds = torch.arange(0.5, 0.95 + 0.025, 0.05, dtype=torch.float32)
    return float((rel < (1 - thresholds)).float().mean().item())


def score(output_text: str | None, solution: str | None, problem_type: str | None) -> float:
    """Score of one model output against the sample's `solution` (docs/protocol.md "Scoring")."""
    pred = extract_answer(output_text)
    gt = extract_answer(solution)
    if problem_type == MULTIPLE_CHOICE:
        return 1.0 if pred == gt else 0.0
    if problem_type == NUMERICAL:
        gt_decimal = "." in gt or "," in gt
        pred_decimal = "." in pred or "," in pred
        if gt_decimal != pred_decimal:
            return 0.0
        p, g = _to_float(pred), _to_float(gt)
        if p is None or g is None:
            return 0.0
        return 1.0 if round(p, 2) == round(g, 2) else 0.0
    if problem_type == REGRESSION:
        p, g = _to_float(pred), _to_float(gt)
        if p is None or g is None:
            return 0.0
        return mean_relative_accuracy(p, g)
    # OCR and free-form score 0 in the protocol; a text metric would be an extra column.
    return 0.0


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _benchmark_of(record: dict[str, Any]) -> str:
    if record.get("benchmark"):
        return str(record["benchmark"])
    key = str(record.get("key") or "")
    return key.rsplit("/", 1)[0] if "/" in key else "all"


def aggregate(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-benchmark summary of scored records, keyed by benchmark name (the record's `benchmark`,
    else the part of its `key` before the last `/`, else "all").

    Each value: `mean_acc` (mean `reward` over non-regression samples, None if there are none),
    `mean_mra` (mean over regression samples, None if none), `n`, `n_errors` (records with a
    truthy `error`), `n_acc`, `n_mra`. Error records count with their reward (0 when scored
    against `ERROR_OUTPUT`), so they stay in the denominators.
    """
    groups: dict[str, dict[str, list]] = {}
    for record in records:
        group = groups.setdefault(_benchmark_of(record), {"acc": [], "mra": [], "errors": []})
        reward = float(record.get("reward") or 0.0)
        group["mra" if record.get("problem_type") == REGRESSION else "acc"].append(reward)
        group["errors"].append(bool(record.get("error")))
    return {
        name: {
            "mean_acc": _mean(g["acc"]),
            "mean_mra": _mean(g["mra"]),
            "n": len(g["acc"]) + len(g["mra"]),
            "n_errors": sum(g["errors"]),
            "n_acc": len(g["acc"]),
            "n_mra": len(g["mra"]),
        }
        for name, g in groups.items()
    }
