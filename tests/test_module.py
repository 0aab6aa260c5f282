"""`trainer.predict` with the tiny model over a synthetic benchmark: records, files, TensorBoard."""
import json

import pytest
import torch

from vreason.cli import eval_trainer
from vreason.config import ControllerConfig, DecodeConfig
from vreason.data.datamodule import BenchmarkDataModule
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.models.tiny import build_tiny_model
from vreason.module import VReasonModule
from vreason.scoring import ERROR_OUTPUT, extract_answer, score

N_GOOD = 4
MAX_NEW = 16


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    build_tiny_model(root / "model")
    bench = write_synthetic_benchmark(root / "data", n=N_GOOD, seed=1, num_frames=8, with_errors=True)
    return {"model": str(root / "model"), "bench": str(bench), "entries": json.loads(bench.read_text())}


def run(assets, root, mode="switch", plot_samples=2, **trainer_kwargs):
    module = VReasonModule(assets["model"], controller=ControllerConfig(mode=mode),
                           decode=DecodeConfig(max_new_tokens=MAX_NEW), plot_samples=plot_samples)
    data = BenchmarkDataModule(files=[assets["bench"]], model_path=assets["model"], num_frames=4, max_pixels=64 * 28 * 28)
    trainer = eval_trainer(root, enable_progress_bar=False, **trainer_kwargs)
    trainer.predict(module, datamodule=data, return_predictions=False)
    return trainer, module


def test_predict_writes_every_sample_once_with_protocol_files_and_tensorboard(assets, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, module = run(assets, tmp_path)
    n = len(assets["entries"])
    lines = (tmp_path / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["key"] for r in records) == sorted(f"Synthetic/{i}" for i in range(n))

    good = [r for r in records if not r["error"]]
    assert len(good) == N_GOOD
    for r in good:
        entry = assets["entries"][r["index"]]
        assert 1 <= r["num_new_tokens"] <= MAX_NEW
        assert len(r["entropy"]) == len(r["ema"]) == len(r["alpha"]) == len(r["updated"]) == r["num_new_tokens"]
        assert set(r["alpha"]) <= {-1, 1}
        # switch mode, every_k = 2 by default: rounds at k = 0, 2, 4, ...
        assert r["updated"] == [k % 2 == 0 for k in range(r["num_new_tokens"])]
        assert r["latency_s"] > 0 and r["entry"] == entry and r["mode"] == "switch"
        # The record's answer and score are those of its own output against its entry's solution.
        assert r["problem_type"] == entry["problem_type"] and r["solution"] == entry["solution"]
        assert r["prediction"] == extract_answer(r["output"])
        assert r["reward"] == score(r["output"], entry["solution"], entry["problem_type"])
    # The fixture's good samples cover scored kinds and regression (MRA) alike.
    assert {r["problem_type"] for r in good} >= {"multiple choice", "regression"}
    errors = [r for r in records if r["error"]]
    assert len(errors) == n - N_GOOD
    assert all(r["output"] == ERROR_OUTPUT and r["reward"] == 0.0 and "\n" not in r["error"] for r in errors)

    result = json.loads((tmp_path / "results" / "eval_Synthetic.json").read_text())
    assert set(result) == {"results", "final_acc"} and len(result["results"]) == n
    assert set(result["final_acc"][0]) == {"mean_acc", "mean_mra"}
    assert [r["problem_id"] for r in result["results"]] == [e["problem_id"] for e in assets["entries"]]

    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary["benchmarks"]["Synthetic"]
    assert row["n"] == n and row["n_errors"] == n - N_GOOD
    # Lengths over the answered samples only (error samples have none); n and n_answered both kept.
    assert row["n_answered"] == N_GOOD
    assert row["mean_tokens"] == pytest.approx(sum(r["num_new_tokens"] for r in good) / N_GOOD)
    assert summary["mode"] == "switch" and summary["live_metrics_agree"] is True
    assert len(row["entropy_curve"]["mean"]) == max(r["num_new_tokens"] for r in records)
    assert "| Synthetic |" in (tmp_path / "summary.md").read_text()

    # The torchmetrics of the run agree with the summary derived from the files.
    live = module.metrics.compute()["benchmarks"]["Synthetic"]
    assert live["n"] == row["n"] and live["mean_acc"] == pytest.approx(row["mean_acc"])

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"score/Synthetic", "accuracy/Synthetic", "tokens/Synthetic", "latency_s/Synthetic", "errors/Synthetic", "mra/Synthetic",
            "score/overall", "running/tokens_per_s", "running/mean_reward"} <= set(tags["scalars"])
    assert acc.Scalars("errors/Synthetic")[0].value == n - N_GOOD
    assert "output_tokens/Synthetic" in tags["histograms"]
    sample_figs = [t for t in tags["images"] if t.startswith("samples/Synthetic/")]
    assert len(sample_figs) == 2
    assert {"entropy_curve/Synthetic", "entropy_curve/all_benchmarks"} <= set(tags["images"])
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")


