"""Writes a tiny, offline Qwen2.5-VL checkpoint folder.

No weights can be downloaded where this project is tested, so tests, the demo and the benchmarks
build a model from a config with random weights and save it the way real checkpoints are laid
out: `config.json` + `generation_config.json`, safetensors weights, a byte-level BPE tokenizer
with Qwen's special tokens (plus `<think> </think> <answer> </answer>` as ordinary added tokens,
so they survive `skip_special_tokens=True` like the real model's text does), image and video
processor configs and a chat template. `vreason.load_model` and transformers'
`AutoProcessor` / `AutoModelForImageTextToText` both load the folder.

The tokenizer's merges are learned from a fixed text (the protocol prompt and a few answer
words, plus any `extra_corpus`) with a deterministic trainer, so the folder is the same for a
given seed and overrides.

`trained_path()` is the folder of the one model here that has learned something: weights
trained by `vreason train-tiny` on synthetic video questions, shipped inside the package.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# Order matters: ids are assigned in this order right after the byte-level vocabulary and its
# merges, and the config's token ids are read back from the tokenizer, never assumed.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TEXT_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# A Qwen-style chat template: a default system turn, content lists with video/image/text parts.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The text the BPE merges are learned from: what the benchmarks' prompts and answers contain.
_CORPUS = [
    "Please think about this question as if you were a human pondering deeply. Engage in an "
    "internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions It's encouraged "
    "to include self-reflection or verification in the reasoning process. Provide your detailed "
    "reasoning between the <think> and </think> tags, and then give your final answer between "
    "the <answer> and </answer> tags.",
    " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> "
    "</answer> tags.",
    " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    " Please transcribe text from the image/video clearly and provide your text answer within "
    "the <answer> </answer> tags.",
    " Please provide your text answer within the <answer> </answer> tags.",
    "Options:\nA. left\nB. right\nC. up\nD. down\nA. red\nB. green\nC. blue\nD. yellow",
    "Which direction does the square move? What colour is the circle? How many shapes are there? "
    "How far does the shape travel, in pixels? The answer is 0 1 2 3 4 5 6 7 8 9 10 3.14 42.",
    "You are a helpful assistant. system user assistant",
]


def trained_path(recipe: str = "default") -> Path:
    """The folder of a shipped trained tiny model (README, "A trained tiny model"): load it with
    `vreason.load_model(trained_path())` like any checkpoint folder. `recipe` "overthink" is the
    model whose chains reflect on most hard clips (`vreason train-tiny --recipe overthink`)."""
    folders = {"default": "trained", "overthink": "trained_overthink"}
    if recipe not in folders:
        raise ValueError(f"no shipped tiny model of recipe {recipe!r}; use one of {', '.join(folders)}")
    return Path(__file__).resolve().parent / folders[recipe]


def _train_bpe(vocab_size: int, extra_corpus: tuple[str, ...] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary and merges learned from `_CORPUS` + `extra_corpus` (deterministic)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(_CORPUS * 4 + list(extra_corpus), trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return dict(state["vocab"]), merges


def _build_tokenizer(bpe_vocab_size: int, extra_corpus: tuple[str, ...] = ()):
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = _train_bpe(bpe_vocab_size, tuple(extra_corpus))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEXT_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer=None, **overrides: Any):
    """A small Qwen2.5-VL config. `overrides` set text-config fields (e.g. `hidden_size`,
    `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`, `intermediate_size`,
    `vocab_size`, `head_dim`-implied `mrope_section`) or, prefixed with `vision_`, vision fields."""
    from transformers import Qwen2_5_VLConfig

    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        hidden_act="silu",
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
        in_channels=3,
        hidden_act="silu",
    )
    mrope_section = overrides.pop("mrope_section", None)
    rope_theta = overrides.pop("rope_theta", 1_000_000.0)
    for key, value in overrides.items():
        if key.startswith("vision_"):
            vision[key[len("vision_"):]] = value
        else:
            text[key] = value
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if mrope_section is None:
        # Qwen splits the rotary half-dim 16:24:24 over (t, h, w); keep that shape at any size.
        half = head_dim // 2
        t = max(1, half // 4)
        h = (half - t) // 2
        mrope_section = [t, h, half - t - h]
    if sum(mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    vision["out_hidden_size"] = text["hidden_size"]

    ids = {}
    if tokenizer is not None:
        conv = tokenizer.convert_tokens_to_ids
        ids = dict(
            image_token_id=conv("<|image_pad|>"),
            video_token_id=conv("<|video_pad|>"),
            vision_start_token_id=conv("<|vision_start|>"),
            vision_end_token_id=conv("<|vision_end|>"),
        )
        text.setdefault("vocab_size", len(tokenizer))
        text["bos_token_id"] = conv("<|endoftext|>")
        text["eos_token_id"] = conv("<|im_end|>")
        text["pad_token_id"] = conv("<|endoftext|>")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section}
    tie = text.pop("tie_word_embeddings")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)


def build_tiny_model(
    path: str | Path,
    seed: int = 0,
    bpe_vocab_size: int = 400,
    dtype: torch.dtype = torch.float32,
    video_max_pixels: int = 112 * 112,
    video_min_pixels: int = 56 * 56,
    extra_corpus: tuple[str, ...] = (),
    **overrides: Any,
) -> Path:
    """Write a tiny Qwen2.5-VL checkpoint folder at `path` and return it.

    `overrides` go to `tiny_config` (text fields, or `vision_*` fields). Weights are random,
    drawn from `seed`; `dtype` is the dtype they are saved in. The video processor keeps frames
    within [video_min_pixels, video_max_pixels] (Qwen's smart resize, sides multiples of 28) so
    that a test video gives a handful of video tokens. `extra_corpus`: more text for the
    tokenizer's merges (the trained model's chains of thought).
    """
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(bpe_vocab_size, tuple(extra_corpus))
    config = tiny_config(tokenizer, **overrides)
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {config.text_config.vocab_size} < tokenizer size {len(tokenizer)}")

    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=video_min_pixels, max_pixels=video_max_pixels),
        video_processor=Qwen2VLVideoProcessor(min_pixels=video_min_pixels, max_pixels=video_max_pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    # Weights from a private generator state: the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(dtype).eval()
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path
