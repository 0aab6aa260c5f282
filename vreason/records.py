"""The per-sample records on disk: one JSONL file per benchmark and rank, and how they are read
back for a resume or a merge.

Layout under the run's root (`trainer.default_root_dir`):

    predictions/<benchmark>.rank<R>.jsonl   one record per line, appended as each sample finishes
    predictions/run_config.json             what produced them (a resume must match it)
    predictions/.finished.rank<R>           rank R has written all its records (DDP, `wait_for_ranks`)
    results/eval_<benchmark>.json           the protocol's format, merged over ranks (report.py)
    summary.json, summary.md                the per-benchmark table (report.py)
    tb/                                     TensorBoard

The JSONL files are the source of truth: every other output is derived from them at the end of
predict, so a run killed at any point resumes by skipping the keys already written.

A record is a `Record` in memory, written as one JSON object per line (`to_dict`) and read back
with `Record.from_dict`, which also reads the lines of older runs (a key those lines lack takes
its default; a key the record no longer has is dropped).

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
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
RESULTS_DIR = "results"
RUN_CONFIG = "run_config.json"
_RANK_FILE = re.compile(r"^(?P<bench>.+)\.rank(?P<rank>\d+)\.jsonl$")


@dataclasses.dataclass(kw_only=True)
class Record:
    """One sample's result: what it was (key, benchmark, index, problem type, the benchmark entry),
    the answer and its score, the cost (tokens, latency, Lite coverage), the per-token traces of
    entropy, EMA, α and rounds, how its frames were read, and `error`: None, or the one-line
    reason the sample could not run (its output is then `ERROR_OUTPUT`, scored 0).
    The fields are in the order of the JSON lines."""

    # How the frames were read (`vreason.data.items.video_record_fields`; None for images).
    video_reader: Optional[str] = None
    from_cache: Optional[bool] = None
    num_frames: Optional[int] = None
    retried_with: Optional[int] = None
    # The sample.
    key: str
    benchmark: str
    index: Any = None
    problem_type: Optional[str] = None
    entry: dict = dataclasses.field(default_factory=dict)
    # The answer.
    output: str = ""
    prediction: Optional[str] = None
    solution: Optional[str] = None
    reward: float = 0.0
    correct: bool = False
    process: Optional[str] = None
    error: Optional[str] = None
    mode: Optional[str] = None
    # The cost.
    num_new_tokens: int = 0
    prompt_length: int = 0
    num_video_tokens: int = 0
    num_video_tokens_kept: int = 0
    lite_layers: int = 0
    num_layers: int = 0
    skipped_rounds: int = 0
    stop_reason: Optional[str] = None
    latency_s: float = 0.0
    tokens_per_s: Optional[float] = None
    rank: int = 0
    # Per generated token.
    entropy: list = dataclasses.field(default_factory=list)
    entropy_after: list = dataclasses.field(default_factory=list)
    ema: list = dataclasses.field(default_factory=list)
    alpha: list = dataclasses.field(default_factory=list)
    updated: list = dataclasses.field(default_factory=list)
    # Set by the writer: 1 for a sample's first record, one more for each retry.
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON line's object."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        """A record from its JSON object, also one written by an older run: missing keys take
        their defaults (a null trace or count too), unknown keys are dropped, and an attempt
        that is missing or not a number counts as the first."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and not (v is None and k in _NOT_NULL)}
        try:
            values["attempt"] = max(1, int(data.get("attempt") or 1))
        except (TypeError, ValueError):
            values["attempt"] = 1
        return cls(**values)


# Fields whose null (in a hand-edited or older line) means their default: an empty trace, a 0 count.
_NOT_NULL = frozenset({"entry", "output", "reward", "correct", "num_new_tokens", "prompt_length", "num_video_tokens",
                       "num_video_tokens_kept", "lite_layers", "num_layers", "skipped_rounds", "latency_s", "rank",
                       "entropy", "entropy_after", "ema", "alpha", "updated"})


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


def read_predictions(pred_dir: Path) -> dict[str, list[Record]]:
    """All records under `pred_dir`, per benchmark, one per sample key (the highest attempt; among
    equal attempts the first read), sorted by the sample's index in its benchmark file."""
    per_bench: dict[str, dict[str, Record]] = {}
    for _, _, path in prediction_files(pred_dir):
        for line in read_jsonl(path):
            if "benchmark" not in line:
                log.warning("skipping a line without a benchmark in %s", path)
                continue
            rec = Record.from_dict(line)
            recs = per_bench.setdefault(str(rec.benchmark), {})
            key = str(rec.key)
            if key not in recs or rec.attempt > recs[key].attempt:
                recs[key] = rec
    return {
        bench: sorted(recs.values(), key=lambda r: (_index_key(r.index), str(r.key)))
        for bench, recs in sorted(per_bench.items())
    }


def _index_key(index: Any) -> tuple:
    return (0, index, "") if isinstance(index, (int, float)) else (1, 0, str(index))


# **ours**: how long the ranks of a run wait for each other at its end (the slowest rank's lag
# behind the fastest): several hours, so that a benchmark shard that drew the long samples still
# merges. `--dist_timeout_hours` on the command line.
DIST_TIMEOUT = timedelta(hours=12)


def _finished_marker(pred_dir: Path, rank: int) -> Path:
    return pred_dir / f".finished.rank{rank}"


def clear_finished(pred_dir: Path, rank: int) -> None:
    """Remove rank `rank`'s marker of an earlier run (each rank its own, before it predicts)."""
    _finished_marker(pred_dir, rank).unlink(missing_ok=True)


def mark_finished(pred_dir: Path, rank: int, records: int) -> None:
    """Say on the shared file system that rank `rank` wrote all its records (`records` this run)."""
    write_atomic(_finished_marker(pred_dir, rank), json.dumps({"rank": rank, "records": records}))


def wait_for_ranks(pred_dir: Path, world_size: int, timeout_s: float, poll_s: float = 1.0) -> list[int]:
    """Wait until every rank's marker exists, polling the file system (no collective, so no
    process-group timeout applies), at most `timeout_s` seconds; returns the ranks still missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [r for r in range(world_size) if not _finished_marker(pred_dir, r).is_file()]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
