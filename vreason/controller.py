"""The test-time controller: ΔV on the last layer's video values, Adam, and the exact one-token
gradient (docs/method.md §2.1–2.2, §2.5–2.6 and §3).

Why the gradient is exact and cheap. ΔV changes only the last layer's values at video
positions; keys never change, so the current query's attention probabilities `a` over the
cached positions are constants with respect to ΔV, and the last layer's attention output is
`o = o_rest + a_video · V(ΔV)`. Everything after `o` (o_proj, residual, MLP block, final norm,
lm_head, entropy) is a one-token function, differentiated for that one token: with no
backward through the model and no weight gradient (the model's parameters are frozen).

A round's operations (`round`), for a dense SwiGLU tail (`tail.py`):
- step 1 starts where the model's own forward of the current token left off: its logits z_k and
  its tail activations at the current ΔV (captured by the adapter's hook), so no forward is
  recomputed; `∂L/∂z` comes from `ops.entropy`'s backward at z_k;
- each step: the lm_head backward (`∂L/∂h = ∂L/∂z · W_lm`), the tail's hand-written backward,
  `∂L/∂V = a_videoᵀ ∂L/∂o` and `ops.value_update`'s backward, the guarded Adam step written into
  the cache, then one tail forward and one lm_head forward at the new ΔV: the token is chosen from
  those logits, or the next step differentiates at them.
Another tail (a mixture-of-experts MLP) is differentiated by autograd, recomputed at the current
ΔV. The round is a fixed sequence of tensor operations: no host sync, no branch on a value.

Numerical guard: a non-finite loss or gradient leaves ΔV and the Adam state as they were (a
device-side select, no host sync) and counts a skipped round; generation continues.

Rows. The controller serves a batch of B samples decoded together (B = 1 for one sample): each
row has its own ΔV over its own video tokens, its own Adam state and guard; only the tensor
operations are shared. The rows' video tokens are laid out `[B, n_max]` (row i's n_i first, the
rest padding slots); a padding slot attends with probability 0, so its gradient is exactly 0, its
ΔV stays 0 and nothing is ever written to the cache for it. A batch's left padding is masked out
of the round's attention (the mask is an argument of `round`), so a row's softmax is over its own
tokens only. A batched round's loss is the SUM of the rows' losses (never their mean): rows share
no parameter, so each row's step is the one it would take alone.
"""
from __future__ import annotations

import math

import torch

from vreason import ops
from vreason.adam import GuardedAdam
from vreason.config import ControllerConfig
from vreason.mixed import f32_product
from vreason.models.adapter import DecoderAdapter, LayerInput

__all__ = ["ValueController", "AttentionConstants", "GuardedAdam"]


class AttentionConstants:
    """Per round: the current query's attention over the last layer's cache, split into the
    video part `a_video [B, kv_heads, groups, n_video]` and the fixed rest of the output
    `o_rest [B, kv_heads, groups, head_dim]` (float32)."""

    __slots__ = ("a_video", "o_rest")

    def __init__(self, a_video: torch.Tensor, o_rest: torch.Tensor) -> None:
        self.a_video = a_video
        self.o_rest = o_rest


