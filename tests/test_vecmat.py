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
