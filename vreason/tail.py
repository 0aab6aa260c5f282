"""The last decoder layer's tail for one token, forward and hand-written backward.

The tail is what follows the last layer's attention: `o_proj`, the residual add, RMSNorm, the
SwiGLU MLP (`down(silu(gate(x)) · up(x))`), the second residual add and the final RMSNorm. A
controller round differentiates it for one token with respect to the attention output. Autograd
over it records a graph, saves what it saved anyway and runs a generic engine; written out by
hand the backward is four vector-matrix products (`ops.vecmat` with `o_proj`, `gate`, `up`,
`down`) and a few dozen element-wise operations, with no graph and a fixed sequence of operations.

Why the activations are captured (`TailCapture`). The model's own forward of the current token
already computed the tail at the current ΔV, so the first step of a round differentiates at the
activations that forward left (`h1`, `gate`, `up`, `h2`), captured by forward hooks, instead of
running the tail forward again. Later steps use the activations of the controller's own forward
at the new ΔV.

Precision (**ours**): the four products accumulate in float32 (`ops.vecmat`; float64 in a float64
model), and their results are rounded to the model's dtype where the model's own backward would
have them in it: the SwiGLU's element-wise backward runs in the model's dtype, as autograd's
would; the RMSNorms' backward in float32 (their forward computes in float32 as well; float64 in a
float64 model). The backward
is the exact derivative of the tail's real-valued function; it ignores the model dtype's roundings
inside the forward, as autograd in that dtype effectively does too.
"""
from __future__ import annotations

import torch

from vreason import ops

__all__ = ["DenseTail", "TailActivations", "TailCapture", "last_position", "rms_norm_backward"]


class TailActivations:
    """One token's tail activations `[1, 1, *]` in the model's dtype: `h1` (the post-attention
    norm's input), `gate` and `up` (the MLP projections' outputs), `h2` (the final norm's input)."""

    __slots__ = ("h1", "gate", "up", "h2")

    def __init__(self, h1=None, gate=None, up=None, h2=None) -> None:
        self.h1, self.gate, self.up, self.h2 = h1, gate, up, h2

    def complete(self) -> bool:
        return all(getattr(self, name) is not None for name in self.__slots__)


def rms_norm_backward(x: torch.Tensor, weight: torch.Tensor, eps: float, grad: torch.Tensor) -> torch.Tensor:
    """∂/∂x of `weight · x / rms(x)` (rms over the last dim, `sqrt(mean(x²) + eps)`) in `weight`'s
    dtype: `r · (ĝ − x̂ · mean(ĝ · x̂))` with `x̂ = r·x`, `ĝ = grad·weight`, `r = 1/rms(x)`."""
    x = x.to(weight.dtype)
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    x_hat = x * r
    g = grad.to(weight.dtype) * weight
    return torch.addcmul(g, x_hat, (g * x_hat).mean(-1, keepdim=True), value=-1.0) * r


def last_position(t: torch.Tensor) -> torch.Tensor:
    """`t[:, -1:]` of a `[batch, seq, ...]` activation, safe to keep."""
    # A one-token forward's tensors are new each time and never written in place: keep them. A
    # prompt's are sliced and copied, so that the prompt's whole activations are not kept alive.
    return t if t.shape[1] == 1 else t[:, -1:].clone()


