"""VReasonGenerator end to end on tiny checkpoints loaded through the real path: `off` equals
transformers' `generate`, stopping, traces, ΔV freshness, and clear errors on bad input."""
from __future__ import annotations

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator, ops
from vreason.models.tiny import build_tiny_model
from vreason.module import VReasonModule
from inputs import video_inputs

CONFIGS = {
    "default": dict(seed=0),
    "gqa4-3layers": dict(seed=5, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1),
    "wide": dict(seed=9, hidden_size=128, num_attention_heads=8, num_key_value_heads=4, intermediate_size=256),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name, cfg in CONFIGS.items():
        path = build_tiny_model(tmp_path_factory.mktemp(name), **cfg)
        out[name] = vreason.load_model(path, device="cpu")
    return out




@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("video_seed", [0, 1])
def test_off_is_token_identical_to_generate(models, name, video_seed):
    model, processor = models[name]
    inputs = video_inputs(processor, seed=video_seed, frames=4 + 2 * video_seed)
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=16)
    res = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=16)).generate(**inputs)
    assert torch.equal(res.sequences, expected)
    assert res.prompt_length == inputs["input_ids"].shape[1] and res.num_new_tokens == 16
    assert not res.updated.any() and torch.equal(res.entropy, res.entropy_after)


def test_off_logits_are_bit_identical_to_generate(models):
    model, processor = models["default"]
    inputs = video_inputs(processor)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=6, return_dict_in_generate=True, output_logits=True)
    res = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=6)).generate(**inputs)
    # The traced entropy is the entropy of generate's own logits, bit for bit.
    expected = torch.stack([ops.entropy(l.float())[0] for l in out.logits])
    assert torch.equal(res.entropy, expected)


def test_off_sampling_matches_generate_with_the_same_seed(models):
    model, processor = models["wide"]
    inputs = video_inputs(processor, seed=3)
    decode = DecodeConfig(max_new_tokens=12, do_sample=True, temperature=0.7, top_k=50, top_p=0.9, min_p=0.01, seed=42)
    torch.manual_seed(decode.seed)
    expected = model.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=0.7, top_k=50, top_p=0.9, min_p=0.01)
    res = VReasonGenerator(model, ControllerConfig(mode="off"), decode).generate(**inputs)
    assert torch.equal(res.sequences, expected)


def test_seed_override_per_sample(models):
    model, processor = models["default"]
    inputs = video_inputs(processor, seed=3)
    gen = VReasonGenerator(model, ControllerConfig(mode="switch"), DecodeConfig(max_new_tokens=12, do_sample=True, seed=1))
    by_config = gen.generate(**inputs)
    assert torch.equal(gen.generate(seed=1, **inputs).sequences, by_config.sequences)
    assert not torch.equal(gen.generate(seed=2, **inputs).sequences, by_config.sequences)


def test_stops_at_any_generation_config_eos_and_keeps_it(models):
    model, processor = models["default"]
    inputs = video_inputs(processor)
    free = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=10)).generate(**inputs)
    new = free.sequences[0, free.prompt_length:].tolist()
    stop_token = new[3]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [saved[0], stop_token]
    try:
        expected = model.generate(**inputs, do_sample=False, max_new_tokens=10)
        res = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=10)).generate(**inputs)
    finally:
        model.generation_config.eos_token_id = saved
    first = new.index(stop_token)
    assert res.stop_reason == "eos" and res.num_new_tokens == first + 1
    assert res.sequences[0, -1].item() == stop_token
    assert torch.equal(res.sequences, expected)
    assert free.stop_reason == "max_new_tokens"


def test_result_traces(models):
    model, processor = models["default"]
    res = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=3, lr=0.05), DecodeConfig(max_new_tokens=7)).generate(
        **video_inputs(processor))
    n = res.num_new_tokens
    assert res.sequences.shape == (1, res.prompt_length + n) and res.sequences.device.type == "cpu"
    for trace in (res.entropy, res.entropy_after, res.ema, res.alpha, res.updated):
        assert trace.shape == (n,) and trace.device.type == "cpu"
    assert res.entropy.dtype == res.ema.dtype == torch.float32 and res.updated.dtype == torch.bool
    assert res.updated.tolist() == [k % 3 == 0 for k in range(n)]
    assert set(res.alpha.tolist()) <= {-1, 1}
    assert torch.equal(res.entropy_after[~res.updated], res.entropy[~res.updated])
    assert not torch.equal(res.entropy_after[res.updated], res.entropy[res.updated])
    # The EMA and α are the switch rule applied to the traced entropies.
    from vreason.switching import switch_trace

    ema, _, alpha = switch_trace(res.entropy, "switch", 0.9)
    assert torch.allclose(res.ema, ema) and res.alpha.tolist() == alpha.to(torch.int8).tolist()
    n_video = int((res.sequences == model.config.video_token_id).sum())
    assert res.num_video_tokens == res.num_video_tokens_kept == n_video and res.skipped_rounds == 0


