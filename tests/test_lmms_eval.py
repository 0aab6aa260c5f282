"""`lmms-eval --model vreason` (vreason/lmms_eval/, the `lmms` extra) against `vreason predict`.

End to end: the real lmms-eval command on the example task `vreason_synth` with the shipped
trained tiny model, `--limit 8`, off and switch, batch sizes 1 and 4, in one lmms-eval process
(its `--config` list); the oracle is `vreason predict` on the same 8 questions with the same
settings (greedy): the same answer text, score, token counts and per-token traces. Two processes
under torchrun split the requests between them and answer the same. In-process checks cover what
the task does not: order and grouping of mixed generation kwargs, a request that fails alone,
stop strings against a generation that was cut short, and the refusals.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e '.[lmms]')")

from vreason.models.tiny import trained_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "experiments" / "lmms_eval" / "tasks"
DATA = TASKS / "vreason_synth" / "data"
LIMIT = 8
FRAMES = 4  # the clips' own frame count, as the shipped model learned them
MAX_NEW = 128  # the task's max_new_tokens


def _env(tmp: Path) -> dict:
    # Offline: the task's dataset is a local file; HF_HOME keeps the datasets cache in tmp.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _model_args(mode: str, traces: Path) -> str:
    return f"pretrained={trained_path()},mode={mode},max_frames={FRAMES},trace_dir={traces}"


def _outputs(folder: Path) -> tuple[dict, list[dict]]:
    results = list(folder.glob("*/*_results.json"))
    samples = list(folder.glob("*/*_samples_vreason_synth.jsonl"))
    assert len(results) == 1 and len(samples) == 1, f"no lmms-eval results under {folder}"
    return json.loads(results[0].read_text()), [json.loads(line) for line in samples[0].read_text().splitlines()]


def _traces(folder: Path) -> dict[int, dict]:
    out = {}
    for file in folder.glob("vreason_traces.rank*.jsonl"):
        for line in file.read_text().splitlines():
            record = json.loads(line)
            out[record["doc_id"]] = {**record, "file": file.name}
    return out


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """`vreason predict` on the task's first 8 questions: {mode: {index: record}}."""
    from vreason.cli import main
    from vreason.records import read_predictions

    tmp = tmp_path_factory.mktemp("predict")
    entries = json.loads((DATA / "eval_Synthetic.json").read_text())[:LIMIT]
    bench = tmp / "eval_Synthetic.json"
    bench.write_text(json.dumps(entries))
    out = {}
    for mode in ("off", "switch"):
        root = tmp / mode
        assert main(["predict", "--model.model_path", str(trained_path()), "--data.files", json.dumps([str(bench)]),
                     "--data.media_root", str(DATA), "--data.num_frames", str(FRAMES),
                     "--model.controller.mode", mode, "--model.decode.max_new_tokens", str(MAX_NEW),
                     "--model.plot_samples", "0", "--trainer.default_root_dir", str(root),
                     "--trainer.enable_progress_bar", "false"]) == 0
        records = [r.to_dict() for recs in read_predictions(root / "predictions").values() for r in recs]
        out[mode] = {r["index"]: r for r in records}
        assert sorted(out[mode]) == list(range(LIMIT)) and not any(r["error"] for r in records)
    return out


RUNS = [(mode, bs) for mode in ("off", "switch") for bs in (1, 4)]


@pytest.fixture(scope="module")
def lmms_runs(tmp_path_factory):
    """One lmms-eval process running the four configurations of its `--config` list."""
    tmp = tmp_path_factory.mktemp("lmms")
    configs = [{"model": "vreason", "model_args": _model_args(mode, tmp / f"{mode}-{bs}" / "traces"),
                "tasks": "vreason_synth", "include_path": str(TASKS), "limit": LIMIT, "batch_size": bs,
                "log_samples": True, "output_path": str(tmp / f"{mode}-{bs}")} for mode, bs in RUNS]
    (tmp / "runs.yaml").write_text(yaml.safe_dump(configs))
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--config", str(tmp / "runs.yaml")], cwd=tmp,
                          env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode,batch_size", RUNS)
