"""Layer sharding (`device_map`) on what a CPU machine can split over: layers offloaded to disk
under a memory cap, or an explicit per-layer map. Tokens and traces must equal the unsplit model's;
the modules the controller calls directly must stay on a device."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import vreason
from vreason import ControllerConfig, DecodeConfig, VReasonGenerator
from vreason.cli import main
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.models import ModelLoadError
from vreason.models.sharding import controller_modules, plan_device_map
from vreason.models.tiny import build_tiny_model
from vreason.models.tiny_families import TINY_BUILDERS
from test_families import family_inputs

BUILDERS = {"qwen2_5_vl": lambda path, seed: build_tiny_model(path, seed=seed, num_hidden_layers=3), **TINY_BUILDERS}
CONFIGS = [ControllerConfig(mode="switch", every_k=1, lr=0.05), ControllerConfig(mode="switch", every_k=2, lr=0.05, prune_ratio=0.5)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: BUILDERS[name](tmp_path_factory.mktemp(name), seed=4)
            for name in ("qwen2_5_vl", "llava_onevision", "qwen3_vl", "qwen3_5")}


def same_runs(whole, split, processor, configs):
    inputs = family_inputs(processor, seed=5)
    for cfg in configs:
        a = VReasonGenerator(whole, cfg, DecodeConfig(max_new_tokens=8)).generate(**inputs)
        b = VReasonGenerator(split, cfg, DecodeConfig(max_new_tokens=8)).generate(**inputs)
        assert a.updated.any()
        assert torch.equal(a.sequences, b.sequences)
        for trace in ("entropy", "entropy_after", "ema", "alpha", "updated"):
            assert torch.equal(getattr(a, trace), getattr(b, trace)), trace


# LLaVA-OneVision: a split model whose own parameter (image_newline) must stay loaded; Qwen3.5: the
# hybrid cache over devices.
@pytest.mark.parametrize("family", ["llava_onevision", "qwen3_5"])
def test_auto_under_a_cap_offloads_layers_and_changes_nothing(folders, family, tmp_path):
    whole, processor = vreason.load_model(folders[family], dtype="float32", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split, _ = vreason.load_model(folders[family], dtype="float32", device_map="auto", max_memory={"cpu": "300KB"},
                                      offload_folder=tmp_path)
    # Our own plan must not make accelerate warn about it (a user cannot act on that).
    assert not [w for w in caught if "device_map" in str(w.message)], [str(w.message) for w in caught]
    placed = split.hf_device_map
    assert "disk" in placed.values()  # the cap sent part of the model to disk
    num_layers = len(split.model.language_model.layers)
    assert all(placed[name] == "cpu" for name in controller_modules(num_layers))
    same_runs(whole, split, processor, CONFIGS[:1] if family == "qwen3_5" else CONFIGS)


def test_explicit_per_layer_map_changes_nothing(folders, tmp_path):
    # Qwen2.5-VL with its first decoder layer and the vision tower's blocks on disk.
    whole, processor = vreason.load_model(folders["qwen2_5_vl"], dtype="float32", device="cpu")
    text = "model.language_model"
    device_map = {"model.visual.patch_embed": "cpu", "model.visual.rotary_pos_emb": "cpu", "model.visual.blocks": "disk",
                  "model.visual.merger": "cpu", f"{text}.embed_tokens": "cpu", f"{text}.rotary_emb": "cpu",
                  f"{text}.layers.0": "disk", f"{text}.layers.1": "cpu", f"{text}.layers.2": "cpu",
                  f"{text}.norm": "cpu", "lm_head": "cpu"}
    split, _ = vreason.load_model(folders["qwen2_5_vl"], dtype="float32", device_map=device_map, offload_folder=tmp_path)
    assert split.model.language_model.layers[0].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    same_runs(whole, split, processor, CONFIGS)


def test_plan_keeps_the_cap_and_the_controller_modules_together(folders):
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folders["qwen3_vl"], local_files_only=True)
    cap = 600_000
    device_map = plan_device_map(config, torch.float32, {"cpu": cap})
    with init_empty_weights():
        skeleton = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    sizes = compute_module_sizes(skeleton, dtype=torch.float32)
    on_cpu = sum(sizes[name] for name, device in device_map.items() if device == "cpu")
    assert 0 < on_cpu <= cap
    assert set(device_map.values()) == {"cpu", "disk"}
    # Every parameter is placed exactly once.
    covered = [p for p, _ in skeleton.named_parameters() if any(p == k or p.startswith(k + ".") for k in device_map)]
    assert len(covered) == len(list(skeleton.named_parameters()))


@pytest.mark.parametrize("module", ["model.language_model.layers.2", "lm_head"])
def test_offloading_what_the_controller_calls_is_refused(folders, tmp_path, module):
    text = "model.language_model"
    device_map = {"model.visual": "cpu", f"{text}.embed_tokens": "cpu", f"{text}.rotary_emb": "cpu",
                  f"{text}.layers.0": "cpu", f"{text}.layers.1": "cpu", f"{text}.layers.2": "cpu",
                  f"{text}.norm": "cpu", "lm_head": "cpu", module: "disk"}
    with pytest.raises(ModelLoadError, match="is offloaded by the device_map"):
        vreason.load_model(folders["qwen3_vl"], dtype="float32", device_map=device_map, offload_folder=tmp_path)


def test_bad_device_map_values_fail_with_one_line(folders):
    with pytest.raises(ModelLoadError, match="device_map must be 'auto'"):
        vreason.load_model(folders["qwen3_vl"], device_map="everywhere")
    with pytest.raises(ModelLoadError, match="max_memory needs device_map"):
        vreason.load_model(folders["qwen3_vl"], max_memory="1GiB")


def test_predict_with_device_map_auto_gives_the_same_records(folders, tmp_path):
    bench = write_synthetic_benchmark(tmp_path / "data", n=2, seed=3, num_frames=8)
    outputs = []
    for name, extra in (("whole", []), ("auto", ["--model.device_map", "auto"])):
        root = tmp_path / name
        args = ["predict", "--model.model_path", str(folders["qwen2_5_vl"]), "--data.files", f"[{bench}]",
                "--data.num_frames", "4", "--data.max_pixels", str(112 * 112), "--model.decode.max_new_tokens", "6",
                "--model.controller.mode", "switch", "--trainer.accelerator", "cpu",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root), *extra]
        assert main(args) == 0
        lines = (root / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()
        outputs.append([{k: r[k] for k in ("key", "output", "entropy", "alpha", "error")} for r in map(json.loads, lines)])
    assert outputs[0] == outputs[1] and all(r["error"] is None for r in outputs[0])


def test_auto_plans_with_the_checkpoints_dtype(folders):
    # A bf16 checkpoint loaded with dtype="auto" is planned at 2 bytes a weight, not float32's 4.
    from transformers import AutoConfig

    from vreason.models.loading import _weights_dtype

    config = AutoConfig.from_pretrained(folders["qwen3_vl"], local_files_only=True)
    assert _weights_dtype("auto", config) == torch.float32 and _weights_dtype(torch.float16, config) == torch.float16
    config.dtype = "bfloat16"
    assert _weights_dtype("auto", config) == torch.bfloat16


def _full_map(text="model.language_model", **where):
    """A map of the tiny Qwen3-VL (3 decoder layers) placing everything on GPU 0 unless `where`
    (module name with dots as "__") says otherwise."""
    names = ["model.visual", f"{text}.embed_tokens", f"{text}.rotary_emb", f"{text}.layers.0", f"{text}.layers.1",
             f"{text}.layers.2", f"{text}.norm", "lm_head"]
    return {name: where.get(name.replace(".", "__"), 0) for name in names}


@pytest.mark.parametrize("where, message", [
    # the embedding (prompt, switch state, sampler) on another GPU than the lm_head (logits)
    ({"model__language_model__embed_tokens": 1}, "spreads over ['cuda:0', 'cuda:1']"),
    ({"model__language_model__embed_tokens": "cuda:1"}, "the token embedding (model.language_model.embed_tokens) on cuda:1"),
    ({"model__language_model__embed_tokens": "disk"}, "the token embedding (model.language_model.embed_tokens) is offloaded"),
    ({"lm_head": "cpu"}, "lm_head on cpu"),
])
def test_explicit_map_splitting_the_main_modules_is_refused_before_loading(folders, where, message):
    # On a CPU machine a map naming GPUs can only be refused by our check, before any weight is
    # read (accelerate would fail otherwise, on the first cuda placement, with another message).
    with pytest.raises(ModelLoadError) as err:
        vreason.load_model(folders["qwen3_vl"], dtype="float32", device_map=_full_map(**where))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_device_map_check_counts_submodule_and_root_entries():
    from vreason.models.sharding import check_device_map

    text = "model.language_model"
    whole = {"": 0}
    check_device_map(whole, 3)  # everything on one GPU
    check_device_map({**_full_map(), "model.language_model.layers.0": 1, "model.visual": 1}, 3)  # others anywhere
    split_layer = {k: v for k, v in _full_map().items() if k != f"{text}.layers.2"}
    split_layer.update({f"{text}.layers.2.self_attn": 0, f"{text}.layers.2.mlp": 1})
    with pytest.raises(ValueError, match=r"the last decoder layer \(model.language_model.layers.2\) on cuda:0, cuda:1"):
        check_device_map(split_layer, 3)
    check_device_map({"": "cpu", text: 0, "lm_head": 0}, 3)  # the closest entry places a module
    with pytest.raises(ValueError, match=r"the final norm \(model.language_model.norm\) on cuda:1;"):
        check_device_map({"": 0, f"{text}.norm": 1}, 3)


def test_loaded_model_with_its_embedding_off_device_is_refused(folders):
    from vreason.models.sharding import check_placement

    model, _ = vreason.load_model(folders["qwen3_vl"], dtype="float32", device="cpu")
    check_placement(model)
    model.model.language_model.embed_tokens.to("meta")
    with pytest.raises(ValueError, match=r"the token embedding \(model.language_model.embed_tokens\) is offloaded"):
        check_placement(model)
