#!/usr/bin/env python
"""Turn the `summary.json` files of several runs into the paper's table, with the anchors'
numbers (docs/method.md §5: Qwen2.5-VL-7B, V-Reason-7B, V-Reason-7B Lite, Video-R1-7B) beside ours.

    python experiments/scripts/paper_table.py runs/*/summary.json [--out table.md] [--figure curves.png]

Each run becomes one column named `<model> <mode>` (`+lite` when prune_ratio > 0, `@<frames>f`
when runs differ in frames). Rows are the paper's: the six benchmarks (VSI-Bench as accuracy and
MRA), the mean output tokens, and the average of the score rows. With `--figure`, the runs'
entropy curves (mean ± std over generated-token index, all benchmarks pooled) are drawn in one
plot like the paper's entropy-curve figure.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# (row label, benchmark name as in eval_<name>.json (lower-case), field)
ROWS = [
    ("VideoMMMU", "videommmu", "mean_acc"),
    ("MMVU", "mmvu", "mean_acc"),
    ("MVBench", "mvbench", "mean_acc"),
    ("TempCompass", "tempcompass", "mean_acc"),
    ("VideoMME", "videomme", "mean_acc"),
    ("VSI-Bench (acc)", "vsibench", "mean_acc"),
    ("VSI-Bench (MRA)", "vsibench", "mean_mra"),
]
TOKENS_ROW = "mean output tokens"
AVERAGE_ROW = "average of the rows above"

# The paper's numbers (%, tokens), Qwen2.5-VL-7B-Instruct under Video-R1's protocol.
ANCHORS = {
    "paper: Qwen2.5-VL-7B": [45.8, 61.3, 60.7, 72.4, 53.7, 33.8, 22.3, 226],
    "paper: V-Reason-7B": [46.3, 62.7, 60.9, 73.3, 54.9, 37.1, 23.4, 176],
    "paper: V-Reason-7B Lite": [47.4, 65.0, 60.6, 72.3, 53.5, 37.3, 23.7, 178],
    "paper: Video-R1-7B (RL)": [48.8, 64.0, 64.1, 73.3, 58.7, 30.9, 39.2, 430],
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def run_label(summary: dict, with_frames: bool) -> str:
    controller = summary.get("controller") or {}
    mode = controller.get("mode") or summary.get("mode") or "?"
    if mode != "off" and (controller.get("prune_ratio") or 0) > 0:
        mode += "+lite"
    label = f"{summary.get('model') or 'model'} {mode}"
    frames = (summary.get("data") or {}).get("num_frames")
    if with_frames and frames:
        label += f" @{frames}f"
    return label


def column(summary: dict) -> list:
    """The run's values for ROWS (in %), then the mean output tokens, then the average."""
    by_name = {_norm(name): row for name, row in summary.get("benchmarks", {}).items()}
    values = []
    for _, bench, field in ROWS:
        row = by_name.get(_norm(bench))
        value = row.get(field) if row else None
        values.append(None if value is None else 100.0 * value)
    tokens = [(r["mean_tokens"], r["n"]) for r in by_name.values() if r.get("mean_tokens") is not None]
    total = sum(n for _, n in tokens)
    values.append(sum(t * n for t, n in tokens) / total if total else None)
    return values


def with_average(values: list) -> list:
    scores = values[: len(ROWS)]
    present = [v for v in scores if v is not None]
    # An average over a subset of rows would not compare with the paper's: only a full column gets one.
    return values + [sum(present) / len(present) if len(present) == len(ROWS) else None]


def table(columns: dict[str, list]) -> str:
    labels = [label for label, _, _ in ROWS] + [TOKENS_ROW, AVERAGE_ROW]
    head = "| | " + " | ".join(columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    lines = [head, sep]
    for i, label in enumerate(labels):
        cells = []
        for values in columns.values():
            v = values[i] if i < len(values) else None
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else
                         (f"{v:.0f}" if label == TOKENS_ROW else f"{v:.1f}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled_curve(summary: dict) -> dict:
    """The entropy curve over all of a run's benchmarks: per index, the count-weighted mean and the
    pooled standard deviation."""
    curves = [r["entropy_curve"] for r in summary.get("benchmarks", {}).values() if r.get("entropy_curve", {}).get("mean")]
    length = max((len(c["mean"]) for c in curves), default=0)
    mean, std, count = [], [], []
    for k in range(length):
        parts = [(c["mean"][k], c["std"][k], c["count"][k]) for c in curves if k < len(c["mean"])]
        n = sum(p[2] for p in parts)
        m = sum(p[0] * p[2] for p in parts) / n
        second = sum((p[1] ** 2 + p[0] ** 2) * p[2] for p in parts) / n
        mean.append(m)
        std.append(math.sqrt(max(0.0, second - m * m)))
        count.append(n)
    return {"mean": mean, "std": std, "count": count}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", help="summary.json files (or run folders holding one)")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--figure", help="write the runs' entropy curves to this image file")
    parser.add_argument("--no-anchors", action="store_true", help="leave the paper's columns out")
    args = parser.parse_args(argv)

    summaries = []
    for item in args.summaries:
        path = Path(item)
        path = path / "summary.json" if path.is_dir() else path
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"paper_table: error: cannot read {path}: {exc}", file=sys.stderr)
            return 1
    frames = {(s.get("data") or {}).get("num_frames") for s in summaries}
    columns: dict[str, list] = {}
    for summary in summaries:
        label = run_label(summary, with_frames=len(frames) > 1)
        while label in columns:
            label += "'"
        columns[label] = with_average(column(summary))
    if not args.no_anchors:
        for label, values in ANCHORS.items():
            columns[label] = with_average(list(values))
    text = table(columns)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.figure:
        from vreason.plots import entropy_curve_figure, figure_image
        import matplotlib.image

        curves = {label: pooled_curve(s) for label, s in zip(columns, summaries)}
        matplotlib.image.imsave(args.figure, figure_image(entropy_curve_figure(curves)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
