"""The tiny checkpoint builder and `load_model`, through the real loading path."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import vreason
from vreason.models import ModelLoadError, load_model
from vreason.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3)


def test_tiny_folder_loads_through_vreason_and_auto_classes(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = vreason.load_model(tiny_dir)
    auto_model = AutoModelForImageTextToText.from_pretrained(tiny_dir, local_files_only=True)
    auto_processor = AutoProcessor.from_pretrained(tiny_dir, local_files_only=True)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not any(p.requires_grad for p in model.parameters())
    for (name, a), (_, b) in zip(model.state_dict().items(), auto_model.state_dict().items()):
        assert torch.equal(a, b), name
    tok = processor.tokenizer
    assert tok.get_vocab() == auto_processor.tokenizer.get_vocab()
    cfg = model.config
    # The config's special ids are the tokenizer's, not assumed numbers.
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert sorted(model.generation_config.eos_token_id) == sorted(
        tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    )
    # <answer> tags are text the scorer reads after skip_special_tokens decoding.
    text = "<think>hmm</think><answer>B</answer>"
    ids = tok(text + "<|im_end|>")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tiny_processor_builds_video_inputs_the_model_runs(tiny_dir):
    model, processor = load_model(tiny_dir)
    frames = torch.randint(0, 256, (4, 3, 56, 56), dtype=torch.uint8)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[frames], return_tensors="pt", do_sample_frames=False)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert (t, h, w) == (2, 4, 4)  # 4 frames / temporal patch 2; 56 px / patch 14
    n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert n_video == t * h * w // 4  # 2x2 spatial merge
    assert "mm_token_type_ids" in inputs
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=1)
    b = build_tiny_model(tmp_path / "b", seed=1)
    c = build_tiny_model(tmp_path / "c", seed=2)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_overrides_reach_the_config(tmp_path):
    path = build_tiny_model(tmp_path, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
                            hidden_size=128, vision_depth=1)
    cfg = json.loads((path / "config.json").read_text())
    text = cfg["text_config"]
    assert (text["num_hidden_layers"], text["num_attention_heads"], text["num_key_value_heads"]) == (3, 8, 4)
    assert sum(text["rope_parameters"]["mrope_section"]) == 128 // 8 // 2
    assert cfg["vision_config"]["depth"] == 1 and cfg["vision_config"]["out_hidden_size"] == 128


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "model folder not found"),
        ("no_config", "has no config.json"),
        ("no_weights", "has no weights"),
        ("bin_only", "only .bin weights"),
        ("wrong_type", "model_type 'llama'"),
        ("no_tokenizer", "has no tokenizer"),
        ("missing_shard", "lacks weight shard"),
    ],
)
def test_incomplete_folders_fail_with_one_line(tiny_dir, tmp_path, breakage, message):
    bad = tmp_path / "bad"
    if breakage != "missing":
        shutil.copytree(tiny_dir, bad)
    if breakage == "no_config":
        (bad / "config.json").unlink()
    elif breakage == "no_weights":
        (bad / "model.safetensors").unlink()
    elif breakage == "bin_only":
        (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    elif breakage == "wrong_type":
        cfg = json.loads((bad / "config.json").read_text())
        cfg["model_type"] = "llama"
        (bad / "config.json").write_text(json.dumps(cfg))
    elif breakage == "no_tokenizer":
        (bad / "tokenizer.json").unlink()
    elif breakage == "missing_shard":
        (bad / "model.safetensors").unlink()
        (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(ModelLoadError) as info:
        load_model(bad)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_dtype_is_a_clear_error(tiny_dir):
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(tiny_dir, dtype="float8")


def test_registry_picks_the_adapter_by_model_type(tiny_dir):
    from vreason.models import ADAPTER_MAPPING, adapter_for, supported_model_types
    from vreason.models.qwen2_5_vl import QwenVLAdapter

    model, _ = load_model(tiny_dir, device="cpu")
    assert isinstance(adapter_for(model), QwenVLAdapter)
    assert supported_model_types() == tuple(ADAPTER_MAPPING)
    model.config.model_type = "llama"
    with pytest.raises(ValueError, match="unsupported model_type 'llama'; supported: qwen2_5_vl"):
        adapter_for(model)


def test_adapter_interface_knows_no_family():
    # The interface module must not import any family's adapter (no import cycle through it).
    import ast
    import inspect

    from vreason.models import adapter

    imported = [n.module for n in ast.walk(ast.parse(inspect.getsource(adapter))) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m and m.startswith("vreason.models.") and m != "vreason.models.adapter"]
