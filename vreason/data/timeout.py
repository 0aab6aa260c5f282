"""A time limit for one video read: the read runs in a forked child that is killed past it.

A stuck decoder cannot be interrupted from inside its own process: decord's end-of-file retry
loops in C++ without returning to Python, so neither a signal handler nor a thread can stop it.
A child process can always be killed. It is forked (`os.fork`, not `multiprocessing`) because
DataLoader workers are daemonic processes, which `multiprocessing` forbids to have children;
the fork shares the parent's memory copy-on-write, so nothing is pickled on the way in. The
result comes back pickled through a pipe. A child that dies (a decoder's segmentation fault)
also becomes a one-line error instead of taking the run with it.
"""
from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import time
from typing import Any, Callable

from vreason.data.errors import VideoError

log = logging.getLogger(__name__)


def _child(write_fd: int, fn: Callable[..., Any], args: tuple) -> None:
    try:
        import torch

        torch.set_num_threads(1)  # as in DataLoader workers: no OpenMP pool in a forked child
        result: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as exc:  # everything goes back to the parent, nothing is raised here
        result = ("error", exc)
    try:
        payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        payload = pickle.dumps(("error", VideoError(f"{type(result[1]).__name__}: {result[1]}")))
    view = memoryview(payload)
    while view:
        view = view[os.write(write_fd, view):]


def call_with_timeout(fn: Callable[..., Any], args: tuple, seconds: float, what: str) -> Any:
    """`fn(*args)` in a forked child, its result or its exception; `VideoError("<what> timed out
    after N s")` when it runs longer than `seconds` (the child is killed). `seconds` 0 calls
    `fn` here, without a limit."""
    if not seconds:
        return fn(*args)
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:  # no memory or process slot for a child: read here, without the limit
        os.close(read_fd)
        os.close(write_fd)
        log.warning("cannot fork a reader (%s); reading without a time limit", exc)
        return fn(*args)
    if pid == 0:  # the child: never returns into the caller's code
        status = 1
        try:
            os.close(read_fd)
            _child(write_fd, fn, args)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks: list[bytes] = []
    finished = False
    try:
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                raise VideoError(f"{what} timed out after {seconds:g} s")
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        finished = True
    finally:
        os.close(read_fd)
        if not finished:  # timed out, or interrupted while waiting
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        code = os.waitstatus_to_exitcode(status)
        reason = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise VideoError(f"{what} crashed ({reason})")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise value
    return value
