"""The evaluation protocol's constants, in one place: problem types, the prompt and the error
answer. Data (prompts), scoring and metrics all import them from here.

The protocol is Video-R1's evaluation, which the paper's tables use (README, "What a run leaves"):
its prompt is reproduced exactly, its missing full stop included, because a different prompt
gives different numbers. Placeholders are replaced literally, so templates may contain braces.
"""
from __future__ import annotations

MULTIPLE_CHOICE = "multiple choice"
NUMERICAL = "numerical"
REGRESSION = "regression"
OCR = "OCR"
FREE_FORM = "free-form"
PROBLEM_TYPES = (MULTIPLE_CHOICE, NUMERICAL, REGRESSION, OCR, FREE_FORM)

DATA_TYPES = ("video", "image")

# What a sample that could not run is scored as: score 0, kept in the denominator.
ERROR_OUTPUT = "<answer>error</answer>"

THINK_PROMPT = (
    "Please think about this question as if you were a human pondering deeply. Engage in an internal "
    "dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it "
    "down', etc, or other natural language thought expressions It's encouraged to include "
    "self-reflection or verification in the reasoning process. Provide your detailed reasoning between "
    "the <think> and </think> tags, and then give your final answer between the <answer> and </answer> "
    "tags."
)
DEFAULT_TEMPLATE = "{Question}\n" + THINK_PROMPT + "{TypeSuffix}"

_NUMBER_SUFFIX = " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."
TYPE_SUFFIX = {
    MULTIPLE_CHOICE: " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
    NUMERICAL: _NUMBER_SUFFIX,
    REGRESSION: _NUMBER_SUFFIX,
    OCR: " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags.",
    FREE_FORM: " Please provide your text answer within the <answer> </answer> tags.",
}
