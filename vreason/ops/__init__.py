"""vreason's compiled operators (`torch.ops.vreason.*`, built from cuda/ as `vreason._C`).

- `entropy(logits)`: Shannon entropy (nats) of softmax over the last dim; float32 result
  (float64 for float64 input, CPU only), any leading shape, differentiable.
- `value_update(v0, delta)`: `(v0+delta)/‖v0+delta‖·‖v0‖` over the last dim, float32,
  differentiable.
- `value_update_(cache, positions, v0, delta, counts=None, check=True)`: the same, written in
  place into `cache[:, :, positions, :]`, or per row (`positions` `[batch, n]`, row b writing its
  first `counts[b]` slots); returns `cache`.
- `vecmat(g, weight)`: `g @ weight` for a few rows `g` in float32 (a linear layer's input
  gradient for one token, the controller's backward products); not differentiable.

`reference` holds the same in plain torch (the tests' oracle); `eager` the same as
sync-free torch compositions, which `guard` compares each op with at its first use on a CUDA
device (and falls back to on a mismatch, with one warning; VREASON_SELFTEST=0 turns that off).

Errors: a logits row that is all `-inf` or holds NaN/+inf raises on CPU; so does a position that
is out of range or repeats an earlier one, before anything is written. On CUDA checking would
need a device→host sync per call, so by default a bad entropy row gives NaN (forward and
backward) and bad positions make `value_update_` write nothing; set VREASON_CUDA_CHECKS=1 to
have the CUDA ops sync and raise the CPU's errors.

CPU: the entropy row loops use AVX2/FMA/F16C, and for float32 AVX-512F, when the CPU has them
(chosen at run time; `_C.simd_level()` says which), as does `vecmat` for bf16 weights (AVX2 for
fp16); VREASON_DISABLE_SIMD=1 at import forces the scalar path.
"""
from __future__ import annotations

import torch

try:
    from vreason import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError("vreason._C is not built: run `pip install -e . --no-build-isolation`") from exc

from vreason.ops import eager, reference
from vreason.ops.guard import FirstUseGuard

__all__ = ["entropy", "value_update", "value_update_", "vecmat", "built_with_cuda", "reference"]


def _value_update_inplace(cache, positions, v0, delta, counts=None, check=True):
    torch.ops.vreason.value_update_.default(cache, positions, v0, delta, counts, check)
    return cache


# The compiled ops and their eager compositions, by name: what the first-use guard chooses from.
_COMPILED = {"entropy": torch.ops.vreason.entropy.default, "value_update": torch.ops.vreason.value_update.default,
             "value_update_": _value_update_inplace}
_EAGER = {"entropy": eager.entropy, "value_update": eager.value_update, "value_update_": eager.value_update_}
_guard = FirstUseGuard(_COMPILED, _EAGER)


def built_with_cuda() -> bool:
    """Whether the CUDA kernels were compiled into `vreason._C` (and registered)."""
    return _C.built_with_cuda()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H (nats) of softmax(logits) over the last dim, shape `logits.shape[:-1]`.

    logits: float32, float16 or bfloat16 (float64 on CPU). `-inf` entries are masked tokens
    (p = 0); a row that is all `-inf` or holds NaN/+inf is an error (see the module docstring
    for CUDA). Backward: `dH/dz = −p (log p + H)`, fused.
    """
    device, dtype = logits.device, logits.dtype
    fn = _guard.resolved.get(("entropy", device, dtype)) or _guard.first_use("entropy", device, dtype)
    return fn(logits)


def value_update(v0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The norm-preserving map `(v0+delta)/‖v0+delta‖·‖v0‖` over the last dim.

    v0, delta: float32 (float64 on CPU), same shape. Zero-norm rule: a row where
    ‖v0+delta‖ == 0 (delta cancelled v0, the direction is undefined) returns v0 unchanged; the
    result does not depend on delta there, so its gradient w.r.t. delta is 0 (and w.r.t. v0 the
    identity). Differentiable in delta (fused kernel) and in v0.
    """
    device, dtype = v0.device, v0.dtype
    fn = _guard.resolved.get(("value_update", device, dtype)) or _guard.first_use("value_update", device, dtype)
    return fn(v0, delta)


