"""`ops.vecmat(g, weight)` (the controller's backward products) against a float64 matmul, on every
CPU SIMD level this machine has: bf16 and fp16 weights through the row loops, float32/float64
through BLAS. Shapes cover rows and columns no vector width or unroll divides, one row or column,
and row counts spanning several of the kernel's fixed row parts (1,024 rows), whose partial sums
must all reach the result."""
from __future__ import annotations

import pytest
import torch

from vreason import _C, ops
from vreason.ops import reference
from test_ops import LEVELS, simd_level

# rows, cols, samples: unroll remainders (rows % 4), lane remainders (cols % 8, % 16), several parts.
SHAPES = [(1, 1, 1), (3, 7, 1), (4, 16, 2), (5, 17, 3), (257, 33, 1), (1024, 40, 2), (2500, 24, 1), (4099, 129, 3)]
# Relative max-error bound against float64: float32 accumulation over up to ~4k rows.
TOL = 2e-5


def case(rows, cols, samples, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen).to(dtype)
    g = torch.randn(samples, rows, generator=gen)
    return g, weight


def rel_max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, cols, samples", SHAPES)
def test_reduced_weights_match_float64(level, dtype, rows, cols, samples):
    g, weight = case(rows, cols, samples, dtype)
    with simd_level(level):
        out = ops.vecmat(g, weight)
    want = reference.vecmat(g, weight)
    assert out.dtype == torch.float32 and out.shape == (samples, cols)
    assert rel_max_err(out, want) <= TOL


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_full_precision_weights_match_float64(dtype, tol):
    g, weight = case(2500, 33, 2, dtype)
    out = ops.vecmat(g.to(dtype), weight)
    assert out.dtype == dtype
    assert rel_max_err(out, reference.vecmat(g, weight)) <= tol


def test_every_row_part_counts():
    # A one-hot g per part: each output row must equal exactly that weight row (a part dropped,
    # counted twice or offset by one shows as a wrong row).
    rows, cols = 3 * 1024 + 5, 20
    _, weight = case(rows, cols, 1, torch.bfloat16, seed=1)
    picks = [0, 1023, 1024, 2047, 2048, 3071, 3072, rows - 1]
    g = torch.zeros(len(picks), rows)
    g[torch.arange(len(picks)), torch.tensor(picks)] = 1.0
    for level in range(_C.max_simd_level() + 1):
        with simd_level(level):
            assert torch.equal(ops.vecmat(g, weight), weight[picks].float())


def test_levels_agree_bit_for_bit():
    # Every path adds the rows of a part in the same order with one rounding per fused
    # multiply-add, so the scalar loop and the SIMD loops give identical floats.
    g, weight = case(2500, 37, 2, torch.bfloat16, seed=2)
    outs = []
    for level in range(_C.max_simd_level() + 1):
        with simd_level(level):
            outs.append(ops.vecmat(g, weight))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_non_contiguous_inputs():
    g, weight = case(300, 48, 2, torch.bfloat16, seed=3)
    wt = weight.t().contiguous().t()  # same values, column-major
    gs = torch.stack([g, g], dim=-1).flatten(1)[:, ::2]  # same values, strided
    assert rel_max_err(ops.vecmat(gs, wt), reference.vecmat(g, weight)) <= TOL


@pytest.mark.parametrize("g_shape, w_shape, dtype, message", [
    ((2, 5), (4, 3), torch.bfloat16, "g must be [samples, rows] and weight [rows, cols]"),
    ((5,), (5, 3), torch.bfloat16, "g must be [samples, rows] and weight [rows, cols]"),
    ((1, 5), (5, 3), torch.int32, "weight must be float32, float16, bfloat16 or float64"),
])
def test_rejects_bad_inputs_in_one_line(g_shape, w_shape, dtype, message):
    g = torch.ones(g_shape)
    weight = torch.ones(w_shape).to(dtype)
    with pytest.raises(RuntimeError) as err:
        ops.vecmat(g, weight)
    assert message in str(err.value) and "\n" not in str(err.value).strip()


