"""Training data for the tiny model: synthetic clips through the benchmark path, plus chains of thought.

The clips are drawn like `vreason synth` draws them, pass through the same H.264 encoding and
video reader, and become model inputs through the same protocol prompt, chat template and
processor call as in the benchmark data module, so the model is trained on what `vreason
predict` will feed it (`build_pool` checks this on a probe clip against the data module itself).
Each clip is read once and kept as processor output; a
training item appends one chain of thought (drawn afresh for every item index from the seed) to
the prompt, with the loss on the chain's tokens and the end-of-turn token only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark
from vreason.training.chains import chain_of_thought

IGNORE = -100
# The fields of transformers' `VideoMetadata` (as the benchmark data module passes them).
_METADATA_FIELDS = ("total_num_frames", "fps", "width", "height", "duration", "video_backend", "frames_indices")
# Tensors of one sample that batch by concatenation along dim 0 (one row per video / patch).
_VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def _processor_inputs(processor: Any, fields: dict[str, Any], frames: torch.Tensor, meta: dict[str, Any]) -> dict:
    """What `BenchmarkDataset` hands the model for one clip: the protocol question through the
    chat template, frames as they are (no re-sampling, no resize) with their sampling metadata."""
    from vreason.data.benchmark import Sample, build_question
    from vreason.data.items import build_messages

    question = build_question(fields["problem"], fields["problem_type"], fields.get("options"))
    sample = Sample(benchmark="Synthetic", index=0, key="Synthetic/0", entry=fields, problem_type=fields["problem_type"],
                    question=question, data_type="video")
    text = processor.apply_chat_template(build_messages(sample), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[frames], video_metadata=[{k: meta[k] for k in _METADATA_FIELDS}],
                       do_sample_frames=False, do_resize=False, return_tensors="pt")
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def _probe(folder: Path, processor: Any, model_dir: str | Path) -> dict[str, Any]:
    """Metadata of one clip written and read the benchmark way; raises if `_processor_inputs`
    no longer gives what the benchmark data module gives for it (training would then not match
    predict-time inputs)."""
    from vreason.data.datamodule import BenchmarkDataModule
    from vreason.data.video import load_video

    bench = write_synthetic_benchmark(folder / "probe", n=1, seed=0, **TRAINED_CLIPS)
    data = BenchmarkDataModule(files=[str(bench)], model_path=str(model_dir), num_frames=TRAINED_CLIPS["num_frames"])
    data.connect(processor)
    item = data.predict_dataset()[0]
    entry = json.loads(bench.read_text())[0]
    frames, meta = load_video(item["sample"].media_path, num_frames=TRAINED_CLIPS["num_frames"])
    ours = _processor_inputs(processor, entry, frames, meta)
    for key, value in ours.items():
        if not torch.equal(value, item["inputs"][key]):
            raise RuntimeError(f"training inputs differ from the benchmark data module's in {key!r}")
    return meta


def build_pool(folder: str | Path, n: int, seed: int, model_dir: str | Path) -> list[dict[str, Any]]:
    """`n` synthetic clips (kinds in turn, drawn from `seed`) as processor inputs with their kind
    and facts. The clips pass through the benchmark's H.264 encoding and video reader as one
    long mp4 (one encoder run instead of `n`), so they carry the codec's colour bleeding."""
    from transformers import AutoProcessor

    from vreason.data.synthetic import KINDS, encode_mp4, synthetic_clip
    from vreason.data.video import load_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    meta = _probe(folder, processor, model_dir)
    rng = np.random.default_rng(seed)
    t, size = TRAINED_CLIPS["num_frames"], TRAINED_CLIPS["size"]
    drawn = [synthetic_clip(KINDS[i % len(KINDS)], rng, t, size) for i in range(n)]
    encode_mp4(np.concatenate([video for video, _ in drawn]), folder / "pool.mp4", TRAINED_CLIPS["fps"])
    frames, _ = load_video(folder / "pool.mp4", num_frames=n * t, min_pixels=size * size, max_pixels=size * size)
    clips = []
    for i, (_, fields) in enumerate(drawn):
        inputs = _processor_inputs(processor, fields, frames[i * t:(i + 1) * t], meta)
        clips.append({"inputs": inputs, "kind": KINDS[i % len(KINDS)], "facts": fields["facts"]})
    return clips


class ChainDataset(Dataset):
    """Item `i`: clip `i % len(clips)` with a chain of thought drawn from `(seed, i)`, so that
    `length` can exceed the pool and each pass over a clip sees another chain. `chain` writes
    the chain (`chain_of_thought`, or a recipe's own, as `overthink_chain`)."""

    def __init__(self, clips: list[dict[str, Any]], tokenizer: Any, length: int, seed: int = 0,
                 chain: Callable[[str, dict, np.random.Generator], str] = chain_of_thought) -> None:
        self.clips = clips
        self.chain = chain
        self.tokenizer = tokenizer
        self.length = length
        self.seed = seed
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip = self.clips[i % len(self.clips)]
        text = self.chain(clip["kind"], clip["facts"], np.random.default_rng([self.seed, i]))
        target = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos])
        inputs = clip["inputs"]
        prompt = inputs["input_ids"][0]
        item = {
            "input_ids": torch.cat([prompt, target]),
            "labels": torch.cat([torch.full_like(prompt, IGNORE), target]),
            **{k: inputs[k] for k in _VIDEO_KEYS},
        }
        if "mm_token_type_ids" in inputs:  # text tokens are type 0
            types = inputs["mm_token_type_ids"][0]
            item["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(target, dtype=types.dtype)])
        return item


class Collate:
    """Right-padded batch: padding is masked out of attention and ignored by the loss."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)

        def pad(key: str, value: int) -> torch.Tensor:
            rows = [torch.nn.functional.pad(it[key], (0, width - len(it[key])), value=value) for it in items]
            return torch.stack(rows)

        batch = {"input_ids": pad("input_ids", self.pad_id), "labels": pad("labels", IGNORE)}
        lengths = torch.tensor([len(it["input_ids"]) for it in items])
        batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
        if "mm_token_type_ids" in items[0]:
            batch["mm_token_type_ids"] = pad("mm_token_type_ids", 0)
        for key in _VIDEO_KEYS:
            batch[key] = torch.cat([it[key] for it in items])
        return batch
