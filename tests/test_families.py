"""The families beyond Qwen2.5-VL (LLaVA-OneVision, Qwen3-VL dense and MoE, InternVL with a Qwen2
and a Qwen3 decoder, the hybrid Qwen3.5) on tiny checkpoints loaded through the real path, each against independent
oracles: transformers' `generate` for `off`, autograd through the real last decoder layer for the
exact gradient, a full forward over the updated cache for a round's logits, the unpruned cache
for Lite, and the `vreason predict` command end to end."""
from __future__ import annotations

import copy
import gc
import json
import math
import weakref

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.cli import main
from vreason.controller import ValueController
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.models import adapter_for
from vreason.models.tiny_families import TINY_BUILDERS
from vreason.ops import reference
from vreason.pruning import prune_video_tokens

# One tiny model per adapter file and decoder kind; the variants (an MoE MLP, InternVL's Qwen3
# decoder) share their family's adapter and run the core checks only.
FAMILIES = ["llava_onevision", "qwen3_vl", "internvl", "qwen3_5"]
VARIANTS = ["qwen3_vl_moe", "internvl_qwen3", "qwen3_5_moe"]
assert sorted(FAMILIES + VARIANTS) == sorted(TINY_BUILDERS)
FPS = 8.0


def cases(main: list, variant: list) -> list:
    """`(family, *case)` tuples: every main case for the families, `variant`'s for the variants."""
    return [(f, *c) for f in FAMILIES for c in main] + [(f, *c) for f in VARIANTS for c in variant]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            path = TINY_BUILDERS[family](tmp_path_factory.mktemp(family), seed=7)
            built[family] = (path, *vreason.load_model(path, dtype="float32", device="cpu"))
        return built[family]

    return get


def family_inputs(processor, seed=0, frames=4, image=False, video=True):
    """Processor outputs for one question over random frames sampled at FPS (with the metadata
    the processors need for timestamps) and optionally a random image before them."""
    g = torch.Generator().manual_seed(seed)
    content, kwargs = [], {}
    if image:
        content.append({"type": "image"})
        kwargs["images"] = [torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8, generator=g)]
    if video:
        content.append({"type": "video"})
        kwargs["videos"] = [torch.randint(0, 256, (frames, 3, 112, 112), dtype=torch.uint8, generator=g)]
        kwargs["video_metadata"] = [{"fps": FPS, "total_num_frames": 3 * frames, "frames_indices": list(range(0, 3 * frames, 3))}]
        kwargs["do_sample_frames"] = False
    content.append({"type": "text", "text": "Which direction does the square move?"})
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return dict(processor(text=[text], return_tensors="pt", **kwargs))


# ---- off equals generate --------------------------------------------------------------------------


@pytest.mark.parametrize("family, prompt", cases([("video",), ("video+image",), ("image",)], [("video",)]))
def test_off_is_token_identical_to_generate(tiny, family, prompt):
    _, model, processor = tiny(family)
    inputs = family_inputs(processor, seed=1, image="image" in prompt, video="video" in prompt)
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=10)
    res = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=10)).generate(**inputs)
    assert torch.equal(res.sequences, expected)
    # InternVL's frames are image tiles: its controlled tokens are all the context tokens.
    kind = "video_token" if "video" in prompt and not family.startswith("internvl") else "image_token"
    kind_token = processor.tokenizer.convert_tokens_to_ids(getattr(processor, kind))
    assert res.num_video_tokens == int((inputs["input_ids"] == kind_token).sum()) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_off_sampling_matches_generate_with_the_same_seed(tiny, family):
    _, model, processor = tiny(family)
    inputs = family_inputs(processor, seed=2)
    decode = DecodeConfig(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=123)
    torch.manual_seed(decode.seed)
    expected = model.generate(**inputs, max_new_tokens=10, do_sample=True, temperature=0.8, top_k=40, top_p=0.9)
    res = VReasonGenerator(model, ControllerConfig(mode="off"), decode).generate(**inputs)
    assert torch.equal(res.sequences, expected)


# ---- the controller against the real model ------------------------------------------------------


def prefill_state(model, processor, decode_steps=0, prune_ratio=0.0):
    """Prefill (optionally Lite-pruned), then greedy decode steps, with the last layer's input
    captured. Also returns the current token, its position and a copy of the cache from before
    that token was fed (None at decode_steps=0)."""
    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(family_inputs(processor))
    hook = adapter.capture_last_layer_input()
    before = None
    with torch.no_grad():
        pre = adapter.prefill(inputs)
        logits, token = pre.logits, inputs["input_ids"][:, -1:]
        if prune_ratio:
            pre.video_positions = prune_video_tokens(adapter, pre.cache, [pre.video_positions], prune_ratio)[1][-1][0]
            logits = adapter.rerun_last_prompt_token(pre.cache, inputs["input_ids"], pre.next_position_ids - 1)
        position = pre.next_position_ids - 1
        for k in range(decode_steps):
            token = logits.argmax(-1).view(1, 1)
            position = pre.next_position_ids + k
            before = copy.deepcopy(pre.cache)
            logits = adapter.decode_step(token, pre.cache, position)
    hook.remove()
    return adapter, pre, hook.latest, logits, token, position, before


