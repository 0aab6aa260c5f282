"""lmms-eval's `until` stop strings, applied to a finished generation.

The decode loop stops at an end-of-turn token or at `max_new_tokens` only. Decoding is causal,
controller rounds included (the state at token k depends on tokens before k alone), so the text
up to a stop string and the tokens it took are exactly those of a generation that had stopped
there (**ours**: applied after generation; the tokens past the stop cost time, not results).
As transformers' stop strings do, generation counts as stopped at the token that completes the
stop string; the text is cut before it, as lmms-eval's wrappers cut it.
"""
from __future__ import annotations

from typing import Callable, Sequence


def _first_stop(text: str, until: Sequence[str]) -> int:
    """Where the earliest stop string starts in `text`, -1 when none occurs."""
    found = [at for at in (text.find(stop) for stop in until) if at >= 0]
    return min(found) if found else -1


def tokens_until(tokens: Sequence[int], decode: Callable[[Sequence[int]], str], marker: Sequence[str]) -> int:
    """The fewest leading tokens whose text contains one of `marker`, or `len(tokens)` when even
    all of them do not. A binary search over prefixes (a longer prefix's text extends a shorter
    one's), so a few decodes per sample."""
    if _first_stop(decode(tokens), marker) < 0:
        return len(tokens)
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if _first_stop(decode(tokens[:mid]), marker) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def apply_stops(text: str, tokens: Sequence[int], decode: Callable[[Sequence[int]], str],
                until: Sequence[str]) -> tuple[str, int]:
    """`(text, output tokens)` of a generation stopped at the first of `until` (text cut before
    it); unchanged when no stop string occurs."""
    at = _first_stop(text, until) if until else -1
    if at < 0:
        return text, len(tokens)
    return text[:at], tokens_until(tokens, decode, until)
