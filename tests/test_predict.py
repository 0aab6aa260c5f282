"""What a failure costs a run (`vreason/predict.py`): a fatal accelerator error stops it with one
line and a re-run resumes; other errors are records; the typed record reads old JSON lines."""
import json
from types import SimpleNamespace

import lightning.pytorch  # noqa: F401  (its log handler binds stderr now, not a test's captured stream)
import pytest
import torch

from vreason.cli import main
from vreason.config import DecodeConfig
from vreason.data.benchmark import Sample
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.generation import VReasonGenerator
from vreason.models.tiny import build_tiny_model
from vreason.predict import FatalAcceleratorError, Predictor, is_fatal, is_out_of_memory
from vreason.records import Record, read_predictions

N = 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    build_tiny_model(root / "model")
    bench = write_synthetic_benchmark(root / "data", n=N, seed=5, num_frames=8)
    return {"model": str(root / "model"), "bench": str(bench)}


def command(assets, root):
    return ["predict", "--model.model_path", assets["model"], "--data.files", f"[{assets['bench']}]",
            "--data.num_frames", "4", "--data.max_pixels", str(64 * 28 * 28), "--model.decode.max_new_tokens", "6",
            "--model.controller.mode", "off", "--model.plot_samples", "0", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root)]


def test_a_fatal_accelerator_error_stops_the_run_and_a_rerun_resumes(assets, tmp_path, capsys, monkeypatch):
    real = VReasonGenerator.generate_samples
    calls = []

    def illegal_access_on_the_third_sample(self, samples, seeds=None):
        calls.append(len(samples))
        if len(calls) == 3:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered\nCompile with "
                                         "`TORCH_USE_CUDA_DSA` to enable device-side assertions.")
        return real(self, samples, seeds=seeds)

    monkeypatch.setattr(VReasonGenerator, "generate_samples", illegal_access_on_the_third_sample)
    assert main(command(assets, tmp_path)) == 1
    assert len(calls) == 3  # no sample after the failure ran
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("vreason")]
    assert "AcceleratorError: CUDA error: an illegal memory access was encountered" in line
    assert line.endswith("run the same command again to resume")
    pred = tmp_path / "predictions" / "Synthetic.rank0.jsonl"
    first = [json.loads(x)["key"] for x in pred.read_text().splitlines()]
    assert first == ["Synthetic/0", "Synthetic/1"] and not (tmp_path / "summary.json").exists()

    monkeypatch.setattr(VReasonGenerator, "generate_samples", real)
    assert main(command(assets, tmp_path)) == 0
    keys = [json.loads(x)["key"] for x in pred.read_text().splitlines()]
    assert keys == [f"Synthetic/{i}" for i in range(N)]  # each once: the finished two were skipped
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmarks"]["Synthetic"]["n"] == N and summary["benchmarks"]["Synthetic"]["n_errors"] == 0


