"""What an evaluation run leaves on disk, and how it resumes.

Layout under the run's root (`trainer.default_root_dir`):

    predictions/<benchmark>.rank<R>.jsonl   one record per line, appended as each sample finishes
    predictions/run_config.json             what produced them (a resume must match it)
    results/eval_<benchmark>.json           PROTOCOL.md's format, merged over ranks
    summary.json, summary.md                the per-benchmark table (+ entropy curves in the json)
    tb/                                     TensorBoard

The JSONL files are the source of truth: every other output is derived from them at the end of
predict, so a run killed at any point resumes by skipping the keys already written, and its
final outputs equal those of an uninterrupted run (up to latencies).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar

from vreason.metrics import EvalMetrics, overall_row

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
RESULTS_DIR = "results"
RUN_CONFIG = "run_config.json"
_RANK_FILE = re.compile(r"^(?P<bench>.+)\.rank(?P<rank>\d+)\.jsonl$")
# Per-sample fields that stay in the JSONL files only: the protocol result is the input entry plus
# what PROTOCOL.md names, and traces would make the merged files hundreds of MB.
_TRACE_FIELDS = ("entropy", "entropy_after", "ema", "alpha", "updated")


class ResumeMismatchError(ValueError):
    """The output folder holds predictions made with a different configuration."""


# ---------------------------------------------------------------------------------------------
# files


def safe_name(benchmark: str) -> str:
    """A benchmark name usable in a file name."""
    return re.sub(r"[^0-9A-Za-z._+-]", "_", benchmark) or "_"


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


def read_predictions(pred_dir: Path) -> dict[str, list[dict]]:
    """All records under `pred_dir`, per benchmark, one per sample key (the first written wins),
    sorted by the sample's index in its benchmark file."""
    per_bench: dict[str, dict[str, dict]] = {}
    for _, _, path in prediction_files(pred_dir):
        for rec in read_jsonl(path):
            per_bench.setdefault(str(rec["benchmark"]), {}).setdefault(str(rec["key"]), rec)
    return {
        bench: sorted(recs.values(), key=lambda r: (_index_key(r.get("index")), str(r["key"])))
        for bench, recs in sorted(per_bench.items())
    }


def _index_key(index: Any) -> tuple:
    return (0, index, "") if isinstance(index, (int, float)) else (1, 0, str(index))


# ---------------------------------------------------------------------------------------------
# merge


def protocol_result(record: dict) -> dict:
    """One entry of PROTOCOL.md's `results`: the input sample plus output, prediction, reward,
    correct and process; the error message and cost of the sample are kept beside them."""
    out = dict(record.get("entry") or {})
    out.update(
        output=record.get("output"),
        prediction=record.get("prediction"),
        reward=record.get("reward"),
        correct=record.get("correct"),
        process=record.get("process"),
        error=record.get("error"),
        num_new_tokens=record.get("num_new_tokens"),
        latency_s=record.get("latency_s"),
    )
    return out


def summarize(records_by_bench: dict[str, list[dict]], max_tokens: Optional[int] = None) -> dict:
    """The summary of complete records: the same metric classes the live run uses, computed in this
    process only, with `mean_acc`/`mean_mra` from the protocol's own aggregation."""
    from vreason.scoring import aggregate

    longest = max((len(r.get("entropy") or ()) for recs in records_by_bench.values() for r in recs), default=0)
    longest = max(longest, max((int(r.get("num_new_tokens") or 0) for recs in records_by_bench.values() for r in recs), default=0))
    metrics = EvalMetrics(max(1, max_tokens or 0, longest), sync_on_compute=False)
    for recs in records_by_bench.values():
        for rec in recs:
            metrics.update(rec)
    computed = metrics.compute()
    for bench, recs in records_by_bench.items():
        protocol = _protocol_scores(aggregate(recs), bench)
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
    summary = {**(run_info or {}), **summary}
    write_atomic(root / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2, allow_nan=False, default=_json_default))
    write_atomic(root / "summary.md", summary_markdown(summary))
    summary["_records"] = records
    return summary