def brute_force_gradient(model, adapter, pre, layer_input, v0, delta0, alpha):
    """∂L/∂ΔV by autograd through the real last decoder layer re-run on the current token over a
    copy of the cache whose video values are V(ΔV)."""
    last = adapter.num_layers - 1
    keys, values = adapter.cache_kv(pre.cache, last)
    past = copy.deepcopy(pre.cache)
    # The layer appends the current token's key/value itself: give it the cache without them.
    adapter.set_cache_kv(past, last, keys[..., :-1, :].clone(), values[..., :-1, :].clone())
    delta = delta0.clone().requires_grad_(True)
    with torch.enable_grad():
        new_values = reference.value_update(v0, delta)
        base = values[..., :-1, :].float()
        index = pre.video_positions.view(1, 1, -1, 1).expand(1, v0.shape[1], -1, v0.shape[-1])
        adapter.set_cache_kv(past, last, keys[..., :-1, :], base.scatter(-2, index, new_values).to(values.dtype))
        out = adapter.last_layer(layer_input.hidden, attention_mask=None,
                                 position_embeddings=(layer_input.cos, layer_input.sin), **{adapter.cache_key: past},
                                 use_cache=True)
        out = out[0] if isinstance(out, tuple) else out
        logits = model.lm_head(adapter.text_model.norm(out))[:, -1]
        loss = alpha * (math.log(logits.shape[-1]) - reference.entropy(logits.float()))
        (grad,) = torch.autograd.grad(loss.sum(), delta)
    return loss.detach(), grad


@pytest.mark.parametrize("family, decode_steps, prune_ratio, alpha",
                         cases([(0, 0.0, 1.0), (2, 0.5, -1.0)], [(2, 0.0, -1.0)]))
def test_exact_gradient_equals_autograd_through_the_real_layer(tiny, family, decode_steps, prune_ratio, alpha):
    _, model, processor = tiny(family)
    adapter, pre, layer_input, logits, *_ = prefill_state(model, processor, decode_steps, prune_ratio)
    ctrl = ValueController(adapter, ControllerConfig(), pre.cache, pre.video_positions)
    a = torch.tensor(alpha)
    loss, grad = ctrl.gradient(layer_input, pre.cache, logits, a)
    ref_loss, ref_grad = brute_force_gradient(model, adapter, pre, layer_input, ctrl.v0, ctrl.delta, a)
    assert float(ref_grad.norm()) > 0
    assert float((grad - ref_grad).norm() / ref_grad.norm()) <= 1e-4
    assert torch.allclose(loss.reshape(-1), ref_loss.reshape(-1), rtol=0, atol=2e-6)


@pytest.mark.parametrize("family, decode_steps", cases([(1,), (3,)], [(1,)]))
def test_logits_after_a_round_equal_a_full_forward_over_the_updated_cache(tiny, family, decode_steps):
    _, model, processor = tiny(family)
    adapter, pre, layer_input, logits, token, position, before = prefill_state(model, processor, decode_steps)
    ctrl = ValueController(adapter, ControllerConfig(mode="maximize", lr=0.05, steps=2), pre.cache, pre.video_positions)
    last = adapter.num_layers - 1
    with torch.no_grad():
        after = ctrl.round(layer_input, pre.cache, logits, torch.tensor(1.0))
        assert not torch.allclose(after, logits, atol=1e-4)  # the round did move the logits
        # The model itself, fed the current token over the cache from before it, whose last layer
        # holds the values the round wrote (every other layer, linear-attention states included,
        # is the model's own).
        keys, values = adapter.cache_kv(before, last)
        written = adapter.cache_kv(pre.cache, last)[1][..., : values.shape[-2], :]
        assert not torch.equal(written, values)
        adapter.set_cache_kv(before, last, keys, written.clone())
        again = adapter.decode_step(token, before, position)
    assert torch.allclose(after, again, rtol=1e-5, atol=1e-5)


