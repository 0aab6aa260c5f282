"""Protocol files: prompts exactly as docs/protocol.md, media resolution, and one error sample with a
clear reason per broken entry while every good sample comes through."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vreason.data import Sample, load_benchmark
from vreason.data.benchmark import DEFAULT_TEMPLATE, BenchmarkError, benchmark_name
from vreason.data.synthetic import encode_mp4

# docs/protocol.md's prompt, typed out independently of the module under test.
THINK = (
    "Please think about this question as if you were a human pondering deeply. Engage in an internal dialogue "
    "using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other "
    "natural language thought expressions It's encouraged to include self-reflection or verification in the "
    "reasoning process. Provide your detailed reasoning between the <think> and </think> tags, and then give "
    "your final answer between the <answer> and </answer> tags."
)
MC_SUFFIX = " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
NUM_SUFFIX = " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."
OCR_SUFFIX = (" Please transcribe text from the image/video clearly and provide your text answer within the "
              "<answer> </answer> tags.")
FREE_SUFFIX = " Please provide your text answer within the <answer> </answer> tags."


def good(path: str, **over) -> dict:
    entry = {"problem_id": 1, "problem": "Which way does it move?", "problem_type": "multiple choice",
             "options": ["A. left", "B. right"], "solution": "<answer>B</answer>", "data_type": "video",
             "path": path, "source": "unit"}
    entry.update(over)
    return entry


@pytest.fixture()
def root(tmp_path):
    """A media root with one real clip under a sub-folder, like the protocol's `./MVBench/x.mp4`."""
    (tmp_path / "Clips").mkdir()
    encode_mp4(np.zeros((4, 32, 32, 3), dtype=np.uint8), tmp_path / "Clips" / "a.mp4", 4.0)
    return tmp_path


def write_json(path: Path, entries) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_prompts_exactly_as_protocol(root):
    entries = [
        good("./Clips/a.mp4"),
        good("./Clips/a.mp4", problem="How many?", problem_type="numerical", options=None, solution="<answer>3</answer>"),
        good("./Clips/a.mp4", problem="How far?", problem_type="regression", solution="<answer>3.5</answer>"),
        good("./Clips/a.mp4", problem="Read it.", problem_type="OCR", solution="<answer>hi</answer>"),
        good("./Clips/a.mp4", problem="Describe.", problem_type="free-form", solution="<answer>x</answer>"),
    ]
    samples = load_benchmark(write_json(root / "eval_MVBench.json", entries))
    assert [s.error for s in samples] == [None] * 5
    assert samples[0].question == "Which way does it move?Options:\nA. left\nB. right\n\n" + THINK + MC_SUFFIX
    assert samples[1].question == "How many?\n" + THINK + NUM_SUFFIX
    assert samples[2].question == "How far?\n" + THINK + NUM_SUFFIX
    assert samples[3].question == "Read it.\n" + THINK + OCR_SUFFIX
    assert samples[4].question == "Describe.\n" + THINK + FREE_SUFFIX
    s = samples[0]
    assert (s.benchmark, s.index, s.key) == ("MVBench", 0, "MVBench/0")
    assert s.media_path == str(root / "Clips" / "a.mp4")
    assert (s.problem_type, s.solution, s.data_type) == ("multiple choice", "<answer>B</answer>", "video")
    assert s.entry == entries[0]  # passed through untouched, extra fields included
    assert [x.key for x in samples] == [f"MVBench/{i}" for i in range(5)]


def test_template_override_and_default(root):
    path = write_json(root / "eval_X.json", [good("Clips/a.mp4")])
    custom = load_benchmark(path, template="Q: {Question} {not a placeholder}|{TypeSuffix}")[0]
    assert custom.question == "Q: Which way does it move?Options:\nA. left\nB. right\n {not a placeholder}|" + MC_SUFFIX
    assert DEFAULT_TEMPLATE == "{Question}\n" + THINK + "{TypeSuffix}"
    with pytest.raises(ValueError, match="Question"):
        load_benchmark(path, template="no placeholder")


