"""The evaluation metrics: protocol scores, token and entropy statistics, the overall row."""
import numpy as np
import pytest

from vreason.metrics import BenchmarkMetric, EvalMetrics, overall_row
from vreason.records import Record
from vreason.scoring import aggregate


def record(bench, index, problem_type="multiple choice", reward=1.0, tokens=3, error=None, entropy=None):
    entropy = entropy if entropy is not None else [0.5 + 0.1 * i for i in range(tokens)]
    return Record(
        key=f"{bench}/{index}", benchmark=bench, index=index, problem_type=problem_type,
        reward=reward, num_new_tokens=tokens, latency_s=0.25 * (index + 1), error=error,
        entropy=entropy, updated=[i % 2 == 0 for i in range(len(entropy))],
    )


RECORDS = [
    record("A", 0, reward=1.0, tokens=4),
    record("A", 1, reward=0.0, tokens=2),
    record("A", 2, reward=0.0, tokens=0, error="video missing", entropy=[]),
    record("V", 0, problem_type="regression", reward=0.4, tokens=5),
    record("V", 1, problem_type="multiple choice", reward=1.0, tokens=1),
    record("V", 2, problem_type="regression", reward=0.9, tokens=3),
]


def test_scores_match_the_protocol_aggregation():
    metrics = EvalMetrics(max_tokens=8, sync_on_compute=False)
    for r in RECORDS:
        metrics.update(r)
    got = metrics.compute()["benchmarks"]
    want = aggregate(r.to_dict() for r in RECORDS)
    assert set(got) == set(want) == {"A", "V"}
    for bench in want:
        for field in ("n", "n_errors", "n_acc", "n_mra"):
            assert got[bench][field] == want[bench][field], (bench, field)
        for field in ("mean_acc", "mean_mra"):
            if want[bench][field] is None:
                assert got[bench][field] is None
            else:
                assert got[bench][field] == pytest.approx(want[bench][field], abs=1e-12)
    assert got["A"]["mean_acc"] == pytest.approx(1 / 3)
    assert got["A"]["mean_mra"] is None and got["A"]["n_errors"] == 1
    assert got["V"]["mean_mra"] == pytest.approx(0.65)


def test_tokens_latency_histogram_and_entropy_curve():
    metric = BenchmarkMetric(max_tokens=8, token_bins=4, sync_on_compute=False)
    recs = [r for r in RECORDS if r.benchmark == "A"]
    for r in recs:
        metric.update(r)
    out = metric.compute()
    # Cost figures over the two answered samples; the error sample (index 2) has no length.
    assert out["n"] == 3 and out["n_answered"] == 2
    assert out["mean_tokens"] == pytest.approx(3.0)
    assert out["mean_latency_s"] == pytest.approx((0.25 + 0.5) / 2)
    assert out["tokens_per_s"] == pytest.approx(6 / 0.75)
    # tokens 4, 2 in bins of width 2 over [0, 8]
    assert out["tokens_hist"]["counts"] == [0, 1, 1, 0]
    assert out["tokens_hist"]["edges"] == [0, 2, 4, 6, 8]
    traces = [r.entropy for r in recs if r.entropy]
    curve = out["entropy_curve"]
    assert curve["count"] == [2, 2, 1, 1]
    for k in range(4):
        vals = np.array([t[k] for t in traces if len(t) > k])
        assert curve["mean"][k] == pytest.approx(vals.mean())
        assert curve["std"][k] == pytest.approx(vals.std(), abs=1e-7)
    assert out["mean_entropy"] == pytest.approx(np.mean([x for t in traces for x in t]))
    assert out["mean_rounds"] == pytest.approx((2 + 1) / 2)


def test_traces_longer_than_the_curve_are_cut():
    metric = BenchmarkMetric(max_tokens=3, sync_on_compute=False)
    metric.update(record("A", 0, tokens=10))
    assert len(metric.compute()["entropy_curve"]["mean"]) == 3


def test_overall_row_averages_score_columns_like_the_paper():
    metrics = EvalMetrics(max_tokens=8, sync_on_compute=False)
    for r in RECORDS:
        metrics.update(r)
    out = metrics.compute()
    per = out["benchmarks"]
    # A contributes its accuracy, V both its accuracy and its MRA (as VSI-Bench in the table).
    want = (per["A"]["mean_acc"] + per["V"]["mean_acc"] + per["V"]["mean_mra"]) / 3
    assert out["overall"]["mean_score"] == pytest.approx(want)
    assert out["overall"]["n"] == 6 and out["overall"]["n_errors"] == 1 and out["overall"]["n_answered"] == 5
    answered = [r for r in RECORDS if not r.error]
    assert out["overall"]["mean_tokens"] == pytest.approx(sum(r.num_new_tokens for r in answered) / 5)
    assert out["overall"]["mean_latency_s"] == pytest.approx(sum(r.latency_s for r in answered) / 5)
    # A benchmark's own score is the same mean over its columns.
    assert per["V"]["mean_score"] == pytest.approx((per["V"]["mean_acc"] + per["V"]["mean_mra"]) / 2)
    assert per["A"]["mean_score"] == pytest.approx(per["A"]["mean_acc"])
    assert overall_row({})["mean_score"] is None


def test_names_with_dots_and_new_benchmarks_after_a_device_move():
    metrics = EvalMetrics(max_tokens=4, sync_on_compute=False).to("cpu")
    metrics.update(record("Video.MME v2", 0))
    metrics.update(record("video_mme_v2", 0, reward=0.0))
    out = metrics.compute()["benchmarks"]
    assert out["Video.MME v2"]["mean_acc"] == 1.0 and out["video_mme_v2"]["mean_acc"] == 0.0
    metrics.reset()
    assert metrics.compute()["benchmarks"]["Video.MME v2"]["n"] == 0


def test_a_failed_sample_lowers_the_score_but_not_the_mean_length():
    """A missing video must not make a mode look shorter: the answered samples' mean length and
    latency stay as they were, while the score counts the failure as 0 in the protocol's denominator."""
    ok = [record("A", i, reward=1.0, tokens=10 + i) for i in range(3)]
    failed = record("A", 3, reward=0.0, tokens=0, error="media not found: /x.mp4", entropy=[])
    alone, with_failure = (EvalMetrics(max_tokens=16, sync_on_compute=False) for _ in range(2))
    for r in ok:
        alone.update(r)
        with_failure.update(r)
    failed.latency_s = 0.0
    with_failure.update(failed)
    a, b = alone.compute()["benchmarks"]["A"], with_failure.compute()["benchmarks"]["A"]
    assert b["mean_tokens"] == a["mean_tokens"] == pytest.approx(11.0)
    assert b["mean_latency_s"] == a["mean_latency_s"] == pytest.approx((0.25 + 0.5 + 0.75) / 3)
    assert b["tokens_per_s"] == pytest.approx(a["tokens_per_s"])
    assert (b["n"], b["n_answered"], b["n_errors"]) == (4, 3, 1)
    assert b["mean_acc"] == pytest.approx(3 / 4) and a["mean_acc"] == 1.0
