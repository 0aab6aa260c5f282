"""A run killed after some samples resumes: every sample exactly once, results as if uninterrupted."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vreason.data.synthetic import write_synthetic_benchmark
from vreason.models.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
N = 6
KILL_AFTER = 2

# The evaluation run, as a script, with one extra callback that SIGKILLs the process once
# KILL_AFTER records are on disk: a real kill at a known point (no timing race).
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from vreason.cli import eval_trainer
    from vreason.config import ControllerConfig, DecodeConfig
    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.module import VReasonModule

    model, bench, root, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    class KillAfter(Callback):
        seen = 0
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            KillAfter.seen += len(outputs)
            if kill_after and KillAfter.seen >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    module = VReasonModule(model, controller=ControllerConfig(mode="switch"), decode=DecodeConfig(max_new_tokens=12))
    data = BenchmarkDataModule(files=[bench], model_path=model, num_frames=4, max_pixels=64 * 28 * 28)
    trainer = eval_trainer(root, enable_progress_bar=False, callbacks=[KillAfter()])
    trainer.predict(module, datamodule=data, return_predictions=False)
""")


def run(tmp_path, model, bench, root, kill_after):
    script = tmp_path / "run_eval.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(script), model, str(bench), str(root), str(kill_after)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_killed_run_resumes_with_every_sample_once(tmp_path):
    model = tmp_path / "model"
    build_tiny_model(model)
    bench = write_synthetic_benchmark(tmp_path / "data", n=N, seed=4, num_frames=8)
    root = tmp_path / "run"
    killed = run(tmp_path, str(model), bench, root, KILL_AFTER)
    assert killed.returncode == -signal.SIGKILL
    rank_file = root / "predictions" / "Synthetic.rank0.jsonl"
    assert len(rank_file.read_text().splitlines()) == KILL_AFTER
    assert not (root / "summary.json").exists()
    # A kill in the middle of a write leaves half a line: the resume must tolerate it.
    with open(rank_file, "a") as f:
        f.write('{"key": "Synthetic/5", "benchmark": "Synth')

    resumed = run(tmp_path, str(model), bench, root, 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = rank_file.read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert sorted(keys) == sorted(f"Synthetic/{i}" for i in range(N)) and len(keys) == len(set(keys))

    fresh = run(tmp_path, str(model), bench, tmp_path / "fresh", 0)
    assert fresh.returncode == 0, fresh.stderr[-3000:]

    def results(r):
        data = json.loads((r / "results" / "eval_Synthetic.json").read_text())
        return [{k: v for k, v in x.items() if k != "latency_s"} for x in data["results"]], data["final_acc"]

    assert results(root) == results(tmp_path / "fresh")
    summary = json.loads((root / "summary.json").read_text())
    assert summary["benchmarks"]["Synthetic"]["n"] == N and summary["live_metrics_agree"] is True
