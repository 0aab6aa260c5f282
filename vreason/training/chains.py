"""Chains of thought for the synthetic questions: the text the trained tiny model learns to write.

A chain is `<think> opener, observations, claim, reflections, conclusion </think><answer> … </answer>`,
built from the ground truth a synthetic entry carries (`facts`). Its length is a real variable:
some observations are optional, and after the claim the chain either concludes or reflects
("Wait, let me look again." and the claim once more), up to `MAX_REFLECTIONS` times. The chance to
reflect depends on how hard the clip is (**ours**: a short move, many shapes to count, a distance
to estimate), so the model has to judge that from the video: those are the decision points where
its entropy rises and where V-Reason's controller can change what it does.

Every observation is true of the clip, so a chain never teaches the model to say what it cannot
see; the answer is always the last claim's.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vreason.data.synthetic import COLOURS, DIRECTIONS, LETTERS

MAX_REFLECTIONS = 3
OPENERS = ("Let me think.", "Hmm, let me look at the video.", "Let me look.")
REFLECTIONS = ("Wait, let me look again.", "Hmm, let me check again.", "Wait, let me verify.")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")


def where(centre: list[int], size: int) -> str:
    """Which ninth of the frame a point is in: "top left", "centre", "bottom right", ..."""
    row, col = (min(2, 3 * int(v) // size) for v in centre)
    if row == 1 and col == 1:
        return "centre"
    return f"{ROWS[row]} {COLUMNS[col]}"


def quadrant(cell: list[int], grid: int) -> str:
    """A cell of the counting grid, by its quarter of the frame."""
    row, col = (2 * int(v) // grid for v in cell)
    return f"{('top', 'bottom')[row]} {('left', 'right')[col]}"


def reflect_probability(kind: str, facts: dict[str, Any]) -> float:
    """How likely the chain is to look again after each claim (**ours**: harder clips, more often)."""
    if kind == "direction":
        return 0.55 if facts["distance"] < 18 else 0.15
    if kind == "colour":
        return 0.2
    if kind == "count":
        return 0.1 + 0.12 * facts["count"]
    return 0.4  # distance: an estimate, worth a second look


def _maybe(rng: np.random.Generator, p: float, text: str) -> list[str]:
    return [text] if rng.random() < p else []


def _parts(kind: str, facts: dict[str, Any], rng: np.random.Generator) -> tuple[list[str], str, str, str]:
    """(observations, claim, re-observation for a reflection, answer) of one question."""
    if kind == "count":
        objects = sorted(facts["objects"], key=lambda o: o["cell"])
        seen = [f"I see a {o['colour']} {o['shape']} at the {quadrant(o['cell'], facts['grid'])}." for o in objects]
        return seen, f"That makes {facts['count']}.", "I count them again.", str(facts["count"])
    size, shape, colour = facts["size"], facts["shape"], facts["colour"]
    start = f"The {colour} {shape} starts at the {where(facts['start'], size)}."
    end = f"In the last frame it is at the {where(facts['end'], size)}."
    if kind == "direction":
        letter = LETTERS[list(DIRECTIONS).index(facts["direction"])]
        observations = _maybe(rng, 0.8, start) + _maybe(rng, 0.6, end)
        return observations, f"It moves {facts['direction']}.", end, letter
    if kind == "colour":
        letter = LETTERS[list(COLOURS).index(colour)]
        observations = _maybe(rng, 0.5, f"A {shape} moves {facts['direction']}.")
        return observations, f"The moving {shape} is {colour}.", f"Its colour is {colour}.", letter
    if kind == "distance":
        observations = _maybe(rng, 0.8, start) + _maybe(rng, 0.8, end)
        return observations, f"It moves about {facts['distance']} pixels.", end, str(facts["distance"])
    raise ValueError(f"no chain of thought for question kind {kind!r}")


def chain_of_thought(kind: str, facts: dict[str, Any], rng: np.random.Generator) -> str:
    """The assistant's whole answer for one synthetic entry (`kind`, `facts`), drawn with `rng`."""
    observations, claim, again, answer = _parts(kind, facts, rng)
    words = [OPENERS[rng.integers(len(OPENERS))], *observations, claim]
    p = reflect_probability(kind, facts)
    for _ in range(MAX_REFLECTIONS):
        if rng.random() >= p:
            break
        words += [REFLECTIONS[rng.integers(len(REFLECTIONS))], *_maybe(rng, 0.5, again), claim]
    words.append(f"So the answer is {answer}.")
    return "<think>" + " ".join(words) + "</think><answer>" + answer + "</answer>"


def corpus(seed: int = 0, per_kind: int = 200) -> list[str]:
    """Chains over varied facts: text for the tokenizer's merges (the words chains use)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(per_kind):
        direction = list(DIRECTIONS)[rng.integers(4)]
        colour = list(COLOURS)[rng.integers(4)]
        shape = ("square", "circle")[rng.integers(2)]
        start = [int(v) for v in rng.integers(0, 56, size=2)]
        end = [int(v) for v in rng.integers(0, 56, size=2)]
        moving = dict(direction=direction, colour=colour, shape=shape, distance=int(rng.integers(8, 40)),
                      start=start, end=end, size=56)
        count = int(rng.integers(1, 5))
        cells = [[int(c // 2), int(c % 2)] for c in rng.permutation(4)[:count]]
        objects = [dict(shape=shape, colour=list(COLOURS)[rng.integers(4)], cell=c) for c in cells]
        counting = dict(count=count, objects=objects, grid=2, size=56)
        for kind, facts in (("direction", moving), ("colour", moving), ("distance", moving), ("count", counting)):
            out.append(chain_of_thought(kind, facts, rng))
    return out
