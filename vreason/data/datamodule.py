"""`BenchmarkDataModule`: protocol files to processor-ready samples for `trainer.predict`.

Videos are decoded by `load_video` in the loader's worker processes (sampling and resizing the
Qwen way), then handed to the model's processor as they are: `do_sample_frames=False` and
`do_resize=False` so it neither re-samples nor re-sizes them, and the sampling metadata
(`video_metadata`) so that `second_per_grid_ts` reflects the real time between sampled frames.
Any per-sample failure becomes an item with `inputs=None` and a one-line `error`; nothing raises.
"""
from __future__ import annotations

import os
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vreason.data.benchmark import Sample, load_benchmark
from vreason.data.video import VideoError, load_video, smart_resize

# The fields of transformers' `VideoMetadata`, taken from `load_video`'s meta.
_METADATA_FIELDS = ("total_num_frames", "fps", "width", "height", "duration", "video_backend", "frames_indices")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_messages(sample: Sample) -> list[dict[str, Any]]:
    """The user turn: the media first, then the full question text (PROTOCOL.md "Prompt")."""
    media = "image" if sample.data_type == "image" else "video"
    return [{"role": "user", "content": [{"type": media}, {"type": "text", "text": sample.question}]}]


def collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items stay separate: samples differ in length, and the model runs them one at a time."""
    return list(batch)


PADDING = {"sample": None, "inputs": None, "error": None, "meta": None, "padding": True}


class StridedShardSampler(DistributedSampler):
    """Rank r takes samples r, r + world, r + 2·world, ...: each sample exactly once.

    Lightning's own predict sampler pads shards with repeated samples (a repeated sample would be
    generated and written twice). Here every shard is padded to the same length, at least one,
    with indices past the dataset's end, which the dataset turns into `PADDING` items that the
    module skips. Equal lengths keep every rank in the predict loop: a rank with no batch would
    skip the end-of-predict collectives and leave the others waiting (e.g. a resumed run with
    fewer samples left than processes). Being a `DistributedSampler`, Lightning leaves it alone.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.per_rank = max(1, -(-len(dataset) // num_replicas))

    def __iter__(self):
        return iter(range(self.rank, self.per_rank * self.num_replicas, self.num_replicas))

    def __len__(self) -> int:
        return self.per_rank


class BenchmarkDataset(Dataset):
    """Samples of one or more benchmark files; an item is `{"sample", "inputs", "error", "meta"}`."""

    def __init__(self, samples: list[Sample], processor: Any, num_frames: int | None = 16, fps: float | None = None,
                 max_pixels: int = 200704, min_pixels: int = 3136, min_frames: int = 4, max_frames: int = 768,
                 num_threads: int = 1) -> None:
        self.samples = samples
        self.processor = processor
        # fps, when set, wins over the default frame count (both are CLI keys with defaults).
        self.video_kwargs = dict(num_frames=None if fps is not None else num_frames, fps=fps, max_pixels=max_pixels,
                                 min_pixels=min_pixels, min_frames=min_frames, max_frames=max_frames,
                                 num_threads=num_threads)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i >= len(self.samples):  # shard padding (StridedShardSampler)
            return dict(PADDING)
        sample = self.samples[i]
        item: dict[str, Any] = {"sample": sample, "inputs": None, "error": sample.error, "meta": None}
        if sample.error:
            return item
        try:
            text = self.processor.apply_chat_template(build_messages(sample), tokenize=False, add_generation_prompt=True)
            if sample.data_type == "image":
                inputs = self._image_inputs(text, sample.media_path)
            else:
                frames, meta = load_video(sample.media_path, **self.video_kwargs)
                item["meta"] = meta
                inputs = self.processor(
                    text=[text], videos=[frames], video_metadata=[{k: meta[k] for k in _METADATA_FIELDS}],
                    do_sample_frames=False, do_resize=False, return_tensors="pt",
                )
            item["inputs"] = dict(inputs)
        except VideoError as exc:
            item["error"] = str(exc)
        except Exception as exc:  # a failing sample must not stop the run; its reason is kept
            item["error"] = f"preprocessing failed: {_one_line(exc)}"
        return item

    def _image_inputs(self, text: str, path: str) -> Any:
        """An image sized like qwen-vl-utils' `fetch_image` (PIL bicubic to Qwen's smart size)."""
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
        width, height = image.size
        h, w = smart_resize(height, width, 28, self.video_kwargs["min_pixels"], self.video_kwargs["max_pixels"])
        image = image.resize((w, h), Image.BICUBIC)
        return self.processor(text=[text], images=[image], do_resize=False, return_tensors="pt")


class BenchmarkDataModule(L.LightningDataModule):
    """One predict dataloader over every sample of `files`, in file order.

    files: protocol files (JSON list or JSONL), one benchmark each; names must differ.
    media_root: folder media paths are relative to (default: each file's folder).
    model_path: local model folder the processor is loaded from (`AutoProcessor`).
    num_frames / fps: frames per video by count, or by rate (fps wins when set).
    max_pixels / min_pixels: per-frame pixel bounds (Qwen's smart resize, sides multiples of 28).
    num_workers: loader processes decoding videos. batch_size: items per batch (a list of items).
    template: prompt template overriding the protocol's (placeholders `{Question}`, `{TypeSuffix}`).

    `exclude_keys` (sample keys) may be set before `predict_dataloader()`: those samples are dropped
    before Lightning shards the rest, so a resumed run never decodes finished samples' videos.
    """

    def __init__(self, files: list[str], media_root: str | None = None, model_path: str | None = None,
                 num_frames: int | None = 16, fps: float | None = None, max_pixels: int = 200704,
                 min_pixels: int = 3136, num_workers: int = 0, batch_size: int = 1,
                 template: str | None = None) -> None:
        super().__init__()
        if isinstance(files, (str, os.PathLike)):
            files = [os.fspath(files)]
        if not files:
            raise ValueError("data.files needs at least one benchmark file")
        if num_frames is None and fps is None:
            raise ValueError("set data.num_frames or data.fps")
        if batch_size < 1 or num_workers < 0:
            raise ValueError("data.batch_size must be >= 1 and data.num_workers >= 0")
        self.save_hyperparameters()
        self.files = [os.fspath(f) for f in files]
        self.media_root = media_root
        self.model_path = model_path
        self.num_frames = num_frames
        self.fps = fps
        self.max_pixels = max_pixels
        self.min_pixels = min_pixels
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.template = template
        self.exclude_keys: set[str] = set()
        self.processor: Any = None
        self._samples: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:
        """Every sample of every file, in file order (loaded once; `exclude_keys` not applied)."""
        if self._samples is None:
            samples: list[Sample] = []
            owners: dict[str, str] = {}
            for file in self.files:
                loaded = load_benchmark(file, media_root=self.media_root, template=self.template)
                name = loaded[0].benchmark if loaded else None
                if name is not None and name in owners:
                    raise ValueError(f"benchmark files {owners[name]} and {file} both give benchmark name {name!r}")
                if name is not None:
                    owners[name] = file
                samples.extend(loaded)
            self._samples = samples
        return self._samples

    def _load_processor(self) -> Any:
        if self.processor is None:
            if not self.model_path:
                raise ValueError("data.model_path is needed to load the processor")
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
            video_processor = getattr(self.processor, "video_processor", None)
            if video_processor is not None and hasattr(video_processor, "cap_pixels_per_frame"):
                # Frames arrive sized by load_video, which applies the reference's cap already.
                video_processor.cap_pixels_per_frame = False
        return self.processor

    def predict_dataset(self) -> BenchmarkDataset:
        todo = [s for s in self.samples if s.key not in self.exclude_keys]
        return BenchmarkDataset(todo, self._load_processor(), num_frames=self.num_frames, fps=self.fps,
                                max_pixels=self.max_pixels, min_pixels=self.min_pixels)

    def predict_dataloader(self) -> DataLoader:
        dataset = self.predict_dataset()
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        sampler = StridedShardSampler(dataset, world, trainer.global_rank) if world > 1 else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=collate_items)
