"""The data side's one error type, shared by the readers, the time limit and `load_video`."""
from __future__ import annotations


class VideoError(RuntimeError):
    """A video that cannot be opened, decoded or read in time; the message is one line and
    becomes the sample's error record."""
