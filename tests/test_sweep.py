"""`experiments/scripts/sweep.py`: a 2×2 grid (mode × lr) end to end through `vreason predict` on
the shipped model, its table checked against the runs' own prediction records, and the helpers
that count reflections checked on hand-written chains."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "scripts" / "sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reflections_are_counted_after_the_opener(sweep):
    text = ("<think>Hmm, let me look at the video. I see a red square at the top left. That makes 1. "
            "Wait, let me look again. I see a red square at the top left. That makes 1. "
            "Hmm, the shapes are close. That makes 2. So the answer is 2.</think><answer>2</answer>")
    assert sweep.reflections(text) == 2
    assert sweep.claim_changed(text) is True  # "That makes 1." before the first reflection, "2." at the end
    plain = "<think>Let me look. It moves left. So the answer is A.</think><answer>A</answer>"
    assert sweep.reflections(plain) == 0 and sweep.claim_changed(plain) is None
    same = "<think>Let me look. It moves left. Wait, let me verify. It moves left. So the answer is A.</think>"
    assert sweep.reflections(same) == 1 and sweep.claim_changed(same) is False


@pytest.mark.slow
def test_two_by_two_grid_end_to_end(tmp_path, sweep):
    from vreason.records import read_predictions

    code = sweep.main(["--model", "default", "--out", str(tmp_path), "--n", "4", "--seed", "3", "--modes", "switch",
                       "minimize", "--lrs", "0.01", "1", "--decodings", "greedy", "--max-new-tokens", "64"])
    assert code == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["mode"], r["lr"]) for r in rows] == [("switch", 0.01), ("switch", 1.0), ("minimize", 0.01), ("minimize", 1.0)]
    assert (tmp_path / "sweep-vs-lr.png").stat().st_size > 0
    assert len((tmp_path / "sweep.md").read_text().strip().splitlines()) == 2 + 4
    for row in rows:  # the table's numbers are the run's records'
        folder = tmp_path / "runs" / sweep.name(row)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["controller"]["lr"] == row["lr"]
        recs = [r.to_dict() for recs in read_predictions(folder / "predictions").values() for r in recs]
        assert row["n"] == len(recs) == 4
        assert row["tokens"][0] == pytest.approx(np.mean([r["num_new_tokens"] for r in recs]))
        mc = [r for r in recs if r["problem_type"] == "multiple choice"]
        assert row["mc"][0] == pytest.approx(np.mean([bool(r["correct"]) for r in mc]))
    # Tabulating the folder's finished runs alone gives the same table back.
    assert sweep.main(["--out", str(tmp_path), "--table-only", "--n", "4", "--seed", "3"]) == 0
    assert json.loads((tmp_path / "sweep.json").read_text()) == rows
