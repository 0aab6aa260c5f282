#!/usr/bin/env python
"""The loss curve of a `vreason train-tiny` run as a picture (the same curve TensorBoard shows).

    python experiments/scripts/training_loss.py OUT [--figure experiments/figures/tiny-training-loss.png]

OUT is the `--out` folder of the run (its TensorBoard events are under OUT/tb).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the train-tiny --out folder")
    parser.add_argument("--figure", default="experiments/figures/tiny-training-loss.png")
    opts = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(opts.out) / "tb"))
    events.Reload()
    points = events.Scalars("train/loss")
    record = json.loads((Path(opts.out) / "training.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot([p.step for p in points], [p.value for p in points], linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_title(f"train-tiny, seed {record['seed']}: final loss {record['final_loss']}, {record['seconds'] / 60:.1f} min")
    fig.tight_layout()
    fig.savefig(opts.figure, dpi=110)
    print(opts.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
