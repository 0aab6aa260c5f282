"""V-Reason (Lite): which tokens go, what stays, and that positions are never renumbered."""
from __future__ import annotations

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.models import adapter_for
from vreason.models.tiny import build_tiny_model
from vreason.pruning import num_pruned, prune_video_tokens
from inputs import video_inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=21, num_hidden_layers=3)
    return vreason.load_model(path, dtype="float32", device="cpu")




def prefill(model, processor):
    adapter = adapter_for(model)
    with torch.no_grad():
        pre = adapter.prefill(adapter.prepare_inputs(video_inputs(processor, question='How many shapes are there?')))
    return adapter, pre


def test_rounding_down():
    assert [num_pruned(n, 0.5) for n in (1, 2, 7, 32)] == [0, 1, 3, 16]
    assert num_pruned(10, 0.0) == 0 and num_pruned(10, 0.99) == 9
    with pytest.raises(ValueError, match="prune_ratio"):
        num_pruned(10, 1.0)


def test_half_keeps_the_highest_value_norm_tokens_in_every_layer(tiny):
    model, processor = tiny
    adapter, pre = prefill(model, processor)
    video = pre.video_positions
    original = [tuple(t.clone() for t in adapter.cache_kv(pre.cache, i)) for i in range(adapter.num_layers)]
    kept = [rows[0] for rows in prune_video_tokens(adapter, pre.cache, [video], 0.5)[1]]
    n_video = video.numel()
    is_video = torch.zeros(original[0][0].shape[-2], dtype=torch.bool)
    is_video[video] = True
    for layer, (keys, values) in enumerate(original):
        new_keys, new_values = adapter.cache_kv(pre.cache, layer)
        # The oracle: norms per token by a plain loop over heads and head_dim.
        norms = [float(torch.sqrt(sum((values[0, h, j] ** 2).sum() for h in range(values.shape[1])))) for j in video.tolist()]
        best = sorted(range(n_video), key=lambda i: -norms[i])[: n_video - n_video // 2]
        expected_keep = torch.cat([torch.nonzero(~is_video).squeeze(-1), video[sorted(best)]]).sort().values
        assert new_keys.shape[-2] == keys.shape[-2] - n_video // 2
        assert torch.equal(new_keys, keys[..., expected_keep, :]) and torch.equal(new_values, values[..., expected_keep, :])
        # The returned indices point at the kept video tokens inside the shorter cache.
        assert kept[layer].numel() == n_video - n_video // 2
        assert torch.equal(new_values[..., kept[layer], :], values[..., video[sorted(best)], :])


def test_ratio_zero_leaves_the_cache_alone_and_equals_no_pruning(tiny):
    model, processor = tiny
    adapter, pre = prefill(model, processor)
    before = [adapter.cache_kv(pre.cache, i) for i in range(adapter.num_layers)]
    kept = [rows[0] for rows in prune_video_tokens(adapter, pre.cache, [pre.video_positions], 0.0)[1]]
    for i, (k, v) in enumerate(before):
        assert adapter.cache_kv(pre.cache, i)[0] is k and adapter.cache_kv(pre.cache, i)[1] is v
        assert torch.equal(kept[i], pre.video_positions)
    inputs = video_inputs(processor, seed=1, question='How many shapes are there?')
    cfg = dict(mode="switch", lr=0.05, every_k=1)
    plain = VReasonGenerator(model, ControllerConfig(**cfg), DecodeConfig(max_new_tokens=8)).generate(**inputs)
    zero = VReasonGenerator(model, ControllerConfig(**cfg, prune_ratio=0.0), DecodeConfig(max_new_tokens=8)).generate(**inputs)
    assert torch.equal(plain.sequences, zero.sequences) and torch.equal(plain.entropy_after, zero.entropy_after)


def record_decode_positions(model, run):
    """Position ids and the last layer's rotary (cos, sin) of every decode-step forward."""
    seen = []

    def hook(module, args, kwargs):
        # transformers 5.24 renamed generate's `past_key_values` keyword to `cache`.
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if cache is not None and cache.get_seq_length() > 0:
            seen.append(kwargs["position_ids"].clone())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


@pytest.mark.parametrize("mode", ["off", "switch"])
def test_pruned_run_keeps_the_unpruned_positions(tiny, mode):
    model, processor = tiny
    inputs = video_inputs(processor, seed=2, question='How many shapes are there?')
    n = 8
    hf, _ = record_decode_positions(model, lambda: model.generate(**inputs, do_sample=False, max_new_tokens=n))
    full, res_full = record_decode_positions(
        model, lambda: VReasonGenerator(model, ControllerConfig(mode=mode), DecodeConfig(max_new_tokens=n)).generate(**inputs))
    pruned, res = record_decode_positions(
        model,
        lambda: VReasonGenerator(model, ControllerConfig(mode=mode, prune_ratio=0.5), DecodeConfig(max_new_tokens=n)).generate(**inputs))
    # Lite first runs the last prompt token again over the pruned cache, at its own position.
    assert len(hf) == len(full) == n - 1 and len(pruned) == n
    adapter = adapter_for(model)
    prompt_positions = adapter._prompt_position_ids(adapter.prepare_inputs(inputs))
    assert torch.equal(pruned[0], prompt_positions[..., -1:])
    for a, b, c in zip(hf, full, pruned[1:]):
        assert a.shape == (4, 1, 1) and torch.equal(a, b) and torch.equal(b, c)
    assert res.num_video_tokens == res_full.num_video_tokens == 32 and res.num_video_tokens_kept == 16
