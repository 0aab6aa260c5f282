"""Controller settings reach the method end to end: a `vreason predict` run with non-default
`ema_beta`, `every_k`, `steps`, `lr` and Adam settings writes records whose EMA and α follow the
EMA recurrence with that β (written out here, independent of `vreason.switching`), whose rounds
follow `every_k`, and whose traces are those of `VReasonGenerator` built with the same settings
in Python, and not those of the default Adam settings."""
from __future__ import annotations

import json

import lightning.pytorch  # noqa: F401  (its log handler binds stderr now, not a test's captured stream)
import pytest

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.cli import main
from vreason.data.datamodule import BenchmarkDataModule
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.models.tiny import build_tiny_model
from vreason.records import TRACE_DECIMALS

MAX_NEW = 12
MAX_PIXELS = 64 * 28 * 28
# Far from every default (ema_beta 0.9, every_k 2, steps 1, lr 1e-2, Adam (0.9, 0.999), eps 1e-8).
SETTINGS = {"ema_beta": 0.5, "every_k": 3, "steps": 2, "lr": 0.05, "adam_beta1": 0.5, "adam_beta2": 0.9,
            "adam_eps": 1e-3}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plumbing")
    build_tiny_model(root / "model")
    bench = write_synthetic_benchmark(root / "data", n=2, seed=5, num_frames=8)
    out = root / "out"
    flags = [x for name, value in SETTINGS.items() for x in (f"--model.controller.{name}", str(value))]
    args = ["predict", "--model.model_path", str(root / "model"), "--data.files", f"[{bench}]",
            "--data.num_frames", "4", "--data.max_pixels", str(MAX_PIXELS),
            "--model.decode.max_new_tokens", str(MAX_NEW), "--model.controller.mode", "switch", *flags,
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()]
    assert len(records) == 2 and not any(r["error"] for r in records)
    return {"model": str(root / "model"), "bench": str(bench), "out": out,
            "records": sorted(records, key=lambda r: r["index"])}


def ema_recurrence(entropy: list[float], beta: float) -> list[float]:
    """E_0 = H_0, E_k = β·E_{k−1} + (1−β)·H_k."""
    out = [entropy[0]]
    for h in entropy[1:]:
        out.append(beta * out[-1] + (1 - beta) * h)
    return out


def test_the_run_records_the_settings_it_was_given(run):
    stored = json.loads((run["out"] / "predictions" / "run_config.json").read_text())["controller"]
    assert {k: stored[k] for k in SETTINGS} == SETTINGS


def test_ema_alpha_and_rounds_follow_the_given_beta_and_every_k(run):
    beta, tol = SETTINGS["ema_beta"], 1.5 * 10.0 ** -TRACE_DECIMALS  # the traces are rounded
    decided = 0
    for r in run["records"]:
        n = r["num_new_tokens"]
        assert n == MAX_NEW == len(r["entropy"])  # random weights: no early eos, full traces
        assert r["updated"] == [k % SETTINGS["every_k"] == 0 for k in range(n)]
        ema = ema_recurrence(r["entropy"], beta)
        assert r["ema"] == pytest.approx(ema, abs=tol)
        # With β = 0.9 instead, the EMA would lag far behind: make sure this run tells them apart.
        assert max(abs(a - b) for a, b in zip(ema_recurrence(r["entropy"], 0.9), ema)) > 10 * tol
        peak = float("-inf")
        for k in range(n):
            peak = max(peak, ema[k])
            if ema[k] == peak:
                assert r["alpha"][k] == 1, k  # at the running peak: explore
                decided += 1
            elif ema[k] < peak - 2 * tol:
                assert r["alpha"][k] == -1, k  # below it: exploit
                decided += 1
    assert decided >= 0.9 * sum(r["num_new_tokens"] for r in run["records"])


def test_traces_are_those_of_the_generator_with_these_adam_settings(run):
    model, processor = vreason.load_model(run["model"])
    data = BenchmarkDataModule(files=[run["bench"]], model_path=run["model"], num_frames=4, max_pixels=MAX_PIXELS)
    data.connect(processor)
    items = [item for batch in data.predict_dataloader() for item in batch]
    decode = DecodeConfig(max_new_tokens=MAX_NEW)
    given = VReasonGenerator(model, ControllerConfig(mode="switch", **SETTINGS), decode)
    default_adam = {k: v for k, v in SETTINGS.items() if not k.startswith("adam_")}
    default = VReasonGenerator(model, ControllerConfig(mode="switch", **default_adam), decode)

    def rounded(values):
        return [round(float(v), TRACE_DECIMALS) for v in values.tolist()]

    for record, item in zip(run["records"], items):
        assert item["sample"].key == record["key"]
        ours = given.generate(**item["inputs"])
        assert record["entropy"] == rounded(ours.entropy)
        assert record["entropy_after"] == rounded(ours.entropy_after)
        # The Adam settings change what a round does: the default ones leave other traces.
        other = default.generate(**item["inputs"])
        assert record["entropy_after"][0] != round(float(other.entropy_after[0]), TRACE_DECIMALS)
