"""The controller: Adam against torch.optim.Adam, the exact one-token gradient against autograd
through a brute-force re-forward of the real last decoder layer, the ΔV = 0 tail recompute, and
the direction of one round in maximize / minimize."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.controller import GuardedAdam, ValueController
from vreason.models import adapter_for
from vreason.models.tiny import build_tiny_model
from vreason.ops import reference
from vreason.pruning import prune_video_tokens
from inputs import video_inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # GQA with 2 query heads per KV head, 3 layers: the last layer is not the only one.
    path = build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=11, num_hidden_layers=3, hidden_size=64,
                            num_attention_heads=4, num_key_value_heads=2)
    return vreason.load_model(path, dtype="float32", device="cpu")




def prefill_state(model, processor, decode_steps=0, prune_ratio=0.0):
    """Prefill (optionally Lite-pruned, then a few greedy decode steps) with the last layer's input
    captured; `pre.video_positions` are the last layer's video cache indices."""
    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(video_inputs(processor))
    hook = adapter.capture_last_layer_input()
    with torch.no_grad():
        pre = adapter.prefill(inputs)
        logits = pre.logits
        if prune_ratio:
            pre.video_positions = prune_video_tokens(adapter, pre.cache, [pre.video_positions], prune_ratio)[1][-1][0]
            logits = adapter.rerun_last_prompt_token(pre.cache, inputs["input_ids"], pre.next_position_ids - 1)
        for k in range(decode_steps):
            logits = adapter.decode_step(logits.argmax(-1), pre.cache, pre.next_position_ids + k)
    hook.remove()
    return adapter, pre, hook.latest, logits


def brute_force_gradient(model, adapter, pre, layer_input, v0, delta0, alpha):
    """∂L/∂ΔV by autograd through the real last decoder layer (full attention, its own softmax)
    re-run on the current token over a cache whose video values are V(ΔV)."""
    last = adapter.num_layers - 1
    keys, values = adapter.cache_kv(pre.cache, last)
    past = copy.deepcopy(pre.cache)
    # The layer appends the current token's key/value itself: give it the cache without them.
    entry = past.layers[last]
    entry.keys, entry.values = keys[..., :-1, :].clone(), values[..., :-1, :].clone()
    delta = delta0.clone().requires_grad_(True)
    with torch.enable_grad():
        new_values = reference.value_update(v0, delta)
        base = entry.values.float()
        index = pre.video_positions.view(1, 1, -1, 1).expand(1, v0.shape[1], -1, v0.shape[-1])
        entry.values = base.scatter(-2, index, new_values).to(values.dtype)
        layer = adapter.last_layer
        cache_kw = "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"
        out = layer(layer_input.hidden, attention_mask=None, position_embeddings=(layer_input.cos, layer_input.sin),
                    use_cache=True, **{cache_kw: past})
        out = out[0] if isinstance(out, tuple) else out
        logits = model.lm_head(adapter.text_model.norm(out))[:, -1]
        loss = alpha * (math.log(logits.shape[-1]) - reference.entropy(logits.float()))
        (grad,) = torch.autograd.grad(loss.sum(), delta)
    return loss.detach(), grad


def rel_err(a, b):
    return float(((a - b).norm() / b.norm()).detach())


@pytest.mark.parametrize("decode_steps, prune_ratio", [(0, 0.0), (3, 0.0), (0, 0.5), (2, 0.5)])
@pytest.mark.parametrize("alpha", [1.0, -1.0])
def test_exact_gradient_equals_autograd_through_the_real_layer(tiny, decode_steps, prune_ratio, alpha):
    model, processor = tiny
    adapter, pre, layer_input, logits = prefill_state(model, processor, decode_steps, prune_ratio)
    ctrl = ValueController(adapter, ControllerConfig(), pre.cache, pre.video_positions)
    a = torch.tensor(alpha)
    loss, grad = ctrl.gradient(layer_input, pre.cache, logits, a)
    ref_loss, ref_grad = brute_force_gradient(model, adapter, pre, layer_input, ctrl.v0, ctrl.delta, a)
    assert grad.shape == ctrl.v0.shape == (1, 2, 32 - int(32 * prune_ratio), 16)
    assert float(ref_grad.norm()) > 0
    assert rel_err(grad, ref_grad) <= 1e-4
    # L = α(log|V| − H) is a small difference of two large numbers here: compare absolutely.
    assert torch.allclose(loss.reshape(-1), ref_loss.reshape(-1), rtol=0, atol=2e-6)


