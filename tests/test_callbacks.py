"""Prediction files, their merge into the protocol format and the summary, TensorBoard content."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vreason.plots import entropy_curve_figure, figure_image, sample_trace_figure
from vreason.records import Record, prediction_files, read_jsonl, read_predictions, truncate_partial_line, write_atomic
from vreason.report import merge_predictions, summary_markdown
from vreason.tb_logging import log_summary_to_tensorboard
from vreason.scoring import ERROR_OUTPUT


def record(bench, index, problem_type="multiple choice", reward=1.0, tokens=3, error=None):
    output = ERROR_OUTPUT if error else f"<think>hmm {index}</think><answer>A</answer>"
    return {
        "key": f"{bench}/{index}", "benchmark": bench, "index": index, "problem_type": problem_type,
        "entry": {"problem": f"q{index}", "problem_type": problem_type, "solution": "<answer>A</answer>",
                  "path": f"./v{index}.mp4", "data_type": "video", "question_id": f"id{index}"},
        "output": output, "prediction": "error" if error else "A", "solution": "<answer>A</answer>",
        "reward": reward, "correct": reward == 1.0, "process": "" if error else f"hmm {index}",
        "num_new_tokens": tokens, "latency_s": 0.5, "error": error, "mode": "switch",
        "entropy": [1.0, 0.5, 0.25][:tokens], "ema": [1.0, 0.95, 0.88][:tokens], "alpha": [1, -1, -1][:tokens],
        "updated": [1, 0, 1][:tokens], "entropy_after": [0.9, 0.5, 0.2][:tokens],
    }


def write_lines(path: Path, records, tail: bytes = b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for r in records:
            f.write((json.dumps(r) + "\n").encode())
        f.write(tail)


def test_partial_last_line_is_skipped_then_cut(tmp_path):
    path = tmp_path / "A.rank0.jsonl"
    write_lines(path, [record("A", 0), record("A", 1)], tail=b'{"key": "A/2", "bench')
    assert [r["key"] for r in read_jsonl(path)] == ["A/0", "A/1"]
    truncate_partial_line(path)
    assert path.read_bytes().endswith(b"\n")
    assert [r["key"] for r in read_jsonl(path)] == ["A/0", "A/1"]
    truncate_partial_line(path)  # a complete file is left alone
    assert len(path.read_bytes().splitlines()) == 2
    only_partial = tmp_path / "B.rank0.jsonl"
    only_partial.write_bytes(b'{"key": ')
    truncate_partial_line(only_partial)
    assert only_partial.read_bytes() == b""


def test_read_predictions_dedupes_across_ranks_and_sorts_by_index(tmp_path):
    pred = tmp_path / "predictions"
    write_lines(pred / "A.rank0.jsonl", [record("A", 4), record("A", 0)])
    write_lines(pred / "A.rank1.jsonl", [record("A", 2), record("A", 0, reward=0.0)])
    write_lines(pred / "B.rank1.jsonl", [record("B", 1)])
    (pred / "run_config.json").write_text("{}")
    assert [(b, r) for b, r, _ in prediction_files(pred)] == [("A", 0), ("A", 1), ("B", 1)]
    got = read_predictions(pred)
    assert list(got) == ["A", "B"]
    assert [r.index for r in got["A"]] == [0, 2, 4]
    assert got["A"][0].reward == 1.0  # the first written copy wins


def test_merge_writes_the_protocol_files_and_the_summary(tmp_path):
    pred = tmp_path / "predictions"
    write_lines(pred / "A.rank0.jsonl", [record("A", 1, reward=0.0), record("A", 0)])
    write_lines(pred / "A.rank1.jsonl", [record("A", 2, error="cannot decode video: x.mp4", reward=0.0, tokens=0)])
    write_lines(pred / "V.rank0.jsonl", [record("V", 0, problem_type="regression", reward=0.4),
                                        record("V", 1, problem_type="multiple choice", reward=1.0)])
    summary = merge_predictions(tmp_path, run_info={"model": "tiny", "mode": "switch", "label": "switch"}, max_tokens=8)

    a = json.loads((tmp_path / "results" / "eval_A.json").read_text())
    assert set(a) == {"results", "final_acc"}
    assert a["final_acc"] == [{"mean_acc": pytest.approx(1 / 3), "mean_mra": 0.0}]
    assert [r["question_id"] for r in a["results"]] == ["id0", "id1", "id2"]
    first = a["results"][0]
    for field in ("problem", "problem_type", "solution", "path", "data_type", "output", "prediction", "reward", "correct", "process"):
        assert field in first
    assert "entropy" not in first  # traces stay in the JSONL files
    assert a["results"][2]["output"] == ERROR_OUTPUT and a["results"][2]["error"].startswith("cannot decode")
    v = json.loads((tmp_path / "results" / "eval_V.json").read_text())
    assert v["final_acc"] == [{"mean_acc": 1.0, "mean_mra": pytest.approx(0.4)}]

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["model"] == "tiny" and on_disk["mode"] == "switch"
    assert on_disk["benchmarks"]["A"]["n"] == 3 and on_disk["benchmarks"]["A"]["n_errors"] == 1
    assert on_disk["overall"]["n"] == 5 and on_disk["overall"]["n_errors"] == 1
    assert on_disk["overall"]["mean_score"] == pytest.approx((1 / 3 + 1.0 + 0.4) / 3)
    assert "_records" not in on_disk and "_records" in summary
    md = (tmp_path / "summary.md").read_text()
    # n, answered, score (the mean of the row's accuracy and MRA columns), accuracy, MRA
    assert "| A | 3 | 2 | 33.3 | 33.3 | – |" in md and "| V | 2 | 2 | 70.0 | 100.0 | 40.0 |" in md
    assert "| **overall** | 5 | 4 | 57.8 |" in md
    assert on_disk["error_reasons"] == [{"reason": "cannot decode video: x.mp4", "count": 1, "example": "cannot decode video: x.mp4"}]
    assert "1 × cannot decode video: x.mp4" in md
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_write_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two" and os.listdir(path.parent) == ["x.json"]


def test_figures_render():
    img = figure_image(sample_trace_figure(Record.from_dict(record("A", 0))))
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    curve = {"mean": [0.2, 1.0, 0.8, 0.5], "std": [0.1, 0.2, 0.1, 0.0], "count": [10, 10, 5, 1]}
    img = figure_image(entropy_curve_figure({"off": curve, "switch": curve}))
    assert img.shape[0] > 100 and img.std() > 0


def test_tensorboard_content_is_readable(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_lines(tmp_path / "predictions" / "A.rank0.jsonl", [record("A", 0), record("A", 1, reward=0.0)])
    summary = merge_predictions(tmp_path, run_info={"label": "switch"})
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb", version="", default_hp_metric=False)
    log_summary_to_tensorboard(logger.experiment, summary, label="switch", hparams={"controller.mode": "switch"}, logger=logger)
    logger.finalize("success")
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"score/A", "tokens/A", "latency_s/A", "errors/A", "score/overall"} <= set(tags["scalars"])
    assert acc.Scalars("score/A")[0].value == pytest.approx(0.5)
    assert "output_tokens/A" in tags["histograms"]
    assert {"entropy_curve/A", "entropy_curve/all_benchmarks"} <= set(tags["images"])
    assert "summary/text_summary" in tags["tensors"]
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    assert acc.Scalars("hp/score")[0].value == pytest.approx(0.5)


def test_summary_markdown_handles_missing_values():
    md = summary_markdown({"benchmarks": {"X": {"n": 0, "n_errors": 0}}, "overall": {"n": 0, "n_errors": 0}})
    assert "| X | 0 | 0 | – | – | – |" in md


def test_progress_bar_score_is_the_summary_score(tmp_path):
    """One "score": the bar's running value over the records it has seen equals the summary's
    overall score over the same records (the mean of the accuracy and MRA columns), not the mean
    reward over all samples."""
    from vreason.callbacks import EvalProgressBar

    recs = [record("A", 0), record("A", 1, reward=0.0), record("A", 2, error="media not found: /v.mp4", reward=0.0, tokens=0),
            record("V", 0, problem_type="regression", reward=0.4), record("V", 1, problem_type="multiple choice", reward=1.0)]
    bar = EvalProgressBar()
    bar.on_predict_start(None, None)
    bar.on_predict_batch_end(None, None, [Record.from_dict(r) for r in recs[:3]], None, 0)
    bar.on_predict_batch_end(None, None, [Record.from_dict(r) for r in recs[3:]], None, 1)
    write_lines(tmp_path / "predictions" / "A.rank0.jsonl", [r for r in recs if r["benchmark"] == "A"])
    write_lines(tmp_path / "predictions" / "V.rank0.jsonl", [r for r in recs if r["benchmark"] == "V"])
    summary = merge_predictions(tmp_path, max_tokens=8)
    want = (1 / 3 + 1.0 + 0.4) / 3  # A's accuracy, V's accuracy, V's MRA
    stats = bar.stats()
    assert stats["score"] == f"{want:.3f}" and summary["overall"]["mean_score"] == pytest.approx(want)
    assert stats["score"] != f"{sum(r['reward'] for r in recs) / len(recs):.3f}"  # the old, third definition
    assert stats["errors"] == 1
    answered = [r for r in recs if not r["error"]]
    assert stats["tok/s"] == f"{sum(r['num_new_tokens'] for r in answered) / sum(r['latency_s'] for r in answered):.1f}"
    assert f"| **overall** | 5 | 4 | {100 * want:.1f} |" in (tmp_path / "summary.md").read_text()