def test_lmms_eval_answers_as_vreason_predict(predicted, lmms_runs, mode, batch_size):
    tmp, log = lmms_runs
    folder = tmp / f"{mode}-{batch_size}"
    results, samples = _outputs(folder)
    reference = predicted[mode]
    assert results["results"]["vreason_synth"]["score,none"] == pytest.approx(
        sum(r["reward"] for r in reference.values()) / LIMIT)
    assert results["n-samples"]["vreason_synth"]["effective"] == LIMIT
    assert sorted(s["doc_id"] for s in samples) == list(range(LIMIT))
    traces = _traces(folder / "traces")
    assert sorted(traces) == list(range(LIMIT))
    for sample in samples:
        ref, trace = reference[sample["doc_id"]], traces[sample["doc_id"]]
        assert sample.get("resps", sample["filtered_resps"]) == ref["output"]  # the same text
        assert sample["score"] == pytest.approx(ref["reward"])  # every answer scored, as the protocol scores it
        counts = sample["token_counts"][0]
        assert counts["output_tokens"] == ref["num_new_tokens"] and counts["input_tokens"] == ref["prompt_length"]
        if "</think>" in ref["output"]:  # the tokens up to </think>, before the answer
            assert 0 < counts["reasoning_tokens"] < counts["output_tokens"]
        for name in ("alpha", "updated", "num_video_tokens", "stop_reason"):
            assert trace[name] == ref[name], name
        for name in ("entropy", "entropy_after", "ema"):  # a batch's float sums round apart by ~1e-5
            assert trace[name] == pytest.approx(ref[name], abs=2e-4), name
    rounds = sum(sum(t["updated"]) for t in traces.values())
    assert (rounds > 0) == (mode == "switch")
    efficiency = results["efficiency"]["by_task"]["vreason_synth"]
    assert efficiency["avg_output_tokens_per_sample"] == pytest.approx(
        sum(r["num_new_tokens"] for r in reference.values()) / LIMIT)