def test_opcheck():
    g, weight = case(70, 19, 2, torch.bfloat16, seed=4)
    torch.library.opcheck(torch.ops.vreason.vecmat.default, (g, weight))


# ---- the CUDA backend's arithmetic (`vecmat_split`), run here ------------------------------------
# On CUDA a bf16/fp16 weight goes through cuBLAS in its dtype; `vecmat_split` is that composition
# (g split into two parts of the weight's dtype, one GEMM with float32 output), written once for
# every device: on the CPU the GEMM's exact products and float32 sums are float32 arithmetic.
SPLIT_TOL = 1e-4  # `vreason doctor`'s bound for vecmat


def split(g, weight):
    return torch.ops.vreason.vecmat_split.default(g, weight)


def rounded_cuda_vecmat(g, weight):
    """The CUDA backend's earlier `mm(g.to(dtype), W)`: g rounded to the weight's dtype, float32
    accumulation, the product rounded to that dtype."""
    return (g.to(weight.dtype).float() @ weight.float()).to(weight.dtype).float()


def decades(samples, rows, seed, low=-8):
    """A gradient whose entries span `-low` decades (an lm_head gradient's do)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(low, 0, rows)[torch.randperm(rows, generator=gen)]
    return torch.randn(samples, rows, generator=gen) * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, cols, samples", SHAPES + [(4099, 515, 2), (20_000, 70, 4)])
def test_cuda_split_matches_float64(dtype, rows, cols, samples):
    g, weight = case(rows, cols, samples, dtype, seed=5)
    out = split(g, weight)
    assert out.dtype == torch.float32 and out.shape == (samples, cols)
    assert rel_max_err(out, reference.vecmat(g, weight)) <= SPLIT_TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("row_scale", [1.0, 1e-9, 1e6])
def test_cuda_split_keeps_gradients_over_many_decades(dtype, row_scale):
    # fp16's exponent range would flush such entries (and whole small rows) to zero unscaled.
    _, weight = case(4099, 515, 2, dtype, seed=6)
    g = decades(2, 4099, seed=6) * row_scale
    assert rel_max_err(split(g, weight), reference.vecmat(g, weight)) <= SPLIT_TOL


@pytest.mark.parametrize("dtype, g_scale", [(torch.bfloat16, 1.0), (torch.float16, 1e-6)])
def test_the_rounded_cuda_composition_fails_the_bound(dtype, g_scale):
    # What the bound catches: g (and the product) rounded to bf16 is several times over it, and
    # a small gradient rounded to fp16 loses its entries altogether.
    g, weight = case(4099, 515, 2, dtype, seed=7)
    g = g * g_scale
    want = reference.vecmat(g, weight)
    assert rel_max_err(rounded_cuda_vecmat(g, weight), want) > 5 * SPLIT_TOL
    assert rel_max_err(split(g, weight), want) <= SPLIT_TOL


def test_cuda_split_non_finite_rows_stay_non_finite_and_empty_rows_give_zeros():
    g, weight = case(300, 40, 3, torch.bfloat16, seed=8)
    g[0, 7], g[1, 3] = float("inf"), float("nan")
    out = split(g, weight)
    assert not out[0].isfinite().all() and not out[1].isfinite().all()
    assert rel_max_err(out[2:], reference.vecmat(g[2:], weight)) <= SPLIT_TOL
    assert torch.equal(split(torch.ones(2, 0), torch.ones(0, 5, dtype=torch.bfloat16)), torch.zeros(2, 5))


def test_cuda_split_rejects_a_full_precision_weight_in_one_line():
    with pytest.raises(RuntimeError) as err:
        split(torch.ones(1, 4), torch.ones(4, 3))
    assert "vecmat_split: weight must be bfloat16 or float16, got Float" in str(err.value)
    assert "\n" not in str(err.value).strip()


def test_cuda_split_opcheck():
    g, weight = case(70, 19, 2, torch.bfloat16, seed=9)
    torch.library.opcheck(torch.ops.vreason.vecmat_split.default, (g, weight))
