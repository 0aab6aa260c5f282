"""The `vreason` command: `predict` (LightningCLI over the module and the benchmark data), `demo`
(the tiny offline model on a synthetic benchmark, baseline against V-Reason) and `synth` (writes a
synthetic benchmark).

A run that completes exits 0, also when some samples were error samples (they are counted in the
summary). A bad configuration, an unreadable benchmark file or a model folder that cannot be
loaded exits non-zero with one line on stderr naming the cause, not a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

# The evaluation trainer is defined once, in trainer.py (the demo and the tests use it too).
from vreason.trainer import TRAINER_DEFAULTS, eval_callbacks, eval_logger, eval_trainer  # noqa: F401

USAGE = """usage: vreason {predict,demo,synth,doctor} ...

  vreason predict -c CONFIG.yaml [--model.* --data.* --trainer.*]
        evaluate a model over protocol benchmark files (`vreason predict --help` for every key)
  vreason demo [--out DIR]
        tiny offline model + synthetic benchmark on CPU: baseline (off) vs V-Reason (switch)
  vreason synth --out DIR [--n N] [--seed S] [--with-errors]
        write a synthetic benchmark (videos + eval_Synthetic.json)
  vreason doctor [--device cpu|cuda]
        print the environment and check the compiled ops and a tiny model on this machine (run it first on a GPU)
