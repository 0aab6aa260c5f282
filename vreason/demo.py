"""`vreason demo`: the shipped trained tiny model on fresh synthetic questions, plain decoding
against V-Reason, through `trainer.predict` on CPU.

By default the model is the over-thinking trained one (`trained_path("overthink")`: its greedy
answers reflect on hard clips, so plain decoding, V-Reason and NoWait differ where the first
trained model's would not; `--recipe default` takes that one) and the questions are the kind it learned (`TRAINED_CLIPS`), drawn from a seed it never saw in training. With
`--random` it is the random-weight model of the unit tests instead: the pipeline runs, but the
scores say nothing. Each mode is one `trainer.predict` run with its own outputs; the table and a
TensorBoard figure of the entropy curves compare them.
"""
from __future__ import annotations

import argparse
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


def parse(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vreason demo", description=(
        "Evaluate the shipped trained tiny Qwen2.5-VL on fresh synthetic video questions: plain decoding (off) "
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
        model_dir = out / "model"
        if not (model_dir / "config.json").is_file():
            build_tiny_model(model_dir, seed=opts.seed)
        clips, frames = {"num_frames": 8}, 4
    else:
        model_dir = trained_path(opts.recipe)
        clips, frames = TRAINED_CLIPS, TRAINED_CLIPS["num_frames"]
    bench = out / "data" / "eval_Synthetic.json"
    if not bench.is_file():
        bench = write_synthetic_benchmark(out / "data", n=opts.n, seed=opts.seed, **clips)
    return model_dir, bench, frames


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
    import sys

    try:
        opts = parse(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    if opts.n < 1 or opts.max_new_tokens < 1:
        print("vreason demo: error: --n and --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    import torch

    # **ours**: one thread. The tiny model's ops are too small to split, and on a busy machine a
    # second OpenMP thread mostly waits at barriers (training steps ran 5-10x slower with two).
    torch.set_num_threads(1)
    out = Path(opts.out)
    model_dir, bench, frames = prepare(out, opts)
    summaries = {name: run_mode(name, model_dir, bench, frames, out, opts) for name in dict.fromkeys(opts.modes)}
    write_comparison_figure(summaries, out / "compare")
    print(comparison_table(summaries))
    if opts.random:
        print("\nThe tiny model has random weights (--random): scores near 0 are expected; the demo then shows "
              "the pipeline (predictions, protocol files, summaries, TensorBoard), not accuracy.")
    else:
        print(f"\nModel: the shipped trained tiny Qwen2.5-VL ({model_dir}); questions drawn with seed {opts.seed}, "
              "which it never saw (README, \"A trained tiny model\").")
    print(f"\n{sum(s['overall']['n'] for s in summaries.values()) // len(summaries)} samples per mode, "
          f"{time.perf_counter() - started:.0f} s. Outputs under {out}/: <mode>/results, <mode>/summary.md, "
          f"<mode>/predictions; TensorBoard: tensorboard --logdir {out}")
    return 0


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
    """Markdown table, one row per mode: score, MRA, mean output tokens, latency, errors."""
    def pct(x: Optional[float]) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    lines = ["| mode | n | score (%) | MRA (%) | mean output tokens | latency (s/sample) | tokens/s | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, s in summaries.items():
        o = s["overall"]
        mra = [r["mean_mra"] for r in s["benchmarks"].values() if r.get("mean_mra") is not None]
        acc = [r["mean_acc"] for r in s["benchmarks"].values() if r.get("mean_acc") is not None]
        lines.append(
            f"| {mode} | {o['n']} | {pct(sum(acc) / len(acc) if acc else None)} | {pct(sum(mra) / len(mra) if mra else None)} | "
            f"{o['mean_tokens']:.1f} | {o['mean_latency_s']:.3f} | {o['tokens_per_s'] or 0:.1f} | {o['n_errors']} |"
        )
    return "\n".join(lines)
