"""Chains of the `overthink` recipe: a model that hesitates where its clip is hard to read.

The shipped model's chains reflect rarely enough that greedy decoding never does, so there is
nothing for a method that cuts over-thinking to cut. These chains are longer (every observation
is said, and a moving shape is also placed in the middle of its path) and reflect **most of the
time** where the clip is genuinely ambiguous (**ours**, all read from what the clip shows): a short
move (under `SHORT_MOVE` pixels, for direction and distance), three or four shapes to count (close
counts), and any distance (an estimate). There the first reflection is drawn with probability
0.85–0.9, so greedy decoding takes it; a second and third follow with a third and a tenth of that.

Most reflections are unneeded, as in the over-thinking the paper measures: the claim after
"Wait, …" repeats the claim before. Only one kind is needed (**ours**): on a close count, one
chain in `MISCOUNT` first misses a shape, then reflects and corrects itself, so the model has seen
a reflection that changes an answer but never prefers the wrong claim (greedy takes the right one).
Every observation is true of the clip, and the answer is always the last claim's.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vreason.data.synthetic import COLOURS, DIRECTIONS, LETTERS
from vreason.training.chains import OPENERS, quadrant, where

SHORT_MOVE = 20  # pixels: moves shorter than this are "short" (the clips move 11–35 pixels)
MISCOUNT = 0.15  # share of close-count chains whose first claim misses a shape
LATER = (1.0, 0.35, 0.1)  # the 1st, 2nd, 3rd reflection's chance, relative to the first's


def first_reflection(kind: str, facts: dict[str, Any]) -> float:
    """The chance of the first "Wait, …" after the claim (**ours**: high where the clip is hard)."""
    if kind == "count":
        return (0.1, 0.3, 0.9, 0.9)[min(facts["count"], 4) - 1]
    short = facts["distance"] < SHORT_MOVE
    if kind == "direction":
        return 0.9 if short else 0.2
    if kind == "colour":
        return 0.15
    return 0.9 if short else 0.6  # distance: an estimate; a short one is harder still


def _middle(facts: dict[str, Any]) -> str:
    """Where the moving shape is a third of the way along its (straight) path."""
    dy, dx = DIRECTIONS[facts["direction"]]
    d = round(facts["distance"] / 3)
    centre = [facts["start"][0] + dy * d, facts["start"][1] + dx * d]
    return f"Then it is at the {where(centre, facts['size'])}."


def _parts(kind: str, facts: dict[str, Any]) -> tuple[list[str], str, str, str]:
    """(observations, claim, reason to reflect, answer) of one question."""
    if kind == "count":
        objects = sorted(facts["objects"], key=lambda o: o["cell"])
        seen = [f"I see a {o['colour']} {o['shape']} at the {quadrant(o['cell'], facts['grid'])}." for o in objects]
        reason = "Hmm, the shapes are close. I count them again." if facts["count"] >= 3 else "Hmm, let me check again."
        return seen, f"That makes {facts['count']}.", reason, str(facts["count"])
    size, shape, colour = facts["size"], facts["shape"], facts["colour"]
    path = [f"The {colour} {shape} starts at the {where(facts['start'], size)}.", _middle(facts),
            f"In the last frame it is at the {where(facts['end'], size)}."]
    short = facts["distance"] < SHORT_MOVE
    reason = "Wait, the move is short. Let me look again." if short else "Wait, let me look again."
    if kind == "direction":
        letter = LETTERS[list(DIRECTIONS).index(facts["direction"])]
        return path, f"It moves {facts['direction']}.", reason, letter
    if kind == "colour":
        letter = LETTERS[list(COLOURS).index(colour)]
        seen = [f"A {shape} moves {facts['direction']}.", f"Its colour is {colour}."]
        return seen, f"The moving {shape} is {colour}.", "Wait, let me verify.", letter
    if kind == "distance":
        return path, f"It moves about {facts['distance']} pixels.", reason, str(facts["distance"])
    raise ValueError(f"no chain of thought for question kind {kind!r}")


def overthink_chain(kind: str, facts: dict[str, Any], rng: np.random.Generator) -> str:
    """The assistant's whole answer for one synthetic entry under the `overthink` recipe."""
    observations, claim, reason, answer = _parts(kind, facts)
    words = [OPENERS[rng.integers(len(OPENERS))], *observations]
    if kind == "count" and facts["count"] >= 3 and rng.random() < MISCOUNT:
        words += [f"That makes {facts['count'] - 1}.", "Wait, I may have missed one. I count them again.", *observations]
    p = first_reflection(kind, facts)
    words.append(claim)
    for later in LATER:
        if rng.random() >= p * later:
            break
        words += [reason, *observations, claim]
    words.append(f"So the answer is {answer}.")
    return "<think>" + " ".join(words) + "</think><answer>" + answer + "</answer>"
