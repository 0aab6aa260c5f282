"""Tiny, offline checkpoint folders for the families beyond Qwen2.5-VL (random weights).

As `tiny.py` does for Qwen2.5-VL, each builder saves a folder the way real checkpoints are laid
out (config, generation config, safetensors, tokenizer, image/video processor configs, chat
template) that `vreason.load_model`, `AutoProcessor` and `AutoModelForImageTextToText` load.
The tokenizer is the Qwen2.5-VL tiny folder's own (learned from the same fixed text, so the
same for a given vocabulary size) plus the family's placeholder tokens; the config's token ids
are read back from it, never assumed.

Vision towers are sized for the synthetic benchmark's 112×112 frames. Each keeps its family's
patch rule: Qwen3-VL and Qwen3.5 merge 16-pixel patches as the real checkpoints do, so their
processors resize the frames `vreason predict` decodes (`vreason.data.items.sized_for`), while
the 14-pixel towers take 112-pixel frames as they are.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["build_tiny_llava_onevision", "build_tiny_qwen3_vl", "build_tiny_internvl", "build_tiny_qwen3_5",
           "TINY_BUILDERS"]

FRAME_SIDE = 112


@functools.lru_cache(maxsize=4)
def _qwen_tokenizer_folder(bpe_vocab_size: int) -> str:
    from vreason.models.tiny import build_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="vreason-tiny-tok-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    build_tiny_model(folder, bpe_vocab_size=bpe_vocab_size, num_hidden_layers=1, vision_depth=1)
    return str(folder)


def _tokenizer(bpe_vocab_size: int, extra_special: list[str] = (), named: dict[str, str] | None = None):
    """The tiny Qwen tokenizer, plus `extra_special` tokens; `named` registers named special tokens
    (e.g. InternVL's `context_image_token`) the family's processor reads as tokenizer attributes."""
    from transformers import AddedToken, AutoTokenizer

    kwargs = {"extra_special_tokens": named} if named else {}
    tok = AutoTokenizer.from_pretrained(_qwen_tokenizer_folder(bpe_vocab_size), local_files_only=True, **kwargs)
    new = [t for t in extra_special if t not in tok.get_vocab()]
    if new:
        tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in new]},
                               replace_extra_special_tokens=False)
    return tok


def _chat_template(image: str, video: str) -> str:
    """Qwen's chat layout with the family's image/video placeholders."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}" + image + "\n"
        "{% elif content['type'] == 'video' %}" + video + "\n"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def _text(tok, **overrides: Any) -> dict:
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096, hidden_act="silu",
                vocab_size=len(tok), bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    text.update({k: v for k, v in overrides.items() if not k.startswith("vision_")})
    return text


def _vision_overrides(overrides: dict) -> dict:
    return {k[len("vision_"):]: v for k, v in overrides.items() if k.startswith("vision_")}


def _save(path: Path, model_cls, config, processor, tok, seed: int, dtype: torch.dtype) -> Path:
    from transformers import GenerationConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model = model.to(dtype).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=False,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


# ---- LLaVA-OneVision ----------------------------------------------------------------------------


def build_tiny_llava_onevision(path: str | Path, seed: int = 0, bpe_vocab_size: int = 400,
                               dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """A LLaVA-OneVision folder: Qwen2 decoder (3 layers, GQA 4:2), SigLIP tower on 112-px frames
    (8×8 patches, pooled to 4×4 = 16 tokens a frame, + 1 newline per video), anyres images."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tok = _tokenizer(bpe_vocab_size, ["<image>", "<video>"])
    side = FRAME_SIDE
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=side, patch_size=14, vision_use_head=False)
    vision.update(_vision_overrides(overrides))
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **_text(tok, **overrides)),
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    size = {"height": side, "width": side}
    template = _chat_template("<image>", "<video>")
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok,
        num_image_tokens=(side // 14) ** 2,
        vision_feature_select_strategy="full",
        chat_template=template,
    )
    return _save(Path(path), LlavaOnevisionForConditionalGeneration, config, processor, tok, seed, dtype)


# ---- Qwen3-VL (dense and MoE) ---------------------------------------------------------------------


def build_tiny_qwen3_vl(path: str | Path, seed: int = 0, bpe_vocab_size: int = 400, dtype: torch.dtype = torch.float32,
                        moe: bool = False, video_max_pixels: int = FRAME_SIDE * FRAME_SIDE,
                        video_min_pixels: int = 56 * 56, **overrides: Any) -> Path:
    """A Qwen3-VL folder (`moe=True`: Qwen3-VL-MoE, 4 experts, 2 per token): Qwen3 decoder with
    q/k norms and interleaved M-RoPE (3 layers, GQA 4:2), a vision tower with DeepStack features
    injected after decoder layer 0 (so the last layer is never a DeepStack layer), and 16-pixel
    patches merged 2 × 2 as in the real checkpoints, so the benchmark path hands its processor
    frames to resize (`vreason.data.items.sized_for`)."""
    import transformers

    tok = _tokenizer(bpe_vocab_size)
    conv = tok.convert_tokens_to_ids
    text = _text(tok, **overrides)
    head_dim = text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [t, h, half - t - h],
                               "mrope_interleaved": True}
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=text["hidden_size"], num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    vision.update(_vision_overrides(overrides))
    prefix = "Qwen3VLMoe" if moe else "Qwen3VL"
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text, vision_config=vision, image_token_id=conv("<|image_pad|>"), video_token_id=conv("<|video_pad|>"),
        vision_start_token_id=conv("<|vision_start|>"), vision_end_token_id=conv("<|vision_end|>"), tie_word_embeddings=False,
    )
    size = {"shortest_edge": video_min_pixels, "longest_edge": video_max_pixels}
    template = _chat_template("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")
    processor = transformers.Qwen3VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2),
        video_processor=transformers.Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2),
        tokenizer=tok,
        chat_template=template,
    )
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    return _save(Path(path), model_cls, config, processor, tok, seed, dtype)


# ---- InternVL ------------------------------------------------------------------------------------


def build_tiny_internvl(path: str | Path, seed: int = 0, bpe_vocab_size: int = 400, dtype: torch.dtype = torch.float32,
                        text_model_type: str = "qwen2", **overrides: Any) -> Path:
    """An InternVL folder: `text_model_type` "qwen2" (InternVL3) or "qwen3" (InternVL3.5, q/k
    norms) decoder of 3 layers, GQA 4:2; an InternViT tower on 112-px tiles, pixel-shuffled to
    4×4 = 16 context tokens a tile (a frame is one tile; images are cropped to tiles)."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = _tokenizer(bpe_vocab_size, named=named)
    side = FRAME_SIDE
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=[side, side], patch_size=[14, 14])
    vision.update(_vision_overrides(overrides))
    text = dict(model_type=text_model_type, **_text(tok, **overrides))
    if text_model_type == "qwen3":
        text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
    seq = (side // 14 // 2) ** 2
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                            image_seq_length=seq, downsample_ratio=0.5, vision_feature_layer=-1,
                            tie_word_embeddings=False)
    size = {"height": side, "width": side}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=4),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tok,
        image_seq_length=seq,
        chat_template=_chat_template("<IMG_CONTEXT>", "<video>"),
    )
    return _save(Path(path), InternVLForConditionalGeneration, config, processor, tok, seed, dtype)