"""

# Exit codes: 2 for a configuration the parser rejects, 1 for inputs that cannot be read.
EXIT_CONFIG = 2
EXIT_INPUT = 1


def _fail(command: str, message: object, code: int) -> int:
    print(f"vreason {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
# predict


def _make_cli_class():
    from lightning.pytorch.cli import LightningCLI

    class VReasonCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # The data side needs the model's processor; one key sets both.
            parser.link_arguments("model.model_path", "data.model_path")
            parser.add_argument("--retry_errors", type=bool, default=True,
                                help="on resume, run samples whose record is an error again (default true)")

        def instantiate_trainer(self, **kwargs):
            config = self._get(self.config_init, "trainer", default={})
            if config.get("logger") in (None, True):
                kwargs["logger"] = eval_logger(config.get("default_root_dir") or os.getcwd())
            progress_bar = config.get("enable_progress_bar") is not False
            retry_errors = self._get(self.config_init, "retry_errors", default=True)
            self.trainer_defaults["callbacks"] = eval_callbacks(progress_bar, bool(retry_errors))
            return super().instantiate_trainer(**kwargs)

    return VReasonCLI


def build_cli(args: Sequence[str]):
    """Parse `vreason predict` arguments and instantiate the module, the data and the trainer
    (nothing is loaded or run yet). Raises `argparse.ArgumentError` or `ValueError` for a bad
    configuration."""
    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.module import VReasonModule

    # Lightning's CLI calls jsonargparse APIs that jsonargparse has deprecated: nothing a user of
    # ours can act on. Their own switch turns the notices off (set before jsonargparse reads it).
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    with warnings.catch_warnings():
        # `args` is the command line minus "predict"; sys.argv stays whole for DDP's relaunch.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return _make_cli_class()(
            VReasonModule,
            BenchmarkDataModule,
            run=False,
            args=list(args),
            seed_everything_default=False,
            parser_kwargs={"exit_on_error": False, "prog": "vreason predict"},
            save_config_kwargs={"overwrite": True},
            trainer_defaults={**TRAINER_DEFAULTS, "devices": 1},
            auto_configure_optimizers=False,
        )


def predict(args: Sequence[str]) -> int:
    from argparse import ArgumentError

    from vreason.callbacks import ResumeMismatchError
    from vreason.data.benchmark import BenchmarkError
    from vreason.models import ModelLoadError

    try:
        cli = build_cli(args)
    except (ArgumentError, ValueError) as exc:
        return _fail("predict", exc, EXIT_CONFIG)
    try:
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except (ModelLoadError, BenchmarkError, ResumeMismatchError, ValueError, OSError) as exc:
        # Inputs that cannot be used (model folder, benchmark files, a data setting only checked
        # when the files are read, an unwritable output folder): one line naming them.
        # VREASON_TRACEBACK=1 shows the traceback instead, for debugging.
        if os.environ.get("VREASON_TRACEBACK"):
            raise
        return _fail("predict", exc, EXIT_INPUT)
    if cli.trainer.is_global_zero:
        root = Path(cli.trainer.default_root_dir)
        summary = root / "summary.md"
        if summary.is_file():
            print(summary.read_text())
            print(f"outputs: {root} (results/, predictions/, summary.json, tb/)")
    return 0


# ---------------------------------------------------------------------------------------------
# demo and synth


DEMO_MODES = ("off", "switch")


def demo(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="vreason demo", description=(
        "Build a tiny offline Qwen2.5-VL and a synthetic video benchmark, evaluate plain decoding (off) "
        "and V-Reason (switch) through trainer.predict on CPU, and print the comparison."))
    parser.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out)")
    parser.add_argument("--n", type=int, default=12, help="number of synthetic samples (default: 12)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (default: 64)")
    parser.add_argument("--seed", type=int, default=0)
    try:
        opts = parser.parse_args(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    if opts.n < 1 or opts.max_new_tokens < 1:
        return _fail("demo", "--n and --max-new-tokens must be >= 1", EXIT_CONFIG)
    started = time.perf_counter()
    import torch

    from vreason.plots import entropy_curve_figure, figure_image
    from vreason.config import ControllerConfig, DecodeConfig
    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.data.synthetic import write_synthetic_benchmark
    from vreason.models.tiny import build_tiny_model
    from vreason.module import VReasonModule

    # Two cores are shared with the data loading; more threads only contend.
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = Path(opts.out)
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=opts.seed)
    bench = out / "data" / "eval_Synthetic.json"
    if not bench.is_file():
        bench = write_synthetic_benchmark(out / "data", n=opts.n, seed=opts.seed, num_frames=8)
    summaries = {}
    for mode in DEMO_MODES:
        module = VReasonModule(str(model_dir), controller=ControllerConfig(mode=mode),
                               decode=DecodeConfig(max_new_tokens=opts.max_new_tokens, seed=opts.seed), plot_samples=2)
        data = BenchmarkDataModule(files=[str(bench)], model_path=str(model_dir), num_frames=4, max_pixels=64 * 28 * 28)
        trainer = eval_trainer(out / mode)
        trainer.predict(module, datamodule=data, return_predictions=False)
        summaries[mode] = next(c for c in trainer.callbacks if hasattr(c, "summary")).summary

    # One figure with both modes' curves, as the paper compares models and modes.
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "compare"))
    for name in summaries[DEMO_MODES[0]]["benchmarks"]:
        curves = {m: s["benchmarks"][name]["entropy_curve"] for m, s in summaries.items() if name in s["benchmarks"]}
        writer.add_image(f"entropy_curve/{name}", figure_image(entropy_curve_figure(curves, title=f"{name}: off vs switch")), 0,
                         dataformats="HWC")
    writer.close()
    print(comparison_table(summaries))
    print("\nThe tiny model has random weights: scores near 0 are expected. The demo shows the pipeline "
          "(predictions, protocol files, summaries, TensorBoard) and the controller's cost, not accuracy.")
    print(f"\n{sum(s['overall']['n'] for s in summaries.values()) // len(summaries)} samples per mode, "
          f"{time.perf_counter() - started:.0f} s. Outputs under {out}/: <mode>/results, <mode>/summary.md, "
          f"<mode>/predictions; TensorBoard: tensorboard --logdir {out}")
    return 0


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


def synth(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="vreason synth", description="Write a synthetic benchmark in the protocol format.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=12, help="number of samples (default: 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=24, help="frames per clip (default: 24)")
    parser.add_argument("--with-errors", action="store_true", help="append a missing and a truncated video")
    try:
        opts = parser.parse_args(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    from vreason.data.synthetic import write_synthetic_benchmark

    try:
        path = write_synthetic_benchmark(opts.out, n=opts.n, seed=opts.seed, num_frames=opts.num_frames,
                                         with_errors=opts.with_errors)
    except (ValueError, OSError) as exc:
        return _fail("synth", exc, EXIT_CONFIG if isinstance(exc, ValueError) else EXIT_INPUT)
    print(path)
    return 0


def doctor(args: Sequence[str]) -> int:
    from vreason.doctor import doctor as run_doctor

    return run_doctor(args)


COMMANDS = {"predict": predict, "demo": demo, "synth": synth, "doctor": doctor}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Lightning's own deprecation notice about torch's pytree API says nothing to a user.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_CONFIG
    command = COMMANDS.get(argv[0])
    if command is None:
        return _fail(argv[0], f"unknown command {argv[0]!r}; use one of: {', '.join(COMMANDS)}", EXIT_CONFIG)
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
