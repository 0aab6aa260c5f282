"""The compiled operators (vreason._C) against the plain-torch oracle in vreason.ops.reference."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings

import pytest
import torch

from vreason import ops
from vreason.ops import _C, eager, reference

VOCAB = 152_064
INF = float("inf")
REDUCED = (torch.bfloat16, torch.float16)


def tol(dtype):
    # float32 math for every input dtype; reduced inputs only change the values fed in.
    return dict(rtol=1e-3, atol=1e-4) if dtype in REDUCED else dict(rtol=1e-5, atol=1e-5)


def output_tol(dtype):
    # Outputs stored in a reduced dtype (gradients of bf16 logits, bf16 caches) may round the
    # same float32 value one ulp apart: one ulp is 2^-8 relative for bf16, 2^-11 for fp16.
    return {
        torch.bfloat16: dict(rtol=2**-7, atol=1e-6),
        torch.float16: dict(rtol=2**-10, atol=1e-6),
    }.get(dtype, dict(rtol=1e-5, atol=1e-6))


@contextlib.contextmanager
def simd(enabled: bool):
    previous = _C.set_simd_enabled(enabled)
    try:
        yield
    finally:
        _C.set_simd_enabled(previous)


@contextlib.contextmanager
def simd_level(level: int):
    previous = _C.set_simd_level(level)
    try:
        yield
    finally:
        _C.set_simd_level(previous)


SCALAR, AVX2, AVX512 = 0, 1, 2
needs_level = {
    AVX2: pytest.mark.skipif(_C.max_simd_level() < AVX2, reason="this CPU has no AVX2/FMA/F16C"),
    AVX512: pytest.mark.skipif(_C.max_simd_level() < AVX512, reason="this CPU has no AVX-512F"),
}
LEVELS = [SCALAR, pytest.param(AVX2, marks=needs_level[AVX2]), pytest.param(AVX512, marks=needs_level[AVX512])]


def logits_of(shape, dtype, scale=3.0, seed=0, masked=0.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * scale
    if masked:
        z[torch.rand(shape, generator=g) < masked] = -INF
        z[..., 0] = torch.randn(shape[:-1], generator=g) * scale  # every row keeps one finite logit
    return z.to(dtype)


# ---- entropy -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, *REDUCED])
@pytest.mark.parametrize(
    "shape, scale",
    [((2, VOCAB), 3.0), ((1, VOCAB), 1e4), ((2, 3, 1000), 1.0), ((4, 1037), 1e4), ((5, 1), 2.0), ((3, 17), 30.0)],
)
def test_entropy_matches_reference(dtype, shape, scale):
    z = logits_of(shape, dtype, scale)
    h = ops.entropy(z)
    assert h.dtype == torch.float32 and h.shape == shape[:-1]
    torch.testing.assert_close(h, reference.entropy(z), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, *REDUCED])
def test_entropy_rows_with_many_masked_logits(dtype):
    z = logits_of((6, 4099), dtype, scale=5.0, masked=0.95)
    z[1, 1:] = -INF  # a single finite logit: H = 0
    z[2, :4000] = -INF
    h = ops.entropy(z)
    torch.testing.assert_close(h, reference.entropy(z), **tol(dtype))
    assert h[1].item() == 0.0


def test_entropy_one_element_rows_and_float64():
    z = torch.randn(7, 1)
    assert torch.equal(ops.entropy(z), torch.zeros(7))
    z64 = logits_of((3, 4, 300), torch.float64, masked=0.3)
    h = ops.entropy(z64)
    assert h.dtype == torch.float64
    torch.testing.assert_close(h, reference.entropy(z64), rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs():
    z = logits_of((300, 6), torch.float32, masked=0.2).t()  # rows strided in memory
    assert not z.is_contiguous()
    torch.testing.assert_close(ops.entropy(z), reference.entropy(z), rtol=1e-5, atol=1e-5)
    v0, delta = values_of((64, 3, 5))
    v0, delta = v0.transpose(0, 2), delta.transpose(0, 2)
    assert not v0.is_contiguous()
    torch.testing.assert_close(ops.value_update(v0, delta), reference.value_update(v0, delta), rtol=1e-5, atol=1e-6)


def test_entropy_known_values():
    # Uniform over V: log V; logits of magnitude 1e4 that tie: log 2 (absolute form would lose it).
    assert ops.entropy(torch.zeros(1, 1000)).item() == pytest.approx(torch.log(torch.tensor(1000.0)).item(), rel=1e-6)
    z = torch.full((1, 5000), -INF)
    z[0, 7] = z[0, 4000] = 1e4
    assert ops.entropy(z).item() == pytest.approx(0.6931471805599453, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, *REDUCED])
def test_entropy_backward_matches_reference(dtype):
    z = logits_of((3, 5003), dtype, scale=4.0, masked=0.3)
    g = torch.randn(3)
    leaf = z.clone().requires_grad_(True)
    (ops.entropy(leaf) * g).sum().backward()
    ref_leaf = z.float().requires_grad_(True)
    (reference.entropy(ref_leaf) * g).sum().backward()
    assert leaf.grad.dtype == dtype
    torch.testing.assert_close(leaf.grad, ref_leaf.grad.to(dtype), **output_tol(dtype))
    masked = torch.isinf(z)
    assert masked.any() and torch.all(leaf.grad[masked] == 0)


def test_entropy_backward_at_vocab_scale():
    z = logits_of((2, VOCAB), torch.float32, scale=1e4)
    g = torch.tensor([1.0, -2.0])
    leaf = z.clone().requires_grad_(True)
    (ops.entropy(leaf) * g).sum().backward()
    ref_leaf = z.clone().requires_grad_(True)
    (reference.entropy(ref_leaf) * g).sum().backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-5, atol=1e-6)


def entropy_and_grad(z, g, level):
    with simd_level(level):
        assert _C.simd_level() == level
        leaf = z.clone().requires_grad_(True)
        h = ops.entropy(leaf)
        (h * g).sum().backward()
    return h, leaf.grad


@needs_level[AVX2]
@pytest.mark.parametrize("dtype", [torch.float32, *REDUCED])
@pytest.mark.parametrize("shape", [(2, VOCAB), (3, 2061), (4, 7)])
def test_entropy_avx2_and_scalar_paths_agree(dtype, shape):
    z = logits_of(shape, dtype, scale=6.0, masked=0.2)
    g = torch.ones(shape[:-1])
    h1, grad1 = entropy_and_grad(z, g, AVX2)
    h0, grad0 = entropy_and_grad(z, g, SCALAR)
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad1, grad0, **output_tol(dtype))


def hard_logits(shape, scale, masked, seed):
    z = logits_of(shape, torch.float32, scale=scale, seed=seed, masked=masked)
    if shape[-1] > 4096:
        # Whole chunks of -inf ahead of the first finite logits (the chunk max is -inf), and a row
        # that is -inf but for one logit in its last, partial stretch.
        z[0, 1:4096] = -INF
        z[-1, :] = -INF
        z[-1, -3] = 0.5 * scale
    return z


@needs_level[AVX512]
@pytest.mark.parametrize(
    "shape, scale, masked",
    [((2, VOCAB), 1e4, 0.0), ((3, VOCAB), 6.0, 0.3), ((2, VOCAB - 5), 1e4, 0.2), ((3, 2061), 1e4, 0.2),
     ((5, 1), 2.0, 0.0), ((4, 7), 30.0, 0.2), ((4, 31), 6.0, 0.2), ((2, 4093), 1e4, 0.5)],
)
def test_entropy_avx512_matches_scalar_and_reference(shape, scale, masked):
    """float32 at AVX-512F (16 lanes) against the scalar path and the plain-torch oracle: vocab
    scale at magnitude 1e4, masked (-inf) logits and -inf stretches, one-element rows, and lengths
    that are not a multiple of 16 (the scalar tail)."""
    z = hard_logits(shape, scale, masked, seed=len(shape) + shape[-1])
    g = torch.randn(shape[:-1], generator=torch.Generator().manual_seed(1))
    h2, grad2 = entropy_and_grad(z, g, AVX512)
    h0, grad0 = entropy_and_grad(z, g, SCALAR)
    ref_leaf = z.clone().requires_grad_(True)
    h_ref = reference.entropy(ref_leaf)
    (h_ref * g).sum().backward()
    for expected in (h0, h_ref.detach()):
        torch.testing.assert_close(h2, expected, rtol=1e-5, atol=1e-5)
    for expected in (grad0, ref_leaf.grad):
        torch.testing.assert_close(grad2, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(grad2[torch.isinf(z)] == 0)


def test_simd_switch_keeps_its_boolean_form():
    best = _C.max_simd_level()
    with simd_level(best):
        with simd(False):
            assert _C.simd_level() == 0 and _C.simd_enabled() is False
            with simd(True):
                assert _C.simd_level() == best and _C.simd_enabled() is (best > 0)
        assert _C.set_simd_level(99) == best and _C.simd_level() == best
        assert _C.set_simd_level(-1) == best and _C.simd_level() == 0


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bad", ["all_masked", "nan", "nan_among_masked", "pos_inf"])
def test_entropy_rejects_rows_without_entropy(bad, level):
    z = torch.randn(4, 5000)
    if bad == "all_masked":
        z[2] = -INF
    elif bad == "nan":
        z[2, 2500] = float("nan")
    elif bad == "nan_among_masked":  # a stretch of -inf holding one NaN, finite logits elsewhere
        z[2, 2048:4096] = -INF
        z[2, 3000] = float("nan")
    else:
        z[2, 17] = INF
    with simd_level(level):
        with pytest.raises(RuntimeError, match=r"row 2 of logits .* is all -inf or contains NaN/\+inf"):
            ops.entropy(z)
        with pytest.raises(RuntimeError, match="row 2 of logits"):
            torch.ops.vreason.entropy_backward(torch.ones(4), z, torch.ones(4))


def test_entropy_rejects_bad_inputs():
    with pytest.raises(RuntimeError, match="logits must be float32, float16, bfloat16 or float64"):
        ops.entropy(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="at least one dimension"):
        ops.entropy(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="last dimension of logits is empty"):
        ops.entropy(torch.ones(2, 0))
    with pytest.raises(RuntimeError, match="must have logits' leading shape"):
        torch.ops.vreason.entropy_backward(torch.ones(3), torch.zeros(2, 5), torch.ones(2))


def test_entropy_gradcheck_float64():
    z = logits_of((3, 2, 40), torch.float64, masked=0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(ops.entropy, (z,))


# ---- value_update --------------------------------------------------------------------------

def values_of(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), 0.3 * torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("shape", [(1, 4, 2048, 128), (2, 3, 7, 64), (5, 1), (3,)])
def test_value_update_matches_reference(shape):
    v0, delta = values_of(shape)
    v = ops.value_update(v0, delta)
    assert v.dtype == torch.float32 and v.shape == v0.shape
    torch.testing.assert_close(v, reference.value_update(v0, delta), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v.norm(dim=-1), v0.norm(dim=-1), rtol=1e-5, atol=1e-6)


def test_value_update_backward_matches_reference():
    v0, delta = values_of((2, 4, 33, 128), seed=1)
    g = torch.randn(v0.shape)
    grads = []
    for fn in (ops.value_update, reference.value_update):
        a, d = v0.clone().requires_grad_(True), delta.clone().requires_grad_(True)
        (fn(a, d) * g).sum().backward()
        grads.append((a.grad, d.grad))
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)


def test_value_update_zero_norm_rule():
    v0, delta = values_of((3, 16), seed=2)
    delta[1] = -v0[1]  # v0 + delta == 0 in row 1
    a, d = v0.clone().requires_grad_(True), delta.clone().requires_grad_(True)
    v = ops.value_update(a, d)
    assert torch.equal(v[1], v0[1])
    torch.testing.assert_close(v, reference.value_update(v0, delta))
    g = torch.randn(3, 16)
    (v * g).sum().backward()
    assert torch.equal(d.grad[1], torch.zeros(16))  # v does not depend on delta there
    assert torch.equal(a.grad[1], g[1])  # and is v0 itself
    assert torch.all(d.grad[[0, 2]] != 0)


def test_value_update_gradcheck_float64():
    v0, delta = values_of((2, 3, 5, 8), seed=3, dtype=torch.float64)
    assert torch.autograd.gradcheck(ops.value_update, (v0, delta.requires_grad_(True)))
    assert torch.autograd.gradcheck(ops.value_update, (v0.requires_grad_(True), delta))


def test_value_update_rejects_bad_inputs():
    v0, delta = values_of((2, 8))
    with pytest.raises(RuntimeError, match=r"v0 \[2, 8\] and delta \[2, 7\] must have the same shape"):
        ops.value_update(v0, delta[:, :7])
    with pytest.raises(RuntimeError, match="must both be float32"):
        ops.value_update(v0.half(), delta.half())
    with pytest.raises(RuntimeError, match="must both be float32"):
        ops.value_update(v0, delta.double())
    with pytest.raises(RuntimeError, match="same device"):
        ops.value_update(v0, delta.to("meta"))


# ---- value_update_ (in place) --------------------------------------------------------------

def bits(t):
    """The raw bits, so that equality is bit-identity (NaN payloads, -0.0 included)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.dtype.itemsize])


