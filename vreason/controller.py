"""The test-time controller: ΔV on the last layer's video values, Adam, and the exact one-token
gradient (METHOD.md §2.1–2.2, §2.5–2.6 and §3).

Why the gradient is exact and cheap. ΔV changes only the last layer's values at video
positions; keys never change, so the current query's attention probabilities `a` over the
cached positions are constants with respect to ΔV, and the last layer's attention output is
`o = o_rest + a_video · V(ΔV)`. Everything after `o` (o_proj, residual, MLP block, final norm,
lm_head, entropy) is a one-token function; autograd over this one-token graph gives the exact
`∂L/∂ΔV` (through `ops.value_update`), with no backward through the model and no weight
gradient (the model's parameters are frozen).

The first step of a round needs no lm_head forward: ΔV has not moved since the model's own
forward produced the current logits z_k, so `∂L/∂z` comes from `ops.entropy`'s backward at z_k
and `∂L/∂h = ∂L/∂z · W_lm` is one matmul; autograd covers the rest of the tail. After each Adam
step one tail forward (MLP + lm_head) gives the logits at the new ΔV: the token is chosen from
them, or the next step differentiates at them.

Numerical guard: a non-finite loss or gradient leaves ΔV and the Adam state as they were (a
device-side select, no host sync) and counts a skipped round; generation continues.
"""
from __future__ import annotations

import math

import torch

from vreason import ops
from vreason.config import ControllerConfig
from vreason.models.adapter import DecoderAdapter, LayerInput

__all__ = ["ValueController", "AttentionConstants", "GuardedAdam"]

_LM_BLOCK_ROWS = 8192