def value_update_(cache: torch.Tensor, positions: torch.Tensor, v0: torch.Tensor, delta: torch.Tensor,
                  counts: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Writes `value_update(v0, delta)` into the cache in place and returns `cache`.

    cache: `[batch, kv_heads, seq, head_dim]`, any float dtype (strided views work); v0, delta:
    float32 `[batch, kv_heads, n, head_dim]`. positions: 1-D int64 `[n]` (the same positions in
    every row: `cache[:, :, positions, :]`) or per row `[batch, n]` with `counts` `[batch]` int64:
    row b writes its slots `j < counts[b]` at `cache[b, :, positions[b, j], :]` and nothing for
    the others. Each row's written positions are unique and in `[0, seq)`, checked before anything
    is written when `check` (see the module docstring for CUDA; a caller writing the same
    positions again and again checks once). Math in float32, rounded once to the cache's dtype; no
    temporary of the cache's size. Not differentiable.
    """
    device, dtype = cache.device, cache.dtype
    fn = _guard.resolved.get(("value_update_", device, dtype)) or _guard.first_use("value_update_", device, dtype)
    return fn(cache, positions, v0, delta, counts, check)


def vecmat(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`g @ weight` for `g` `[samples, rows]` and a row-major `weight` `[rows, cols]`: float32
    `[samples, cols]` (float64 for a float64 weight).

    The backward of a linear layer for one token (`∂L/∂x = ∂L/∂y · W`). On CPU with a bf16 (or
    fp16) weight it reads W row by row into float32 accumulators, at memory bandwidth, where
    torch's matmul runs this orientation at about half speed and rounds to bf16; float32/float64
    weights use the BLAS product. On CUDA a bf16/fp16 weight goes through cuBLAS in its dtype with
    g split into two parts of that dtype and float32 output, never rounding g or the result
    (`torch.ops.vreason.vecmat_split`, the same composition on any device: the tests and `vreason
    doctor` run it on the CPU). Not differentiable (it is itself a backward product); no
    first-use guard (no CUDA kernel of ours: cuBLAS computes it there).
    """
    return torch.ops.vreason.vecmat.default(g, weight)


# ---- fake (meta) kernels: shapes and dtypes for torch.compile / FakeTensor ---------------------

def _entropy_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@torch.library.register_fake("vreason::entropy")
def _(logits):
    torch._check(logits.dim() >= 1, lambda: "vreason.ops.entropy: logits must have at least one dimension")
    return logits.new_empty(logits.shape[:-1], dtype=_entropy_dtype(logits))


@torch.library.register_fake("vreason::entropy_backward")
def _(grad, logits, H):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("vreason::value_update")
def _(v0, delta):
    torch._check(v0.shape == delta.shape, lambda: "vreason.ops.value_update: v0 and delta must have the same shape")
    torch._check(v0.device == delta.device, lambda: "vreason.ops.value_update: v0 and delta must be on the same device")
    return torch.empty_like(v0, memory_format=torch.contiguous_format)


@torch.library.register_fake("vreason::value_update_backward")
def _(grad, v0, delta):
    return torch.empty_like(v0, memory_format=torch.contiguous_format)


@torch.library.register_fake("vreason::value_update_")
def _(cache, positions, v0, delta, counts=None, check=True):
    torch._check(
        positions.device == cache.device and v0.device == cache.device and delta.device == cache.device
        and (counts is None or counts.device == cache.device),
        lambda: "vreason.ops.value_update_: cache, positions, counts, v0 and delta must be on the same device",
    )


@torch.library.register_fake("vreason::vecmat")
def _(g, weight):
    torch._check(g.dim() == 2 and weight.dim() == 2 and g.shape[1] == weight.shape[0],
                 lambda: "vreason.ops.vecmat: g must be [samples, rows] and weight [rows, cols]")
    wide = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return g.new_empty((g.shape[0], weight.shape[1]), dtype=wide)


# ---- autograd ------------------------------------------------------------------------------------

def _entropy_setup_context(ctx, inputs, output):
    (logits,) = inputs
    ctx.save_for_backward(logits, output)


def _entropy_backward(ctx, grad):
    logits, h = ctx.saved_tensors
    return torch.ops.vreason.entropy_backward.default(grad, logits, h)


torch.library.register_autograd("vreason::entropy", _entropy_backward, setup_context=_entropy_setup_context)


def _value_update_setup_context(ctx, inputs, output):
    v0, delta = inputs
    ctx.save_for_backward(v0, delta, output)


def _value_update_backward(ctx, grad):
    v0, delta, v = ctx.saved_tensors
    grad_delta = torch.ops.vreason.value_update_backward.default(grad, v0, delta)
    grad_v0 = None
    if ctx.needs_input_grad[0]:
        # v = s·û with s = ‖v0‖: ∂/∂v0 adds v0·(vᵀg)/s² to the δ gradient; rows under the
        # zero-norm rule (v = v0) pass g through unchanged.
        s_sq = (v0 * v0).sum(-1, keepdim=True)
        u = v0 + delta
        u_sq = (u * u).sum(-1, keepdim=True)
        coef = torch.where(s_sq > 0, (v * grad).sum(-1, keepdim=True) / torch.where(s_sq > 0, s_sq, 1), 0)
        grad_v0 = torch.where(u_sq > 0, grad_delta + v0 * coef, grad)
    return grad_v0, (grad_delta if ctx.needs_input_grad[1] else None)


torch.library.register_autograd(
    "vreason::value_update", _value_update_backward, setup_context=_value_update_setup_context
)