def test_delta_v_is_fresh_per_sample(models):
    model, processor = models["gqa4-3layers"]
    inputs = video_inputs(processor, seed=4)
    gen = VReasonGenerator(model, ControllerConfig(mode="minimize", every_k=1, lr=0.5), DecodeConfig(max_new_tokens=10))
    first = gen.generate(**inputs)
    second = gen.generate(**inputs)
    fresh = VReasonGenerator(model, gen.controller_config, gen.decode_config).generate(**inputs)
    off = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=10)).generate(**inputs)
    for other in (second, fresh):
        assert torch.equal(first.sequences, other.sequences)
        assert torch.equal(first.entropy, other.entropy) and torch.equal(first.entropy_after, other.entropy_after)
    assert not torch.equal(first.entropy, off.entropy)  # the controller did act


def test_inputs_on_cpu_are_moved_and_keys_checked(models):
    model, processor = models["default"]
    inputs = video_inputs(processor)
    gen = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="unexpected input"):
        gen.generate(**inputs, pixel_mask=torch.ones(1))
    no_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    # Rebuilt from input_ids: M-RoPE positions stay right without the processor's ids.
    assert torch.equal(gen.generate(**no_types).sequences, gen.generate(**inputs).sequences)


def test_image_only_prompt_controls_the_image_tokens(models):
    model, processor = models["default"]
    image = torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = dict(processor(text=[text], images=[image], return_tensors="pt"))
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=8)
    off = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=8)).generate(**inputs)
    assert torch.equal(off.sequences, expected)
    res = VReasonGenerator(model, ControllerConfig(mode="maximize", every_k=1, lr=1e-2, prune_ratio=0.5),
                           DecodeConfig(max_new_tokens=3)).generate(**inputs)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert res.num_video_tokens == n_image and res.num_video_tokens_kept == n_image - n_image // 2
    assert (res.entropy_after > res.entropy).all()