def test_exact_gradient_at_a_nonzero_delta(tiny):
    model, processor = tiny
    adapter, pre, layer_input, _ = prefill_state(model, processor)
    ctrl = ValueController(adapter, ControllerConfig(), pre.cache, pre.video_positions)
    ctrl.delta = 0.3 * torch.randn(ctrl.v0.shape, generator=torch.Generator().manual_seed(4)) * ctrl.v0.abs().mean()
    # The model's logits at this ΔV: write the values and re-run the last token through the layer.
    _, values = adapter.cache_kv(pre.cache, adapter.num_layers - 1)
    reference.value_update_(values, pre.video_positions, ctrl.v0, ctrl.delta)
    consts = ctrl.attention_constants(layer_input, pre.cache)
    with torch.no_grad():
        logits = ctrl.logits_of(ctrl.final_hidden(layer_input, consts, ctrl.delta))
    loss, grad = ctrl.gradient(layer_input, pre.cache, logits, torch.tensor(1.0))
    _, ref_grad = brute_force_gradient(model, adapter, pre, layer_input, ctrl.v0, ctrl.delta, torch.tensor(1.0))
    assert rel_err(grad, ref_grad) <= 1e-4


@pytest.mark.parametrize("decode_steps", [0, 2])
def test_tail_recompute_at_zero_delta_reproduces_the_model_logits(tiny, decode_steps):
    model, processor = tiny
    adapter, pre, layer_input, logits = prefill_state(model, processor, decode_steps)
    ctrl = ValueController(adapter, ControllerConfig(), pre.cache, pre.video_positions)
    with torch.no_grad():
        consts = ctrl.attention_constants(layer_input, pre.cache)
        ours = ctrl.logits_of(ctrl.final_hidden(layer_input, consts, ctrl.delta))
    assert torch.allclose(ours, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode, sign", [("maximize", 1), ("minimize", -1)])
def test_one_round_moves_entropy_the_right_way(tiny, mode, sign):
    model, processor = tiny
    inputs = video_inputs(processor, seed=1)
    # Learning rates large enough that every change is ≥ 5e-5 nats, about 100 float32 ulps at
    # H ≈ 6 (at lr 1e-3 the change was ~7 ulps: another BLAS or thread split could flip its sign).
    for lr in (0.05, 0.2):
        res = VReasonGenerator(model, ControllerConfig(mode=mode, lr=lr, steps=1, every_k=1),
                               DecodeConfig(max_new_tokens=4)).generate(**inputs)
        assert res.updated.all()
        assert (sign * (res.entropy_after - res.entropy) > 5e-5).all(), (lr, res.entropy, res.entropy_after)


def test_several_steps_keep_moving_entropy(tiny):
    model, processor = tiny
    inputs = video_inputs(processor, seed=2)
    after = []
    for steps in (1, 2, 4):
        res = VReasonGenerator(model, ControllerConfig(mode="maximize", lr=0.2, steps=steps),
                               DecodeConfig(max_new_tokens=1)).generate(**inputs)
        after.append(float(res.entropy_after[0]))
    # Each further step raises the entropy by ≥ 1e-4 nats (~200 float32 ulps at H ≈ 6).
    assert after[1] - after[0] > 1e-4 and after[2] - after[1] > 1e-4, after


def test_a_round_of_three_steps_equals_three_chained_one_step_rounds(tiny):
    # Keys never change and o_rest excludes the video columns, so a round's constants are the
    # same after each step: three one-step rounds fed each other's logits are the same Adam run.
    model, processor = tiny
    alpha = torch.tensor(1.0)
    _, pre_a, layer_input_a, logits_a = prefill_state(model, processor)
    adapter, pre_b, layer_input_b, logits_b = prefill_state(model, processor)
    cfg = ControllerConfig(mode="maximize", lr=1e-2)
    three = ValueController(adapter, dataclasses.replace(cfg, steps=3), pre_a.cache, pre_a.video_positions)
    one = ValueController(adapter, dataclasses.replace(cfg, steps=1), pre_b.cache, pre_b.video_positions)
    with torch.no_grad():
        out_three = three.round(layer_input_a, pre_a.cache, logits_a, alpha)
        for _ in range(3):
            logits_b = one.round(layer_input_b, pre_b.cache, logits_b, alpha)
    assert torch.allclose(three.delta, one.delta, rtol=1e-5, atol=1e-7)
    assert torch.allclose(out_three, logits_b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(three.delta, torch.zeros_like(three.delta))


def test_guarded_adam_matches_torch_adam_and_skips_non_finite_steps():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, 4, generator=g)
    grads = [torch.randn(2, 3, 4, generator=g) for _ in range(5)]
    param = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    ours = GuardedAdam(start, 1e-2, (0.9, 0.999), 1e-8)
    value = start.clone()
    for i, grad in enumerate(grads):
        param.grad = grad.clone()
        opt.step()
        value = ours.step(value, grad, torch.tensor(True))
        assert torch.allclose(value, param.detach(), atol=1e-6, rtol=1e-6), i
        if i == 2:  # a non-finite gradient in between changes nothing
            bad = grad.clone()
            bad[0, 0, 0] = float("nan")
            state = (value.clone(), ours.exp_avg.clone(), ours.exp_avg_sq.clone(), ours.steps.clone())
            value = ours.step(value, bad, torch.isfinite(bad).all())
            for before, after in zip(state, (value, ours.exp_avg, ours.exp_avg_sq, ours.steps)):
                assert torch.equal(before, after)
    assert int(ours.skipped) == 1


def test_non_finite_gradient_skips_rounds_and_generation_continues(tiny, monkeypatch):
    model, processor = tiny
    inputs = video_inputs(processor)

    def nan_grad(self, logits, alpha):
        loss, grad_z = self.loss_grad_logits(logits, alpha)
        return loss, torch.full((1, self.lm_weight.shape[1]), float("nan"), dtype=self.model_dtype)

    monkeypatch.setattr(ValueController, "_grad_hidden", nan_grad)
    res = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=2), DecodeConfig(max_new_tokens=6)).generate(**inputs)
    assert res.num_new_tokens == 6 and res.updated.sum() == 3
    assert res.skipped_rounds == 3
    assert torch.isfinite(res.entropy_after).all()
    # ΔV stayed 0: the values written are V0 again, so the entropy barely moves.
    assert torch.allclose(res.entropy_after, res.entropy, atol=1e-5)


