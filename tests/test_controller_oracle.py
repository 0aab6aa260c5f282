"""A controller round against an independent oracle, end to end.

The oracle: `torch.optim.Adam` (with the round's non-default betas and eps) fed, at each step,
the gradient of `L = α (log|V| − H)` computed by autograd through the real last decoder layer
(its own attention, MLP and norms), the final norm and lm_head, re-run for the current token on
a copy of the cache whose last-layer video values are `reference.value_update(V0, ΔV)`. Nothing
of the controller's own gradient path (attention constants, hand-written tail backward, lm_head
backward) is used. The vocabulary is 32,768 rows, so rows of the lm_head backward dropped or
counted twice show (in bfloat16 they span 32 of `ops.vecmat`'s row parts); float32 and bfloat16
models.

After `round(steps=2)`: ΔV equals the oracle's, the last layer's values at the video positions
equal `reference.value_update(V0, ΔV)`, the returned logits are the model's at the new ΔV, and
every key, every other layer and every non-video position of the cache is bit-identical.
"""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.controller import ValueController
from vreason.models import adapter_for
from vreason.models.tiny import build_tiny_model
from vreason.ops import reference
from inputs import video_inputs

# 32,768 lm_head rows (a real checkpoint has 152,064); the tokenizer's ~400 tokens are the first
# rows, the rest are never produced by the prompt.
VOCAB = 4 * 8192
CONFIG = dict(mode="maximize", steps=2, lr=0.5, adam_beta1=0.5, adam_beta2=0.9, adam_eps=1e-6)
# Per dtype: the relative error allowed between the controller's ΔV or logits and the oracle's.
# Measured: float32 2e-5..4e-5 (ΔV), 2e-7 (logits); bfloat16 4.1e-2..4.3e-2 (ΔV: the oracle's
# autograd rounds each backward product to bf16, the controller's sum them in float32), 3e-3
# (logits). The settings make every Adam knob count
# (float32, measured): lr 0.5 changes the gradient by ~90% between the two steps, so the betas move
# ΔV by ~13%; eps ~ |grad| (~1e-6) moves it by ~50%. The lm_head backward cut to its first 8,192
# rows fails it too (a mutant of the mutation check).
TOL = {torch.float32: 2e-4, torch.bfloat16: 6e-2}
DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("oracle"), seed=3, num_hidden_layers=3, hidden_size=64,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB)


def prefilled(model, processor, decode_steps=2):
    """Prefill and a few greedy decode steps, with the last layer's input of the current token."""
    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(video_inputs(processor, seed=5))
    handle = adapter.capture_last_layer_input()
    try:
        with torch.no_grad():
            pre = adapter.prefill(inputs)
            logits = pre.logits
            for k in range(decode_steps):
                logits = adapter.decode_step(logits.argmax(-1), pre.cache, pre.next_position_ids + k)
    finally:
        handle.remove()
    layer_input = handle.latest
    return adapter, pre, layer_input, logits


def snapshot(adapter, cache):
    return [tuple(t.clone() for t in adapter.cache_kv(cache, layer)) for layer in range(adapter.num_layers)]


def oracle_logits(model, adapter, cache0, video_positions, layer_input, v0, delta):
    """The current token's logits `[1, vocab]` from the real last layer re-run over `cache0` (the
    cache before the round) with the last layer's video values at V(ΔV); differentiable in ΔV."""
    last = adapter.num_layers - 1
    keys, values = adapter.cache_kv(cache0, last)
    past = copy.deepcopy(cache0)
    new_values = reference.value_update(v0, delta)  # float32
    index = video_positions.view(1, 1, -1, 1).expand(1, v0.shape[1], -1, v0.shape[-1])
    modified = values.float().scatter(-2, index, new_values).to(values.dtype)
    # The layer appends the current token's key and value itself: hand it the cache without them.
    adapter.set_cache_kv(past, last, keys[..., :-1, :].clone(), modified[..., :-1, :])
    layer = adapter.last_layer
    cache_kw = "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"
    out = layer(layer_input.hidden, attention_mask=None, position_embeddings=(layer_input.cos, layer_input.sin),
                use_cache=True, **{cache_kw: past})
    out = out[0] if isinstance(out, tuple) else out
    return model.lm_head(adapter.text_model.norm(out))[:, -1]