def metrics_disagreement(live: dict, summary: dict) -> list[str]:
    """Benchmarks whose live (synced) metrics and file-based summary differ in count, errors,
    scores or tokens."""
    from vreason.metrics import is_close

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


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: Optional[float], fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def summary_markdown(summary: dict) -> str:
    """The per-benchmark table: score (mean_acc, %), MRA (%), mean output tokens, latency, errors."""
    title = summary.get("title") or "V-Reason evaluation"
    lines = [f"# {title}", ""]
    info = [f"{k}: `{summary[k]}`" for k in ("model", "mode") if summary.get(k) is not None]
    if info:
        lines += [", ".join(info), ""]
    lines += [
        "| benchmark | n | score (mean_acc, %) | MRA (%) | mean output tokens | latency (s/sample) | tokens/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bench, row in summary["benchmarks"].items():
        lines.append(
            f"| {bench} | {row['n']} | {_pct(row.get('mean_acc'))} | {_pct(row.get('mean_mra'))} | "
            f"{_num(row.get('mean_tokens'), '.1f')} | {_num(row.get('mean_latency_s'), '.3f')} | "
            f"{_num(row.get('tokens_per_s'), '.1f')} | {row['n_errors']} |"
        )
    o = summary["overall"]
    lines.append(
        f"| **overall** | {o['n']} | {_pct(o.get('mean_score'))} | | {_num(o.get('mean_tokens'), '.1f')} | "
        f"{_num(o.get('mean_latency_s'), '.3f')} | {_num(o.get('tokens_per_s'), '.1f')} | {o['n_errors']} |"
    )
    lines += [
        "",
        "score: mean over non-regression samples (PROTOCOL.md `mean_acc`); MRA: mean relative accuracy over "
        "regression samples; overall score: the mean of the score and MRA columns, as the paper's average. "
        "Error samples count as score 0.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# TensorBoard figures (rendered with the Agg canvas directly: no pyplot, no display needed)


def _figure(width: float, height: float, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def figure_image(fig) -> "Any":
    """RGB array `[H, W, 3]` of a matplotlib figure."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def sample_trace_figure(record: dict):
    """Entropy (before and after the round), its EMA with the running peak, and α over the
    generated tokens of one sample; dots mark tokens where an optimization round ran."""
    import numpy as np

    h = np.asarray(record.get("entropy") or [], dtype=float)
    fig, (ax_h, ax_a) = _figure(8, 4.5, rows=2)
    k = np.arange(len(h))
    ax_h.plot(k, h, color="tab:orange", lw=1.2, label="entropy H_k")
    after = record.get("entropy_after")
    if after:
        ax_h.plot(k, np.asarray(after, dtype=float), color="tab:red", lw=0.8, alpha=0.7, label="entropy after update")
    ema = np.asarray(record.get("ema") or [], dtype=float)
    if len(ema):
        ax_h.plot(k[: len(ema)], ema, color="tab:blue", lw=1.5, label="EMA E_k")
        ax_h.plot(k[: len(ema)], np.maximum.accumulate(ema), color="tab:blue", lw=0.8, ls="--", label="running peak")
    updated = np.asarray(record.get("updated") or [], dtype=bool)
    if updated.any() and len(h):
        idx = k[: len(updated)][updated[: len(h)]]
        ax_h.plot(idx, h[idx], ".", color="k", ms=3, label="round ran")
    ax_h.set_ylabel("entropy (nats)")
    ax_h.grid(True, alpha=0.3)
    ax_h.legend(fontsize=7, loc="upper right")
    alpha = np.asarray(record.get("alpha") or [], dtype=float)
    ax_a.step(np.arange(len(alpha)), alpha, where="post", color="tab:green")
    ax_a.set_ylim(-1.3, 1.3)
    ax_a.set_yticks([-1, 1])
    ax_a.set_ylabel("α")
    ax_a.set_xlabel("generated token")
    ax_a.grid(True, alpha=0.3)
    status = f"score {record.get('reward')}" if not record.get("error") else "error"
    fig.suptitle(f"{record.get('benchmark')} #{record.get('index')} ({record.get('mode', '')}): "
                 f"{record.get('num_new_tokens')} tokens, {status}", fontsize=9)
    fig.tight_layout()
    return fig


def entropy_curve_figure(curves: dict[str, dict], title: str = "Entropy vs generated output token", min_fraction: float = 0.05):
    """Mean entropy vs generated-token index with a ±std band, one line per label (a mode, a
    model or a benchmark), like the paper's entropy-curve figure. An index is drawn while at
    least `min_fraction` of that curve's samples (and at least one) are still generating, so the
    tail is not one sample's noise."""
    import numpy as np

    fig, (ax,) = _figure(9, 3.6)
    for label, curve in curves.items():
        mean = np.asarray(curve.get("mean") or [], dtype=float)
        std = np.asarray(curve.get("std") or [], dtype=float)
        count = np.asarray(curve.get("count") or [], dtype=float)
        if not len(mean):
            continue
        keep = count >= max(1.0, math.ceil(min_fraction * count[0]))
        m = int(keep.sum()) if keep.all() else int(np.argmin(keep))
        x = np.arange(m)
        (line,) = ax.plot(x, mean[:m], lw=1.6, label=label)
        ax.fill_between(x, (mean - std)[:m], (mean + std)[:m], color=line.get_color(), alpha=0.25, lw=0)
    ax.set_title(title)
    ax.set_xlabel("generated output token")
    ax.set_ylabel("entropy (nats)")
    ax.grid(True, alpha=0.4)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_summary_to_tensorboard(experiment, summary: dict, label: str, hparams: Optional[dict] = None, logger=None) -> None:
    """End-of-run TensorBoard content from the merged summary: per-benchmark scalars, entropy
    curves, output-token histograms, the table as text and the hparams with their results."""
    import numpy as np

    records = summary.get("_records", {})
    for bench, row in summary["benchmarks"].items():
        for tag, value in (
            ("score", row.get("mean_acc")), ("mra", row.get("mean_mra")), ("tokens", row.get("mean_tokens")),
            ("latency_s", row.get("mean_latency_s")), ("errors", row.get("n_errors")),
            ("tokens_per_s", row.get("tokens_per_s")), ("entropy", row.get("mean_entropy")),
        ):
            if value is not None:
                experiment.add_scalar(f"{tag}/{bench}", float(value), 0)
        tokens = [int(r.get("num_new_tokens") or 0) for r in records.get(bench, [])]
        if tokens:
            experiment.add_histogram(f"output_tokens/{bench}", np.asarray(tokens, dtype=np.int64), 0)
        if row["entropy_curve"]["mean"]:
            fig = entropy_curve_figure({label: row["entropy_curve"]}, title=f"{bench}: entropy vs generated output token")
            experiment.add_image(f"entropy_curve/{bench}", figure_image(fig), 0, dataformats="HWC")
    curves = {b: r["entropy_curve"] for b, r in summary["benchmarks"].items() if r["entropy_curve"]["mean"]}
    if curves:
        fig = entropy_curve_figure(curves, title=f"{label}: entropy vs generated output token")
        experiment.add_image("entropy_curve/all_benchmarks", figure_image(fig), 0, dataformats="HWC")
    overall = summary["overall"]
    for tag, value in (("score", overall.get("mean_score")), ("tokens", overall.get("mean_tokens")),
                       ("latency_s", overall.get("mean_latency_s")), ("errors", overall.get("n_errors"))):
        if value is not None:
            experiment.add_scalar(f"{tag}/overall", float(value), 0)
    experiment.add_text("summary", summary_markdown(summary), 0)
    if logger is not None and hparams is not None:
        hp_metrics = {f"hp/{k}": float(v) for k, v in (("score", overall.get("mean_score")), ("tokens", overall.get("mean_tokens")),
                                                        ("latency_s", overall.get("mean_latency_s"))) if v is not None}
        logger.log_hyperparams(hparams, metrics=hp_metrics or None)
    experiment.flush()


# ---------------------------------------------------------------------------------------------
# callbacks


class PredictionWriter(BasePredictionWriter):
    """Appends each record to `predictions/<benchmark>.rank<R>.jsonl` as soon as it exists,
    resumes by telling the DataModule which keys are done, and merges everything on rank 0 at
    the end of predict (results, summary, TensorBoard).

    output_dir: the run's root; None means `trainer.default_root_dir`.
    fsync: force each line to disk, so a power loss or a killed node loses at most one sample.
    """

    def __init__(self, output_dir: Optional[str] = None, fsync: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.fsync = fsync
        self._files: dict[str, Any] = {}
        self._existing: list[dict] = []
        self.summary: Optional[dict] = None
        self.live_metrics: Optional[dict] = None

    def root(self, trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def setup(self, trainer, pl_module, stage: str) -> None:
        pred_dir = self.root(trainer) / PREDICTIONS_DIR
        self._check_run_config(trainer, pl_module, pred_dir)
        # Only this rank writes its own files, so only it may cut their partial last lines; the
        # reads below skip partial lines anyway, whichever rank wrote them.
        for _, rank, path in prediction_files(pred_dir):
            if rank == trainer.global_rank:
                truncate_partial_line(path)
        existing = read_predictions(pred_dir)
        self._existing = [r for recs in existing.values() for r in recs]
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "exclude_keys"):
            # Every rank reads every rank's files, so all ranks drop the same keys before sharding.
            datamodule.exclude_keys = {str(r["key"]) for r in self._existing}
        elif self._existing:
            log.warning("predictions exist under %s but the data has no exclude_keys: samples will run again", pred_dir)
        if self._existing and trainer.is_global_zero:
            log.info("resuming: %d samples already under %s", len(self._existing), pred_dir)

    def _check_run_config(self, trainer, pl_module, pred_dir: Path) -> None:
        current = run_config(pl_module, trainer.datamodule)
        path = pred_dir / RUN_CONFIG
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError:
                stored = None
            # Only records make a folder a resume: a run that failed before its first sample (a
            # mistyped model path, say) must not lock the folder to its settings.
            if stored is not None and stored != current and not any(prediction_files(pred_dir)):
                stored = None
            if stored is not None and stored != current:
                diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
                raise ResumeMismatchError(
                    f"{pred_dir} holds predictions made with a different {', '.join(diff)}; "
                    f"use another --trainer.default_root_dir (or delete {path} to mix them)"
                )
        if trainer.is_global_zero and (not path.is_file() or stored is None):
            write_atomic(path, json.dumps(current, indent=2, sort_keys=True))

    def on_predict_start(self, trainer, pl_module) -> None:
        # The live metrics cover the whole run, resumed samples included; rank 0 alone adds them
        # so that the cross-rank sum counts each once.
        metrics = getattr(pl_module, "metrics", None)
        if trainer.is_global_zero and isinstance(metrics, EvalMetrics):
            for rec in self._existing:
                metrics.update(rec)

    def _file(self, trainer, benchmark: str):
        f = self._files.get(benchmark)
        if f is None:
            path = self.root(trainer) / PREDICTIONS_DIR / f"{safe_name(benchmark)}.rank{trainer.global_rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self._files[benchmark] = open(path, "a", encoding="utf-8")
        return f

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        for record in prediction or ():
            f = self._file(trainer, str(record["benchmark"]))
            f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def _close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._close()
        metrics = getattr(pl_module, "metrics", None)
        # A collective: every rank computes, so the synced values are the whole run's.
        self.live_metrics = metrics.compute() if isinstance(metrics, EvalMetrics) else None
        trainer.strategy.barrier("vreason_merge")
        if trainer.is_global_zero:
            info = run_info(pl_module, trainer.datamodule)
            decode = dict(getattr(pl_module, "hparams", {}) or {}).get("decode")
            max_tokens = getattr(decode, "max_new_tokens", None)
            self.summary = merge_predictions(self.root(trainer), run_info=info, max_tokens=max_tokens,
                                             live_metrics=self.live_metrics)
            logger = trainer.logger
            experiment = getattr(logger, "experiment", None) if logger is not None else None
            if experiment is not None and hasattr(experiment, "add_scalar"):
                log_summary_to_tensorboard(experiment, self.summary, label=str(info.get("label", "run")),
                                           hparams=flat_hparams(pl_module), logger=logger)
        trainer.strategy.barrier("vreason_merged")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._close()


def _plain(value: Any) -> Any:
    """Dataclasses and namespaces as plain dicts: LightningCLI stores init args as dicts, direct
    construction keeps the dataclasses, and both must compare and print alike."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def module_settings(pl_module) -> dict:
    """The module's model path, dtype, controller and decoding settings as plain values."""
    hp = dict(getattr(pl_module, "hparams", {}) or {})
    out: dict[str, Any] = {}
    for key in ("model_path", "dtype", "controller", "decode"):
        value = getattr(pl_module, key, None) if key != "dtype" else getattr(pl_module, "dtype_name", None)
        value = hp.get(key) if value is None else value
        if value is not None:
            out[key] = str(value) if key in ("model_path", "dtype") else _plain(value)
    return out


def run_config(pl_module, datamodule) -> dict:
    """What determines the predictions (not where they go, not how fast): a resume must match it."""
    cfg: dict[str, Any] = module_settings(pl_module)
    data: dict[str, Any] = {}
    for key in ("num_frames", "fps", "max_pixels", "min_pixels", "template"):
        if datamodule is not None and hasattr(datamodule, key):
            value = getattr(datamodule, key)
            data[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    cfg["data"] = data
    return json.loads(json.dumps(cfg, default=_json_default))


def run_info(pl_module, datamodule=None) -> dict:
    """The header of summary.json: which model and settings produced it."""
    settings = module_settings(pl_module)
    controller = settings.get("controller") or {}
    mode = controller.get("mode")
    prune = controller.get("prune_ratio") or 0.0
    label = f"{mode}+lite{prune:g}" if mode and mode != "off" and prune > 0 else (mode or "run")
    model = Path(settings.get("model_path", "")).name or None
    info = {"model": model, "model_path": settings.get("model_path"), "mode": mode, "label": label,
            "controller": controller, "decode": settings.get("decode")}
    if datamodule is not None:
        info["data"] = run_config(pl_module, datamodule)["data"]
    info["title"] = f"{model or 'model'} · {label}"
    return info


def flat_hparams(pl_module) -> dict:
    """Scalar hyperparameters with dotted names (`controller.mode`, ...), as TensorBoard's HParams
    plugin shows them."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float, str, bool)):
            out[prefix] = value
        elif value is None:
            out[prefix] = "None"
        else:
            out[prefix] = str(value)

    # Keys with a leading underscore are LightningCLI's bookkeeping (`_instantiator`), not settings.
    hparams = {k: _plain(v) for k, v in dict(getattr(pl_module, "hparams", {}) or {}).items() if not str(k).startswith("_")}
    walk("", {**hparams, **module_settings(pl_module)})
    return out


class EvalProgressBar(TQDMProgressBar):
    """Lightning's bar, with the run's generation speed and running score beside it."""

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        stats = getattr(pl_module, "progress_stats", None)
        bar = self.predict_progress_bar
        if callable(stats) and bar is not None and not bar.disable:
            bar.set_postfix(stats(), refresh=False)


def default_callbacks(output_dir: Optional[str] = None) -> list:
    """The callbacks every evaluation run wants: the resumable writer and the informative bar."""
    return [PredictionWriter(output_dir), EvalProgressBar()]
