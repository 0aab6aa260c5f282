"""On a GPU (marker `cuda`; skipped without one, which CI accepts): the CUDA paths this project
guards from the CPU, met on real hardware. vecmat's cuBLAS path for bf16/fp16 weights against
float64 and against its own composition run on the host; a switch round under autocast and TF32
settings equal to one without; `vreason doctor --device cuda` passing. The first GPU run
(`experiments/gpu/first_run.sh`) runs these."""
from __future__ import annotations

import pytest
import torch

from vreason import ops
from vreason.ops import reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible to torch"),
              pytest.mark.skipif(not ops.built_with_cuda(), reason="vreason._C was built without its CUDA kernels")]


def rel_max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, cols, samples", [(4099, 515, 2), (3584, 152_064, 1), (18_944, 3584, 8)])
def test_vecmat_on_cuda_matches_float64_and_the_host_composition(dtype, rows, cols, samples):
    gen = torch.Generator(device="cuda").manual_seed(0)
    weight = torch.randn(rows, cols, generator=gen, device="cuda").to(dtype)
    scale = torch.logspace(-6, 0, rows, device="cuda")[torch.randperm(rows, generator=gen, device="cuda")]
    g = torch.randn(samples, rows, generator=gen, device="cuda") * scale  # entries over 6 decades
    out = ops.vecmat(g, weight)
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    assert rel_max_err(out, g.double() @ weight.double()) <= 1e-4
    host = torch.ops.vreason.vecmat_split.default(g.cpu(), weight.cpu())
    assert rel_max_err(out, host) <= 2e-5  # the same arithmetic, summed in another order


def test_vecmat_on_cuda_full_precision_weight_under_tf32_setting_is_float32_in_a_generation_context():
    from vreason.precision import float32_products

    gen = torch.Generator().manual_seed(1)
    weight, g = torch.randn(4096, 4096, generator=gen), torch.randn(2, 4096, generator=gen)
    torch.set_float32_matmul_precision("high")
    try:
        with float32_products():
            out = ops.vecmat(g.cuda(), weight.cuda())
    finally:
        torch.set_float32_matmul_precision("highest")
    assert rel_max_err(out, reference.vecmat(g, weight)) <= 1e-5


def test_switch_generation_on_cuda_ignores_autocast_and_tf32(tmp_path):
    import vreason
    from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
    from vreason.models.tiny import build_tiny_model
    from inputs import video_inputs

    model, processor = vreason.load_model(build_tiny_model(tmp_path / "m", seed=3), dtype="float32", device="cuda")
    gen = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.05), DecodeConfig(max_new_tokens=6))
    inputs = video_inputs(processor, seed=2)
    plain = gen.generate(**inputs)
    torch.set_float32_matmul_precision("high")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            under = gen.generate(**inputs)
    finally:
        torch.set_float32_matmul_precision("highest")
    for trace in ("sequences", "entropy", "entropy_after", "updated"):
        assert torch.equal(getattr(plain, trace), getattr(under, trace)), trace


def test_doctor_passes_on_cuda(capsys):
    from vreason.cli import main

    assert main(["doctor", "--device", "cuda"]) == 0, capsys.readouterr().out