def oracle_grad(model, adapter, cache0, video_positions, layer_input, v0, delta, alpha):
    """∂L/∂ΔV at `delta` by autograd through `oracle_logits`."""
    leaf = delta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = oracle_logits(model, adapter, cache0, video_positions, layer_input, v0, leaf)
        loss = alpha * (math.log(logits.shape[-1]) - reference.entropy(logits.float()))
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return grad


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("alpha", [1.0, -1.0])
def test_round_equals_torch_adam_on_brute_force_gradients(checkpoint, dtype, alpha):
    model, processor = vreason.load_model(checkpoint, dtype=DTYPE_NAME[dtype], device="cpu")
    adapter, pre, layer_input, logits = prefilled(model, processor)
    assert adapter.vocab_size == VOCAB and logits.dtype == dtype
    last = adapter.num_layers - 1
    video = pre.video_positions
    before = snapshot(adapter, pre.cache)
    cache0 = copy.deepcopy(pre.cache)
    v0 = before[last][1].index_select(-2, video).float()
    a = torch.tensor(alpha)

    ctrl = ValueController(adapter, ControllerConfig(**CONFIG), pre.cache, video)
    with torch.no_grad():
        out_logits = ctrl.round(layer_input, pre.cache, logits, a)

    # The oracle: torch.optim.Adam on ΔV, each step's gradient by brute force at the current ΔV.
    delta = torch.zeros_like(v0, requires_grad=True)
    adam = torch.optim.Adam([delta], lr=CONFIG["lr"], betas=(CONFIG["adam_beta1"], CONFIG["adam_beta2"]),
                            eps=CONFIG["adam_eps"])
    grads = []
    for _ in range(CONFIG["steps"]):
        delta.grad = oracle_grad(model, adapter, cache0, video, layer_input, v0, delta, a)
        grads.append(delta.grad.clone())
        adam.step()
    assert all(float(g.norm()) > 0 for g in grads) and not torch.equal(grads[0], grads[1])
    assert rel_err(ctrl.delta, delta.detach()) <= TOL[dtype]

    after = snapshot(adapter, pre.cache)
    # The last layer's video values: V(ΔV) of the controller's ΔV, in the cache's dtype.
    expected = reference.value_update(v0, ctrl.delta).to(dtype)
    # float32: the compiled update and the reference differ by rounding only (a few ulps).
    exact = dict(rtol=2e-6, atol=1e-7) if dtype == torch.float32 else {}
    torch.testing.assert_close(after[last][1].index_select(-2, video), expected, **exact)
    # Nothing else moved: every key, every other layer, the last layer's other positions.
    others = torch.ones(after[last][1].shape[-2], dtype=torch.bool)
    others[video] = False
    for layer in range(adapter.num_layers):
        assert torch.equal(after[layer][0], before[layer][0]), layer
        if layer != last:
            assert torch.equal(after[layer][1], before[layer][1]), layer
    assert torch.equal(after[last][1][..., others, :], before[last][1][..., others, :])

    # The returned logits are the model's own at the new ΔV.
    with torch.no_grad():
        model_logits = oracle_logits(model, adapter, cache0, video, layer_input, v0, ctrl.delta)
    assert rel_err(out_logits, model_logits) <= TOL[dtype]


# ---- direction, far above float32 noise -------------------------------------------------------

@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """A tiny model with larger weights (initializer_range 0.3): H ≈ 3 nats instead of ≈ log|V|,
    so that a round at lr 0.5 moves H by ~0.1–0.3 nats, ~10⁵ float32 ulps (a round on the default
    tiny model moves it by ~1e-3 or less, where another BLAS or thread split could flip a sign)."""
    path = build_tiny_model(tmp_path_factory.mktemp("sharp"), seed=3, num_hidden_layers=3, hidden_size=64,
                            num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    return vreason.load_model(path, dtype="float32", device="cpu")


@pytest.mark.parametrize("mode", ["maximize", "minimize", "switch"])
def test_every_round_moves_entropy_the_way_alpha_says_by_far_more_than_noise(sharp, mode):
    model, processor = sharp
    res = VReasonGenerator(model, ControllerConfig(mode=mode, lr=0.5, steps=1, every_k=1),
                           DecodeConfig(max_new_tokens=6)).generate(**video_inputs(processor, seed=1))
    assert res.updated.all() and res.num_new_tokens == 6
    if mode != "switch":
        assert (res.alpha == (1 if mode == "maximize" else -1)).all()
    # 1e-2 nats at H ≈ 3 is ~4·10⁴ float32 ulps.
    change = res.alpha.float() * (res.entropy_after - res.entropy)
    assert (change > 1e-2).all(), (res.alpha, res.entropy, res.entropy_after)
