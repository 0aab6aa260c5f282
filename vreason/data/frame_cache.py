"""A folder of decoded, resized frames, so that runs with the same video settings decode each
video once (off, switch and Lite over one benchmark; a second model of the same family; a resume).

An entry is keyed by what decides its frames: the file (resolved path, size, modification time)
and the sampling and pixel settings (`VideoConfig.sampling()`). One file per entry, written to a
temporary name and renamed into place, so ranks sharing the folder never see half an entry and
the last writer of equal entries wins harmlessly. An entry is trusted only when its magic, its
key, its length and its BLAKE2 digest all check out; anything else is a miss, decoded again and
overwritten.

A writer killed between creating its temporary file and renaming it leaves that file behind;
`sweep_stale` (called once per run by the datamodule) removes temporary files older than an hour
(**ours**: a write takes seconds, so anything that old has no living writer).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
import uuid
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"VRFRAMES1\n"
_LENGTH = struct.Struct("<Q")


def cache_key(path: str, sampling: dict[str, Any]) -> str:
    """The entry name of `path` read with `sampling`: changes when the file or a setting does."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    ident = {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sampling": sampling}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _digest(payload: bytes | memoryview) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


class FrameCache:
    """`get(key)` -> (frames `[T, C, H, W]` uint8 array, meta) or None; `put(key, frames, meta)`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.fspath(folder)

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], key + ".frames")

    def sweep_stale(self, max_age_s: float = 3600.0) -> int:
        """Remove temporary files older than `max_age_s` seconds; returns how many went."""
        removed, cutoff = 0, time.time() - max_age_s
        try:
            shards = [e.path for e in os.scandir(self.folder) if e.is_dir()]
        except OSError:  # no cache folder yet
            return 0
        for shard in shards:
            try:
                entries = list(os.scandir(shard))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.name.endswith(".tmp") and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:  # another rank swept it first, or it was renamed into place
                    pass
        if removed:
            log.info("frame cache %s: removed %d stale temporary file(s)", self.folder, removed)
        return removed

    def get(self, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        try:
            with open(self._path(key), "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            if not data.startswith(MAGIC):
                raise ValueError("bad magic")
            start = len(MAGIC) + _LENGTH.size
            (header_length,) = _LENGTH.unpack_from(data, len(MAGIC))
            header = json.loads(data[start:start + header_length])
            payload = memoryview(data)[start + header_length:]
            shape = tuple(int(n) for n in header["shape"])
            if header["key"] != key or len(payload) != int(np.prod(shape)) or _digest(payload) != header["digest"]:
                raise ValueError("key, length or digest mismatch")
            frames = np.frombuffer(payload, dtype=np.uint8).reshape(shape)
        except Exception as exc:  # any damage: decode again, never trust it
            log.warning("frame cache entry %s is damaged (%s); decoding the video again", self._path(key), exc)
            return None
        return frames, header["meta"]

    def put(self, key: str, frames: np.ndarray, meta: dict[str, Any]) -> None:
        """Store an entry; a cache that cannot be written costs speed, never the sample."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        payload = memoryview(frames).cast("B")
        header = json.dumps({"key": key, "shape": list(frames.shape), "digest": _digest(payload), "meta": meta}).encode()
        path = self._path(key)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(MAGIC + _LENGTH.pack(len(header)) + header)
                f.write(payload)
            os.replace(tmp, path)  # atomic: readers see the old entry or the new one, whole
        except OSError as exc:
            log.warning("cannot write frame cache entry %s: %s", path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