@pytest.mark.slow
def test_two_processes_split_the_requests_and_answer_the_same(predicted, tmp_path):
    """`torchrun --nproc_per_node 2` (as `accelerate launch` on GPUs): each rank answers its own
    shard (its trace file), and lmms-eval's gathered outputs equal `vreason predict`'s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), "-m", "lmms_eval", "--model", "vreason",
                           "--model_args", _model_args("switch", out / "traces"), "--tasks", "vreason_synth",
                           "--include_path", str(TASKS), "--limit", str(LIMIT), "--batch_size", "4",
                           "--log_samples", "--output_path", str(out)],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, samples = _outputs(out)
    assert {s["doc_id"]: s.get("resps", s["filtered_resps"]) for s in samples} == {
        i: r["output"] for i, r in predicted["switch"].items()}
    traces = _traces(out / "traces")
    shards = {t["file"]: sorted(d for d, u in traces.items() if u["file"] == t["file"]) for t in traces.values()}
    assert sorted(shards) == ["vreason_traces.rank0.jsonl", "vreason_traces.rank1.jsonl"]
    assert sorted(d for docs in shards.values() for d in docs) == list(range(LIMIT))  # disjoint, complete


# ---------------------------------------------------------------------- in process


def _doc_to_messages(doc):
    from vreason.data.benchmark import build_question

    return [{"role": "user", "content": [{"type": "video", "url": str(DATA / doc["path"])},
                                         {"type": "text", "text": build_question(doc["problem"], doc["problem_type"],
                                                                                 doc.get("options"))}]}]


def _request(doc_id: int, gen_kwargs: dict):
    from lmms_eval.api.instance import Instance

    return Instance(request_type="generate_until", arguments=("", _doc_to_messages, dict(gen_kwargs), doc_id, "t", "test"),
                    idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


@pytest.fixture(scope="module")
def lmm():
    from vreason.lmms_eval.model import VReason

    model = VReason(pretrained=str(trained_path()), mode="off", max_frames=FRAMES, batch_size=3)
    docs = json.loads((DATA / "eval_Synthetic.json").read_text())[:LIMIT]
    docs.append({**docs[0], "path": "./videos/missing.mp4"})  # doc LIMIT: its video does not exist
    model.task_dict = {"t": {"test": docs}}
    return model


FULL = {"max_new_tokens": MAX_NEW, "do_sample": False, "until": []}
SHORT = {"max_new_tokens": 6, "until": []}


@pytest.mark.slow
def test_mixed_settings_come_back_in_request_order_and_a_failure_costs_only_itself(lmm, predicted):
    ids = [5, 0, LIMIT, 3, 1, 6, 2, 4]
    kwargs = [FULL if i % 2 else SHORT for i in range(len(ids))]
    answers = lmm.generate_until([_request(doc, kw) for doc, kw in zip(ids, kwargs)])
    for doc, kw, answer in zip(ids, kwargs, answers):
        if doc == LIMIT:
            assert answer.text == "" and answer.token_counts.output_tokens == 0
            continue
        full = predicted["off"][doc]["output"]
        if kw is FULL:
            assert answer.text == full and answer.token_counts.output_tokens == predicted["off"][doc]["num_new_tokens"]
        else:  # greedy: the first 6 tokens of the full answer
            assert answer.token_counts.output_tokens == 6 and full.startswith(answer.text) and answer.text != full


@pytest.mark.slow
def test_a_stop_string_gives_the_generation_that_stopped_there(lmm, predicted):
    stop = "So the answer"
    full = predicted["off"][0]["output"]
    assert stop in full
    [cut] = lmm.generate_until([_request(0, {**FULL, "until": ["never there", stop]})])
    n = cut.token_counts.output_tokens
    assert cut.text == full[:full.index(stop)]
    # The oracle: the same request generated with n and n - 1 new tokens and no stop string.
    at_n, before = lmm.generate_until([_request(0, {**FULL, "max_new_tokens": n}),
                                        _request(0, {**FULL, "max_new_tokens": n - 1})])
    assert stop in at_n.text and at_n.text.startswith(cut.text) and stop not in before.text


@pytest.mark.slow
def test_sampled_repeats_draw_their_own_seeds_and_runs_repeat(lmm):
    """lmms-eval's `--repeats` passes the same request k times: each repeat samples from its own
    seed (else k identical answers), and a second run draws the same answers again."""
    sampled = {"max_new_tokens": MAX_NEW, "do_sample": True, "temperature": 1.0, "until": []}
    requests = [r for doc in range(LIMIT) for r in [_request(doc, sampled)] * 2]
    first = [a.text for a in lmm.generate_until(requests)]
    assert first[:4] == [a.text for a in lmm.generate_until(requests[:4])]
    assert any(first[2 * doc] != first[2 * doc + 1] for doc in range(LIMIT))


def test_stops_on_hand_computed_tokens():
    from vreason.lmms_eval.stops import apply_stops

    decode = "".join
    tokens = list("abcdefcd")
    assert apply_stops("abcdefcd", tokens, decode, ["cd"]) == ("ab", 4)
    assert apply_stops("abcdefcd", tokens, decode, ["zz", "ef", "bc"]) == ("a", 3)
    assert apply_stops("abcdefcd", tokens, decode, ["zz"]) == ("abcdefcd", 8)
    assert apply_stops("abcdefcd", tokens, decode, []) == ("abcdefcd", 8)


def test_generation_kwargs_follow_transformers_sampling_rule():
    from vreason.config import DecodeConfig
    from vreason.lmms_eval.settings import decode_settings

    base = DecodeConfig(max_new_tokens=1024, seed=7)
    greedy, until, ignored = decode_settings({"temperature": 0.7, "do_sample": False, "top_p": 0.5, "until": "\n\n",
                                              "max_new_tokens": 16, "image_aspect_ratio": "pad"}, base)
    assert (greedy.do_sample, greedy.temperature, greedy.top_p, greedy.max_new_tokens, greedy.seed) == (False, 1.0, 1.0, 16, 7)
    assert until == ["\n\n"] and ignored == ["image_aspect_ratio"]
    sampled, until, _ = decode_settings({"temperature": 0.7, "top_p": 0.9, "top_k": 5, "until": None}, base)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.top_k, until) == (True, 0.7, 0.9, 5, [])
    assert decode_settings({"temperature": 0}, base)[0].do_sample is False
    assert decode_settings(None, base) == (base, [], [])
    for bad, message in (({"num_beams": 2}, "num_beams"), ({"do_sample": True, "temperature": 0}, "temperature"),
                         ({"until": [1]}, "until"), ({"max_new_tokens": 0}, "max_new_tokens")):
        with pytest.raises(ValueError, match=message) as info:
            decode_settings(bad, base)
        assert "\n" not in str(info.value)


def test_refusals_are_one_line(lmm):
    from vreason.lmms_eval.model import VReason

    for call in (lmm.loglikelihood, lmm.generate_until_multi_round):
        with pytest.raises(NotImplementedError) as info:
            call([])
        assert "\n" not in str(info.value) and "not supported" in str(info.value)
    with pytest.raises(ValueError, match="unknown model_args max_frame"):
        VReason(pretrained=str(trained_path()), max_frame=16)
    with pytest.raises(ValueError, match="batch_size"):
        VReason(pretrained=str(trained_path()), batch_size="auto")


def test_unsupported_parts_are_refused_per_request():
    from vreason.lmms_eval.requests import UnsupportedRequest, project_chat

    chat, media = project_chat([{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": [{"type": "video", "url": "/v.mp4"}, {"type": "text", "text": "Q"}]}])
    assert chat == [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q"}]}]
    assert media == [("video", "/v.mp4")]
    for part in ({"type": "audio", "url": "/a.wav"}, {"type": "video", "url": {"path": "/v.mp4", "video_start": 1.0}},
                 {"type": "video", "url": "https://example.com/v.mp4"}):
        with pytest.raises(UnsupportedRequest):
            project_chat([{"role": "user", "content": [part]}])


def test_the_task_data_is_a_vreason_synth_set(tmp_path):
    from vreason.data.synthetic import TRAINED_CLIPS, write_synthetic_benchmark

    shipped = json.loads((DATA / "eval_Synthetic.json").read_text())
    fresh = json.loads(write_synthetic_benchmark(tmp_path, n=len(shipped), seed=3, **TRAINED_CLIPS).read_text())
    assert shipped == fresh and len(shipped) >= LIMIT
    assert all((DATA / entry["path"]).is_file() for entry in shipped)
