#!/usr/bin/env python
"""What V-Reason does to the shipped trained tiny model: the README's table, entropy curves and
output-length histograms, from `vreason predict` runs over a fresh held-out synthetic set.

    python experiments/scripts/tiny_eval.py --out runs/tiny_eval [--n 300] [--seed 2] [--decoding greedy sampled]

Runs, each through the real `vreason predict` path (`vreason.cli.main`): off, switch,
switch+lite, minimize and maximize, with greedy and with sampled decoding (temperature 1), plus
off greedy on the same questions with every clip replaced by a blank one (does the model use the
video?). Writes `<out>/table.md`, `<out>/stats.json` and the figures `tiny-entropy-curve.png`,
`tiny-output-tokens.png` under `--figures`. A finished run is not run again (its summary exists),
so the script can be stopped and restarted.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

MODES = {"off": ("off", 0.0), "switch": ("switch", 0.0), "switch+lite": ("switch", 0.5),
         "minimize": ("minimize", 0.0), "maximize": ("maximize", 0.0)}


def write_sets(root: Path, n: int, seed: int) -> tuple[Path, Path]:
    """The held-out set and its blank twin (same entries, clips of background only)."""
    from vreason.data.synthetic import BACKGROUND, TRAINED_CLIPS, encode_mp4, write_synthetic_benchmark

    bench = root / "data" / "eval_Synthetic.json"
    if not bench.is_file():
        bench = write_synthetic_benchmark(root / "data", n=n, seed=seed, **TRAINED_CLIPS)
    blank = root / "blank" / "eval_SyntheticBlank.json"
    if not blank.is_file():
        (blank.parent / "videos").mkdir(parents=True, exist_ok=True)
        t, size = TRAINED_CLIPS["num_frames"], TRAINED_CLIPS["size"]
        video = np.empty((t, size, size, 3), dtype=np.uint8)
        video[:] = BACKGROUND
        encode_mp4(video, blank.parent / "videos" / "blank.mp4", TRAINED_CLIPS["fps"])
        entries = [{**e, "path": "./videos/blank.mp4"} for e in json.loads(bench.read_text())]
        blank.write_text(json.dumps(entries, indent=1) + "\n")
    return bench, blank


def predict(root: Path, bench: Path, mode: str, sample: bool, model: str, max_new_tokens: int) -> Path:
    """One `vreason predict` run; returns its output folder."""
    from vreason.cli import main

    controller, prune = MODES[mode]
    out = root / "runs" / f"{bench.stem}-{mode}-{'sampled' if sample else 'greedy'}"
    if (out / "summary.json").is_file():
        return out
    code = main(["predict", "--model.model_path", model, "--data.files", json.dumps([str(bench)]),
                 "--data.num_frames", "4", "--model.controller.mode", controller,
                 "--model.controller.prune_ratio", str(prune), "--model.decode.max_new_tokens", str(max_new_tokens),
                 "--model.decode.do_sample", str(sample).lower(), "--model.decode.seed", "0",
                 "--model.plot_samples", "0", "--trainer.default_root_dir", str(out),
                 "--trainer.enable_progress_bar", "false"])
    if code:
        raise SystemExit(f"vreason predict failed for {out.name} (exit {code})")
    return out


def records(run: Path) -> list[dict]:
    from vreason.records import read_predictions

    return [r.to_dict() for recs in read_predictions(run / "predictions").values() for r in recs]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def think_end(tokenizer, output: str) -> int | None:
    """Index of the generated token that closes the thought (`</think>`), or None."""
    cut = output.find("</think>")
    if cut < 0:
        return None
    return len(tokenizer(output[:cut], add_special_tokens=False)["input_ids"])


def stats(recs: list[dict], tokenizer) -> dict:
    by = {t: [r for r in recs if r["problem_type"] == t] for t in ("multiple choice", "numerical", "regression")}
    mc = by["multiple choice"]
    k = sum(bool(r["correct"]) for r in mc)
    lo, hi = wilson(k, len(mc))
    switches, ends = [], []
    for r in recs:
        alpha = (r.get("alpha") or []) if r.get("mode") == "switch" else []
        first = next((i for i, a in enumerate(alpha) if a < 0), None)
        end = think_end(tokenizer, r["output"])
        if first is not None and end is not None:
            switches.append(first)
            ends.append(end)
    tokens = sum(r["num_new_tokens"] for r in recs)
    seconds = sum(r["latency_s"] for r in recs)
    return {
        "n": len(recs), "mc_acc": k / max(1, len(mc)), "mc_ci": [lo, hi],
        "num_acc": float(np.mean([r["reward"] for r in by["numerical"]])) if by["numerical"] else None,
        "mra": float(np.mean([r["reward"] for r in by["regression"]])) if by["regression"] else None,
        "mean_tokens": tokens / max(1, len(recs)), "tokens_per_s": tokens / seconds if seconds else None,
        "tokens": [r["num_new_tokens"] for r in recs],
        "unfinished": sum(r.get("stop_reason") not in (None, "eos") for r in recs),
        "alpha_switch_mean": float(np.mean(switches)) if switches else None,
        "think_end_mean": float(np.mean(ends)) if ends else None,
        "switch_before_think_end": float(np.mean([s < e for s, e in zip(switches, ends)])) if switches else None,
        "entropy_curve": mean_curve([r["entropy"] for r in recs if r.get("entropy")]),
    }


def mean_curve(traces: list[list[float]]) -> list[float]:
    """Mean over samples at each generated-token index (samples that reached it)."""
    width = max((len(t) for t in traces), default=0)
    return [float(np.mean([t[i] for t in traces if len(t) > i])) for i in range(width)]


def constant_baselines(bench: Path) -> dict:
    """What the best constant answer scores on this set: numerical accuracy and regression MRA."""
    from vreason.scoring import score

    entries = json.loads(bench.read_text())
    out = {}
    for kind, field in (("numerical", "num_acc"), ("regression", "mra")):
        sols = [e["solution"] for e in entries if e["problem_type"] == kind]
        out[field] = max(np.mean([score(f"<answer>{c}</answer>", s, kind) for s in sols]) for c in range(1, 61))
    return out


def table(rows: dict[str, dict], base: dict) -> str:
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    lines = ["| decoding | mode | n | MC acc (%) [95% CI] | count acc (%) | distance MRA (%) | mean output tokens | "
             "tokens/s | α→−1 at token | `</think>` at token |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in rows.items():
        decoding, mode = name.split(" ", 1)
        ci = f"{pct(s['mc_acc'])} [{pct(s['mc_ci'][0])}, {pct(s['mc_ci'][1])}]"
        sw = "–" if s["alpha_switch_mean"] is None else f"{s['alpha_switch_mean']:.1f}"
        te = "–" if s["think_end_mean"] is None else f"{s['think_end_mean']:.1f}"
        lines.append(f"| {decoding} | {mode} | {s['n']} | {ci} | {pct(s['num_acc'])} | {pct(s['mra'])} | "
                     f"{s['mean_tokens']:.1f} | {s['tokens_per_s'] or 0:.0f} | {sw} | {te} |")
    lines.append(f"\nBest constant answer on this set: count accuracy {pct(base['num_acc'])}%, distance MRA "
                 f"{pct(base['mra'])}%; multiple-choice chance 25%.")
    return "\n".join(lines)


def figures(rows: dict[str, dict], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, decoding in zip(axes, ("greedy", "sampled")):
        for mode in ("off", "switch"):
            s = rows.get(f"{decoding} {mode}")
            if s:
                ax.plot(s["entropy_curve"], label=mode)
        ax.set_title(f"mean entropy per generated token ({decoding})")
        ax.set_xlabel("generated token")
        if ax.get_lines():
            ax.legend()
    axes[0].set_ylabel("entropy (nats)")
    fig.tight_layout()
    fig.savefig(folder / "tiny-entropy-curve.png", dpi=110)
    plt.close(fig)
    names = [n for n in rows if not n.endswith("(blank clips)")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, decoding in zip(axes, ("greedy", "sampled")):
        sets = [(n.split(" ", 1)[1], rows[n]["tokens"]) for n in names if n.startswith(decoding)]
        top = max((max(t) for _, t in sets), default=1)
        bins = np.arange(0, top + 8, 8)
        for mode, tokens in sets:
            ax.hist(tokens, bins=bins, histtype="step", label=mode, linewidth=1.4)
        ax.set_title(f"output tokens per answer ({decoding})")
        ax.set_xlabel("output tokens")
        ax.legend()
    axes[0].set_ylabel("answers")
    fig.tight_layout()
    fig.savefig(folder / "tiny-output-tokens.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/tiny_eval")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2, help="held-out seed (the demo uses 1)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped trained model)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--decoding", nargs="+", default=["greedy", "sampled"], choices=["greedy", "sampled"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--figures", default="experiments/figures")
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs only")
    parser.add_argument("--no-blank", action="store_true", help="skip the blank-clip run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny ops, busy machine)")
    opts = parser.parse_args(argv)
    import torch

    torch.set_num_threads(opts.threads)
    from transformers import AutoTokenizer

    from vreason.models.tiny import trained_path

    model = opts.model or str(trained_path())
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    root = Path(opts.out)
    bench, blank = write_sets(root, opts.n, opts.seed)
    plan = [(bench, mode, d == "sampled", f"{d} {mode}") for d in opts.decoding for mode in opts.modes]
    if "greedy" in opts.decoding and not opts.no_blank:  # right after greedy off and switch
        plan.insert(min(2, len(plan)), (blank, "off", False, "greedy off (blank clips)"))
    rows = {}
    for file, mode, sample, name in plan:
        run = root / "runs" / f"{file.stem}-{mode}-{'sampled' if sample else 'greedy'}"
        if not opts.report_only:
            run = predict(root, file, mode, sample, model, opts.max_new_tokens)
        if (run / "summary.json").is_file():
            rows[name] = stats(records(run), tokenizer)
    base = constant_baselines(bench)
    text = table(rows, base)
    (root / "table.md").write_text(text + "\n")
    (root / "stats.json").write_text(json.dumps({"rows": rows, "constant": base}, indent=1) + "\n")
    figures(rows, Path(opts.figures))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
