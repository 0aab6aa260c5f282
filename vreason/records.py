"""The per-sample records on disk: one JSONL file per benchmark and rank, and how they are read
back for a resume or a merge.

Layout under the run's root (`trainer.default_root_dir`):

    predictions/<benchmark>.rank<R>.jsonl   one record per line, appended as each sample finishes
    predictions/run_config.json             what produced them (a resume must match it)
    results/eval_<benchmark>.json           the protocol's format, merged over ranks (report.py)
    summary.json, summary.md                the per-benchmark table (report.py)
    tb/                                     TensorBoard

The JSONL files are the source of truth: every other output is derived from them at the end of
predict, so a run killed at any point resumes by skipping the keys already written.

A sample can have several records: an error record and, after a resume retried it, a newer one.
Each record carries `attempt` (1 for the first); when records of one key disagree the highest
attempt wins (**ours**), so a retried sample's new record supersedes the old one and the merged
outputs hold each sample once.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
RESULTS_DIR = "results"
RUN_CONFIG = "run_config.json"
_RANK_FILE = re.compile(r"^(?P<bench>.+)\.rank(?P<rank>\d+)\.jsonl$")


# Traces are stored with this many decimals: enough for plots and statistics, and a record of
# 1,024 tokens stays a few tens of kB of JSON.
TRACE_DECIMALS = 5


def result_fields(result: Any = None) -> dict[str, Any]:
    """What a record holds of one `GenerationResult` (None: a sample that did not generate): its
    token counts, stop reason, Lite and guard counts, and the per-token traces of entropy, EMA, α
    and rounds as plain lists (`vreason predict`'s records and the lmms-eval model's traces)."""

    def count(name: str) -> int:
        return int(getattr(result, name, 0) or 0)

    def trace(name: str, cast=float) -> list:
        values = getattr(result, name, None) if result is not None else None
        if values is None:
            return []
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        return [round(float(v), TRACE_DECIMALS) for v in values] if cast is float else [int(cast(v)) for v in values]

    return {
        **{name: count(name) for name in ("num_new_tokens", "prompt_length", "num_video_tokens",
                                          "num_video_tokens_kept", "lite_layers", "num_layers", "skipped_rounds")},
        "stop_reason": getattr(result, "stop_reason", None),
        "entropy": trace("entropy"),
        "entropy_after": trace("entropy_after"),
        "ema": trace("ema"),
        "alpha": trace("alpha", int),
        "updated": trace("updated", bool),
    }


def safe_name(benchmark: str) -> str:
    """A benchmark name usable in a file name."""
    return re.sub(r"[^0-9A-Za-z._+-]", "_", benchmark) or "_"


def json_default(obj: Any) -> Any:
    """JSON for the dataclasses and paths records and summaries carry."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict]:
    """The complete records of one JSONL file. A line that does not parse (the partial last line
    of a killed writer) is skipped: its sample simply runs again on resume."""
    records = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                log.warning("skipping an unreadable line in %s", path)
                continue
            if isinstance(rec, dict) and "key" in rec:
                records.append(rec)
    return records


def truncate_partial_line(path: Path) -> None:
    """Cut a last line without its newline, so the next append starts on a line of its own."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Walk back to the previous newline; files are read in blocks so long lines cost little.
        pos = size
        block = 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                return
            pos = start
        f.truncate(0)


def prediction_files(pred_dir: Path) -> list[tuple[str, int, Path]]:
    """`(benchmark file stem, rank, path)` of every rank file, in a fixed order."""
    out = []
    if pred_dir.is_dir():
        for path in sorted(pred_dir.iterdir()):
            m = _RANK_FILE.match(path.name)
            if m and path.is_file():
                out.append((m["bench"], int(m["rank"]), path))
    return out


def attempt_of(record: dict) -> int:
    """The record's attempt number (records written before attempts were counted are 1)."""
    try:
        return max(1, int(record.get("attempt") or 1))
    except (TypeError, ValueError):
        return 1


def read_predictions(pred_dir: Path) -> dict[str, list[dict]]:
    """All records under `pred_dir`, per benchmark, one per sample key (the highest attempt; among
    equal attempts the first read), sorted by the sample's index in its benchmark file."""
    per_bench: dict[str, dict[str, dict]] = {}
    for _, _, path in prediction_files(pred_dir):
        for rec in read_jsonl(path):
            recs = per_bench.setdefault(str(rec["benchmark"]), {})
            key = str(rec["key"])
            if key not in recs or attempt_of(rec) > attempt_of(recs[key]):
                recs[key] = rec
    return {
        bench: sorted(recs.values(), key=lambda r: (_index_key(r.get("index")), str(r["key"])))
        for bench, recs in sorted(per_bench.items())
    }


def _index_key(index: Any) -> tuple:
    return (0, index, "") if isinstance(index, (int, float)) else (1, 0, str(index))