def test_model_weights_are_frozen_and_get_no_gradient(tiny):
    model, processor = tiny
    VReasonGenerator(model, ControllerConfig(mode="maximize", every_k=1), DecodeConfig(max_new_tokens=2)).generate(
        **video_inputs(processor))
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


# ---- the captured activations, the hand-written tail, the schedule ------------------------------


def test_capture_handle_keeps_the_forward_activations_and_removes_every_hook(tiny):
    model, processor = tiny
    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(video_inputs(processor))
    hooked = [adapter.last_layer, adapter.last_layer.self_attn.q_proj, adapter.last_layer.post_attention_layernorm,
              adapter.last_layer.mlp.gate_proj, adapter.last_layer.mlp.up_proj, adapter.text_model.norm]
    before = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in hooked]
    capture = adapter.capture_last_layer_input()
    assert capture.latest is None
    with torch.no_grad():
        pre = adapter.prefill(inputs)
    got = capture.latest
    capture.remove()
    assert [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in hooked] == before
    assert got.hidden.shape == (1, 1, 64) and got.tail.complete()
    # The tail recomputed by hand from the captured layer input at ΔV = 0 gives the same
    # activations and the model's own logits.
    ctrl = ValueController(adapter, ControllerConfig(), pre.cache, pre.video_positions)
    with torch.no_grad():
        consts = ctrl.attention_constants(got, pre.cache)
        hidden, acts = ctrl.dense.forward(got.hidden, (consts.o_rest + consts.a_video @ ctrl.v0).reshape(1, 1, -1))
        q = adapter.last_layer.self_attn.q_proj(adapter.last_layer.input_layernorm(got.hidden))
    for name in ("h1", "gate", "up", "h2"):
        assert torch.allclose(getattr(acts, name), getattr(got.tail, name), atol=1e-5), name
    assert torch.allclose(got.q, q, atol=1e-6)
    assert torch.allclose(ctrl.logits_of(hidden), pre.logits, atol=1e-5)


def test_hand_written_tail_backward_equals_autograd_in_float64(tiny):
    model, processor = tiny
    adapter = adapter_for(model)
    from vreason.tail import DenseTail

    tail = DenseTail.of(adapter.last_layer, adapter.text_model.norm)
    g = torch.Generator().manual_seed(3)
    residual = torch.randn(1, 1, 64, generator=g, dtype=torch.float64)
    attn = torch.randn(1, 1, 64, generator=g, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(1, 1, 64, generator=g, dtype=torch.float64)
    model64 = copy.deepcopy(model).double()
    tail64 = DenseTail.of(model64.model.language_model.layers[-1], model64.model.language_model.norm)
    with torch.enable_grad():
        out, acts = tail64.forward(residual, attn)
        (want,) = torch.autograd.grad(out, attn, grad_outputs=grad_out)
    got = tail64.backward(acts, grad_out)
    assert float(want.norm()) > 0 and tail is not None
    # The model's RMSNorm computes in float32 even in a float64 model, so autograd through it
    # carries float32 rounding; the hand-written backward is float64 throughout.
    assert rel_err(got, want) <= 1e-6


def test_the_controller_owns_the_schedule(tiny):
    model, processor = tiny
    adapter, pre, _, _ = prefill_state(model, processor)
    for every_k, due in ((1, [0, 1, 2, 3, 4, 5]), (2, [0, 2, 4]), (3, [0, 3])):
        ctrl = ValueController(adapter, ControllerConfig(every_k=every_k), pre.cache, pre.video_positions)
        assert [k for k in range(6) if ctrl.due(k)] == due
