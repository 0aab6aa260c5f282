"""`BenchmarkDataModule`: protocol files to processor-ready samples for `trainer.predict`.

Items are made by `prepare_item` (vreason/data/items.py) in the loader's worker processes. The
video settings are one `VideoConfig`, built from the flat `--data.*` keys and passed whole to the
dataset and to `load_video`. The processor is the model's: the module loads it with the model
and hands it over with `connect`; only data-only use (no module) loads it from `model_path`.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Optional, Union

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vreason.config import VideoConfig
from vreason.data.benchmark import Sample, load_benchmark
from vreason.data.frame_cache import FrameCache
from vreason.data.items import PADDING, build_messages, for_decoded_frames, prepare_item  # noqa: F401  (the package face)

# The flat CLI keys' defaults are VideoConfig's own, read from it rather than written again.
_VIDEO = VideoConfig()


def collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items stay separate: samples differ in length, and the model runs them one at a time."""
    return list(batch)


def _sha256(file: str) -> Optional[str]:
    try:
        with open(file, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


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
    """Samples of one or more benchmark files; an item is `prepare_item`'s, index past the end a
    `PADDING` item (`StridedShardSampler`)."""

    def __init__(self, samples: list[Sample], processor: Any, video: VideoConfig) -> None:
        self.samples = samples
        self.processor = processor
        self.video = video

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i >= len(self.samples):
            return dict(PADDING)
        return prepare_item(self.samples[i], self.processor, self.video)


class BenchmarkDataModule(L.LightningDataModule):
    """One predict dataloader over every sample of `files`, in file order.

    `setup()` reads every benchmark file, so a broken one stops the run before the model loads.
    `skip_samples(keys)` before `predict_dataloader()` drops finished samples (a resume).

    Args:
        files: benchmark files (JSON list or JSONL), one benchmark each, names differing; one path
            or a list of paths.
        media_root: folder media paths are relative to (null: each file's folder).
        model_path: local model folder the processor is loaded from when no model is connected
            (set with --model.model_path).
        num_frames: frames per video, sampled uniformly (rounded to even); fps, when set, wins.
        fps: frames per second of video instead of a fixed count (null: use num_frames).
        max_pixels: per-frame pixel bound (images use it too).
        min_pixels: per-frame lower pixel bound.
        min_frames: lower bound on the count fps gives.
        max_frames: upper bound on the count fps gives.
        num_threads: decoder threads per read (0: the decoder's choice).
        video_reader: auto (decord, PyAV where decord fails), decord or pyav.
        video_timeout: seconds one read may take before the sample becomes an error record (0: no limit).
        frame_cache: folder of decoded, resized frames reused by later runs (null: no cache).
        num_workers: loader processes decoding videos (0: in the main process).
        batch_size: samples decoded together (Qwen2.5-VL / Qwen2-VL; other families run them one by one).
        template: prompt template overriding the protocol's (placeholders {Question}, {TypeSuffix}).
    """

    def __init__(self, files: Union[str, list[str]], media_root: Optional[str] = None, model_path: Optional[str] = None,
                 num_frames: Optional[int] = _VIDEO.num_frames, fps: Optional[float] = _VIDEO.fps,
                 max_pixels: int = _VIDEO.max_pixels, min_pixels: int = _VIDEO.min_pixels,
                 min_frames: int = _VIDEO.min_frames, max_frames: int = _VIDEO.max_frames,
                 num_threads: int = _VIDEO.num_threads, video_reader: str = _VIDEO.video_reader,
                 video_timeout: float = _VIDEO.video_timeout, frame_cache: Optional[str] = _VIDEO.frame_cache,
                 num_workers: int = 0, batch_size: int = 1, template: Optional[str] = None) -> None:
        super().__init__()
        if isinstance(files, (str, os.PathLike)):
            files = [os.fspath(files)]
        if not files:
            raise ValueError("data.files needs at least one benchmark file")
        if batch_size < 1 or num_workers < 0:
            raise ValueError("data.batch_size must be >= 1 and data.num_workers >= 0")
        self.video = VideoConfig(num_frames=num_frames, fps=fps, max_pixels=max_pixels, min_pixels=min_pixels,
                                 min_frames=min_frames, max_frames=max_frames, num_threads=num_threads,
                                 video_reader=video_reader, video_timeout=video_timeout, frame_cache=frame_cache)
        self.save_hyperparameters()
        self.files = [os.fspath(f) for f in files]
        self.media_root = media_root
        self.model_path = model_path
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.template = template
        self._skip: set[str] = set()
        self._processor: Any = None
        self._samples: list[Sample] | None = None

    def video_config(self) -> VideoConfig:
        """The video settings every sample is read with."""
        return self.video

    def connect(self, processor: Any) -> None:
        """Use the model's processor (loaded once, with the model) instead of loading another,
        set up for frames `load_video` decoded (`for_decoded_frames`)."""
        self._processor = for_decoded_frames(processor)

    def run_settings(self) -> dict[str, Any]:
        """What of the data determines the records, as plain values (the writer's resume key and
        the summary's header): each benchmark file with a SHA-256 of its content (None when
        unreadable), the media root (absolute; None for each file's folder), the prompt template
        and the video settings that decide the frames (`VideoConfig.sampling()`, under their
        `--data.*` names). The time limit, the frame cache and the decoder threads change how a
        run goes, not its records, so they are left out: a resume may change them."""
        return {
            "files": [{"path": f, "sha256": _sha256(f)} for f in self.files],
            "media_root": os.path.abspath(self.media_root) if self.media_root is not None else None,
            "template": self.template,
            **self.video.sampling(),
        }

    def setup(self, stage: str) -> None:
        """Read every benchmark file now: Lightning calls this before the model loads, so a file
        that is not JSON or not a list of samples stops the run in seconds (`BenchmarkError`),
        not after minutes of loading a large model."""
        self.samples  # noqa: B018 (loads and checks once)

    def skip_samples(self, keys: set[str]) -> int:
        """Drop these sample keys (finished by an earlier run) before `predict_dataloader()`
        shards the rest, so a resumed run never decodes finished samples' videos. Returns how
        many samples remain to run."""
        self._skip = set(keys)
        return sum(s.key not in self._skip for s in self.samples)

    @property
    def samples(self) -> list[Sample]:
        """Every sample of every file, in file order (loaded once; skipped samples included)."""
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

    def processor(self) -> Any:
        """The connected processor, or for data-only use the one in `model_path`."""
        if self._processor is None:
            if not self.model_path:
                raise ValueError("data.model_path is needed to load the processor when no model is connected")
            from transformers import AutoProcessor

            self.connect(AutoProcessor.from_pretrained(self.model_path, local_files_only=True))
        return self._processor

    def predict_dataset(self) -> BenchmarkDataset:
        todo = [s for s in self.samples if s.key not in self._skip]
        return BenchmarkDataset(todo, self.processor(), self.video)

    def predict_dataloader(self) -> DataLoader:
        if self.video.frame_cache:  # what a killed writer of an earlier run left behind
            FrameCache(self.video.frame_cache).sweep_stale()
        dataset = self.predict_dataset()
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        # Also with one process: the sampler yields at least one (padding) item, so a run whose
        # samples are all finished still reaches the end of predict and writes its merged outputs.
        sampler = StridedShardSampler(dataset, world, trainer.global_rank if trainer is not None else 0)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=collate_items)
