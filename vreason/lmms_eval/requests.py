"""An lmms-eval chat request to what the project's input path takes, and the batches requests run in.

A chat request's arguments are `(context, doc_to_messages, generation_kwargs, doc_id, task, split)`;
`doc_to_messages(doc)` gives the chat: messages of `{"type": "text" | "image" | "video", ...}`
parts. They become the project's chat (`vreason.data.items.build_messages`' shape: a `{"type":
"video"}` placeholder where the medium goes, the text as it is) and the media in order, which
`vreason.data.items.model_inputs` reads with the project's reader and frame sampling.
"""
from __future__ import annotations

import os
from typing import Any

_MEDIA = ("image", "video")


class UnsupportedRequest(ValueError):
    """A request this model cannot run (audio, a video segment, a remote video); one line."""


def project_chat(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """`(chat, media)`: the messages with each medium replaced by its placeholder, and the media
    as `(kind, path or PIL image)` in the order they appear."""
    chat, media = [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for part in content or []:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind in _MEDIA:
                media.append((kind, _medium(kind, part.get("url", part.get(kind)))))
                parts.append({"type": kind})
            else:
                raise UnsupportedRequest(f"unsupported message part {kind!r}: vreason takes text, images and videos")
        chat.append({"role": message["role"], "content": parts})
    return chat, media


def _medium(kind: str, source: Any) -> Any:
    if isinstance(source, dict):
        if any(key in source for key in ("video_start", "video_end", "start_time", "end_time")):
            raise UnsupportedRequest("video segments (start/end times) are not supported: vreason samples whole videos")
        source = source.get("url") or source.get("path") or source.get(kind)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if kind == "video" and not isinstance(source, str):
        raise UnsupportedRequest(f"a video must be a local file path, got {type(source).__name__}")
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise UnsupportedRequest(f"remote media are not fetched: {source}")
    return source


def plan_batches(keys: list[tuple], order: list[tuple], batch_size: int) -> list[list[int]]:
    """Request indices in batches of at most `batch_size`: requests with equal settings keys
    together, each group in `order` (task, split, doc id); the caller puts results back by index."""
    groups: dict[tuple, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    batches = []
    for members in groups.values():
        members.sort(key=lambda i: order[i])
        batches.extend(members[start:start + batch_size] for start in range(0, len(members), batch_size))
    return batches
