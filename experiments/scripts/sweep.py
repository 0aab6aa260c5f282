#!/usr/bin/env python
"""Dose-response study: a grid of `vreason predict` runs (mode × lr × steps × every_k × decoding)
on a held-out synthetic set, tabulated with intervals and plotted against lr.

    python experiments/scripts/sweep.py --model overthink --out runs/sweep --n 300 --seed 2 \\
        --modes off switch minimize maximize lite --lrs 0.01 0.1 1 --decodings greedy sampled greedy+nowait

Modes: off, switch, minimize, maximize, lite (switch with half the video tokens pruned). A decoding
is greedy or sampled (temperature 1, seed 0), with "+nowait" for the NoWait baseline
(`vreason/nowait.py`); off with nowait is NoWait itself, switch with nowait is V-Reason + NoWait.
Off runs once per decoding (lr, steps and every_k do not apply). Each run goes through the real
`vreason predict` path and is skipped when its summary exists, so a sweep can be stopped and
resumed; `--table-only` tabulates every finished run in the folder (several grids, one table). Writes `<out>/sweep.md` (the table), `<out>/sweep.json` and `<out>/sweep-vs-lr.png`.

Columns: accuracy per question type with a 95% interval (Wilson for multiple choice and count;
mean ± 1.96 standard errors for distance MRA), mean output tokens (± 1.96 SE), reflections per
answer (thought sentences opening with "Wait", "Hmm" or "Alternatively", the opening sentence
excluded), the share of reflecting answers whose claim changed across the reflection, mean
per-token entropy, and the share of answers whose text differs from off with the same decoding.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_eval import records, wilson, write_sets  # noqa: E402

MODES = {"off": ("off", 0.0), "switch": ("switch", 0.0), "minimize": ("minimize", 0.0),
         "maximize": ("maximize", 0.0), "lite": ("switch", 0.5)}
_REFLECT = re.compile(r"(?:^|[.!?]\s+)(wait|hmm|alternatively)\b", re.IGNORECASE)


def thought(output: str) -> str:
    text = output.split("<think>", 1)[-1]
    return text.split("</think>", 1)[0]


def reflections(output: str) -> int:
    """Sentences of the thought that open with a reflection word, the opener excluded."""
    found = list(_REFLECT.finditer(thought(output)))
    return len([m for m in found if m.start() > 0])


def claim_changed(output: str) -> bool | None:
    """For a reflecting answer: does the sentence before the first reflection differ from the
    sentence before the conclusion ("So the answer is")? None when it does not reflect."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", thought(output).strip()) if s.strip()]
    first = next((i for i, s in enumerate(sentences) if i > 0 and _REFLECT.match(s)), None)
    last = next((i for i in range(len(sentences) - 1, -1, -1) if sentences[i].startswith("So the answer")), None)
    if first is None or last is None or last < 1:
        return None
    return sentences[first - 1] != sentences[last - 1]


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = float(np.mean(values))
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, half


def plan(opts) -> list[dict]:
    """The grid's runs (off once per decoding)."""
    runs = []
    for decoding in opts.decodings:
        for mode in opts.modes:
            grid = [(None, None, None)] if mode == "off" else itertools.product(opts.lrs, opts.steps, opts.every_k)
            for lr, steps, every_k in grid:
                runs.append(dict(mode=mode, lr=lr, steps=steps, every_k=every_k, decoding=decoding))
    return runs


def name(run: dict) -> str:
    knobs = "" if run["mode"] == "off" else f"-lr{run['lr']:g}-s{run['steps']}-k{run['every_k']}"
    return f"{run['mode']}{knobs}-{run['decoding']}"