@pytest.mark.parametrize("exc, oom, fatal", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True, False),
    (torch.AcceleratorError("CUDA error: out of memory"), True, False),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True, False),
    (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), False, True),
    (torch.AcceleratorError("CUDA error: unspecified launch failure"), False, True),
    (RuntimeError("CUDA error: device-side assert triggered"), False, True),  # torch before AcceleratorError
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm(...)`"), False, True),
    (RuntimeError("The size of tensor a (4) must match the size of tensor b (5)"), False, False),
    (ValueError("out of memory is not what a ValueError means here"), False, False),
])
def test_which_errors_are_out_of_memory_and_which_are_fatal(exc, oom, fatal):
    assert is_out_of_memory(exc) is oom and is_fatal(exc) is fatal


class FakeGenerator:
    """Fails every call with `error`, counting the batch sizes it was given."""

    def __init__(self, error):
        self.error, self.calls = error, []

    def generate_samples(self, samples, seeds=None):
        self.calls.append(len(samples))
        raise self.error


def item(i, error=None):
    sample = Sample(benchmark="B", index=i, key=f"B/{i}", entry={"problem_id": i}, problem_type="multiple choice",
                    solution="<answer>A</answer>", error=error)
    return {"sample": sample, "inputs": None if error else {"input_ids": torch.ones(1, 3, dtype=torch.long)},
            "error": error, "meta": None, "video": None}


def test_a_batch_with_a_fatal_error_stops_without_running_its_samples_alone():
    generator = FakeGenerator(torch.AcceleratorError("CUDA error: misaligned address"))
    predictor = Predictor(generator, processor=None, mode="off", decode=DecodeConfig())
    with pytest.raises(FatalAcceleratorError, match=r"sample B/0 \(in a batch of 2\): AcceleratorError: CUDA error"):
        predictor.predict([item(0), item(1, error="video missing"), item(2)])
    assert generator.calls == [2]


def test_a_failing_batch_runs_alone_and_each_failure_is_its_own_record():
    generator = FakeGenerator(RuntimeError("shape\nmismatch"))
    predictor = Predictor(generator, processor=None, mode="switch", decode=DecodeConfig(), rank=3)
    records = predictor.predict([item(0), item(1, error="video missing"), item(2)])
    assert generator.calls == [2, 1, 1]  # the batch, then each of its samples alone
    assert [r.key for r in records] == ["B/0", "B/1", "B/2"]
    assert [r.error for r in records] == ["RuntimeError: shape mismatch", "video missing", "RuntimeError: shape mismatch"]
    assert all(r.output == "<answer>error</answer>" and r.reward == 0.0 and r.rank == 3 and r.mode == "switch"
               for r in records)


def test_a_record_round_trips_and_old_lines_still_read(tmp_path):
    record = Record(key="B/0", benchmark="B", index=0, entropy=[0.5, 0.25], alpha=[1, -1], num_frames=4, attempt=2)
    line = json.loads(json.dumps(record.to_dict()))
    assert Record.from_dict(line) == record
    # The key order of the JSON lines: how frames were read, the sample, ..., the attempt last.
    assert list(line)[:6] == ["video_reader", "from_cache", "num_frames", "retried_with", "key", "benchmark"]
    assert list(line)[-1] == "attempt"
    # A line of a run from before the frame fields, Lite counts and attempts, with a null trace
    # and a field since dropped.
    old = {"key": "B/1", "benchmark": "B", "index": 1, "output": "x", "reward": 1.0, "error": None,
           "num_new_tokens": 2, "latency_s": 0.5, "entropy": None, "attempt": None, "obsolete": 1}
    pred = tmp_path / "predictions"
    pred.mkdir()
    (pred / "B.rank0.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(line) + "\n")
    got = read_predictions(pred)["B"]
    assert [r.key for r in got] == ["B/0", "B/1"]
    assert got[1] == Record(key="B/1", benchmark="B", index=1, output="x", reward=1.0, num_new_tokens=2, latency_s=0.5)
    assert got[1].attempt == 1 and got[1].entropy == [] and got[1].lite_layers == 0


def test_a_result_becomes_a_scored_record_with_rounded_traces():
    processor = SimpleNamespace(batch_decode=lambda tokens, skip_special_tokens: ["<answer>A</answer>"])
    result = SimpleNamespace(sequences=torch.ones(1, 5, dtype=torch.long), prompt_length=3, num_new_tokens=2,
                             entropy=torch.tensor([0.123456789, 0.5]), alpha=torch.tensor([1, -1]),
                             updated=torch.tensor([True, False]), stop_reason="eos")
    predictor = Predictor(None, processor, mode="switch", decode=DecodeConfig())
    record = predictor.record(item(0), "<answer>A</answer>", latency=0.5, result=result)
    assert record.reward == 1.0 and record.correct and record.prediction == "A"
    assert record.entropy == [0.12346, 0.5] and record.alpha == [1, -1] and record.updated == [1, 0]
    assert record.tokens_per_s == 4.0 and record.prompt_length == 3 and record.stop_reason == "eos"
