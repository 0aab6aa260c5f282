"""`vreason demo`: the shipped trained tiny model on fresh synthetic questions, plain decoding
against V-Reason, through `trainer.predict` on CPU.

By default the model is the over-thinking trained one (`trained_path("overthink")`: its greedy
answers reflect on hard clips, so plain decoding, V-Reason and NoWait differ where the first
trained model's would not; `--recipe default` takes that one) and the questions are the kind it learned (`TRAINED_CLIPS`), drawn from a seed it never saw in training. With
`--random` it is the random-weight model of the unit tests instead: the pipeline runs, but the
scores say nothing. Each mode is one `trainer.predict` run with its own outputs; the table (printed
and written to `comparison.md`) and a TensorBoard figure of the entropy curves compare them.

Every demo computes what it prints (**ours**): an output folder holding an earlier demo
(`demo.json`) has that demo's outputs replaced, never resumed, so a second `make demo` or other
`--n`/`--seed`/`--sample`/`--random` settings run afresh. A non-empty folder that holds no demo is
refused in one line rather than written into.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

# (name, controller settings): the method, its Lite variant and the two fixed-α ablations.
MODES = {
    "off": {"mode": "off"},
    "switch": {"mode": "switch"},
    "switch+lite": {"mode": "switch", "prune_ratio": 0.5},
    "minimize": {"mode": "minimize"},
    "maximize": {"mode": "maximize"},
    "nowait": {"mode": "off"},  # the NoWait baseline: names ending in "nowait" set decode.nowait
    "switch+nowait": {"mode": "switch"},
}
DEFAULT_MODES = ("off", "switch", "switch+lite", "minimize", "maximize", "nowait")
# **ours**: held-out questions come from seeds >= 1; the shipped model was trained on seed 0's pool,
# which is drawn from another stream (`vreason.training.data.build_pool`).
HELD_OUT_SEED = 1
# What a demo writes under its output folder, and the record of its settings.
MARKER = "demo.json"
COMPARISON = "comparison.md"


def parse(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vreason demo", description=(
        "Evaluate a shipped trained tiny Qwen2.5-VL (--recipe) on fresh synthetic video questions: plain decoding (off) "
        "against V-Reason (switch, switch+lite), the minimize/maximize ablations and NoWait, through "
        "trainer.predict on CPU, and print the comparison."))
    parser.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out)")
    parser.add_argument("--n", type=int, default=16, help="number of synthetic samples (default: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens per answer (default: 256)")
    parser.add_argument("--recipe", choices=("overthink", "default"), default="overthink",
                        help="which shipped trained model (default: overthink)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="seed of the questions (default: 1)")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(MODES),
                        help="modes to compare (default: all)")
    parser.add_argument("--sample", action="store_true", help="sampled decoding (temperature 1) instead of greedy")
    parser.add_argument("--random", action="store_true",
                        help="the random-weight tiny model instead of the trained one (pipeline check only)")
    return parser.parse_args(list(args))


def prepare(out: Path, opts: argparse.Namespace) -> tuple[Path, Path, int]:
    """(model folder, benchmark file, frames per clip) for the demo's settings."""
    from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark
    from vreason.models.tiny import build_tiny_model, trained_path

    if opts.random:
        model_dir = Path(build_tiny_model(out / "model", seed=opts.seed))
        clips, frames = {"num_frames": 8}, 4
    else:
        model_dir = trained_path(opts.recipe)
        clips, frames = TRAINED_CLIPS, TRAINED_CLIPS["num_frames"]
    bench = write_synthetic_benchmark(out / "data", n=opts.n, seed=opts.seed, **clips)
    return model_dir, bench, frames


def clear_earlier_demo(out: Path) -> bool | None:
    """Remove an earlier demo's outputs from `out` (only what a demo writes there); True if there
    were any, False if `out` was empty or missing, None (nothing removed) if it holds files but
    no demo."""
    if not out.exists():
        return False
    if not out.is_dir():
        return None
    entries = list(out.iterdir())
    if not entries:
        return False
    # An earlier demo: its settings file, or (from before that file existed) its benchmark.
    if not ((out / MARKER).is_file() or (out / "data" / "eval_Synthetic.json").is_file()):
        return None
    for name in ("data", "model", "compare", *MODES, MARKER, COMPARISON):
        entry = out / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    return True


def run_mode(name: str, model_dir: Path, bench: Path, frames: int, out: Path, opts: argparse.Namespace) -> dict:
    """One `trainer.predict` over the benchmark in mode `name`; returns the run's summary."""
    from vreason.trainer import eval_trainer
    from vreason.config import ControllerConfig, DecodeConfig
    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.module import VReasonModule

    decode = DecodeConfig(max_new_tokens=opts.max_new_tokens, seed=opts.seed, do_sample=opts.sample,
                          nowait=name.endswith("nowait"))
    module = VReasonModule(str(model_dir), controller=ControllerConfig(**MODES[name]), decode=decode, plot_samples=2)
    data = BenchmarkDataModule(files=[str(bench)], model_path=str(model_dir), num_frames=frames, max_pixels=64 * 28 * 28)
    trainer = eval_trainer(out / name)
    trainer.predict(module, datamodule=data, return_predictions=False)
    return next(c for c in trainer.callbacks if hasattr(c, "summary")).summary


