"""The precision a generation documents, whatever the caller's process-wide settings: under
`torch.autocast` (what `--trainer.precision bf16-mixed` turns on) and with float32 matmul
precision "high" (TF32 on a GPU), a switch generation's tokens and every trace that depends on the
controller's ΔV equal those of a plain run, and the caller's settings come back afterwards. The
evaluation trainer and `vreason predict` refuse mixed precision in one line."""
from __future__ import annotations

import warnings

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.cli import main
from vreason.models.tiny import build_tiny_model, trained_path
from vreason.precision import float32_products
from vreason.trainer import eval_trainer
from inputs import video_inputs

TRACES = ("sequences", "entropy", "entropy_after", "ema", "alpha", "updated")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = vreason.load_model(build_tiny_model(tmp_path_factory.mktemp("m"), seed=3), dtype="float32",
                                          device="cpu")
    return model, processor


def run(model, processor, batch=False):
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.05), DecodeConfig(max_new_tokens=6))
    inputs = video_inputs(processor, seed=2)
    return gen.generate_batch(**inputs)[0] if batch else gen.generate(**inputs)


@pytest.mark.parametrize("batch", [False, True])
def test_switch_run_ignores_autocast_and_tf32_settings(tiny, batch):
    model, processor = tiny
    plain = run(model, processor, batch)
    assert plain.updated.any()
    torch.set_float32_matmul_precision("high")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert torch.is_autocast_enabled("cpu")
            # What the setting alone does to the model's float32 products (the test can fail).
            x = torch.randn(4, 64)
            assert model.lm_head(model.model.language_model.norm(x)).dtype == torch.bfloat16
            under = run(model, processor, batch)
            assert torch.is_autocast_enabled("cpu")  # the caller's setting is back
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")
    for trace in TRACES:
        assert torch.equal(getattr(plain, trace), getattr(under, trace)), trace
    notes = [str(w.message) for w in caught if "vreason: generation runs without" in str(w.message)]
    assert len(notes) <= 1 and all("\n" not in n for n in notes)


def test_float32_products_restores_settings_after_an_error():
    torch.set_float32_matmul_precision("medium")
    try:
        with pytest.raises(RuntimeError, match="boom"), torch.autocast("cpu", dtype=torch.bfloat16):
            with float32_products():
                assert not torch.is_autocast_enabled("cpu")
                assert torch.get_float32_matmul_precision() == "highest"
                raise RuntimeError("boom")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true", "64-true"])
def test_eval_trainer_refuses_mixed_precision(precision, tmp_path):
    with pytest.raises(ValueError, match=f"trainer precision '{precision}' is not supported"):
        eval_trainer(tmp_path, precision=precision, enable_progress_bar=False)
    eval_trainer(tmp_path, precision="32-true", enable_progress_bar=False)  # full precision is fine


def test_predict_refuses_bf16_mixed_in_one_line(tmp_path, capsys):
    from vreason.data.synthetic import write_synthetic_benchmark

    bench = write_synthetic_benchmark(tmp_path / "data", n=1, seed=0, num_frames=4)
    code = main(["predict", "--model.model_path", str(trained_path()), "--data.files", f"[{bench}]",
                 "--trainer.precision", "bf16-mixed", "--trainer.accelerator", "cpu",
                 "--trainer.default_root_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("vreason predict: error: trainer precision 'bf16-mixed' is not supported")
    assert "\n" not in err
