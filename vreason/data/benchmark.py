"""Benchmark files of the evaluation protocol (`vreason.protocol`): samples, prompt text, error samples.

A file is one benchmark: a JSON list (`eval_<name>.json`) or JSONL (one object per line). Every
entry becomes a `Sample`; an entry that cannot be run becomes an error sample with a one-line
reason instead of stopping the run. Only a file that cannot be read as a list of entries at all
raises `BenchmarkError`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vreason.protocol import DATA_TYPES, DEFAULT_TEMPLATE, MULTIPLE_CHOICE, PROBLEM_TYPES, TYPE_SUFFIX

REQUIRED_FIELDS = ("problem", "problem_type", "solution", "path")
_OPTION = re.compile(r"^[A-Z]\.(\s|$)")


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read as a list of entries; the message is one line."""


@dataclass
class Sample:
    """One entry of a benchmark file, ready for the processor's chat template.

    `question` is the full user text (question, options, thinking prompt, type suffix);
    `media_path` is absolute. `error` is None for a runnable sample, else a one-line reason (the
    other fields then hold whatever could be read).
    """

    benchmark: str
    index: int
    key: str
    entry: dict[str, Any] = field(repr=False)
    problem_type: str | None = None
    question: str | None = None
    solution: str | None = None
    media_path: str | None = None
    data_type: str | None = None
    error: str | None = None


def benchmark_name(file: str | os.PathLike) -> str:
    """`eval_MVBench.json` -> `MVBench`, `TempCompass.jsonl` -> `TempCompass`."""
    name = Path(file).name
    for ext in (".jsonl", ".json"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name[len("eval_"):] if name.startswith("eval_") and len(name) > len("eval_") else name


def build_question(problem: str, problem_type: str, options: list[str] | None = None,
                   template: str | None = None) -> str:
    """The user text of docs/protocol.md "Prompt". Options follow the problem as in the anchors'
    script: `"Options:\\n"` then each option with its own trailing newline."""
    template = DEFAULT_TEMPLATE if template is None else template
    question = problem
    if problem_type == MULTIPLE_CHOICE:
        question += "Options:\n" + "".join(f"{option}\n" for option in options or [])
    return template.replace("{Question}", question).replace("{TypeSuffix}", TYPE_SUFFIX[problem_type])


def _read_entries(file: Path) -> list[tuple[dict[str, Any], str | None]]:
    """(entry, parse error) pairs in file order."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark file not found: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"cannot read benchmark file {file}: {exc}") from None
    if file.suffix.lower() == ".jsonl":
        return _read_jsonl(file, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"benchmark file {file} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise BenchmarkError(f"benchmark file {file} must hold a JSON list of samples, got {type(data).__name__}")
    return [(e, None) if isinstance(e, dict) else ({"raw_entry": e}, f"entry is a {type(e).__name__}, not an object")
            for e in data]


def _read_jsonl(file: Path, text: str) -> list[tuple[dict[str, Any], str | None]]:
    out: list[tuple[dict[str, Any], str | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(({"raw_line": line}, f"line {number} is not valid JSON: {exc.msg}"))
            continue
        if isinstance(entry, dict):
            out.append((entry, None))
        else:
            out.append(({"raw_line": line}, f"line {number} is a {type(entry).__name__}, not an object"))
    if out and all(err is not None for _, err in out):
        raise BenchmarkError(f"benchmark file {file} has no JSON object on any line")
    return out


def _media_path(raw: str, root: str) -> tuple[str, str | None]:
    """Absolute media path and an error if it leaves `root` or is not a file. The check is on the
    normalized path, not on the resolved one: symlinks inside the root are followed wherever they
    point, so datasets whose folders or videos are linked in still work."""
    path = os.path.normpath(os.path.join(root, raw))
    if os.path.isabs(raw) or os.path.commonpath([root, path]) != root:
        return path, f"media path {raw!r} escapes the media root {root}"
    if os.path.isdir(path):
        return path, f"media path is a folder, not a file: {path}"
    if not os.path.isfile(path):
        return path, f"media not found: {path}"
    return path, None


def _parse(entry: dict[str, Any], root: str, template: str | None) -> dict[str, Any]:
    """Sample fields of one entry, `error` set to the first problem found."""
    fields: dict[str, Any] = {"error": None}

    def fail(reason: str) -> dict[str, Any]:
        fields["error"] = reason
        return fields

    for name in ("problem_type", "solution", "data_type"):
        value = entry.get(name)
        fields[name] = value if isinstance(value, str) else None
    missing = [name for name in REQUIRED_FIELDS if entry.get(name) is None]
    if missing:
        return fail("missing field " + ", ".join(repr(m) for m in missing))
    for name in REQUIRED_FIELDS:
        if not isinstance(entry[name], str):
            return fail(f"field {name!r} must be a string, got {type(entry[name]).__name__}")
    problem_type = entry["problem_type"]
    if problem_type not in PROBLEM_TYPES:
        return fail(f"unknown problem_type {problem_type!r} (expected one of {', '.join(PROBLEM_TYPES)})")
    data_type = entry.get("data_type", "video")
    if data_type not in DATA_TYPES:
        return fail(f"unknown data_type {data_type!r} (expected video or image)")
    fields["data_type"] = data_type
    options = entry.get("options")
    if problem_type == MULTIPLE_CHOICE:
        if not isinstance(options, list) or not options:
            return fail("multiple choice sample needs a non-empty 'options' list")
        for number, option in enumerate(options, start=1):
            if not isinstance(option, str) or not _OPTION.match(option):
                return fail(f"option {number} {option!r} is not of the form 'A. text'")
    fields["question"] = build_question(entry["problem"], problem_type, options, template)
    fields["media_path"], error = _media_path(entry["path"], root)
    return fail(error) if error else fields


def load_benchmark(file: str | os.PathLike, media_root: str | os.PathLike | None = None,
                   template: str | None = None) -> list[Sample]:
    """Every entry of a protocol file (JSON list, or JSONL for `.jsonl`), in file order.

    Media paths resolve against `media_root` (default: the file's folder). `template` replaces
    `DEFAULT_TEMPLATE` (placeholders `{Question}` and `{TypeSuffix}`). Bad entries become samples
    with `error` set; `BenchmarkError` only when the file is unreadable, not JSON or not a list.
    """
    file = Path(file)
    if template is not None and "{Question}" not in template:
        raise ValueError("prompt template must contain the {Question} placeholder")
    root = os.path.abspath(media_root if media_root is not None else file.parent)
    name = benchmark_name(file)
    samples = []
    for index, (entry, read_error) in enumerate(_read_entries(file)):
        fields = {"error": read_error} if read_error else _parse(entry, root, template)
        samples.append(Sample(benchmark=name, index=index, key=f"{name}/{index}", entry=entry, **fields))
    return samples
