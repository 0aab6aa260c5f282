"""Two CPU processes (DDP over gloo) give each sample exactly once and the 1-process results."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vreason.data.synthetic import write_synthetic_benchmark
from vreason.models.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
N = 5  # odd: one rank gets one sample more, and no sample may be padded in twice


def predict(model, bench, root, devices):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "vreason.cli", "predict", "--model.model_path", model, "--data.files", f"[{bench}]",
            "--data.num_frames", "4", "--data.max_pixels", str(64 * 28 * 28), "--model.decode.max_new_tokens", "12",
            "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root)]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=root.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]


def comparable(result):
    # Latency is the only field that may differ between two runs of the same samples.
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in result["results"]]


@pytest.mark.slow
def test_two_processes_write_each_sample_once_and_match_one_process(tmp_path):
    model = tmp_path / "model"
    build_tiny_model(model)
    bench = write_synthetic_benchmark(tmp_path / "data", n=N, seed=3, num_frames=8)
    predict(str(model), bench, tmp_path / "one", devices=1)
    predict(str(model), bench, tmp_path / "two", devices=2)

    rank_files = sorted((tmp_path / "two" / "predictions").glob("Synthetic.rank*.jsonl"))
    assert [p.name for p in rank_files] == ["Synthetic.rank0.jsonl", "Synthetic.rank1.jsonl"]
    keys = [json.loads(line)["key"] for p in rank_files for line in p.read_text().splitlines()]
    assert sorted(keys) == sorted(f"Synthetic/{i}" for i in range(N))  # each once, none padded twice
    ranks = {json.loads(line)["rank"] for p in rank_files for line in p.read_text().splitlines()}
    assert ranks == {0, 1}

    one = json.loads((tmp_path / "one" / "results" / "eval_Synthetic.json").read_text())
    two = json.loads((tmp_path / "two" / "results" / "eval_Synthetic.json").read_text())
    assert comparable(one) == comparable(two)
    assert one["final_acc"] == two["final_acc"]
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["benchmarks"]["Synthetic"]["entropy_curve"] == s2["benchmarks"]["Synthetic"]["entropy_curve"]
    # The torchmetrics synced across both ranks count what the merged files hold.
    assert s2["live_metrics_agree"] is True and s2["benchmarks"]["Synthetic"]["n"] == N


@pytest.mark.slow
def test_resume_with_fewer_samples_left_than_processes(tmp_path):
    # One sample left for two ranks: one rank gets an empty shard and must still finish cleanly.
    model = tmp_path / "model"
    build_tiny_model(model)
    bench = write_synthetic_benchmark(tmp_path / "data", n=3, seed=4, num_frames=8)
    root = tmp_path / "run"
    predict(str(model), bench, root, devices=1)
    pred = root / "predictions" / "Synthetic.rank0.jsonl"
    lines = pred.read_text().splitlines()
    dropped = json.loads(lines[1])["key"]
    pred.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    predict(str(model), bench, root, devices=2)
    keys = [json.loads(line)["key"] for p in sorted((root / "predictions").glob("*.jsonl"))
            for line in p.read_text().splitlines()]
    assert sorted(keys) == [f"Synthetic/{i}" for i in range(3)]
    assert keys.count(dropped) == 1
    merged = json.loads((root / "results" / "eval_Synthetic.json").read_text())
    entries = json.loads(bench.read_text())
    assert [r["path"] for r in merged["results"]] == [e["path"] for e in entries]


# ---- a slow rank at the end of a run ------------------------------------------------------------

# Two ranks over gloo; rank 1 sleeps LAG seconds after its last sample, longer than the process
# group's timeout: rank 0 must wait for it outside any collective. The script also writes the
# timeout the process group was created with, as each rank sees it.
SLOW_RANK = textwrap.dedent("""
    import sys, time
    from datetime import timedelta
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback
    from vreason.callbacks import PredictionWriter
    from vreason.config import ControllerConfig, DecodeConfig
    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.module import VReasonModule
    from vreason.trainer import eval_trainer

    model, bench, root = sys.argv[1:4]
    pg_timeout, lag, rank_wait = (float(x) for x in sys.argv[4:7])

    class SlowRank(Callback):
        def setup(self, trainer, pl_module, stage):
            group = dist.distributed_c10d._get_default_group()
            timeout = group._get_backend(torch.device("cpu")).options._timeout
            Path(root, f"pg_timeout.rank{trainer.global_rank}").write_text(str(timeout.total_seconds()))

        def on_predict_epoch_end(self, trainer, pl_module):
            if trainer.global_rank == 1:
                time.sleep(lag)

    module = VReasonModule(model, controller=ControllerConfig(mode="off"), decode=DecodeConfig(max_new_tokens=4),
                           plot_samples=0)
    data = BenchmarkDataModule(files=[bench], model_path=model, num_frames=4, max_pixels=64 * 28 * 28)
    trainer = eval_trainer(root, devices=2, strategy="ddp", enable_progress_bar=False, callbacks=[SlowRank()],
                           dist_timeout=timedelta(seconds=pg_timeout))
    next(c for c in trainer.callbacks if isinstance(c, PredictionWriter)).rank_wait = timedelta(seconds=rank_wait)
    trainer.predict(module, datamodule=data, return_predictions=False)