# ---- Qwen3.5 ----------------------------------------------------------------------------------------


def build_tiny_qwen3_5(path: str | Path, seed: int = 0, bpe_vocab_size: int = 400, dtype: torch.dtype = torch.float32,
                       moe: bool = False, video_max_pixels: int = FRAME_SIDE * FRAME_SIDE,
                       video_min_pixels: int = 56 * 56, **overrides: Any) -> Path:
    """A Qwen3.5 folder (`moe=True`: Qwen3.5-MoE, 4 routed experts, 2 per token, plus the gated
    shared expert): a hybrid decoder of 4 layers (linear, linear, full, full: the last is full
    attention, as in the real models, and so is one before it), gated full attention with q/k
    norms and partial rotary (a quarter of head_dim), interleaved M-RoPE, patch-14 vision."""
    import transformers

    tok = _tokenizer(bpe_vocab_size)
    conv = tok.convert_tokens_to_ids
    text = _text(tok, num_hidden_layers=4, **overrides)
    text.setdefault("head_dim", 32)
    text.setdefault("layer_types", ["linear_attention", "linear_attention", "full_attention", "full_attention"])
    rot_half = text["head_dim"] // 4 // 2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
                               "mrope_section": [rot_half - 2 * (rot_half // 3), rot_half // 3, rot_half // 3],
                               "mrope_interleaved": True}
    text.update(linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                linear_num_value_heads=4)
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=text["hidden_size"], num_position_embeddings=64)
    vision.update(_vision_overrides(overrides))
    prefix = "Qwen3_5Moe" if moe else "Qwen3_5"
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text, vision_config=vision, image_token_id=conv("<|image_pad|>"), video_token_id=conv("<|video_pad|>"),
        vision_start_token_id=conv("<|vision_start|>"), vision_end_token_id=conv("<|vision_end|>"), tie_word_embeddings=False,
    )
    size = {"shortest_edge": video_min_pixels, "longest_edge": video_max_pixels}
    template = _chat_template("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")
    processor = transformers.Qwen3VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2),
        video_processor=transformers.Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2),
        tokenizer=tok,
        chat_template=template,
    )
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    return _save(Path(path), model_cls, config, processor, tok, seed, dtype)


TINY_BUILDERS = {"llava_onevision": build_tiny_llava_onevision, "qwen3_vl": build_tiny_qwen3_vl,
                 "qwen3_vl_moe": functools.partial(build_tiny_qwen3_vl, moe=True), "internvl": build_tiny_internvl,
                 "internvl_qwen3": functools.partial(build_tiny_internvl, text_model_type="qwen3"),
                 "qwen3_5": build_tiny_qwen3_5, "qwen3_5_moe": functools.partial(build_tiny_qwen3_5, moe=True)}
