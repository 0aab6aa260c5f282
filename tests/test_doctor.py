"""`vreason doctor` on the CPU: every check passes and the exit code is 0; an injected fault in
one compiled op fails its row and the exit code is 1; --device cuda without a GPU is one line."""
from __future__ import annotations

import pytest
import torch

from vreason import doctor as doctor_module
from vreason.cli import main


def test_doctor_passes_on_cpu(capsys):
    assert main(["doctor", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for line in ("torch", "vreason._C", "CPU SIMD", "transformers", "lightning", "decord"):
        assert line in out
    rows = [r for r in out.splitlines() if r.startswith("| ") and ("PASS" in r or "FAIL" in r)]
    # entropy, value_update and vecmat in two dtypes, vecmat's CUDA arithmetic in bf16 and fp16,
    # the tiny model's build, off decoding, switch gradient
    assert len(rows) == 11 and all("| PASS" in r for r in rows), out
    assert "11 of 11 checks passed" in out


def test_doctor_catches_a_cuda_vecmat_that_rounds_the_gradient(monkeypatch, capsys):
    # The CUDA backend's earlier vecmat (g and the product rounded to the weight's dtype), put in
    # place of its arithmetic: the host rows fail on a machine without a GPU.
    class Rounded:
        @staticmethod
        def default(g, weight):
            return (g.to(weight.dtype).float() @ weight.float()).to(weight.dtype).float()

    class Ops:
        def __getattr__(self, name):
            return Rounded if name == "vecmat_split" else getattr(torch.ops.vreason, name)

    monkeypatch.setattr(doctor_module, "_vreason_ops", lambda: Ops())
    assert doctor_module.doctor(["--device", "cpu"]) == 1
    failed = [r for r in capsys.readouterr().out.splitlines() if "| FAIL" in r]
    assert len(failed) == 2 and all("vecmat's CUDA arithmetic" in r and "x the tolerance" in r for r in failed)


def test_doctor_fails_on_a_wrong_kernel(monkeypatch, capsys):
    real = torch.ops.vreason.value_update_.default

    class Wrong:
        """Writes the update, then corrupts one element: the in-place op's row must fail."""

        @staticmethod
        def default(cache, positions, v0, delta):
            real(cache, positions, v0, delta)
            cache[0, 0, positions[0], 0] += 1.0

    class Ops:
        def __getattr__(self, name):
            return Wrong if name == "value_update_" else getattr(torch.ops.vreason, name)

    monkeypatch.setattr(doctor_module, "_vreason_ops", lambda: Ops())
    assert doctor_module.doctor(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    failed = [r for r in out.splitlines() if "| FAIL" in r]
    assert failed and all("ops.value_update" in r for r in failed), out


@pytest.mark.no_gpu
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_doctor_on_cuda_without_a_gpu_is_one_line(capsys):
    assert main(["doctor", "--device", "cuda"]) == 2
    assert "vreason doctor: error: --device cuda but torch sees no GPU" in capsys.readouterr().err
