"""What the lmms-eval model logs, in the places lmms-eval gives a model:

- per request, the token counts it returns (`TokenCounts`): input tokens, output tokens (what
  lmms-eval's samples log and its efficiency summary record as the output length) and, when the
  answer has a `</think>`, the tokens up to it as reasoning tokens;
- per `generate_until` call, lmms-eval's metric log (`log_metrics`, the results file's
  `throughput`): tokens, time, and V-Reason's controller rounds and skipped rounds per sample;
- per sample, a debug line on lmms-eval's logger (`--verbosity DEBUG`), and with the model
  argument `trace_dir`, one JSON line per sample in `<trace_dir>/vreason_traces.rank<R>.jsonl`
  (appended and flushed as each batch finishes): the per-token entropy, EMA, α and round traces of
  `vreason predict`'s records, keyed by task and doc id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from vreason.records import json_default, result_fields

THINK_END = "</think>"


def trace_record(task: str, split: str, doc_id: Any, mode: str, result: Any, output_tokens: int,
                 reasoning_tokens: Optional[int], latency: float, error: Optional[str]) -> dict[str, Any]:
    """One request's trace: where it comes from, its counts, and `result_fields` of its result."""
    return {"task": task, "split": split, "doc_id": doc_id, "mode": mode, "error": error,
            "output_tokens": output_tokens, "reasoning_tokens": reasoning_tokens,
            "latency_s": round(latency, 6), **result_fields(result)}


def summary_line(record: dict[str, Any]) -> str:
    """The debug line of one trace."""
    if record["error"]:
        return f"vreason {record['task']}/{record['doc_id']}: error: {record['error']}"
    alpha = record["alpha"]
    exploit = next((k for k, a in enumerate(alpha) if a < 0), None)
    return (f"vreason {record['task']}/{record['doc_id']}: {record['output_tokens']} output tokens "
            f"({record['num_new_tokens']} generated, stop: {record['stop_reason']}), "
            f"{sum(record['updated'])} rounds, α -> -1 at token {exploit}")


def run_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """V-Reason's numbers of one `generate_until` call for lmms-eval's metric log."""
    ran = [r for r in records if not r["error"]]
    n = max(len(ran), 1)
    return {"vreason_rounds_per_sample": sum(sum(r["updated"]) for r in ran) / n,
            "vreason_skipped_rounds_per_sample": sum(r["skipped_rounds"] for r in ran) / n,
            "vreason_errors": float(len(records) - len(ran))}


class TraceFile:
    """`<folder>/vreason_traces.rank<R>.jsonl`, one line per request, flushed as written; with
    no folder, nothing is written. The rank is given at each write: lmms-eval settles it after the
    model is built."""

    def __init__(self, folder: Optional[str]) -> None:
        self.folder = Path(folder) if folder else None

    def write(self, records: list[dict[str, Any]], rank: int) -> None:
        if self.folder is None or not records:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"vreason_traces.rank{rank}.jsonl", "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, default=json_default) + "\n")
            f.flush()