class ValueController:
    """ΔV for a batch of samples (B = 1: one sample): created after prefill (and Lite), discarded
    when the batch ends; `keep(rows)` drops the samples that left it.

    `video_index`: per row, the cache indices of its (kept) video tokens in the last layer (1-D
    int64, ascending; one tensor alone is a batch of one). V0 is a float32 copy of the last layer's
    values there; ΔV starts at zero. The cache's positions are checked once, at the first write.

    The tail: where the adapter describes its last layer's tail as a dense SwiGLU block
    (`adapter.dense_tail()`), forward and backward run by hand (`tail.py`), starting from the
    activations the model's own forward captured (`LayerInput.tail`). Otherwise (a mixture-of-
    experts MLP, say) autograd differentiates the adapter's `tail`, recomputed at the current ΔV.
    """

    def __init__(self, adapter: DecoderAdapter, config: ControllerConfig, cache, video_index) -> None:
        self.adapter = adapter
        self.config = config
        self.layer = adapter.num_layers - 1
        self._init_values(cache, [video_index] if torch.is_tensor(video_index) else list(video_index))
        self.log_vocab = math.log(adapter.vocab_size)
        self.lm_weight = adapter.lm_head_weight()
        self.model_dtype = self.lm_weight.dtype
        self.dense = adapter.dense_tail()
        self._values: tuple | None = None  # (ΔV, leaf, V(leaf)): value_update's graph at that ΔV

    def _init_values(self, cache, video_index: list[torch.Tensor]) -> None:
        """V0 (float32) at every row's video tokens, ΔV = 0 and Adam's state (one per row)."""
        config = self.config
        _, values = self.adapter.cache_kv(cache, self.layer)
        rows, kv, _, head_dim = values.shape
        if len(video_index) != rows:
            raise ValueError(f"{len(video_index)} rows of video positions for a cache of {rows} rows")
        counts = [int(index.numel()) for index in video_index]
        if min(counts) < 1:
            raise ValueError("every row needs at least one video (or image) token for the controller")
        n_max = max(counts)
        # Padding slots repeat the row's first video token: gathers there stay in range and
        # zeroing a row's video probabilities (`attention_constants`) zeroes the same entry twice.
        index = torch.stack([torch.cat([i, i[:1].expand(n_max - i.numel())]) for i in video_index]).to(values.device)
        self.counts = torch.tensor(counts, dtype=torch.int64, device=values.device)
        self.valid = torch.arange(n_max, device=values.device) < self.counts[:, None]
        self.video_index = index
        gathered = values.gather(2, index[:, None, :, None].expand(rows, kv, n_max, head_dim)).float()
        # Padding slots hold ones (any finite, nonzero vector): V(ΔV) and its backward stay finite
        # there, and their gradient is exactly 0 (they attend with probability 0).
        self.v0 = torch.where(self.valid[:, None, :, None], gathered, torch.ones_like(gathered))
        self.delta = torch.zeros_like(self.v0)
        self.adam = GuardedAdam(self.v0, config.lr, (config.adam_beta1, config.adam_beta2), config.adam_eps, rows=True)
        self._checked = False  # positions are checked by the first write into the cache only

    def keep(self, rows: torch.Tensor) -> None:
        """Keep these rows (1-D int64, ascending, on the cache's device) of every per-sample state."""
        self.v0, self.delta = self.v0.index_select(0, rows), self.delta.index_select(0, rows)
        self.video_index, self.valid = self.video_index.index_select(0, rows), self.valid.index_select(0, rows)
        self.counts = self.counts.index_select(0, rows)
        self.adam.keep(rows)
        self._values = None

    def due(self, k: int) -> bool:
        """Whether generated token k gets a round: k = 0, every_k, 2·every_k, ... (**ours**: the
        first token already gets one). A host-side rule on the token index, never on data."""
        return k % self.config.every_k == 0

    @property
    def skipped(self) -> torch.Tensor:
        """Adam steps the numerical guard skipped, per row (`[B]` int64 on the device)."""
        return self.adam.skipped.reshape(-1)

    # ---- the pieces ---------------------------------------------------------------------------

    def attention_constants(self, layer_input: LayerInput, cache, padding: torch.Tensor | None = None) -> AttentionConstants:
        """The current query's attention over the last layer's cache; `padding` `[B, seq]` bool
        (True at a row's left padding) or None (no row has any)."""
        keys, values = self.adapter.cache_kv(cache, self.layer)
        query = self.adapter.query(layer_input)  # [B, kv, groups, head_dim], scaled
        # Keys and values are read in their dtype, accumulated in float32 (`mixed.py`).
        scores = f32_product(query, keys.transpose(-1, -2))  # [B, kv, groups, seq]
        if padding is not None:
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        rows, kv, groups, _ = probs.shape
        index = self.video_index[:, None, None, :].expand(rows, kv, groups, self.video_index.shape[-1])
        a_video = probs.gather(-1, index).masked_fill(~self.valid[:, None, None, :], 0.0)
        o_rest = f32_product(probs.scatter(-1, index, 0.0), values)
        return AttentionConstants(a_video, o_rest)

    def final_hidden(self, layer_input: LayerInput, consts: AttentionConstants, delta: torch.Tensor) -> torch.Tensor:
        """The final-norm hidden state `[1, 1, hidden]` with ΔV = `delta` (differentiable in it)."""
        values = ops.value_update(self.v0, delta)
        attn = consts.o_rest + consts.a_video @ values  # [1, kv, groups, head_dim]
        return self.adapter.tail(layer_input, attn.reshape(attn.shape[0], 1, -1).to(self.model_dtype))

    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head: `[rows, 1, hidden]` → logits `[rows, vocab]` in the model's dtype."""
        return torch.nn.functional.linear(hidden.reshape(hidden.shape[0], -1), self.lm_weight)

    def loss_grad_logits(self, logits: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`L = α (log|V| − H(z))` `[1]` and `∂L/∂z = −α ∂H/∂z` (float32) at logits z `[1, vocab]`."""
        with torch.enable_grad():
            z = logits.float().requires_grad_(True)
            entropy = ops.entropy(z)
            (grad_z,) = torch.autograd.grad(entropy, z, grad_outputs=torch.neg(alpha).expand_as(entropy))
        return alpha * (self.log_vocab - entropy.detach()), grad_z

    def gradient(self, layer_input: LayerInput, cache, logits: torch.Tensor, alpha: torch.Tensor,
                 attention_mask: torch.Tensor | None = None):
        """`(L, ∂L/∂ΔV)` at the current ΔV, where `logits` are the model's logits for the current
        token (computed with the current ΔV in the cache)."""
        consts = self.attention_constants(layer_input, cache, _padding(attention_mask))
        if self.dense is None:
            delta, hidden = self._tail_graph(layer_input, consts)
            return self._loss_and_grad(delta, hidden, logits, alpha)
        _, acts = self._forward(layer_input, consts)
        loss, grad_hidden = self._grad_hidden(logits, alpha)
        return loss, self._backward(consts, acts, grad_hidden)

    # ---- the hand-written tail (dense SwiGLU) ---------------------------------------------------

    def _value_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        """V(ΔV) at the current ΔV and the leaf it was recorded from (reused until ΔV moves)."""
        if self._values is None or self._values[0] is not self.delta:
            with torch.enable_grad():
                leaf = self.delta.detach().requires_grad_(True)
                self._values = (self.delta, leaf, ops.value_update(self.v0, leaf))
        return self._values[1], self._values[2]

    def _forward(self, layer_input: LayerInput, consts: AttentionConstants):
        """The tail at the current ΔV: final-norm hidden state and activations."""
        _, values = self._value_graph()
        # o_rest + a_video·V (under no_grad: nothing is recorded), as one batched multiply-add.
        attn = torch.baddbmm(consts.o_rest.flatten(0, 1), consts.a_video.flatten(0, 1), values.flatten(0, 1))
        return self.dense.forward(layer_input.hidden, attn.reshape(consts.o_rest.shape[0], 1, -1).to(self.model_dtype))

    def _backward(self, consts: AttentionConstants, acts, grad_hidden: torch.Tensor) -> torch.Tensor:
        """∂L/∂ΔV from ∂L/∂(final hidden) at the activations `acts` of the current ΔV: the tail's
        backward, `∂L/∂V[g, j] = Σ_{h∈g} a[h, j] · ∂L/∂o_h`, then the norm-preserving map's."""
        grad_attn = self.dense.backward(acts, grad_hidden).float().view_as(consts.o_rest)
        grad_values = consts.a_video.transpose(-1, -2) @ grad_attn  # [1, kv, n_video, head_dim]
        leaf, values = self._value_graph()
        (grad,) = torch.autograd.grad(values, leaf, grad_outputs=grad_values)
        return grad

    # ---- the autograd tail (any other block) ----------------------------------------------------

    def _tail_graph(self, layer_input: LayerInput, consts: AttentionConstants) -> tuple[torch.Tensor, torch.Tensor]:
        """A leaf copy of ΔV and the final hidden state recorded as a function of it."""
        with torch.enable_grad():
            delta = self.delta.detach().requires_grad_(True)
            return delta, self.final_hidden(layer_input, consts, delta)

    def _loss_and_grad(self, delta: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor,
                       alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(L, ∂L/∂ΔV)` from the tail graph `hidden(delta)` and the logits it produced."""
        loss, grad_hidden = self._grad_hidden(logits, alpha)
        (grad,) = torch.autograd.grad(hidden, delta, grad_outputs=grad_hidden.view_as(hidden).to(hidden.dtype))
        return loss, grad

    def _grad_hidden(self, logits: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(L, ∂L/∂h)` with `∂L/∂h = ∂L/∂z · W_lm`, the lm_head's backward for one token.

        `ops.vecmat`: torch's CPU `g @ W` over the `[vocab, hidden]` bf16 weight runs at about half
        the speed of the forward's `h @ Wᵀ` and rounds to bf16; vecmat reads W row by row at
        bandwidth and sums every row in float32 (float64 for a float64 model), the result's dtype.
        One row per sample of a batch.
        """
        loss, grad_z = self.loss_grad_logits(logits, alpha)
        return loss, ops.vecmat(grad_z.reshape(-1, grad_z.shape[-1]), self.lm_weight)

    # ---- one round ----------------------------------------------------------------------------

    def round(self, layer_input: LayerInput, cache, logits: torch.Tensor, alpha: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`steps` Adam steps on ΔV minimizing L at the current token; the updated values are
        written into the cache. Returns the current token's logits `[B, vocab]` at the new ΔV.

        `attention_mask`: `[B, seq]` over the current cache, 0 at a row's left padding (None: no
        row has padding). `logits` and, where present, `layer_input.tail` are the model's at the
        current ΔV; the round leaves its own activations at the new ΔV in `layer_input.tail`, so a
        second round on the same token continues from there. A fixed sequence of tensor
        operations: no host sync, no branch on a value."""
        consts = self.attention_constants(layer_input, cache, _padding(attention_mask))
        _, values_cache = self.adapter.cache_kv(cache, self.layer)
        if self.dense is None:
            return self._autograd_round(layer_input, consts, values_cache, logits, alpha)
        acts = layer_input.tail
        if acts is None or not acts.complete():
            _, acts = self._forward(layer_input, consts)
        for _ in range(self.config.steps):
            loss, grad_hidden = self._grad_hidden(logits, alpha)
            grad = self._backward(consts, acts, grad_hidden)
            self._step(loss, grad, values_cache)
            hidden, acts = self._forward(layer_input, consts)
            logits = self.logits_of(hidden)
        layer_input.tail = acts
        return logits

    def _step(self, loss: torch.Tensor, grad: torch.Tensor, values_cache: torch.Tensor) -> None:
        """One guarded Adam step per row (each row's own guard), written into the cache at the
        rows' video tokens (the fused `ops.value_update_`; padding slots are never written)."""
        # Finite iff x − x == 0 for x = L + Σ grad: a NaN or ±inf anywhere makes the sum NaN or
        # ±inf (an overflow of the sum of finite values would count as non-finite: harmless).
        total = loss.reshape(-1) + grad.sum(dim=(1, 2, 3))
        ok = ((total - total) == 0).view(-1, 1, 1, 1)
        self.delta = self.adam.step(self.delta, grad, ok)
        ops.value_update_(values_cache, self.video_index, self.v0, self.delta, counts=self.counts, check=not self._checked)
        self._checked = True

    def _autograd_round(self, layer_input, consts, values_cache, logits, alpha) -> torch.Tensor:
        steps = self.config.steps
        delta, hidden = self._tail_graph(layer_input, consts)
        for step in range(steps):
            loss, grad = self._loss_and_grad(delta, hidden, logits, alpha)
            self._step(loss, grad, values_cache)
            if step < steps - 1:
                # The graph at the new ΔV serves both the logits and the next step's backward.
                delta, hidden = self._tail_graph(layer_input, consts)
                logits = self.logits_of(hidden.detach())
            else:
                logits = self.logits_of(self.final_hidden(layer_input, consts, self.delta))
        return logits


def _padding(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """`[B, seq]` bool, True at left padding, from an attention mask (None stays None)."""
    return None if attention_mask is None else attention_mask == 0
