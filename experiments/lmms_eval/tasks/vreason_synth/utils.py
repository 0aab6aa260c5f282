"""The `vreason_synth` task's functions: the question text, the video and the scoring of
`vreason predict` (the Video-R1 protocol's prompt and rules, `vreason.data.benchmark` and
`vreason.scoring`), so the same model gives the same answers and scores through either."""
from pathlib import Path

from vreason.data.benchmark import build_question
from vreason.protocol import REGRESSION
from vreason.scoring import score

DATA = Path(__file__).resolve().parent / "data"


def doc_to_visual(doc):
    return [str((DATA / doc["path"]).resolve())]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return build_question(doc["problem"], doc["problem_type"], doc.get("options"))


def doc_to_target(doc):
    return doc["solution"]


def process_results(doc, results):
    """Every answer scored by the protocol's rule for its problem type: `score` over all
    questions, and the protocol's two columns, `mean_acc` (all but regression) and `mean_mra`
    (regression)."""
    value = float(score(results[0], doc["solution"], doc["problem_type"]))
    entry = {"problem_type": doc["problem_type"], "score": value}
    return {"score": value, "mean_acc": entry, "mean_mra": entry}


def _mean(entries, regression):
    values = [e["score"] for e in entries if (e["problem_type"] == REGRESSION) == regression]
    return sum(values) / len(values) if values else float("nan")


def mean_acc(entries):
    return _mean(entries, regression=False)


def mean_mra(entries):
    return _mean(entries, regression=True)