# ---- Lite -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_lite_keeps_the_highest_norm_rows_and_ratio_zero_changes_nothing(tiny, family):
    _, model, processor = tiny(family)
    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(family_inputs(processor, seed=3))
    cfg = dict(mode="switch", every_k=1, lr=0.05)
    base = VReasonGenerator(model, ControllerConfig(**cfg), DecodeConfig(max_new_tokens=6)).generate(**inputs)
    zero = VReasonGenerator(model, ControllerConfig(**cfg, prune_ratio=0.0), DecodeConfig(max_new_tokens=6)).generate(**inputs)
    assert torch.equal(base.sequences, zero.sequences) and torch.equal(base.entropy_after, zero.entropy_after)
    with torch.no_grad():
        full = adapter.prefill(inputs)
        pruned = adapter.prefill(inputs)
        kept = [rows[0] for rows in prune_video_tokens(adapter, pruned.cache, [pruned.video_positions], 0.5)[1]]
    video = full.video_positions
    n_keep = video.numel() - video.numel() // 2
    layers = list(adapter.kv_layers())
    # Only layers with a per-token cache are pruned (Qwen3.5: its full-attention layers), the last one among them.
    assert layers[-1] == adapter.num_layers - 1 and len(kept) == len(layers)
    assert (len(layers) < adapter.num_layers) == (family == "qwen3_5")
    for i, layer in enumerate(layers):
        keys, values = adapter.cache_kv(full.cache, layer)
        norms = values[0][:, video].float().square().sum(dim=(0, 2))
        top = video[torch.sort(norms, descending=True, stable=True).indices[:n_keep]].sort().values
        keep = torch.ones(keys.shape[-2], dtype=torch.bool)
        keep[video] = False
        keep[top] = True
        pk, pv = adapter.cache_kv(pruned.cache, layer)
        assert torch.equal(pk, keys[..., keep, :]) and torch.equal(pv, values[..., keep, :])
        assert kept[i].numel() == n_keep
    lite = VReasonGenerator(model, ControllerConfig(**cfg, prune_ratio=0.5), DecodeConfig(max_new_tokens=6)).generate(**inputs)
    assert lite.num_video_tokens_kept == n_keep and lite.num_new_tokens == 6


def test_qwen3_5_lite_prunes_the_full_attention_layers_and_rewinds_the_recurrent_states(tiny):
    _, model, processor = tiny("qwen3_5")
    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(family_inputs(processor, seed=3))
    ids = inputs["input_ids"]
    with torch.no_grad():
        # The re-run over an unpruned cache is the prefill again: same logits, same continuation.
        # Without the rewind the token would reach the recurrent states twice.
        plain = adapter.prefill(inputs)
        logits = [plain.logits]
        for k in range(3):
            logits.append(adapter.decode_step(logits[-1].argmax(-1).view(1, 1), plain.cache, plain.next_position_ids + k))
        again = adapter.prefill(inputs)
        rerun = [adapter.rerun_last_prompt_token(again.cache, ids, again.next_position_ids - 1)]
        for k in range(3):
            rerun.append(adapter.decode_step(rerun[-1].argmax(-1).view(1, 1), again.cache, again.next_position_ids + k))
        for a, b in zip(logits, rerun):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        # Lite over the full-attention layers: their highest-norm video rows stay, the rest of
        # every cache row is untouched, and the re-run gives finite logits over the pruned cache.
        pruned = adapter.prefill(inputs)
        layers = tuple(adapter.kv_layers())
        assert layers == tuple(i for i, t in enumerate(model.config.text_config.layer_types) if t == "full_attention")
        kept = [rows[0] for rows in prune_video_tokens(adapter, pruned.cache, [pruned.video_positions], 0.5)[1]]
        video, n_keep = pruned.video_positions, pruned.video_positions.numel() - pruned.video_positions.numel() // 2
        for i, layer in enumerate(layers):
            keys, values = adapter.cache_kv(plain.cache, layer)
            keys, values = keys[..., : ids.shape[1], :], values[..., : ids.shape[1], :]  # the prompt's rows
            norms = values[0][:, video].float().square().sum(dim=(0, 2))
            keep = torch.ones(keys.shape[-2], dtype=torch.bool)
            keep[video] = False
            keep[video[torch.sort(norms, descending=True, stable=True).indices[:n_keep]]] = True
            assert torch.equal(adapter.cache_kv(pruned.cache, layer)[1], values[..., keep, :]) and kept[i].numel() == n_keep
        lite = adapter.rerun_last_prompt_token(pruned.cache, ids, pruned.next_position_ids - 1)
        assert torch.isfinite(lite).all() and not torch.allclose(lite, plain.logits, atol=1e-6)
        assert adapter.cache_kv(pruned.cache, layers[-1])[1].shape[-2] == ids.shape[1] - (video.numel() - n_keep)



def _spy_prepared_inputs(adapter, monkeypatch) -> list:
    """Weak references to every tensor `prepare_inputs` hands the generator from now on."""
    seen, prepare = [], adapter.prepare_inputs

    def spy(inputs):
        out = prepare(inputs)
        seen.extend(weakref.ref(v) for v in out.values() if torch.is_tensor(v))
        return out

    monkeypatch.setattr(adapter, "prepare_inputs", spy)
    return seen