""")


def slow_rank_run(tmp_path, model, bench, root, pg_timeout, lag, rank_wait):
    script = tmp_path / "slow_rank.py"
    script.write_text(SLOW_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, str(script), model, str(bench), str(root), str(pg_timeout), str(lag), str(rank_wait)]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_a_rank_slower_than_the_process_group_timeout_still_merges(tmp_path):
    model = tmp_path / "model"
    build_tiny_model(model)
    bench = write_synthetic_benchmark(tmp_path / "data", n=2, seed=5, num_frames=8)
    root = tmp_path / "run"
    root.mkdir()
    # Rank 0 gives up after 1 s: one line, every record kept, no merge.
    gave_up = slow_rank_run(tmp_path, str(model), bench, root, pg_timeout=20, lag=5, rank_wait=1)
    assert gave_up.returncode != 0
    assert "rank(s) 1 did not finish within 0:00:01 of rank 0" in gave_up.stderr, gave_up.stderr[-3000:]
    assert "run the same command again to resume and merge" in gave_up.stderr
    assert not (root / "summary.json").exists()
    # The configured timeout is the one the process group was created with, on both ranks.
    assert [float((root / f"pg_timeout.rank{r}").read_text()) for r in (0, 1)] == [20.0, 20.0]
    # Run again: nothing is left to predict, rank 1 again arrives 30 s late, past the 20 s process
    # group timeout, and rank 0 waits for it on the file system: the merge happens.
    merged = slow_rank_run(tmp_path, str(model), bench, root, pg_timeout=20, lag=30, rank_wait=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["benchmarks"]["Synthetic"]["n"] == 2 and summary["live_metrics_agree"] is True


@pytest.mark.parametrize("extra, hours", [([], 12.0), (["--dist_timeout_hours", "5.5"], 5.5)])
def test_the_command_line_timeout_reaches_the_process_group_and_the_writer(tmp_path, extra, hours):
    import torch
    import torch.distributed as dist

    from vreason.callbacks import PredictionWriter
    from vreason.cli import build_cli

    model = build_tiny_model(tmp_path / "model")
    bench = write_synthetic_benchmark(tmp_path / "data", n=1, seed=3, num_frames=8)
    cli = build_cli(["--model.model_path", str(model), "--data.files", f"[{bench}]", "--trainer.accelerator", "cpu",
                     "--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.default_root_dir",
                     str(tmp_path / "run"), *extra])
    writer = next(c for c in cli.trainer.callbacks if isinstance(c, PredictionWriter))
    assert writer.rank_wait.total_seconds() == hours * 3600
    cli.trainer.strategy.setup_environment()  # creates the process group, as `trainer.predict` does first
    try:
        timeout = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu")).options._timeout
        assert abs(timeout.total_seconds() - hours * 3600) < 1  # gloo keeps it in milliseconds
    finally:
        dist.destroy_process_group()


def test_ranks_wait_for_every_marker_and_report_the_missing_ones(tmp_path):
    import threading
    import time

    from vreason.records import clear_finished, mark_finished, wait_for_ranks

    pred = tmp_path / "predictions"
    mark_finished(pred, 0, records=3)
    start = time.monotonic()
    assert wait_for_ranks(pred, 3, timeout_s=0.3, poll_s=0.05) == [1, 2]
    assert 0.3 <= time.monotonic() - start < 5
    late = threading.Timer(0.3, lambda: (mark_finished(pred, 1, 0), mark_finished(pred, 2, 1)))
    late.start()
    assert wait_for_ranks(pred, 3, timeout_s=60, poll_s=0.05) == []
    late.join()
    clear_finished(pred, 1)  # a new run starts without the last run's marker
    assert wait_for_ranks(pred, 3, timeout_s=0, poll_s=0.05) == [1]
    assert json.loads((pred / ".finished.rank2").read_text()) == {"rank": 2, "records": 1}


def test_a_timeout_that_is_not_positive_is_refused(tmp_path):
    from vreason.cli import build_cli

    with pytest.raises(ValueError, match="dist_timeout_hours must be > 0, got 0.0"):
        build_cli(["--model.model_path", str(tmp_path), "--data.files", "[x.json]", "--dist_timeout_hours", "0"])