class DenseTail:
    """The tail's modules and their weights, with `forward(residual, attn)` and `backward`.

    Build with `DenseTail.of(layer, final_norm)`, which returns None for a tail this file does not
    describe (a mixture-of-experts MLP, another activation, biases): the controller then
    differentiates the adapter's `tail` with autograd instead.
    """

    def __init__(self, layer: torch.nn.Module, final_norm: torch.nn.Module) -> None:
        self.o_proj = layer.self_attn.o_proj
        self.post_norm = layer.post_attention_layernorm
        mlp = layer.mlp
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn
        self.final_norm = final_norm
        # Copies of the norm weights (hidden floats each) in the norms' compute dtype (float32, or
        # float64 for a float64 model) for the backward.
        wide = torch.promote_types(final_norm.weight.dtype, torch.float32)
        self.post_w = self.post_norm.weight.detach().to(wide)
        self.final_w = final_norm.weight.detach().to(wide)
        self.post_eps = float(self.post_norm.variance_epsilon)
        self.final_eps = float(final_norm.variance_epsilon)

    @classmethod
    def of(cls, layer: torch.nn.Module, final_norm: torch.nn.Module) -> "DenseTail | None":
        mlp = getattr(layer, "mlp", None)
        linears = [getattr(layer.self_attn, "o_proj", None)] + [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if not all(isinstance(m, torch.nn.Linear) and m.bias is None for m in linears):
            return None
        if not isinstance(getattr(mlp, "act_fn", None), torch.nn.Module) or type(mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
            return None
        norms = (getattr(layer, "post_attention_layernorm", None), final_norm)
        if not all(type(n).__name__.endswith("RMSNorm") and hasattr(n, "variance_epsilon") and hasattr(n, "weight")
                   for n in norms):
            return None
        return cls(layer, final_norm)

    def forward(self, residual: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, TailActivations]:
        """The final-norm hidden state `[1, 1, hidden]` and the activations, by the model's own
        modules in the model's order (so the same arithmetic as its forward)."""
        h1 = residual + self.o_proj(attn)
        normed = self.post_norm(h1)
        gate, up = self.gate_proj(normed), self.up_proj(normed)
        h2 = h1 + self.down_proj(self.act_fn(gate) * up)
        return self.final_norm(h2), TailActivations(h1, gate, up, h2)

    def backward(self, acts: TailActivations, grad_out: torch.Tensor) -> torch.Tensor:
        """∂L/∂attn `[rows, 1, heads·head_dim]` (model dtype) from ∂L/∂(final-norm output), one row
        per token (a batch's samples are independent rows)."""
        dtype = self.down_proj.weight.dtype
        grad_h2 = rms_norm_backward(acts.h2, self.final_w, self.final_eps, grad_out.view_as(acts.h2))
        # The MLP's element-wise backward in the model's dtype with the same kernels as autograd's:
        # act = silu(gate)·up, so ∂up = ∂act·silu(gate) and ∂gate = silu_backward(∂act·up, gate).
        rows = acts.h2.shape[0]  # one per sample of a batch
        grad_act = ops.vecmat(grad_h2.view(rows, -1), self.down_proj.weight).to(dtype)
        gate, up = acts.gate.view(rows, -1), acts.up.view(rows, -1)
        grad_up = grad_act * torch.nn.functional.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad_act * up, gate)
        grad_normed = ops.vecmat(grad_gate, self.gate_proj.weight) + ops.vecmat(grad_up, self.up_proj.weight)
        grad_h1 = grad_h2 + rms_norm_backward(acts.h1, self.post_w, self.post_eps, grad_normed.view_as(acts.h1))
        return ops.vecmat(grad_h1.view(rows, -1), self.o_proj.weight).to(dtype)


class TailCapture:
    """Forward hooks that fill one token's `TailActivations` as the tail's modules run.

    `begin()` (called by the last layer's input hook, before its tail runs) starts the record of
    the coming forward and returns it; the record is complete once the final norm has run."""

    def __init__(self, tail: DenseTail) -> None:
        self.latest = TailActivations()
        self._handles = [
            tail.post_norm.register_forward_pre_hook(self._h1),
            tail.gate_proj.register_forward_hook(self._gate),
            tail.up_proj.register_forward_hook(self._up),
            tail.final_norm.register_forward_pre_hook(self._h2),
        ]

    def begin(self) -> TailActivations:
        self.latest = TailActivations()
        return self.latest

    def _h1(self, module, args) -> None:
        self.latest.h1 = last_position(args[0])

    def _gate(self, module, args, output) -> None:
        self.latest.gate = last_position(output)

    def _up(self, module, args, output) -> None:
        self.latest.up = last_position(output)

    def _h2(self, module, args) -> None:
        self.latest.h2 = last_position(args[0])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
