"""The merged outputs of a run, derived from its records (`records.py`): per benchmark the
protocol's result file `results/eval_<benchmark>.json` (`{"results": [...], "final_acc":
[{"mean_acc", "mean_mra"}]}`), and for the run `summary.json` and the Markdown table
`summary.md`. Everything here is recomputed from the JSONL files, so a resumed run's outputs equal
an uninterrupted run's (up to latencies).
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Optional

from vreason.metrics import SCORE_DEFINITION, EvalMetrics, is_close, overall_row
from vreason.records import PREDICTIONS_DIR, RESULTS_DIR, Record, json_default, read_predictions, safe_name, write_atomic
from vreason.scoring import aggregate

log = logging.getLogger(__name__)


def protocol_result(record: Record) -> dict:
    """One entry of the protocol's `results`: the input sample plus output, prediction, reward,
    correct and process; the error message and cost of the sample are kept beside them."""
    out = dict(record.entry or {})
    out.update(
        output=record.output,
        prediction=record.prediction,
        reward=record.reward,
        correct=record.correct,
        process=record.process,
        error=record.error,
        num_new_tokens=record.num_new_tokens,
        latency_s=record.latency_s,
    )
    return out


def summarize(records_by_bench: dict[str, list[Record]], max_tokens: Optional[int] = None) -> dict:
    """The summary of complete records: the same metric classes the live run uses, computed in this
    process only, with `mean_acc`/`mean_mra` from the protocol's own aggregation."""
    longest = max((len(r.entropy) for recs in records_by_bench.values() for r in recs), default=0)
    longest = max(longest, max((r.num_new_tokens for recs in records_by_bench.values() for r in recs), default=0))
    metrics = EvalMetrics(max(1, max_tokens or 0, longest), sync_on_compute=False)
    for recs in records_by_bench.values():
        for rec in recs:
            metrics.update(rec)
    computed = metrics.compute()
    for bench, recs in records_by_bench.items():
        protocol = _protocol_scores(aggregate(r.to_dict() for r in recs), bench)
        computed["benchmarks"][bench].update(protocol)
    computed["overall"] = overall_row(computed["benchmarks"])
    return computed


def _protocol_scores(aggregated: dict, bench: str) -> dict:
    # aggregate() answers per benchmark; a flat answer (one benchmark) is accepted as well.
    row = aggregated.get(bench, aggregated) if isinstance(aggregated, dict) else {}
    return {k: row[k] for k in ("mean_acc", "mean_mra") if k in row}


def merge_predictions(root: str | Path, run_info: Optional[dict] = None, max_tokens: Optional[int] = None,
                      live_metrics: Optional[dict] = None) -> dict:
    """Merge every rank file under `root/predictions` into `root/results/eval_<benchmark>.json`,
    `root/summary.json` and `root/summary.md`; returns the summary (with the records per benchmark
    under the private key `_records`, for plotting, not written).

    live_metrics: the run's synced `EvalMetrics.compute()`; the summary then records whether they
    agree with the files (`live_metrics_agree`): if not, a sample was lost or duplicated.
    """
    root = Path(root)
    records = read_predictions(root / PREDICTIONS_DIR)
    summary = summarize(records, max_tokens=max_tokens)
    if live_metrics is not None:
        disagree = metrics_disagreement(live_metrics, summary)
        summary["live_metrics_agree"] = not disagree
        if disagree:
            log.warning("live metrics and merged predictions disagree for %s", ", ".join(disagree))
    for bench, recs in records.items():
        row = summary["benchmarks"][bench]
        final_acc = {"mean_acc": _protocol_number(row.get("mean_acc")), "mean_mra": _protocol_number(row.get("mean_mra"))}
        payload = {"results": [protocol_result(r) for r in recs], "final_acc": [final_acc]}
        write_atomic(root / RESULTS_DIR / f"eval_{safe_name(bench)}.json", json.dumps(payload, ensure_ascii=False, indent=2))
    summary = {**(run_info or {}), **summary, **lite_coverage(records), "error_reasons": error_reasons(records)}
    write_atomic(root / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2, allow_nan=False, default=json_default))
    write_atomic(root / "summary.md", summary_markdown(summary))
    summary["_records"] = records
    return summary


