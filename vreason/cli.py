"""The `vreason` command: `predict` (LightningCLI over the module and the benchmark data), `demo`
(the trained tiny model on a synthetic benchmark, baseline against V-Reason; `vreason/demo.py`),
`synth` (writes a synthetic benchmark) and `train-tiny` (trains the tiny model; `vreason/training/`).

A run that completes exits 0, also when some samples were error samples (they are counted in the
summary). A bad configuration, an unreadable benchmark file or a model folder that cannot be
loaded exits non-zero with one line on stderr naming the cause, not a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

from vreason.precision import check_trainer_precision
# The evaluation trainer is defined once, in trainer.py (the demo and the tests use it too).
from vreason.trainer import (DIST_TIMEOUT, TRAINER_DEFAULTS, choose_cpu_threads, eval_callbacks, eval_logger,  # noqa: F401
                             eval_trainer, hide_lightning_tips, long_run_allocator, set_process_group_timeout)

USAGE = """usage: vreason {predict,demo,synth,train-tiny,doctor} ...

  vreason predict -c CONFIG.yaml [--model.* --data.* --trainer.*]
        evaluate a model over protocol benchmark files (`vreason predict --help` for every key)
  vreason demo [--out DIR] [--n N] [--seed S] [--sample] [--random] [--modes M ...] [--max-new-tokens T]
        the shipped over-thinking tiny model on fresh synthetic questions (CPU): off vs switch vs switch+lite
        (+ minimize, maximize, nowait); replaces an earlier demo in DIR (`vreason demo --help`)
  vreason synth --out DIR [--n N] [--seed S] [--with-errors]
        write a synthetic benchmark (videos + eval_Synthetic.json) of the kind the trained tiny model learned
  vreason train-tiny --out DIR [--seed S] [--steps N] [--recipe default|overthink]
        train the tiny model on synthetic questions with chains of thought (CPU, TensorBoard loss curves)
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
            parser.add_argument("--dist_timeout_hours", type=float, default=DIST_TIMEOUT.total_seconds() / 3600,
                                help="with several processes, how long ranks wait for the slowest one (default 12)")

        def instantiate_trainer(self, **kwargs):
            hide_lightning_tips()
            config = self._get(self.config_init, "trainer", default={})
            check_trainer_precision(config.get("precision"))  # one line (ValueError), before any model load
            if config.get("logger") in (None, True):
                kwargs["logger"] = eval_logger(config.get("default_root_dir") or os.getcwd())
            progress_bar = config.get("enable_progress_bar") is not False
            retry_errors = self._get(self.config_init, "retry_errors", default=True)
            hours = self._get(self.config_init, "dist_timeout_hours", default=DIST_TIMEOUT.total_seconds() / 3600)
            if not hours > 0:
                raise ValueError(f"dist_timeout_hours must be > 0, got {hours}")
            timeout = timedelta(hours=hours)
            self.trainer_defaults["callbacks"] = eval_callbacks(progress_bar, bool(retry_errors), timeout)
            trainer = super().instantiate_trainer(**kwargs)
            set_process_group_timeout(trainer, timeout)
            return trainer

    return VReasonCLI


PREDICT_DESCRIPTION = (
    "Evaluate a model over protocol benchmark files with trainer.predict. The project's own keys "
    "(--model.*, --data.*, --retry_errors) are described at the end of this help, after Lightning's "
    "--trainer.* keys; their text is the docstrings of VReasonModule, ControllerConfig, DecodeConfig and "
    "BenchmarkDataModule.")


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
            parser_kwargs={"exit_on_error": False, "prog": "vreason predict", "description": PREDICT_DESCRIPTION},
            save_config_kwargs={"overwrite": True},
            trainer_defaults={**TRAINER_DEFAULTS, "devices": 1},
            auto_configure_optimizers=False,
        )


def predict(args: Sequence[str]) -> int:
    from argparse import ArgumentError

    from vreason.callbacks import RanksDidNotFinishError, ResumeMismatchError
    from vreason.data.benchmark import BenchmarkError
    from vreason.models import ModelLoadError
    from vreason.predict import FatalAcceleratorError

    long_run_allocator()
    try:
        cli = build_cli(args)
    except (ArgumentError, ValueError) as exc:
        return _fail("predict", exc, EXIT_CONFIG)
    if cli.trainer.strategy.root_device.type == "cpu":
        choose_cpu_threads(cli.model.run_settings()["model_path"])  # as the demo does
    try:
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except (ModelLoadError, BenchmarkError, ResumeMismatchError, ValueError, OSError, FatalAcceleratorError,
            RanksDidNotFinishError) as exc:
        # Inputs that cannot be used (model folder, benchmark files, a data setting only checked
        # when the files are read, an unwritable output folder), a device that failed for good or
        # a rank that never finished (a re-run resumes): one line naming them.
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


def demo(args: Sequence[str]) -> int:
    from vreason.demo import demo as run_demo

    return run_demo(args)


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown table, one row per mode (`vreason.demo.comparison_table`)."""
    from vreason.demo import comparison_table as table

    return table(summaries)


def train_tiny(args: Sequence[str]) -> int:
    from vreason.training.train_tiny import main as run_training

    try:
        return int(run_training(args) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)
    except ValueError as exc:
        return _fail("train-tiny", exc, EXIT_CONFIG)
    except OSError as exc:
        return _fail("train-tiny", exc, EXIT_INPUT)


def synth(args: Sequence[str]) -> int:
    from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark

    parser = argparse.ArgumentParser(prog="vreason synth", description="Write a synthetic benchmark in the protocol format.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=12, help="number of samples (default: 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=TRAINED_CLIPS["num_frames"],
                        help=f"frames per clip (default: {TRAINED_CLIPS['num_frames']}, as the trained tiny model saw)")
    parser.add_argument("--size", type=int, default=TRAINED_CLIPS["size"],
                        help=f"frame side in pixels, a multiple of 8 (default: {TRAINED_CLIPS['size']})")
    parser.add_argument("--with-errors", action="store_true", help="append a missing and a truncated video")
    try:
        opts = parser.parse_args(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        path = write_synthetic_benchmark(opts.out, n=opts.n, seed=opts.seed, num_frames=opts.num_frames,
                                         size=opts.size, fps=TRAINED_CLIPS["fps"], with_errors=opts.with_errors)
    except (ValueError, OSError) as exc:
        return _fail("synth", exc, EXIT_CONFIG if isinstance(exc, ValueError) else EXIT_INPUT)
    print(path)
    return 0


def doctor(args: Sequence[str]) -> int:
    from vreason.doctor import doctor as run_doctor

    return run_doctor(args)


COMMANDS = {"predict": predict, "demo": demo, "synth": synth, "train-tiny": train_tiny, "doctor": doctor}


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