def finished(root: Path) -> list[dict]:
    """Every finished run under `<out>/runs`, read back from its summary: several sweeps into one
    folder (each a product of its own lists) tabulate as one."""
    found = []
    for summary in sorted((root / "runs").glob("*/summary.json")):
        info = json.loads(summary.read_text())
        c, d = info["controller"], info["decode"]
        mode = "lite" if c["prune_ratio"] > 0 else c["mode"]
        decoding = ("sampled" if d["do_sample"] else "greedy") + ("+nowait" if d.get("nowait") else "")
        run = dict(mode=mode, lr=None, steps=None, every_k=None, decoding=decoding)
        if mode != "off":
            run.update(lr=c["lr"], steps=c["steps"], every_k=c["every_k"])
        if name(run) == summary.parent.name:
            found.append(run)
    order = {m: i for i, m in enumerate(MODES)}
    return sorted(found, key=lambda r: (r["decoding"], order[r["mode"]], r["lr"] or 0, r["steps"] or 0, r["every_k"] or 0))


def predict(root: Path, bench: Path, run: dict, model: str, max_new_tokens: int, batch_size: int) -> Path:
    from vreason.cli import main

    out = root / "runs" / name(run)
    if (out / "summary.json").is_file():
        return out
    controller, prune = MODES[run["mode"]]
    sample = run["decoding"].startswith("sampled")
    nowait = run["decoding"].endswith("+nowait")
    args = ["predict", "--model.model_path", model, "--data.files", json.dumps([str(bench)]),
            "--data.num_frames", "4", "--data.batch_size", str(batch_size),
            "--model.controller.mode", controller, "--model.controller.prune_ratio", str(prune),
            "--model.decode.max_new_tokens", str(max_new_tokens), "--model.decode.do_sample", str(sample).lower(),
            "--model.decode.seed", "0", "--model.decode.nowait", str(nowait).lower(), "--model.plot_samples", "0",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false"]
    if run["mode"] != "off":
        args += ["--model.controller.lr", str(run["lr"]), "--model.controller.steps", str(run["steps"]),
                 "--model.controller.every_k", str(run["every_k"])]
    if main(args):
        raise SystemExit(f"vreason predict failed for {out.name}")
    return out


def stats(recs: list[dict], off: dict[int, str] | None) -> dict:
    by = {t: [r for r in recs if r["problem_type"] == t] for t in ("multiple choice", "numerical", "regression")}
    row: dict = {"n": len(recs)}
    for key, kind in (("mc", "multiple choice"), ("count", "numerical")):
        k, n = sum(bool(r["correct"]) for r in by[kind]), len(by[kind])
        row[key] = [k / n if n else None, *wilson(k, n)]
    row["mra"] = list(mean_ci([r["reward"] for r in by["regression"]]))
    row["tokens"] = list(mean_ci([r["num_new_tokens"] for r in recs]))
    counts = [reflections(r["output"]) for r in recs]
    row["reflections"] = float(np.mean(counts)) if counts else None
    row["reflecting"] = float(np.mean([c > 0 for c in counts])) if counts else None
    changed = [c for c in (claim_changed(r["output"]) for r in recs) if c is not None]
    row["claim_changed"] = float(np.mean(changed)) if changed else None
    row["entropy"] = float(np.mean([h for r in recs for h in (r.get("entropy") or [])] or [math.nan]))
    row["changed_vs_off"] = None if off is None else float(np.mean([r["output"] != off.get(r["index"]) for r in recs]))
    row["unfinished"] = sum(r.get("stop_reason") not in (None, "eos") for r in recs)
    return row


def table(rows: list[tuple[dict, dict]]) -> str:
    def pct(x):
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"

    def ci(v):
        return f"{pct(v[0])} [{pct(v[1])}, {pct(v[2])}]"

    def pm(v, scale=1.0, digits=1):
        if v[0] is None:
            return "–"
        return f"{scale * v[0]:.{digits}f} ± {scale * v[1]:.{digits}f}" if not math.isnan(v[1]) else f"{scale * v[0]:.{digits}f}"

    lines = ["| decoding | mode | lr | steps | every_k | n | MC acc (%) [95% CI] | count acc (%) [95% CI] | "
             "distance MRA (%) | output tokens | reflections / answer | reflecting (%) | claim changed (%) | "
             "mean entropy | text ≠ off (%) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run, s in rows:
        knobs = ("–", "–", "–") if run["mode"] == "off" else (f"{run['lr']:g}", run["steps"], run["every_k"])
        lines.append(f"| {run['decoding']} | {run['mode']} | {knobs[0]} | {knobs[1]} | {knobs[2]} | {s['n']} | {ci(s['mc'])} | "
                     f"{ci(s['count'])} | {pm(s['mra'], 100)} | {pm(s['tokens'])} | {s['reflections']:.2f} | "
                     f"{pct(s['reflecting'])} | {pct(s['claim_changed'])} | {s['entropy']:.3f} | {pct(s['changed_vs_off'])} |")
    return "\n".join(lines)


def figure(rows: list[tuple[dict, dict]], path: Path) -> None:
    """Output tokens and multiple-choice accuracy against lr, one line per mode, a column per decoding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decodings = list(dict.fromkeys(run["decoding"] for run, _ in rows))
    fig, axes = plt.subplots(2, len(decodings), figsize=(4.5 * len(decodings), 6.4), squeeze=False)
    for col, decoding in enumerate(decodings):
        mine = [(run, s) for run, s in rows if run["decoding"] == decoding]
        for row, (key, label) in enumerate((("tokens", "mean output tokens"), ("mc", "MC accuracy"))):
            ax = axes[row][col]
            for mode in dict.fromkeys(run["mode"] for run, _ in mine):
                points = sorted((run["lr"], s[key][0]) for run, s in mine if run["mode"] == mode and run["lr"] is not None
                                and s[key][0] is not None)
                if mode == "off":
                    value = next(s[key][0] for run, s in mine if run["mode"] == "off")
                    ax.axhline(value, color="k", linestyle="--", label="off")
                elif points:
                    ax.plot(*zip(*points), marker="o", label=mode)
            ax.set_xscale("log")
            ax.set_xlabel("controller lr")
            ax.set_title(f"{label} ({decoding})", fontsize=9)
            if ax.get_lines():
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="overthink", help="a shipped recipe (default, overthink) or a model folder")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2, help="held-out seed (training drew from seed 0)")
    parser.add_argument("--modes", nargs="+", default=["off", "switch"], choices=list(MODES))
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.01])
    parser.add_argument("--steps", nargs="+", type=int, default=[1])
    parser.add_argument("--every-k", nargs="+", type=int, default=[2])
    parser.add_argument("--decodings", nargs="+", default=["greedy"],
                        choices=["greedy", "sampled", "greedy+nowait", "sampled+nowait"])
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="samples decoded together (rows are independent)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table-only", action="store_true", help="run nothing: tabulate every finished run in --out")
    opts = parser.parse_args(argv)
    import torch

    torch.set_num_threads(opts.threads)
    from vreason.models.tiny import trained_path

    model = str(trained_path(opts.model)) if opts.model in ("default", "overthink") else opts.model
    root = Path(opts.out)
    bench, _ = write_sets(root, opts.n, opts.seed)
    runs = finished(root) if opts.table_only else plan(opts)
    done = {name(run): records(root / "runs" / name(run) if opts.table_only else
                               predict(root, bench, run, model, opts.max_new_tokens, opts.batch_size)) for run in runs}
    rows = []
    for run in runs:
        base = f"off-{run['decoding'].split('+')[0]}"
        off = {r["index"]: r["output"] for r in done[base]} if base in done and name(run) != base else None
        rows.append((run, stats(done[name(run)], off)))
    text = table(rows)
    (root / "sweep.md").write_text(text + "\n")
    (root / "sweep.json").write_text(json.dumps([{**run, **s} for run, s in rows], indent=1) + "\n")
    figure(rows, root / "sweep-vs-lr.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