class GuardedAdam:
    """torch.optim.Adam's update (no weight decay, no amsgrad) on one float32 tensor, with the
    numerical guard: `step(param, grad, ok)` returns the new parameter, and where the 0-d bool
    `ok` is false the parameter and the state stay as they were and `skipped` counts it. All state
    lives on the device, so a guarded step never waits on the host."""

    def __init__(self, like: torch.Tensor, lr: float, betas: tuple[float, float], eps: float) -> None:
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.exp_avg = torch.zeros_like(like)
        self.exp_avg_sq = torch.zeros_like(like)
        self.steps = torch.zeros((), dtype=torch.float32, device=like.device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=like.device)

    def step(self, param: torch.Tensor, grad: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.beta1, self.beta2
        grad = torch.where(ok, grad, torch.zeros_like(grad))
        t = self.steps + 1
        exp_avg = self.exp_avg * b1 + grad * (1 - b1)
        exp_avg_sq = self.exp_avg_sq * b2 + grad * grad * (1 - b2)
        step_size = self.lr / (1 - b1**t)
        denom = exp_avg_sq.sqrt() / torch.sqrt(1 - b2**t) + self.eps
        new_param = param - step_size * exp_avg / denom
        self.exp_avg = torch.where(ok, exp_avg, self.exp_avg)
        self.exp_avg_sq = torch.where(ok, exp_avg_sq, self.exp_avg_sq)
        self.steps = torch.where(ok, t, self.steps)
        self.skipped = self.skipped + (~ok).to(torch.int64)
        return torch.where(ok, new_param, param)


class AttentionConstants:
    """Per round: the current query's attention over the last layer's cache, split into the
    video part `a_video [1, kv_heads, groups, n_video]` and the fixed rest of the output
    `o_rest [1, kv_heads, groups, head_dim]` (float32)."""

    __slots__ = ("a_video", "o_rest")

    def __init__(self, a_video: torch.Tensor, o_rest: torch.Tensor) -> None:
        self.a_video = a_video
        self.o_rest = o_rest


class ValueController:
    """ΔV for one sample: created after prefill (and Lite), discarded when the sample ends.

    `video_index` holds the cache indices of the (kept) video tokens in the last layer. V0 is a
    float32 copy of the last layer's values there; ΔV starts at zero.
    """

    def __init__(self, adapter: DecoderAdapter, config: ControllerConfig, cache, video_index: torch.Tensor) -> None:
        self.adapter = adapter
        self.config = config
        self.layer = adapter.num_layers - 1
        self.video_index = video_index
        _, values = adapter.cache_kv(cache, self.layer)
        self.v0 = values.index_select(-2, video_index).float()
        self.delta = torch.zeros_like(self.v0)
        self.adam = GuardedAdam(self.v0, config.lr, (config.adam_beta1, config.adam_beta2), config.adam_eps)
        self.log_vocab = math.log(adapter.vocab_size)
        self.lm_weight = adapter.lm_head_weight()
        self.model_dtype = self.lm_weight.dtype

    @property
    def skipped(self) -> torch.Tensor:
        """Adam steps the numerical guard skipped (0-d int64 on the device)."""
        return self.adam.skipped

    # ---- the pieces ---------------------------------------------------------------------------

    def attention_constants(self, layer_input: LayerInput, cache) -> AttentionConstants:
        keys, values = self.adapter.cache_kv(cache, self.layer)
        query = self.adapter.query(layer_input)  # [1, kv, groups, head_dim], scaled
        probs = torch.softmax(query @ keys.float().transpose(-1, -2), dim=-1)  # [1, kv, groups, seq]
        a_video = probs.index_select(-1, self.video_index)
        o_rest = probs.index_fill(-1, self.video_index, 0.0) @ values.float()
        return AttentionConstants(a_video, o_rest)

    def final_hidden(self, layer_input: LayerInput, consts: AttentionConstants, delta: torch.Tensor) -> torch.Tensor:
        """The final-norm hidden state `[1, 1, hidden]` with ΔV = `delta` (differentiable in it)."""
        values = ops.value_update(self.v0, delta)
        attn = consts.o_rest + consts.a_video @ values  # [1, kv, groups, head_dim]
        return self.adapter.tail(layer_input, attn.reshape(1, 1, -1).to(self.model_dtype))

    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head: `[1, 1, hidden]` → logits `[1, vocab]` in the model's dtype."""
        return torch.nn.functional.linear(hidden.reshape(1, -1), self.lm_weight)

    def loss_grad_logits(self, logits: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`L = α (log|V| − H(z))` and `∂L/∂z` (float32) at logits z `[1, vocab]`."""
        with torch.enable_grad():
            z = logits.detach().float().requires_grad_(True)
            loss = (alpha * (self.log_vocab - ops.entropy(z))).sum()
            (grad_z,) = torch.autograd.grad(loss, z)
        return loss.detach(), grad_z

    def gradient(self, layer_input: LayerInput, cache, logits: torch.Tensor, alpha: torch.Tensor):
        """`(L, ∂L/∂ΔV)` at the current ΔV, where `logits` are the model's logits for the current
        token (computed with the current ΔV in the cache)."""
        delta, hidden = self._tail_graph(layer_input, self.attention_constants(layer_input, cache))
        return self._loss_and_grad(delta, hidden, logits, alpha)

    def _tail_graph(self, layer_input: LayerInput, consts: AttentionConstants) -> tuple[torch.Tensor, torch.Tensor]:
        """A leaf copy of ΔV and the final hidden state recorded as a function of it."""
        with torch.enable_grad():
            delta = self.delta.detach().requires_grad_(True)
            return delta, self.final_hidden(layer_input, consts, delta)

    def _loss_and_grad(self, delta: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor,
                       alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(L, ∂L/∂ΔV)` from the tail graph `hidden(delta)` and the logits it produced."""
        loss, grad_hidden = self._grad_hidden(logits, alpha)
        (grad,) = torch.autograd.grad(hidden, delta, grad_outputs=grad_hidden.view_as(hidden))
        return loss, grad

    def _grad_hidden(self, logits: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(L, ∂L/∂h)` with `∂L/∂h = ∂L/∂z · W_lm`, the lm_head's backward for one token."""
        loss, grad_z = self.loss_grad_logits(logits, alpha)
        grad_z = grad_z.to(self.model_dtype)
        # `g @ W` over the whole [vocab, hidden] weight runs at half the speed of the forward's
        # `h @ Wᵀ` on CPU (bf16, measured); blocks of rows summed in float32 recover most of it
        # and accumulate more precisely. A transposed copy of W would cost its full size in memory.
        grad_hidden = None
        for start in range(0, grad_z.shape[-1], _LM_BLOCK_ROWS):
            part = (grad_z[:, start:start + _LM_BLOCK_ROWS] @ self.lm_weight[start:start + _LM_BLOCK_ROWS]).float()
            grad_hidden = part if grad_hidden is None else grad_hidden + part
        return loss, grad_hidden.to(self.model_dtype)

    # ---- one round ----------------------------------------------------------------------------

    def round(self, layer_input: LayerInput, cache, logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """`steps` Adam steps on ΔV minimizing L at the current token; the updated values are
        written into the cache. Returns the current token's logits `[1, vocab]` at the new ΔV."""
        consts = self.attention_constants(layer_input, cache)
        _, values_cache = self.adapter.cache_kv(cache, self.layer)
        steps = self.config.steps
        delta, hidden = self._tail_graph(layer_input, consts)
        for step in range(steps):
            loss, grad = self._loss_and_grad(delta, hidden, logits, alpha)
            ok = torch.isfinite(loss) & torch.isfinite(grad).all()
            self.delta = self.adam.step(self.delta, grad, ok)
            ops.value_update_(values_cache, self.video_index, self.v0, self.delta)
            if step < steps - 1:
                # The graph at the new ΔV serves both the logits and the next step's backward.
                delta, hidden = self._tail_graph(layer_input, consts)
                logits = self.logits_of(hidden.detach())
            else:
                logits = self.logits_of(self.final_hidden(layer_input, consts, self.delta))
        return logits
