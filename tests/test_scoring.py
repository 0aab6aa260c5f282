"""Scoring against docs/protocol.md, on hand-written cases whose values were worked out by hand."""
from __future__ import annotations

import pytest

from vreason.scoring import ERROR_OUTPUT, aggregate, extract_answer, score, think_process

MC, NUM, REG = "multiple choice", "numerical", "regression"


def tagged(text: str) -> str:
    return f"<answer>{text}</answer>"


@pytest.mark.parametrize("text, expected", [
    ("<think>hmm</think><answer>B</answer>", "B"),
    ("<answer>\n  B \n</answer>", "B"),                    # across lines, white space stripped
    ("<answer>A</answer> then <answer>B</answer>", "A"),   # the first span
    ("no tags at all ", "no tags at all"),                 # none: the whole text
    ("<answer></answer> 7", "<answer></answer> 7"),        # an empty span counts as none
    ("<answer>unclosed", "<answer>unclosed"),
    ("", ""),
    (None, ""),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_think_process():
    assert think_process("<think>\nlet me think\n</think><answer>B</answer>") == "let me think"
    assert think_process("<answer>B</answer>") == ""


@pytest.mark.parametrize("output, solution, expected", [
    (tagged("B"), tagged("B"), 1.0),
    ("<think>wait</think>\n<answer> B </answer>", tagged("B"), 1.0),
    ("B", tagged("B"), 1.0),                    # missing tags: the whole output is the answer
    ("The answer is B", tagged("B"), 0.0),
    (tagged("b"), tagged("B"), 0.0),            # no case folding
    (tagged("B. red"), tagged("B"), 0.0),
    (tagged("A") + tagged("B"), tagged("B"), 0.0),
    ("<answer></answer>B", tagged("B"), 0.0),
    (ERROR_OUTPUT, tagged("B"), 0.0),
])
def test_multiple_choice(output, solution, expected):
    assert score(output, solution, MC) == expected


@pytest.mark.parametrize("output, solution, expected", [
    (tagged("3"), tagged("3"), 1.0),
    (tagged("3.0"), tagged("3"), 0.0),          # exactly one has a decimal point
    (tagged("3"), tagged("3.0"), 0.0),
    (tagged("3.0"), tagged("3.00"), 1.0),
    (tagged("3.004"), tagged("3.0"), 1.0),      # equal after rounding to 2 decimals
    (tagged("3.006"), tagged("3.0"), 0.0),
    (tagged("1,000"), tagged("1000"), 0.0),     # a comma counts like a decimal point
    (tagged("1,000"), tagged("1,000"), 1.0),    # ... and is removed before parsing
    (tagged("1,000"), tagged("1.000"), 0.0),    # 1000 vs 1
    (tagged("-2"), tagged("-2"), 1.0),
    (tagged("-2"), tagged("2"), 0.0),
    (tagged("0"), tagged("0"), 1.0),
    (tagged("-0"), tagged("0"), 1.0),
    ("4", tagged("4"), 1.0),                    # missing tags
    ("I count 4", tagged("4"), 0.0),            # no number extraction from prose
    (tagged("three"), tagged("3"), 0.0),
    (tagged(""), tagged("3"), 0.0),
    (ERROR_OUTPUT, tagged("3"), 0.0),
])
def test_numerical(output, solution, expected):
    assert score(output, solution, NUM) == expected


@pytest.mark.parametrize("output, solution, expected", [
    (tagged("10"), tagged("10"), 1.0),
    (tagged("10.4"), tagged("10"), 1.0),        # rel 0.04 < 0.05: every threshold
    (tagged("9"), tagged("10"), 0.9),           # rel 0.1: θ = 0.50 … 0.90
    (tagged("-9"), tagged("-10"), 0.9),         # negative ground truth: |gt| in the denominator
    (tagged("12"), tagged("10"), 0.6),          # rel 0.2: θ = 0.50 … 0.75
    (tagged("7"), tagged("10"), 0.4),           # rel 0.3 sits on θ = 0.70 in float32: not below
    ("7", tagged("10"), 0.4),                   # missing tags
    (tagged("5"), tagged("10"), 0.0),           # rel 0.5 is not below 1 - 0.5
    (tagged("10"), tagged("-10"), 0.0),
    (tagged("0"), tagged("0"), 1.0),            # zero ground truth: rel 0 / 1e-8 = 0
    (tagged("1"), tagged("0"), 0.0),            # ... and anything else is off by 1e8
    (tagged("1,000"), tagged("1000"), 1.0),     # no decimal-point rule here; commas removed
    (tagged("3.0"), tagged("3"), 1.0),
    (tagged("about 7"), tagged("10"), 0.0),
    (tagged("seven"), tagged("10"), 0.0),
    (ERROR_OUTPUT, tagged("10"), 0.0),
])
def test_regression_mra_float32(output, solution, expected):
    assert score(output, solution, REG) == pytest.approx(expected, abs=1e-6)


def test_seven_vs_ten_is_float32_not_float64():
    # In float64 the relative error 0.3 would fall below 1 - 0.70 and give 0.5.
    value = score(tagged("7"), tagged("10"), REG)
    assert value == pytest.approx(0.4, abs=1e-6) and value != pytest.approx(0.5)


@pytest.mark.parametrize("problem_type", ["OCR", "free-form", "essay", None])
def test_other_types_score_zero(problem_type):
    assert score(tagged("hello"), tagged("hello"), problem_type) == 0.0


def test_aggregate_per_benchmark_with_errors_in_denominators():
    records = [
        {"benchmark": "A", "problem_type": MC, "reward": 1.0, "error": None},
        {"benchmark": "A", "problem_type": NUM, "reward": 0.0, "error": None},
        {"benchmark": "A", "problem_type": MC, "reward": 0.0, "error": "media not found: x.mp4"},
        {"benchmark": "A", "problem_type": MC, "reward": 1.0, "error": None},
        {"benchmark": "VSI", "problem_type": REG, "reward": 0.4, "error": None},
        {"benchmark": "VSI", "problem_type": REG, "reward": 0.0, "error": "cannot open video"},
        {"benchmark": "VSI", "problem_type": MC, "reward": 1.0, "error": None},
        {"key": "K/3", "problem_type": REG, "reward": 0.9, "error": None},
    ]
    out = aggregate(records)
    assert out["A"] == {"mean_acc": 0.5, "mean_mra": None, "n": 4, "n_errors": 1, "n_acc": 4, "n_mra": 0}
    assert out["VSI"] == {"mean_acc": 1.0, "mean_mra": pytest.approx(0.2), "n": 3, "n_errors": 1, "n_acc": 1, "n_mra": 2}
    assert out["K"]["mean_mra"] == 0.9 and out["K"]["mean_acc"] is None
    assert aggregate([]) == {}