_PATH = re.compile(r"(?<![\w.])(?:/|[A-Za-z]:\\)[^\s:,;'\"]*")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def error_reasons(records_by_bench: dict[str, list[Record]]) -> list[dict]:
    """Why samples failed, most common first: `[{"reason", "count", "example"}]`. Reasons that
    differ only in a path or a number (`media not found: /data/a.mp4`, `line 7 is not valid JSON`)
    are one reason (`media not found: <path>`), with the first such message as the example."""
    counts: Counter = Counter()
    examples: dict[str, str] = {}
    for recs in records_by_bench.values():
        for rec in recs:
            message = rec.error
            if not message:
                continue
            reason = _NUMBER.sub("N", _PATH.sub("<path>", str(message)))
            counts[reason] += 1
            examples.setdefault(reason, str(message))
    return [{"reason": r, "count": c, "example": examples[r]} for r, c in counts.most_common()]


def error_lines(reasons: list[dict], limit: int = 5) -> list[str]:
    """A few lines for the console and summary.md: each reason with its count, most common first."""
    def cut(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = [f"{r['count']:>6} × {cut(r['reason'], 140)}" + (f"  (e.g. {cut(r['example'], 100)})" if r["example"] != r["reason"] else "")
             for r in reasons[:limit]]
    if len(reasons) > limit:
        rest = sum(r["count"] for r in reasons[limit:])
        lines.append(f"{rest:>6} × {len(reasons) - limit} other reasons (summary.json, `error_reasons`)")
    return lines


def lite_coverage(records_by_bench: dict[str, list[Record]]) -> dict:
    """`{"lite_layers": [pruned, total]}` when Lite pruned fewer than all layers' caches (a hybrid
    decoder's recurrent layers hold no per-token entries), so the summary says it; else nothing."""
    seen = {(r.lite_layers, r.num_layers) for recs in records_by_bench.values() for r in recs if r.lite_layers}
    partial = sorted((pruned, total) for pruned, total in seen if pruned < total)
    return {"lite_layers": list(partial[0])} if partial else {}


def metrics_disagreement(live: dict, summary: dict) -> list[str]:
    """Benchmarks whose live (synced) metrics and file-based summary differ in count, errors,
    scores or tokens."""
    out = []
    for bench, row in summary["benchmarks"].items():
        other = live["benchmarks"].get(bench)
        same = other is not None and other["n"] == row["n"] and other["n_errors"] == row["n_errors"]
        same = same and all(is_close(other[k], row[k], 1e-6) for k in ("mean_acc", "mean_mra", "mean_tokens"))
        if not same:
            out.append(bench)
    return out


def _protocol_number(x: Optional[float]) -> float:
    # The anchors' files hold 0.0 where a benchmark has no sample of that kind.
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: Optional[float], fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def summary_markdown(summary: dict) -> str:
    """The per-benchmark table: n, answered, score (%), accuracy (mean_acc, %), MRA (%), and the
    means over answered samples of output tokens, latency and tokens/s, errors; then what each
    column means and why samples failed."""
    title = summary.get("title") or "V-Reason evaluation"
    lines = [f"# {title}", ""]
    info = [f"{k}: `{summary[k]}`" for k in ("model", "mode") if summary.get(k) is not None]
    if info:
        lines += [", ".join(info), ""]
    lines += [
        "| benchmark | n | answered | score (%) | accuracy (%) | MRA (%) | mean output tokens | latency (s/sample) | tokens/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(bench, row) for bench, row in summary["benchmarks"].items()] + [("**overall**", summary["overall"])]
    for name, row in rows:
        answered = row.get("n_answered", row["n"] - row["n_errors"])
        accuracy = "" if name == "**overall**" else _pct(row.get("mean_acc"))
        mra = "" if name == "**overall**" else _pct(row.get("mean_mra"))
        lines.append(
            f"| {name} | {row['n']} | {answered} | {_pct(row.get('mean_score'))} | {accuracy} | {mra} | "
            f"{_num(row.get('mean_tokens'), '.1f')} | {_num(row.get('mean_latency_s'), '.3f')} | "
            f"{_num(row.get('tokens_per_s'), '.1f')} | {row['n_errors']} |"
        )
    lines += [
        "",
        f"{SCORE_DEFINITION}. accuracy: mean over non-regression samples (the protocol's `mean_acc`); MRA: mean "
        "relative accuracy over regression samples (`mean_mra`); both over all n samples, error samples scoring 0. "
        "Output tokens, latency and tokens/s: means over the answered samples (n minus errors).",
        "",
    ]
    if summary.get("error_reasons"):
        lines += ["Errors, by reason:", "", "```", *error_lines(summary["error_reasons"]), "```", ""]
    if summary.get("lite_layers"):
        pruned, total = summary["lite_layers"]
        lines += [f"Lite dropped video tokens from {pruned} of {total} layers' caches: the model's other layers "
                  "are recurrent (linear attention) and keep no per-token entries to drop.", ""]
    return "\n".join(lines)