def cache_case(dtype, batch=2, heads=3, seq=50, dim=16, num=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(batch, heads, seq, dim, generator=g).to(dtype)
    positions = torch.randperm(seq, generator=g)[:num]
    v0, delta = values_of((batch, heads, num, dim), seed=seed + 1)
    return cache, positions, v0, delta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_value_update_inplace_writes_only_positions(dtype):
    cache, positions, v0, delta = cache_case(dtype)
    before = cache.clone()
    out = ops.value_update_(cache, positions, v0, delta)
    assert out is cache
    expected = reference.value_update_(before.clone(), positions, v0, delta)
    torch.testing.assert_close(cache[:, :, positions], expected[:, :, positions], **output_tol(dtype))
    untouched = torch.ones(cache.shape[2], dtype=torch.bool)
    untouched[positions] = False
    assert torch.equal(bits(cache[:, :, untouched]), bits(before[:, :, untouched]))


def test_value_update_inplace_into_a_strided_view():
    # A slice of a larger buffer (e.g. a preallocated cache): only the selected rows change.
    cache, positions, v0, delta = cache_case(torch.float32, seq=40, num=9)
    big = torch.randn(2, 3, 80, 32)
    before = big.clone()
    view = big[:, :, ::2, 8:24]
    assert not view.is_contiguous()
    ops.value_update_(view, positions, v0, delta)
    expected = before.clone()
    reference.value_update_(expected[:, :, ::2, 8:24], positions, v0, delta)
    torch.testing.assert_close(big, expected, rtol=1e-5, atol=1e-6)
    written = torch.zeros(big.shape, dtype=torch.bool)
    written[:, :, 2 * positions, 8:24] = True
    assert torch.equal(bits(big[~written]), bits(before[~written]))


def test_value_update_inplace_rejects_bad_inputs():
    cache, positions, v0, delta = cache_case(torch.float32, seq=10, num=4)
    before = cache.clone()
    bad = positions.clone()
    bad[2] = 10
    with pytest.raises(RuntimeError, match=r"positions\[2\] = 10 is out of range for a cache of 10 positions"):
        ops.value_update_(cache, bad, v0, delta)
    bad[2] = -1
    with pytest.raises(RuntimeError, match=r"positions\[2\] = -1 is out of range"):
        ops.value_update_(cache, bad, v0, delta)
    assert torch.equal(cache, before)  # checked before anything is written
    with pytest.raises(RuntimeError, match="positions must be a 1-D int64 tensor"):
        ops.value_update_(cache, positions.int(), v0, delta)
    with pytest.raises(RuntimeError, match=r"must be \[batch, kv_heads, len\(positions\), head_dim\]"):
        ops.value_update_(cache, positions[:3], v0, delta)
    with pytest.raises(RuntimeError, match=r"cache must be \[batch, kv_heads, seq, head_dim\]"):
        ops.value_update_(cache[0], positions, v0, delta)
    with pytest.raises(RuntimeError, match="must both be float32"):
        ops.value_update_(cache, positions, v0.half(), delta.half())
    with pytest.raises(RuntimeError, match="cache must be a float tensor"):
        ops.value_update_(cache.int(), positions, v0, delta)
    with pytest.raises(RuntimeError, match="same device"):
        ops.value_update_(cache, positions.to("meta"), v0, delta)


@pytest.mark.parametrize("positions, index, first", [([3, 5, 3, 1], 2, 0), ([4, 4, 0, 1], 1, 0), ([0, 1, 2, 1], 3, 1)])
def test_value_update_inplace_rejects_repeated_positions(positions, index, first):
    # Two writers of one cache row would leave one of two updated vectors (or a mix of both on a
    # GPU): checked, like a position out of range, before anything is written.
    cache, _, v0, delta = cache_case(torch.float32, seq=10, num=4)
    before = cache.clone()
    pos = torch.tensor(positions)
    with pytest.raises(RuntimeError, match=rf"positions\[{index}\] = {positions[index]} repeats positions\[{first}\]"):
        ops.value_update_(cache, pos, v0, delta)
    assert torch.equal(cache, before)


def test_value_update_inplace_checks_positions_without_rows():
    # Nothing to write when batch or heads is 0, but a bad position is still a bad call.
    for shape in ((0, 2, 10, 8), (2, 0, 10, 8)):
        cache = torch.randn(shape)
        v0 = torch.randn(shape[0], shape[1], 2, 8)
        with pytest.raises(RuntimeError, match=r"positions\[1\] = 10 is out of range"):
            ops.value_update_(cache, torch.tensor([3, 10]), v0, v0)
        with pytest.raises(RuntimeError, match="repeats"):
            ops.value_update_(cache, torch.tensor([3, 3]), v0, v0)


def per_row_case(dtype=torch.float32, seed=0):
    """Three rows writing 5, 2 and 0 of 5 slots at their own positions (the rest repeat a written
    position or hold anything: never written)."""
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(3, 2, 12, 16, generator=g).to(dtype)
    positions = torch.stack([torch.randperm(12, generator=g)[:5] for _ in range(3)])
    positions[1, 2:] = positions[1, 0]
    counts = torch.tensor([5, 2, 0])
    v0, delta = values_of((3, 2, 5, 16), seed=seed + 1)
    return cache, positions, counts, v0, delta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_value_update_inplace_per_row_writes_each_rows_own_slots(dtype):
    cache, positions, counts, v0, delta = per_row_case(dtype)
    before = cache.clone()
    expected = before.clone()
    new = reference.value_update(v0, delta).to(dtype)
    for row, n in enumerate(counts.tolist()):  # the oracle: a loop over rows and written slots
        for j in range(n):
            expected[row, :, positions[row, j]] = new[row, :, j]
    for check in (True, False):  # `check=False`: the same writes, positions trusted
        got = before.clone()
        ops.value_update_(got, positions, v0, delta, counts=counts, check=check)
        torch.testing.assert_close(got, expected, **output_tol(dtype))
        written = torch.zeros(cache.shape[0], cache.shape[2], dtype=torch.bool)
        for row, n in enumerate(counts.tolist()):
            written[row, positions[row, :n]] = True
        assert torch.equal(bits(got.transpose(1, 2)[~written]), bits(before.transpose(1, 2)[~written]))
    for composition in (reference.value_update_, eager.value_update_):
        torch.testing.assert_close(composition(before.clone(), positions, v0, delta, counts), expected, **output_tol(dtype))


def test_value_update_inplace_per_row_rejects_bad_positions_and_counts():
    cache, positions, counts, v0, delta = per_row_case()
    before = cache.clone()
    bad = positions.clone()
    bad[1, 1] = bad[1, 0]
    with pytest.raises(RuntimeError, match=rf"positions\[1, 1\] = {int(bad[1, 0])} repeats positions\[1, 0\]"):
        ops.value_update_(cache, bad, v0, delta, counts=counts)
    bad = positions.clone()
    bad[0, 3] = 12
    with pytest.raises(RuntimeError, match=r"positions\[0, 3\] = 12 is out of range for a cache of 12 positions"):
        ops.value_update_(cache, bad, v0, delta, counts=counts)
    assert torch.equal(cache, before)  # checked before anything is written
    with pytest.raises(RuntimeError, match=r"counts\[2\] = 6 is not in \[0, 5\]"):
        ops.value_update_(cache, positions, v0, delta, counts=torch.tensor([5, 2, 6]))
    with pytest.raises(RuntimeError, match="counts must be a \\[batch\\] int64 tensor"):
        ops.value_update_(cache, positions, v0, delta, counts=torch.tensor([5, 2]))
    with pytest.raises(RuntimeError, match=r"positions must be a 1-D int64 tensor \(or \[batch, n\] per row\)"):
        ops.value_update_(cache, positions[:2], v0, delta)
    torch.library.opcheck(torch.ops.vreason.value_update_.default, (cache, positions, v0, delta, counts, False))


# ---- large finite logits -------------------------------------------------------------------

def lowest_rows(dtype):
    """Rows masked with the dtype's lowest finite value instead of -inf, and rows spanning
    ±max: every one has an entropy (the reference's), though z − max overflows to -inf."""
    info = torch.finfo(dtype)
    lo, hi = info.min, info.max
    g = torch.Generator().manual_seed(3)
    mixed = torch.randn(3000, generator=g).double() * 4
    mixed[torch.rand(3000, generator=g) < 0.5] = lo
    rows = [[0.0] + [lo] * 63, [lo] * 63 + [0.0], [lo] * 3000 + [0.0], [lo] * 300 + [1.0] + [lo] * 2699,
            [lo, hi] + [0.0] * 2998, [-hi] * 2999 + [hi], mixed.tolist()]
    width = max(len(r) for r in rows)
    # Pad with -inf (a masked token) to one width.
    return torch.tensor([r + [-INF] * (width - len(r)) for r in rows], dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("level", LEVELS)
def test_entropy_of_rows_near_the_float_range(dtype, level):
    # A rescale by e^{m_old − m_new} = 0 multiplied (t + d·s), where d·s overflows to -inf: NaN,
    # a finite row reported bad. Same 0·(−inf) in the gradient when z − m overflows.
    z = lowest_rows(dtype)
    leaf = z.clone().requires_grad_(True)
    want_leaf = z.clone().requires_grad_(True)
    g = torch.linspace(0.5, 1.5, z.shape[0], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    with simd_level(level):
        h = ops.entropy(leaf)
        (grad,) = torch.autograd.grad(h, leaf, grad_outputs=g)
    want = reference.entropy(want_leaf)
    (want_grad,) = torch.autograd.grad(want, want_leaf, grad_outputs=g)
    torch.testing.assert_close(h, want, **tol(dtype))
    assert not grad.isnan().any()
    torch.testing.assert_close(grad, want_grad.to(grad.dtype), **output_tol(dtype))


def fatbin_entries(path):
    """(kind, arch) of every image in a library's CUDA fat binaries: kind 1 is PTX, 2 a cubin."""
    import struct

    data = open(path, "rb").read()
    magic = struct.pack("<I", 0xBA55ED50)
    found, i = set(), data.find(magic)
    while i != -1:
        _, header, size = struct.unpack_from("<HHQ", data, i + 4)
        j, end = i + header, i + header + size
        while j < end:
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, j)
            found.add((kind, struct.unpack_from("<I", data, j + 28)[0]))
            j += entry_header + entry_size
        i = data.find(magic, end)
    return found


@pytest.mark.skipif(not ops.built_with_cuda(), reason="vreason._C was built without its CUDA kernels")
def test_cuda_build_carries_ptx_for_newer_gpus():
    # Without PTX a GPU newer than every listed architecture (sm_100, sm_120) fails its first
    # launch with "no kernel image"; the default arch list ends in +PTX so the driver can JIT.
    from pathlib import Path

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        pytest.skip("TORCH_CUDA_ARCH_LIST set by hand for this build")
    lib = next(Path(_C.__file__).parent.glob("_C*.so"))
    entries = fatbin_entries(lib)
    assert {(2, 80), (2, 90), (1, 90)} <= entries, entries


# ---- registration --------------------------------------------------------------------------

def test_opcheck():
    z = logits_of((3, 67), torch.float32, masked=0.2).requires_grad_(True)
    torch.library.opcheck(torch.ops.vreason.entropy.default, (z,))
    v0, delta = values_of((2, 3, 5, 8))
    torch.library.opcheck(torch.ops.vreason.value_update.default, (v0, delta.requires_grad_(True)))
    cache, positions, v0, delta = cache_case(torch.bfloat16, seq=12, num=5)
    torch.library.opcheck(torch.ops.vreason.value_update_.default, (cache, positions, v0, delta))


OPS = ["entropy", "entropy_backward", "value_update", "value_update_backward", "value_update_", "vecmat"]


@pytest.mark.parametrize("name", OPS)
def test_cpu_kernels_registered(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vreason::{name}", "CPU")


@pytest.mark.skipif(not ops.built_with_cuda(), reason="vreason._C was built without its CUDA kernels")
@pytest.mark.parametrize("name", OPS)
def test_cuda_kernels_registered(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vreason::{name}", "CUDA")


def test_missing_extension_gives_one_line_import_error():
    code = "import sys; sys.modules['vreason._C'] = None\nimport vreason.ops"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "ImportError: vreason._C is not built: run `pip install -e . --no-build-isolation`" in proc.stderr


# ---- first-use guard -----------------------------------------------------------------------

@pytest.fixture
def guarded_cpu(monkeypatch):
    """A fresh first-use guard that checks the CPU too, over a copy of the compiled ops table
    (a test may break one entry: the fault injected on the CPU path)."""
    from vreason.ops import guard

    compiled = dict(ops._COMPILED)
    monkeypatch.setattr(guard, "checks_device", lambda device: True)
    monkeypatch.setattr(ops, "_guard", guard.FirstUseGuard(compiled, ops._EAGER))
    monkeypatch.delenv("VREASON_SELFTEST", raising=False)
    return compiled


def test_guard_keeps_a_correct_kernel_without_warning(guarded_cpu, recwarn):
    z = logits_of((2, 300), torch.float32, masked=0.3)
    torch.testing.assert_close(ops.entropy(z), reference.entropy(z), **tol(torch.float32))
    v0, delta = values_of((2, 3, 5, 8))
    ops.value_update(v0, delta)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert ops._guard.resolved[("entropy", z.device, z.dtype)] is guarded_cpu["entropy"]


@pytest.mark.parametrize("region", [torch.no_grad, torch.inference_mode])
def test_guard_checks_a_first_call_without_autograd(guarded_cpu, recwarn, region):
    # The decode loop's first entropy runs under no_grad: the check's backward must still run.
    z = logits_of((2, 300), torch.float32)
    with region():
        h = ops.entropy(z)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert ops._guard.resolved[("entropy", z.device, z.dtype)] is guarded_cpu["entropy"]
    torch.testing.assert_close(h, reference.entropy(z), **tol(torch.float32))


def test_guard_falls_back_to_eager_on_a_faulty_kernel(guarded_cpu):
    real = guarded_cpu["entropy"]
    guarded_cpu["entropy"] = lambda z: real(z) * 1.01  # a wrong kernel
    z = logits_of((2, 300), torch.float32, masked=0.3)
    with pytest.warns(RuntimeWarning, match="compiled entropy disagrees with its eager composition"):
        h = ops.entropy(z)
    torch.testing.assert_close(h, reference.entropy(z), **tol(torch.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        h2 = ops.entropy(z.to(torch.bfloat16))  # another dtype of the failed op: eager, unchecked
        v0, delta = values_of((2, 3, 5, 8))
        v = ops.value_update(v0, delta)  # the other ops keep their kernels
    torch.testing.assert_close(h2, reference.entropy(z.to(torch.bfloat16)), **tol(torch.bfloat16))
    assert ops._guard.resolved[("value_update", v0.device, v0.dtype)] is guarded_cpu["value_update"]
    torch.testing.assert_close(v, reference.value_update(v0, delta), rtol=1e-5, atol=1e-6)


def test_guard_catches_a_faulty_in_place_update(guarded_cpu):
    real = guarded_cpu["value_update_"]

    def skips_the_first_position(cache, positions, v0, delta):
        return real(cache, positions[1:], v0[:, :, 1:], delta[:, :, 1:])

    guarded_cpu["value_update_"] = skips_the_first_position
    cache, positions, v0, delta = cache_case(torch.bfloat16)
    expected = reference.value_update_(cache.clone(), positions, v0, delta)
    with pytest.warns(RuntimeWarning, match="compiled value_update_ disagrees"):
        ops.value_update_(cache, positions, v0, delta)
    torch.testing.assert_close(cache, expected, **output_tol(torch.bfloat16))


def test_selftest_off_uses_the_kernel_unchecked(guarded_cpu, monkeypatch):
    monkeypatch.setenv("VREASON_SELFTEST", "0")
    real = guarded_cpu["entropy"]
    guarded_cpu["entropy"] = lambda z: real(z) * 1.01
    z = logits_of((2, 300), torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = ops.entropy(z)
    torch.testing.assert_close(h, real(z) * 1.01)


def test_guard_checks_only_cuda_by_default():
    from vreason.ops import guard

    assert guard.checks_device(torch.device("cuda", 0)) and not guard.checks_device(torch.device("cpu"))