@pytest.mark.parametrize("prune_ratio", [0.0, 0.5])
def test_qwen3_5_keeps_no_input_of_a_finished_or_failed_sample(tiny, monkeypatch, prune_ratio):
    _, model, processor = tiny("qwen3_5")
    cfg = ControllerConfig(mode="switch", every_k=1, lr=0.05, prune_ratio=prune_ratio)
    gen = VReasonGenerator(model, cfg, DecodeConfig(max_new_tokens=3))
    seen = _spy_prepared_inputs(gen.adapter, monkeypatch)
    assert gen.generate(**family_inputs(processor, seed=3)).num_new_tokens == 3
    gc.collect()
    assert seen and all(ref() is None for ref in seen)
    # A sample that fails mid-decode (an out-of-memory error, say) leaves nothing behind either,
    # so a retry starts with its memory free.
    seen.clear()

    def fail(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gen.adapter, "decode_step", fail)
    try:
        gen.generate(**family_inputs(processor, seed=3))
    except torch.OutOfMemoryError:
        pass
    gc.collect()
    assert seen and all(ref() is None for ref in seen)


def test_qwen3_5_lite_rerun_stores_no_second_full_attention_cache(tiny):
    _, model, processor = tiny("qwen3_5")
    adapter = adapter_for(model)
    inputs = adapter.prepare_inputs(family_inputs(processor, seed=3))
    caches = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: caches.append(kwargs.get(adapter.cache_key)), with_kwargs=True)
    try:
        with torch.no_grad():
            pre = adapter.prefill(inputs)
            prune_video_tokens(adapter, pre.cache, pre.video_positions, 0.5)
            caches.clear()
            adapter.rerun_last_prompt_token(pre.cache, inputs["input_ids"], pre.next_position_ids - 1)
    finally:
        hook.remove()
    rerun = caches[0]  # the prompt's forward (then the last token's, over the sample's cache)
    assert rerun is not None and rerun is not pre.cache
    # Its full-attention layers kept nothing; its recurrent states are now the sample's.
    assert all(rerun.layers[i].get_seq_length() == 0 for i in adapter.kv_layers())
    linear = [i for i in range(adapter.num_layers) if i not in adapter.kv_layers()]
    assert linear and all(pre.cache.layers[i] is rerun.layers[i] for i in linear)


# ---- the command ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_vreason_predict_runs_the_synthetic_benchmark(tiny, family, tmp_path):
    path, _, _ = tiny(family)
    lite = "0.5"
    bench = write_synthetic_benchmark(tmp_path / "data", n=2, seed=2, num_frames=8)
    args = ["predict", "--model.model_path", str(path), "--data.files", f"[{bench}]", "--data.num_frames", "4",
            "--data.max_pixels", str(112 * 112), "--model.decode.max_new_tokens", "6",
            "--model.controller.mode", "switch", "--model.controller.prune_ratio", lite,
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "out")]
    assert main(args) == 0
    row = json.loads((tmp_path / "out" / "summary.json").read_text())["benchmarks"]["Synthetic"]
    assert row["n"] == 2 and row["n_errors"] == 0
    records = [json.loads(l) for l in (tmp_path / "out" / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()]
    assert all(len(r["entropy"]) == r["num_new_tokens"] > 0 for r in records), records
    assert all(r["num_video_tokens_kept"] < r["num_video_tokens"] for r in records), records
    layers = {(r["lite_layers"], r["num_layers"]) for r in records}
    hybrid = family == "qwen3_5"
    assert len(layers) == 1 and (lambda p, t: (p < t) == hybrid and p > 0)(*layers.pop())
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert ("Lite dropped video tokens from" in summary) == hybrid


def test_qwen3_vl_prompt_timestamps_are_the_sampled_frames_times(tiny, tmp_path):
    # The data module hands the processor the sampled frames' metadata: each temporal patch's
    # `<t seconds>` text is the mean time of its two frames, not a 24 fps guess.
    import re

    from vreason.data.datamodule import BenchmarkDataModule

    path, _, processor = tiny("qwen3_vl")
    bench = write_synthetic_benchmark(tmp_path, n=1, seed=0, num_frames=20, fps=5.0)
    data = BenchmarkDataModule([str(bench)], model_path=str(path), num_frames=6, max_pixels=112 * 112)
    item = data.predict_dataset()[0]
    assert item["error"] is None, item["error"]
    text = processor.decode(item["inputs"]["input_ids"][0])
    shown = [float(t) for t in re.findall(r"<([\d.]+) seconds>", text)]
    times = item["meta"]["timestamps"]
    assert len(times) == 6 and times[-1] > 2.0
    assert shown == [round((times[i] + times[i + 1]) / 2, 1) for i in range(0, 6, 2)]
