"""NoWait (Wang et al. 2025, arXiv 2506.08343): forbid reflection words while decoding.

The baseline V-Reason is compared with for shorter reasoning: training-free, it sets the score
of every token that would write a reflection word ("wait", "hmm", "alternatively", ...) to -inf,
so the model goes on without reflecting. `NOWAIT_WORDS` is the paper's list (the most frequent
reflection words of a reasoning model's chains); "double-check" is covered by "check".

Which tokens: the paper bans every vocabulary token that spells one of the words, in any case
and with spaces or punctuation around it (" Wait", "wait", ".Hmm"). `banned_token_ids` returns
exactly those: tokens with a run of letters equal to a word, where that run starts the token or
follows a non-letter in it. A small vocabulary splits a word over tokens ("W" + "ait"), which that
set misses; banning every token that could start a word would forbid "W", "A", "N" everywhere, the
multiple-choice answer "A" included. So (**ours**) `NoWaitLogitsProcessor` also tracks, per row,
the letters of the word being written (a small automaton over the last tokens, on the device, no
host sync) and bans a token when it would complete a word of the list: "ait" after "W", "t" after
"Wai". Completing means the letters so far equal the word; a longer word ("waiting", "another" for
"other") is not banned, as in the paper.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch

__all__ = ["NOWAIT_WORDS", "NoWaitLogitsProcessor", "banned_token_ids", "reflection_words"]

NOWAIT_WORDS = ("wait", "alternatively", "hmm", "but", "however", "alternative", "another", "check", "oh", "maybe",
                "verify", "other", "again", "now", "ah", "any")
_LETTERS = re.compile(r"[^\W\d_]+")
_NONE, _BOUNDARY = 0, 1  # automaton states: inside a word that cannot become a listed one; between words


def reflection_words(text: str, words: Sequence[str] = NOWAIT_WORDS) -> list[str]:
    """The listed words written in `text` (whole words, any case): what NoWait must leave out."""
    listed = set(words)
    return [w for w in (m.group(0).lower() for m in _LETTERS.finditer(text)) if w in listed]


def _token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return list(texts) + [""] * (vocab_size - n)


def _tables(texts: list[str], words: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(transition [states, vocab] long, ban [states, vocab] bool) of the word automaton. States:
    0 none, 1 boundary, then every prefix of a listed word (the word's letters written so far)."""
    listed = {w.lower() for w in words}
    prefixes = sorted({w[:i] for w in listed for i in range(1, len(w) + 1)})
    index = {p: i + 2 for i, p in enumerate(prefixes)}
    index[""] = _BOUNDARY
    states, vocab = len(prefixes) + 2, len(texts)
    default = torch.full((vocab,), _BOUNDARY, dtype=torch.long)
    static = torch.zeros(vocab, dtype=torch.bool)
    overrides: list[tuple[int, int, int]] = []  # (state, token, next state)
    bans: list[tuple[int, int]] = []  # (state, token)
    for t, text in enumerate(texts):
        runs = [(m.start(), m.end(), m.group(0).lower()) for m in _LETTERS.finditer(text)]
        if not runs:
            continue  # no letters: the word ends, boundary (or nothing decoded: treated alike)
        lead = runs[0][2] if runs[0][0] == 0 else ""
        static[t] = any(run in listed for start, _, run in runs if start > 0)
        if lead:  # the token's first letters continue the word being written
            for word in listed:
                if word.endswith(lead) and word[: len(word) - len(lead)] in index:
                    bans.append((index[word[: len(word) - len(lead)]], t))
        if runs[-1][1] < len(text):
            continue  # ends on a non-letter: boundary
        if len(runs) == 1 and lead:  # letters only: the state grows by them where a prefix allows
            default[t] = _NONE
            for word in listed:
                for i in range(len(word) - len(lead) + 1):
                    if word.startswith(lead, i):
                        overrides.append((index[word[:i]], t, index[word[: i + len(lead)]]))
        else:  # a new word starts inside the token
            default[t] = index.get(runs[-1][2], _NONE)
    transition = default.expand(states, vocab).clone()
    ban = static.expand(states, vocab).clone()
    for state, t, nxt in overrides:
        transition[state, t] = nxt
    for state, t in bans:
        ban[state, t] = True
    return transition, ban


def banned_token_ids(tokenizer: Any, words: Sequence[str] = NOWAIT_WORDS) -> list[int]:
    """The paper's banned set: tokens that spell a listed word on their own (between words)."""
    texts = _token_texts(tokenizer, len(tokenizer))
    _, ban = _tables(texts, words)
    return torch.nonzero(ban[_BOUNDARY]).flatten().tolist()


class NoWaitLogitsProcessor:
    """A transformers `LogitsProcessor`: `processor(input_ids[B, n], scores[B, V]) -> scores` with
    the tokens that would write a listed word set to -inf. Stateless: each call reads the word
    being written from the last `longest word + 1` tokens of `input_ids` (a word that started
    earlier is longer than any listed word), so rows may join, leave or restart freely."""

    def __init__(self, tokenizer: Any, words: Sequence[str] = NOWAIT_WORDS) -> None:
        if not words:
            raise ValueError("NoWait needs at least one word to ban")
        self.tokenizer = tokenizer
        self.words = tuple(w.lower() for w in words)
        self.window = max(len(w) for w in self.words) + 1
        self._tables: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(transition, ban) for scores of `vocab_size` columns on `device` (built once each)."""
        key = (vocab_size, str(device))
        if key not in self._tables:
            transition, ban = _tables(_token_texts(self.tokenizer, vocab_size), self.words)
            self._tables[key] = (transition.to(device), ban.to(device))
        return self._tables[key]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        transition, ban = self.tables(scores.shape[-1], scores.device)
        recent = input_ids[:, -self.window:].to(scores.device)
        start = _NONE if input_ids.shape[1] >= self.window else _BOUNDARY
        state = torch.full((scores.shape[0],), start, dtype=torch.long, device=scores.device)
        for j in range(recent.shape[1]):
            state = transition[state, recent[:, j]]
        return scores.masked_fill(ban[state], -float("inf"))