def test_mixed_file_good_samples_and_one_clear_error_per_bad_entry(root, tmp_path):
    (root / "Clips" / "corrupt.mp4").write_bytes(b"\x00" * 100)  # exists: its failure shows at decoding
    outside = tmp_path.parent / "outside.mp4"
    entries = [
        good("./Clips/a.mp4"),                                    # 0 good
        good("./Clips/missing.mp4"),                              # 1 missing video
        good("./Clips/corrupt.mp4"),                              # 2 corrupted: fine here, error when decoded
        good("../outside.mp4"),                                   # 3 escapes the root
        {k: v for k, v in good("./Clips/a.mp4").items() if k != "solution"},  # 4 no solution
        good("./Clips/a.mp4", problem_type="essay"),              # 5 unknown problem type
        good("./Clips/a.mp4", options=["left", "right"]),         # 6 options not "A. text"
        good("./Clips/a.mp4", problem_type="numerical", options=None, solution="<answer>2</answer>"),  # 7 good
        good("/etc/passwd"),                                      # 8 absolute path
        good("./Clips/a.mp4", problem=3),                         # 9 wrong field type
        good("./Clips/a.mp4", data_type="audio"),                 # 10 unknown data type
        good("./Clips/a.mp4", options=None),                      # 11 multiple choice without options
        "not an object",                                          # 12
    ]
    outside.write_bytes(b"x")
    try:
        samples = load_benchmark(write_json(root / "eval_Mixed.json", entries))
    finally:
        outside.unlink()
    assert len(samples) == len(entries)
    errors = {s.index: s.error for s in samples if s.error}
    assert sorted(errors) == [1, 3, 4, 5, 6, 8, 9, 10, 11, 12]
    assert errors[1] == f"media not found: {root / 'Clips' / 'missing.mp4'}"
    assert errors[3] == f"media path '../outside.mp4' escapes the media root {root}"
    assert errors[4] == "missing field 'solution'"
    assert errors[5].startswith("unknown problem_type 'essay'")
    assert errors[6] == "option 1 'left' is not of the form 'A. text'"
    assert "escapes the media root" in errors[8]
    assert errors[9] == "field 'problem' must be a string, got int"
    assert errors[10].startswith("unknown data_type 'audio'")
    assert errors[11] == "multiple choice sample needs a non-empty 'options' list"
    assert errors[12] == "entry is a str, not an object" and samples[12].entry == {"raw_entry": "not an object"}
    assert all("\n" not in e for e in errors.values())
    assert samples[2].error is None and samples[2].media_path == str(root / "Clips" / "corrupt.mp4")
    assert samples[7].error is None and samples[7].problem_type == "numerical"
    # What could be read stays with the error sample (for the output record).
    assert samples[5].solution == "<answer>B</answer>" and samples[5].entry == entries[5]


def test_media_root_and_symlinked_media(root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("store")
    (elsewhere / "real.mp4").write_bytes((root / "Clips" / "a.mp4").read_bytes())
    (root / "Clips" / "link.mp4").symlink_to(elsewhere / "real.mp4")
    bench_dir = tmp_path_factory.mktemp("bench")
    path = write_json(bench_dir / "eval_Y.json", [good("./Clips/a.mp4"), good("./Clips/link.mp4")])
    assert load_benchmark(path)[0].error.startswith("media not found")  # default root: the file's folder
    samples = load_benchmark(path, media_root=root)
    assert [s.error for s in samples] == [None, None]
    assert samples[1].media_path == str(root / "Clips" / "link.mp4")


def test_jsonl_with_blank_and_unparsable_lines(root):
    lines = [json.dumps(good("Clips/a.mp4")), "", "{not json", "[1, 2]", json.dumps(good("Clips/a.mp4", problem_id=2))]
    path = root / "TempCompass.jsonl"
    path.write_text("\n".join(lines) + "\n")
    samples = load_benchmark(path)
    assert [s.key for s in samples] == [f"TempCompass/{i}" for i in range(4)]
    assert [s.error is None for s in samples] == [True, False, False, True]
    assert samples[1].error.startswith("line 3 is not valid JSON") and samples[1].entry == {"raw_line": "{not json"}
    assert samples[2].error == "line 4 is a list, not an object"
    assert isinstance(samples[0], Sample) and samples[3].entry["problem_id"] == 2


@pytest.mark.parametrize("name, content, message", [
    ("eval_A.json", "{not json", "is not valid JSON"),
    ("eval_A.json", '{"a": 1}', "must hold a JSON list of samples, got dict"),
    ("eval_A.jsonl", "garbage\nmore garbage\n", "has no JSON object on any line"),
    ("eval_A.json", b"\xff\xfe\x00bad", "cannot read benchmark file"),
])
def test_unreadable_files_raise_one_line_benchmark_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BenchmarkError, match=message) as err:
        load_benchmark(path)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_missing_file_and_empty_list(tmp_path):
    with pytest.raises(BenchmarkError, match="benchmark file not found"):
        load_benchmark(tmp_path / "eval_None.json")
    assert load_benchmark(write_json(tmp_path / "eval_Empty.json", [])) == []


@pytest.mark.parametrize("file, name", [("eval_MVBench.json", "MVBench"), ("dir/eval_VSI-Bench.jsonl", "VSI-Bench"),
                                        ("TempCompass.json", "TempCompass"), ("eval_.json", "eval_")])
def test_benchmark_name(file, name):
    assert benchmark_name(file) == name


def test_symlinked_dataset_folder_is_followed_and_escapes_stay_refused(root, tmp_path_factory):
    # People link their dataset folders into the media root: the link is followed wherever it
    # points. `..` (even one that lands back inside) and absolute paths stay refused.
    store = tmp_path_factory.mktemp("store")
    (store / "Linked").mkdir()
    (store / "Linked" / "vidéo 日本.mp4").write_bytes((root / "Clips" / "a.mp4").read_bytes())
    (root / "Linked").symlink_to(store / "Linked", target_is_directory=True)
    (root / "Clips" / "folder.mp4").mkdir()
    entries = [good("./Linked/vidéo 日本.mp4"), good("Linked/../Linked/vidéo 日本.mp4"), good("../x/Clips/a.mp4"),
               good(str(root / "Clips" / "a.mp4")), good("./Clips/folder.mp4")]
    samples = load_benchmark(write_json(root / "eval_Links.json", entries))
    assert samples[0].error is None and samples[0].media_path == str(root / "Linked" / "vidéo 日本.mp4")
    assert samples[1].error is None  # normalized inside the root
    assert "escapes the media root" in samples[2].error and "escapes the media root" in samples[3].error
    assert samples[4].error == f"media path is a folder, not a file: {root / 'Clips' / 'folder.mp4'}"
