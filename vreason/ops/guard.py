"""A checked first use of each compiled op on a CUDA device (**ours**).

The CUDA kernels are tested on the host through an emulation of the GPU (cuda/tests), never on
the user's GPU until they run there. So the first call of each op per device and dtype runs the
compiled kernel and the eager composition (`eager.py`) on a small fixed input, forward and
backward, and compares them. On a mismatch the process warns once and uses the eager
composition for that op on that device from then on: slower, but right. `VREASON_SELFTEST=0`
turns the check off. After the first call an op costs one dict lookup more than the kernel.

The check needs a device→host sync once per op and dtype, which is why it runs only on first use.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

__all__ = ["FirstUseGuard", "checks_device", "enabled"]


def checks_device(device: torch.device) -> bool:
    """Whether first uses on `device` are checked: CUDA only (the CPU kernels are tested here)."""
    return device.type == "cuda"


def enabled() -> bool:
    return os.environ.get("VREASON_SELFTEST", "1").strip() != "0"


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> tuple[bool, float]:
    """Agreement relative to the magnitude of `want` (gradients of one row span decades)."""
    got, want = got.double(), want.double()
    scale = want.abs().max().clamp_min(1e-30)
    err = float(((got - want).abs() / (rtol * want.abs() + rtol * scale)).max()) if want.numel() else 0.0
    return err <= 1.0, err


def _entropy_case(run, device, dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 1031, generator=gen) * 4
    z[1, 1:] = float("-inf")
    z[2, :900] = float("-inf")
    leaf = z.to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(3, generator=gen).to(device)
    h = run(leaf)
    (grad,) = torch.autograd.grad(h, leaf, grad_outputs=g)
    return [h.detach(), grad]


def _value_update_case(run, device, dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(2, 3, 5, 72, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    delta = (0.3 * torch.randn(2, 3, 5, 72, generator=gen)).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(2, 3, 5, 72, generator=gen).to(device=device, dtype=dtype)
    v = run(v0, delta)
    return [v.detach(), *torch.autograd.grad(v, (v0, delta), grad_outputs=g)]


def _value_update_inplace_case(run, device, dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    cache = torch.randn(2, 2, 12, 72, generator=gen).to(device=device, dtype=dtype)
    positions = torch.randperm(12, generator=gen)[:5].to(device)
    v0 = torch.randn(2, 2, 5, 72, generator=gen).to(device)
    delta = (0.3 * torch.randn(2, 2, 5, 72, generator=gen)).to(device)
    run(cache, positions, v0, delta)
    # Per row (the controller's call): row 0 writes 5 slots, row 1 the first 3 of its own.
    rows = torch.stack([torch.randperm(12, generator=gen)[:5] for _ in range(2)]).to(device)
    per_row = cache.clone()
    run(per_row, rows, v0, delta, torch.tensor([5, 3], device=device))
    return [cache, per_row]


# Per op: the small case and its tolerance relative to float32 or to the reduced-precision dtype.
_CASES = {"entropy": _entropy_case, "value_update": _value_update_case, "value_update_": _value_update_inplace_case}


def _rtol(dtype: torch.dtype) -> float:
    return 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


class FirstUseGuard:
    """Resolves each (op, device, dtype) to the compiled op or its eager composition.

    compiled / eager: op name -> callable with the op's signature.
    """

    def __init__(self, compiled: dict[str, Callable], eager: dict[str, Callable]):
        self.compiled = compiled
        self.eager = eager
        self.resolved: dict[tuple, Callable] = {}
        self.failed: set[tuple[str, torch.device]] = set()

    def first_use(self, op: str, device: torch.device, dtype: torch.dtype) -> Callable:
        """The callable for this op, device and dtype, checking it first where that applies."""
        fn = self.compiled[op]
        if (op, device) in self.failed:
            fn = self.eager[op]
        elif checks_device(device) and enabled():
            ok, detail = self.self_test(op, device, dtype)
            if not ok:
                self.failed.add((op, device))
                warnings.warn(
                    f"vreason: the compiled {op} disagrees with its eager composition on {device} {dtype} ({detail}); "
                    f"using the eager composition for {op} from now on (slower). Run `vreason doctor` to see "
                    f"every check; VREASON_SELFTEST=0 turns this check off.", RuntimeWarning, stacklevel=3)
                fn = self.eager[op]
        self.resolved[(op, device, dtype)] = fn
        return fn

    def self_test(self, op: str, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        """(agrees, what differed) for the compiled op against the eager one on a small input."""
        case = _CASES[op]
        # The first call may come from a no_grad or inference-mode region (the decode loop):
        # the check's own backward needs autograd either way.
        with torch.inference_mode(False), torch.enable_grad():
            try:
                got = case(self.compiled[op], device, dtype)
            except Exception as exc:  # a kernel that cannot run at all is a failed check too
                return False, f"the kernel raised {type(exc).__name__}: {exc}"
            want = case(self.eager[op], device, dtype)
        for i, (g, w) in enumerate(zip(got, want)):
            ok, err = _close(g, w, _rtol(dtype))
            if not ok:
                return False, f"output {i} off by {err:.3g}x the tolerance"
        return True, ""