def test_a_failing_generation_becomes_an_error_record_and_the_run_goes_on(assets, tmp_path, monkeypatch):
    from vreason.generation import VReasonGenerator

    real = VReasonGenerator.generate_samples
    calls = {"n": 0, "frames": []}

    def flaky(self, samples, seeds=None):
        (inputs,) = samples  # batch size 1: one sample per call
        calls["n"] += 1
        calls["frames"].append(int(inputs["video_grid_thw"][0, 0]))
        # Sample 0 runs out of memory, and again when retried with half its frames; sample 1 fails.
        if calls["n"] in (1, 2):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        if calls["n"] == 3:
            raise RuntimeError("shape mismatch")
        return real(self, samples, seeds=seeds)

    monkeypatch.setattr(VReasonGenerator, "generate_samples", flaky)
    run(assets, tmp_path, mode="off", plot_samples=0)
    records = [json.loads(line) for line in (tmp_path / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()]
    by_index = {r["index"]: r for r in records}
    assert by_index[0]["error"].startswith("out of memory: OutOfMemoryError: CUDA out of memory")
    assert "\n" not in by_index[0]["error"]
    # 4 frames are 2 temporal patches; the retry's 2 frames are 1.
    assert calls["frames"][:2] == [2, 1] and by_index[0]["retried_with"] == 2
    assert by_index[1]["error"] == "RuntimeError: shape mismatch" and by_index[1]["output"] == ERROR_OUTPUT
    assert all(not by_index[i]["error"] for i in range(2, N_GOOD))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmarks"]["Synthetic"]["n_errors"] == len(assets["entries"]) - N_GOOD + 2


def test_off_mode_runs_no_rounds_and_the_model_stays_outside_the_module(assets, tmp_path):
    trainer, module = run(assets, tmp_path / "off", mode="off", plot_samples=0)
    records = [json.loads(line) for line in (tmp_path / "off" / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()]
    assert all(not any(r["updated"]) for r in records)
    # The Hugging Face model is not a registered child: Lightning neither moves nor checkpoints it.
    assert module.hf_model is not None
    assert not list(module.parameters()) and "hf_model" not in dict(module.named_children())


def test_switch_runs_under_a_trainer_left_in_inference_mode(assets, tmp_path):
    # Lightning's default predict context forbids autograd; the module steps out of it per sample.
    run(assets, tmp_path, mode="switch", plot_samples=0, inference_mode=True)
    records = [json.loads(line) for line in (tmp_path / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()]
    good = [r for r in records if not r["error"]]
    assert len(good) == N_GOOD and all(r["updated"][0] == 1 for r in good)


def test_sampling_seeds_differ_per_sample_and_do_not_depend_on_order():
    sampled = DecodeConfig(do_sample=True, seed=7)
    assert sampled.seed_for("Synthetic/0") == sampled.seed_for("Synthetic/0")
    assert sampled.seed_for("Synthetic/0") != sampled.seed_for("Synthetic/1")
    assert DecodeConfig(do_sample=True, seed=8).seed_for("Synthetic/0") != sampled.seed_for("Synthetic/0")
    assert DecodeConfig().seed_for("Synthetic/0") is None  # greedy: no seed needed
