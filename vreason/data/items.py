"""One sample to processor-ready model inputs: the item `BenchmarkDataset` yields, and what the
module's out-of-memory retry asks for again with fewer frames (`prepare_item`); `model_inputs` is
the same path for any chat with its media (the lmms-eval model, `vreason/lmms_eval/`).

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
        media = "image" if sample.data_type == "image" else "video"
        inputs, metas = model_inputs(processor, build_messages(sample), [(media, sample.media_path)], video)
        item["meta"] = metas[0] if metas else None
        item["inputs"] = inputs
    except VideoError as exc:
        item["error"] = str(exc)
    except Exception as exc:  # a failing sample must not stop the run; its reason is kept
        item["error"] = f"preprocessing failed: {one_line(exc)}"
    return item


def model_inputs(processor: Any, messages: list[dict[str, Any]], media: list[tuple[str, Any]],
                 video: VideoConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The processor's inputs for a chat whose `{"type": "video"}` / `{"type": "image"}` entries
    are `media`, in order: `("video", path)` read by `load_video`, `("image", path or PIL image)`
    sized by `sized_image`. Returns the inputs and each video's `load_video` meta. Raises
    `VideoError` (or whatever the processor raises) for the caller to turn into a reason."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    frames, metas, images = [], [], []
    for kind, source in media:
        if kind == "video":
            clip, meta = load_video(source, video)
            frames.append(clip)
            metas.append(meta)
        elif kind == "image":
            images.append(sized_image(source, video))
        else:
            raise ValueError(f"unsupported medium {kind!r} (video or image)")
    kwargs: dict[str, Any] = {}
    if images:
        kwargs["images"] = images
    if frames:
        kwargs.update(videos=frames, video_metadata=[{k: m[k] for k in _METADATA_FIELDS} for m in metas],
                      do_sample_frames=False)
    inputs = processor(text=[text], do_resize=not sized_for(processor), return_tensors="pt", **kwargs)
    return dict(inputs), metas


def sized_image(image: Any, video: VideoConfig) -> Any:
    """An image (a path or a PIL image) sized like qwen-vl-utils' `fetch_image`: RGB, PIL bicubic
    to Qwen's smart size within the pixel bounds."""
    from PIL import Image

    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    else:
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    width, height = image.size
    h, w = smart_resize(height, width, IMAGE_FACTOR, video.min_pixels, video.max_pixels)
    return image.resize((w, h), Image.BICUBIC)


def for_decoded_frames(processor: Any) -> Any:
    """The processor set up for frames decoded by `load_video`, which applies the reference's
    per-frame cap already: the video processor's own cap is turned off (its other uses are
    unaffected). Returns the processor."""
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None and hasattr(video_processor, "cap_pixels_per_frame"):
        video_processor.cap_pixels_per_frame = False
    return processor


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
