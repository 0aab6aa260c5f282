"""The shipped over-thinking model (`trained_path("overthink")`) through the real `vreason predict`
path on a fixed held-out set: it still grounds (multiple choice, scored here from the synthetic
writer's ground truth) and greedy decoding reflects on a good share of answers, which is what it
ships for. Both shipped models together stay within the package-data budget."""
from __future__ import annotations

import json
import re

import pytest

from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark
from vreason.models.tiny import trained_path

N = 16  # four questions of each kind
SEED = 3  # held out: training drew its clips from seed 0's stream
REFLECTION = re.compile(r"[.!?]\s+(Wait|Hmm)\b")  # a reflection after the first sentence


def test_both_shipped_models_fit_the_budget_and_load_in_float32():
    import torch

    from vreason.models import load_model

    total = sum(f.stat().st_size for name in ("default", "overthink") for f in trained_path(name).iterdir())
    assert total <= 8 * 2**20, total
    model, _ = load_model(trained_path("overthink"), device="cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_overthink_model_grounds_and_reflects_under_greedy(tmp_path):
    from vreason.cli import main
    from vreason.records import read_predictions

    bench = write_synthetic_benchmark(tmp_path / "data", n=N, seed=SEED, **TRAINED_CLIPS)
    truth = {e["problem_id"]: e for e in json.loads(bench.read_text())}
    code = main(["predict", "--model.model_path", str(trained_path("overthink")), "--data.files",
                 json.dumps([str(bench)]), "--data.num_frames", "4", "--data.batch_size", "16",
                 "--model.controller.mode", "off", "--model.decode.max_new_tokens", "256", "--model.plot_samples", "0",
                 "--trainer.default_root_dir", str(tmp_path / "off"), "--trainer.enable_progress_bar", "false"])
    assert code == 0
    records = [r.to_dict() for recs in read_predictions(tmp_path / "off" / "predictions").values() for r in recs]
    assert len(records) == N and all("</think><answer>" in r["output"] for r in records)
    mc = [r for r in records if r["problem_type"] == "multiple choice"]
    right = sum(r["prediction"] == truth[r["index"]]["solution"][8:-9] for r in mc)
    assert right / len(mc) >= 0.7, [r["output"] for r in mc]
    reflecting = sum(bool(REFLECTION.search(r["output"].split("</think>")[0])) for r in records)
    assert reflecting >= N // 4, [r["output"] for r in records]