def test_bad_inputs_fail_with_clear_errors(models):
    model, processor = models["default"]
    inputs = video_inputs(processor)
    gen = VReasonGenerator(model, ControllerConfig(), DecodeConfig(max_new_tokens=2))
    text_only = dict(processor(text=["<|im_start|>user\nhello<|im_end|>\n"], return_tensors="pt"))
    with pytest.raises(ValueError, match="no video tokens"):
        gen.generate(**text_only)
    bad_grid = dict(inputs, video_grid_thw=inputs["video_grid_thw"] * torch.tensor([[1, 2, 1]]))
    with pytest.raises(ValueError, match="video_grid_thw .* implies 64 video tokens but the prompt has 32"):
        gen.generate(**bad_grid)
    batch = dict(inputs, input_ids=inputs["input_ids"].repeat(2, 1))
    with pytest.raises(ValueError, match="batch size 2"):
        gen.generate(**batch)
    padded = dict(inputs, attention_mask=inputs["attention_mask"].clone())
    padded["attention_mask"][0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        gen.generate(**padded)
    no_pixels = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
    with pytest.raises(ValueError, match="pixel_values_videos"):
        gen.generate(**no_pixels)
    with pytest.raises(ValueError, match="unsupported model"):
        VReasonGenerator(torch.nn.Linear(2, 2))


def test_model_folder_without_weights_fails_clearly(tmp_path):
    path = build_tiny_model(tmp_path / "m", seed=0)
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        vreason.load_model(path)


@pytest.fixture(scope="module")
def qwen2_vl(models):
    """A tiny Qwen2-VL (the older family) sharing the default tiny folder's processor."""
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = models["default"][1]
    ids = processor.tokenizer.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(processor.tokenizer),
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")], do_sample=False)
    return model, processor


def test_qwen2_vl_off_equals_generate_and_the_controller_acts(qwen2_vl):
    model, processor = qwen2_vl
    inputs = video_inputs(processor, seed=5)
    hf_inputs = {k: v for k, v in inputs.items() if k != "second_per_grid_ts"}  # Qwen2-VL has no such input
    expected = model.generate(**hf_inputs, do_sample=False, max_new_tokens=10)
    res = VReasonGenerator(model, ControllerConfig(mode="off"), DecodeConfig(max_new_tokens=10)).generate(**inputs)
    assert torch.equal(res.sequences, expected)
    up = VReasonGenerator(model, ControllerConfig(mode="maximize", every_k=1, lr=0.05), DecodeConfig(max_new_tokens=3)).generate(**inputs)
    assert (up.entropy_after - up.entropy > 5e-5).all(), up.entropy_after - up.entropy


def test_switch_rounds_move_entropy_the_way_alpha_says(models):
    model, processor = models["wide"]
    res = VReasonGenerator(model, ControllerConfig(mode="switch", every_k=1, lr=0.05), DecodeConfig(max_new_tokens=12)).generate(
        **video_inputs(processor, seed=6))
    change = res.entropy_after - res.entropy
    assert res.updated.all() and set(res.alpha.tolist()) == {-1, 1}  # both regimes occur
    # Every round moves the entropy the way its α says, by far more than float32 noise (≥ 100 ulps).
    assert torch.equal(torch.sign(change).to(torch.int8), res.alpha) and bool((change.abs() > 5e-5).all()), change


@pytest.mark.parametrize("do_sample", [False, True])
def test_off_with_repetition_penalty_matches_generate(models, do_sample):
    # Real checkpoints ship repetition_penalty=1.05, which generate applies by default; a strong
    # penalty on the tiny model changes the greedy path, so equality checks the rule, not luck.
    model, processor = models["default"]
    inputs = video_inputs(processor, seed=4)
    decode = DecodeConfig(max_new_tokens=16, do_sample=do_sample, temperature=0.8, top_k=50, seed=7,
                          repetition_penalty=1.8)
    plain = model.generate(**inputs, do_sample=False, max_new_tokens=16)
    torch.manual_seed(decode.seed)
    extra = dict(temperature=0.8, top_k=50) if do_sample else {}
    expected = model.generate(**inputs, do_sample=do_sample, max_new_tokens=16, repetition_penalty=1.8, **extra)
    res = VReasonGenerator(model, ControllerConfig(mode="off"), decode).generate(**inputs)
    assert torch.equal(res.sequences, expected)
    if not do_sample:
        assert not torch.equal(expected, plain)


# ---- the wall-clock budget per sample ---------------------------------------------------------


class FakeClock:
    """`time.monotonic` stand-in: each call moves one second on."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("mode", ["off", "switch"])
def test_time_budget_stops_with_reason_time_and_keeps_the_tokens_so_far(models, monkeypatch, mode):
    model, processor = models["default"]
    inputs = video_inputs(processor)
    free = VReasonGenerator(model, ControllerConfig(mode=mode), DecodeConfig(max_new_tokens=10)).generate(**inputs)
    assert free.stop_reason == "max_new_tokens" and free.num_new_tokens == 10
    # The deadline is read once at the start, then once after each token: with a clock that
    # moves 1 s per read and a 3.5 s budget, tokens 1-3 see 101-103 s and token 4 sees 104 s.
    monkeypatch.setattr("vreason.generation.time.monotonic", FakeClock())
    limited = VReasonGenerator(model, ControllerConfig(mode=mode), DecodeConfig(max_new_tokens=10),
                               max_seconds=3.5).generate(**inputs)
    assert limited.stop_reason == "time" and limited.num_new_tokens == 4
    assert torch.equal(limited.sequences, free.sequences[:, : limited.prompt_length + 4])
    assert torch.equal(limited.entropy, free.entropy[:4]) and torch.equal(limited.updated, free.updated[:4])


def test_time_budget_off_by_default_and_checked(models):
    model, processor = models["default"]
    assert VReasonGenerator(model).max_seconds is None
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="max_seconds_per_sample must be > 0"):
            VReasonGenerator(model, max_seconds=bad)
        with pytest.raises(ValueError, match="max_seconds_per_sample must be > 0"):
            VReasonModule("unused", max_seconds_per_sample=bad)


def test_a_tiny_time_budget_still_answers_one_token(models):
    model, processor = models["default"]
    res = VReasonGenerator(model, ControllerConfig(mode="switch"), DecodeConfig(max_new_tokens=10),
                           max_seconds=1e-9).generate(**video_inputs(processor))
    assert res.num_new_tokens == 1 and res.stop_reason == "time" and res.updated.tolist() == [True]