def demo(args: Sequence[str]) -> int:
    """The `vreason demo` command; returns an exit code."""
    try:
        opts = parse(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    if opts.n < 1 or opts.max_new_tokens < 1:
        print("vreason demo: error: --n and --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out = Path(opts.out)
    cleared = clear_earlier_demo(out)
    if cleared is None:
        print(f"vreason demo: error: {out} is not empty and holds no earlier demo; give --out a new or empty folder",
              file=sys.stderr)
        return 1
    if cleared:
        print(f"{out}/ held an earlier demo: it is replaced, every mode runs again.")
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(opts, k) for k in ("n", "seed", "max_new_tokens", "modes", "sample", "random")}
    (out / MARKER).write_text(json.dumps(settings, indent=2) + "\n")
    from vreason.trainer import choose_cpu_threads

    model_dir, bench, frames = prepare(out, opts)
    choose_cpu_threads(model_dir)
    summaries = {name: run_mode(name, model_dir, bench, frames, out, opts) for name in dict.fromkeys(opts.modes)}
    write_comparison_figure(summaries, out / "compare")
    table = comparison_table(summaries)
    (out / COMPARISON).write_text(table + "\n")
    print(table)
    print(speed_line(summaries))
    if opts.random:
        print("\nThe tiny model has random weights (--random): scores near 0 are expected; the demo then shows "
              "the pipeline (predictions, protocol files, summaries, TensorBoard), not accuracy.")
    else:
        which = "over-thinking" if opts.recipe == "overthink" else "first (confident)"
        print(f"\nModel: the shipped {which} trained tiny Qwen2.5-VL ({model_dir}); questions drawn with seed {opts.seed}, "
              "which it never saw (README, \"A trained tiny model\").")
    print(f"\n{opts.n} samples per mode, {'sampled' if opts.sample else 'greedy'}, "
          f"{time.perf_counter() - started:.0f} s. Outputs under {out}/: {COMPARISON} (this table), <mode>/summary.md, "
          f"<mode>/results, <mode>/predictions; TensorBoard: tensorboard --logdir {out}")
    return 0


def speed_line(summaries: dict[str, dict]) -> str:
    """One sentence from the table's own numbers: each mode's tokens/s and mean output tokens
    against plain decoding (`off`); the cause is named only when every mode is slower."""
    base = summaries.get("off", {}).get("overall", {})
    if not base.get("tokens_per_s") or not base.get("mean_tokens"):
        return ""
    parts, slower = [], True
    for mode, s in summaries.items():
        o = s["overall"]
        if mode == "off" or not o.get("tokens_per_s") or o.get("mean_tokens") is None:
            continue
        speed = o["tokens_per_s"] / base["tokens_per_s"]
        slower = slower and speed < 1
        parts.append(f"{mode} {speed:.2f}× the tokens/s and {o['mean_tokens'] / base['mean_tokens']:.2f}× the output tokens")
    if not parts:
        return ""
    why = (" The controller's rounds (a backward through the last layer's values every few tokens) cost time."
           if slower else " On a shared machine these ratios vary from run to run.")
    return "\nAgainst off, in this run: " + "; ".join(parts) + "." + why


def write_comparison_figure(summaries: dict[str, dict], folder: Path) -> None:
    """One TensorBoard image per benchmark with every mode's mean entropy curve, as the paper
    compares modes."""
    from torch.utils.tensorboard import SummaryWriter

    from vreason.plots import entropy_curve_figure, figure_image

    writer = SummaryWriter(str(folder))
    first = next(iter(summaries.values()))
    for name in first["benchmarks"]:
        curves = {m: s["benchmarks"][name]["entropy_curve"] for m, s in summaries.items() if name in s["benchmarks"]}
        image = figure_image(entropy_curve_figure(curves, title=f"{name}: {' vs '.join(curves)}"))
        writer.add_image(f"entropy_curve/{name}", image, 0, dataformats="HWC")
    writer.close()


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown table, one row per mode: the summary's overall row (`report.summary_markdown`):
    score (`metrics.SCORE_DEFINITION`), accuracy and MRA, and cost over answered samples."""
    from vreason.metrics import SCORE_DEFINITION, score

    def pct(x: Optional[float]) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    lines = ["| mode | n | answered | score (%) | accuracy (%) | MRA (%) | mean output tokens | latency (s/sample) "
             "| tokens/s | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, s in summaries.items():
        o = s["overall"]
        acc = score(r.get("mean_acc") for r in s["benchmarks"].values())
        mra = score(r.get("mean_mra") for r in s["benchmarks"].values())
        answered = o.get("n_answered", o["n"] - o["n_errors"])
        tokens, latency = o.get("mean_tokens"), o.get("mean_latency_s")
        lines.append(
            f"| {mode} | {o['n']} | {answered} | {pct(o.get('mean_score'))} | {pct(acc)} | {pct(mra)} | "
            f"{'–' if tokens is None else f'{tokens:.1f}'} | {'–' if latency is None else f'{latency:.3f}'} | "
            f"{o.get('tokens_per_s') or 0:.1f} | {o['n_errors']} |"
        )
    return "\n".join(lines + ["", SCORE_DEFINITION + "; tokens, latency and tokens/s over answered samples."])
