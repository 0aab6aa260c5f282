"""One sample to processor-ready model inputs: the item `BenchmarkDataset` yields, and what the
module's out-of-memory retry asks for again with fewer frames (`prepare_item`).

Videos are decoded by `load_video` (sampling and resizing the Qwen way), then handed to the
model's processor as they are: `do_sample_frames=False`, and `do_resize=False` where the
family's tower takes Qwen-sized frames (`sized_for`), so it neither re-samples nor re-sizes them, and the sampling metadata (`video_metadata`) so that
`second_per_grid_ts` reflects the real time between sampled frames. Any per-sample failure
becomes an item with `inputs=None` and a one-line `error`; nothing raises.
"""
from __future__ import annotations

from typing import Any

from vreason.config import VideoConfig
from vreason.data.benchmark import Sample
from vreason.data.errors import VideoError
from vreason.data.video import IMAGE_FACTOR, load_video, smart_resize

# The fields of transformers' `VideoMetadata`, taken from `load_video`'s meta.
_METADATA_FIELDS = ("total_num_frames", "fps", "width", "height", "duration", "video_backend", "frames_indices")

PADDING = {"sample": None, "inputs": None, "error": None, "meta": None, "video": None, "padding": True}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_messages(sample: Sample) -> list[dict[str, Any]]:
    """The user turn: the media first, then the full question text (the anchors' prompt)."""
    media = "image" if sample.data_type == "image" else "video"
    return [{"role": "user", "content": [{"type": media}, {"type": "text", "text": sample.question}]}]


def prepare_item(sample: Sample, processor: Any, video: VideoConfig) -> dict[str, Any]:
    """`{"sample", "inputs", "error", "meta", "video"}` for one sample read with `video`.

    `meta` is `load_video`'s (frame indices, the reader that produced the frames, whether they
    came from the frame cache), None for images and errors; `video` is the config used, so that a
    caller can read the sample again with fewer frames (`VideoConfig.with_num_frames`).
    """
    item: dict[str, Any] = {"sample": sample, "inputs": None, "error": sample.error, "meta": None, "video": video}
    if sample.error:
        return item
    try:
        text = processor.apply_chat_template(build_messages(sample), tokenize=False, add_generation_prompt=True)
        if sample.data_type == "image":
            inputs = _image_inputs(processor, text, sample.media_path, video)
        else:
            frames, meta = load_video(sample.media_path, video)
            item["meta"] = meta
            inputs = processor(
                text=[text], videos=[frames], video_metadata=[{k: meta[k] for k in _METADATA_FIELDS}],
                do_sample_frames=False, do_resize=not sized_for(processor), return_tensors="pt",
            )
        item["inputs"] = dict(inputs)
    except VideoError as exc:
        item["error"] = str(exc)
    except Exception as exc:  # a failing sample must not stop the run; its reason is kept
        item["error"] = f"preprocessing failed: {one_line(exc)}"
    return item


def _image_inputs(processor: Any, text: str, path: str, video: VideoConfig) -> Any:
    """An image sized like qwen-vl-utils' `fetch_image` (PIL bicubic to Qwen's smart size)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    h, w = smart_resize(height, width, IMAGE_FACTOR, video.min_pixels, video.max_pixels)
    image = image.resize((w, h), Image.BICUBIC)
    return processor(text=[text], images=[image], do_resize=not sized_for(processor), return_tensors="pt")


def sized_for(processor: Any) -> bool:
    """Whether frames sized the Qwen2-VL / Qwen2.5-VL way (sides multiples of 28) are what the
    processor's vision tower takes as they are: a processor that merges 14-pixel patches 2 × 2.
    Other families (Qwen3-VL's 16-pixel patches, fixed-size towers such as LLaVA-OneVision's or
    InternVL's) get the frames resized by their own processor, by its own size settings (**ours**:
    `--data.max_pixels` then bounds the decoded frames, not what the model sees)."""
    video = getattr(processor, "video_processor", None) or getattr(processor, "image_processor", None)
    patch, merge = getattr(video, "patch_size", None), getattr(video, "merge_size", None)
    return isinstance(patch, int) and isinstance(merge, int) and patch * merge == IMAGE_FACTOR


def video_record_fields(item: dict[str, Any]) -> dict[str, Any]:
    """What a record says about how its frames were read (README, "Long runs"): `video_reader`
    (decord or pyav; None for images and samples that failed before a read), `from_cache`,
    `num_frames` (frames the model was given) and `retried_with` (the frame count of the
    out-of-memory retry this record comes from, else None)."""
    meta = item.get("meta") or {}
    indices = meta.get("indices")
    return {"video_reader": meta.get("video_backend"), "from_cache": meta.get("from_cache"),
            "num_frames": len(indices) if indices is not None else None, "retried_with": item.get("retried_with")}
