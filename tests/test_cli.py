"""The `vreason` command: one-line errors for bad inputs, exit 0 with counted error samples, demo."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  (its log handler binds stderr now, not a test's captured stream)
import pytest

from vreason.cli import main
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.models.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    build_tiny_model(root / "model")
    bench = write_synthetic_benchmark(root / "data", n=2, seed=2, num_frames=8, with_errors=True)
    return {"model": str(root / "model"), "bench": str(bench), "n": len(json.loads(bench.read_text()))}


def small(assets, root, *extra):
    return ["predict", "--model.model_path", assets["model"], "--data.files", f"[{assets['bench']}]",
            "--data.num_frames", "4", "--data.max_pixels", str(64 * 28 * 28), "--model.decode.max_new_tokens", "8",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root), *extra]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("vreason")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("extra, expected", [
    (["--model.controller.bogus", "1"], "unrecognized arguments: --model.controller.bogus"),
    (["--model.controller.mode", "sideways"], "model.controller.mode"),
    (["--model.controller.every_k", "0"], "controller.every_k must be >= 1"),
    (["--model.decode.top_p", "lots"], "model.decode.top_p"),
    (["--model.decode.top_h", "2"], "decode.top_h must be in (0, 1]"),
])
def test_bad_config_values_exit_2_with_one_line(assets, tmp_path, capsys, extra, expected):
    assert main(small(assets, tmp_path, *extra)) == 2
    line = error_line(capsys)
    assert line.startswith("vreason predict: error:") and expected in line
    assert not (tmp_path / "predictions").exists()


def test_bad_key_in_a_yaml_config_exits_2(assets, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  controller:\n    mode: switch\n    sped: 3\n")
    assert main(["predict", "-c", str(config), *small(assets, tmp_path)[1:]]) == 2
    assert "sped" in error_line(capsys)


def test_missing_model_folder_exits_1_with_one_line(assets, tmp_path, capsys):
    args = small(assets, tmp_path)
    args[args.index(assets["model"])] = str(tmp_path / "no-such-model")
    assert main(args) == 1
    assert error_line(capsys) == f"vreason predict: error: model folder not found: {tmp_path / 'no-such-model'}"


def test_a_run_that_failed_before_any_sample_does_not_lock_its_folder(assets, tmp_path, capsys):
    # A mistyped model path first, then the right one in the same folder: the second run works.
    assert main(small(assets, tmp_path, "--model.model_path", str(tmp_path / "typo"))) == 1
    capsys.readouterr()
    assert main(small(assets, tmp_path)) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmarks"]["Synthetic"]["n"] == assets["n"]
    # Once records exist, a different setting in the same folder is refused.
    assert main(small(assets, tmp_path, "--model.controller.mode", "minimize")) == 1
    assert "different" in error_line(capsys)


@pytest.mark.parametrize("content", [None, "{not json", '{"a": 1}'])
def test_unreadable_benchmark_file_exits_1_with_one_line(assets, tmp_path, capsys, content):
    bench = tmp_path / "eval_Broken.json"
    if content is not None:
        bench.write_text(content)
    args = small(assets, tmp_path / "out")
    args[args.index(f"[{assets['bench']}]")] = f"[{bench}]"
    assert main(args) == 1
    line = error_line(capsys)
    assert str(bench) in line and line.startswith("vreason predict: error: benchmark file")


def test_broken_samples_complete_with_exit_0_and_are_counted(assets, tmp_path, capsys):
    assert main(small(assets, tmp_path)) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary["benchmarks"]["Synthetic"]
    assert row["n"] == assets["n"] and row["n_errors"] == assets["n"] - 2
    assert f"| Synthetic | {assets['n']} |" in out
    results = json.loads((tmp_path / "results" / "eval_Synthetic.json").read_text())["results"]
    assert sum(1 for r in results if r["error"]) == assets["n"] - 2
    # The same command again resumes: finished samples are skipped, error samples run again and
    # their new records supersede the old ones, so the merged results hold each sample once.
    pred = tmp_path / "predictions" / "Synthetic.rank0.jsonl"
    first = [json.loads(line) for line in pred.read_text().splitlines()]
    assert main(small(assets, tmp_path)) == 0
    lines = [json.loads(line) for line in pred.read_text().splitlines()]
    assert lines[:len(first)] == first
    retried = lines[len(first):]
    assert sorted(r["key"] for r in retried) == sorted(r["key"] for r in first if r["error"])
    assert {r["attempt"] for r in first} == {1} and {r["attempt"] for r in retried} == {2}
    results = json.loads((tmp_path / "results" / "eval_Synthetic.json").read_text())["results"]
    assert len(results) == assets["n"] and sum(1 for r in results if r["error"]) == assets["n"] - 2
    # With --retry_errors false nothing runs and nothing changes.
    before = pred.read_text()
    assert main(small(assets, tmp_path, "--retry_errors", "false")) == 0
    assert pred.read_text() == before
    # A different configuration in the same folder is refused rather than mixed in.
    assert main(small(assets, tmp_path, "--model.controller.mode", "off")) == 1
    assert "different controller" in error_line(capsys)


def test_synth_writes_a_benchmark(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--n", "3", "--num-frames", "4"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "eval_Synthetic.json" and len(json.loads(path.read_text())) == 3


def test_unknown_command_and_help(capsys):
    assert main(["train"]) == 2
    assert error_line(capsys) == "vreason train: error: unknown command 'train'; use one of: predict, demo, synth, train-tiny, doctor"
    assert main([]) == 2 and main(["--help"]) == 0


def run_demo(out, *flags):
    proc = subprocess.run([sys.executable, "-m", "vreason.cli", "demo", "--out", str(out), *flags],
                          capture_output=True, text=True, env=user_env(), timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stdout


def test_demo_prints_its_table_and_a_second_demo_computes_what_it_says(tmp_path):
    stdout = run_demo(tmp_path, "--n", "3", "--max-new-tokens", "12")
    assert "| mode |" in stdout and "| off | 3 |" in stdout and "| switch | 3 |" in stdout
    for mode in ("off", "switch"):
        assert (tmp_path / mode / "results" / "eval_Synthetic.json").is_file()
        assert list((tmp_path / mode / "tb").glob("events.out.tfevents.*"))
    assert list((tmp_path / "compare").glob("events.out.tfevents.*"))
    # The table is also a file, and the sentence about speed is the table's own numbers.
    table = (tmp_path / "comparison.md").read_text()
    assert table.strip() in stdout
    overall = {m: json.loads((tmp_path / m / "summary.json").read_text())["overall"] for m in ("off", "switch")}
    assert f" {overall['switch']['tokens_per_s']:.1f} | 0 |" in table.splitlines()[3]
    ratio = overall["switch"]["tokens_per_s"] / overall["off"]["tokens_per_s"]
    assert f"switch {ratio:.2f}× the tokens/s" in stdout
    assert "held an earlier demo" not in stdout

    # A second demo in the same folder, other settings: every flag takes effect (no resume of the old run).
    second = run_demo(tmp_path, "--n", "2", "--sample", "--seed", "7", "--modes", "off", "switch", "--max-new-tokens", "8")
    assert "held an earlier demo: it is replaced" in second.splitlines()[0]
    assert "| off | 2 |" in second and "| switch | 2 |" in second and "sampled" in second
    records = [json.loads(line) for line in (tmp_path / "off" / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["decode"]["do_sample"] is True
    third = run_demo(tmp_path, "--random", "--n", "2", "--modes", "off", "--max-new-tokens", "4")
    assert "| off | 2 |" in third and "random weights" in third
    assert not (tmp_path / "switch").exists()  # the earlier demo's outputs are gone, not mixed in


def test_demo_refuses_a_folder_that_holds_something_else(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path)]) == 1
    assert "holds no earlier demo" in error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


CONFIGS = REPO / "experiments" / "configs"


@pytest.mark.parametrize("size", ["3b", "7b", "32b", "72b"])
def test_paper_configs_compose(tmp_path, size):
    from vreason.cli import build_cli

    expected = {"off": ("off", 0.0), "switch": ("switch", 0.0), "switch_lite": ("switch", 0.5)}
    for mode, (controller_mode, prune) in expected.items():
        for frames in (16, 32):
            cli = build_cli(["-c", str(CONFIGS / "base.yaml"), "-c", str(CONFIGS / "models" / f"qwen2.5-vl-{size}.yaml"),
                             "-c", str(CONFIGS / "modes" / f"{mode}.yaml"), "-c", str(CONFIGS / "frames" / f"{frames}.yaml"),
                             "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path)])
            assert cli.model.model_path == f"checkpoints/Qwen2.5-VL-{size.upper()}-Instruct"
            assert cli.model.controller.mode == controller_mode and cli.model.controller.prune_ratio == prune
            assert cli.model.decode.max_new_tokens == 1024 and cli.model.decode.do_sample is False
            assert cli.datamodule.video_config().num_frames == frames and cli.datamodule.video_config().max_pixels == 200704
            assert cli.datamodule.model_path == cli.model.model_path  # linked
            assert len(cli.datamodule.files) == 6
    one = build_cli(["-c", str(CONFIGS / "base.yaml"), "-c", str(CONFIGS / "benchmarks" / "vsibench.yaml"),
                     "--model.model_path", "m", "--trainer.accelerator", "cpu"])
    assert one.datamodule.files == ["benchmarks/Evaluation/eval_vsibench.json"]


def test_paper_table_puts_our_runs_beside_the_anchors(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_table", REPO / "experiments" / "scripts" / "paper_table.py")
    paper_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper_table)

    curve = {"mean": [0.5, 1.0, 0.7], "std": [0.1, 0.2, 0.1], "count": [4, 4, 2]}

    def summary(mode, prune, acc):
        benchmarks = {name: {"n": 4, "n_errors": 0, "mean_acc": acc, "mean_mra": None, "mean_tokens": 100.0, "entropy_curve": curve}
                      for name in ("mvbench", "tempcompass", "videomme", "videommmu", "mmvu")}
        benchmarks["vsibench"] = {"n": 4, "n_errors": 0, "mean_acc": acc, "mean_mra": 0.25, "mean_tokens": 200.0, "entropy_curve": curve}
        return {"model": "Qwen2.5-VL-7B-Instruct", "controller": {"mode": mode, "prune_ratio": prune},
                "data": {"num_frames": 16}, "benchmarks": benchmarks}

    for name, mode, prune, acc in (("a", "off", 0.0, 0.5), ("b", "switch", 0.5, 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary(mode, prune, acc)))
    figure = tmp_path / "curves.png"
    assert paper_table.main([str(tmp_path / "a"), str(tmp_path / "b" / "summary.json"), "--out", str(tmp_path / "t.md"),
                             "--figure", str(figure)]) == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    assert "Qwen2.5-VL-7B-Instruct off" in header and "Qwen2.5-VL-7B-Instruct switch+lite" in header
    assert "paper: V-Reason-7B Lite" in header
    assert "| MVBench | 50.0 | 60.0 | 60.7 | 60.9 | 60.6 | 64.1 |" in text
    assert "| VSI-Bench (MRA) | 25.0 | 25.0 | 22.3 | 23.4 | 23.7 | 39.2 |" in text
    # tokens: weighted over benchmarks (5 × 100 + 200) / 6
    assert "| mean output tokens | 117 | 117 | 226 | 176 | 178 | 430 |" in text
    assert (tmp_path / "t.md").read_text().strip() == text.strip() and figure.stat().st_size > 1000


def test_a_rerun_of_a_finished_run_still_writes_the_merged_outputs(assets, tmp_path):
    # Killed after its last record but before the merge: the re-run has nothing to generate and
    # must still leave the results and summaries.
    assert main(small(assets, tmp_path, "--retry_errors", "false")) == 0
    for path in [tmp_path / "summary.json", tmp_path / "summary.md", *(tmp_path / "results").iterdir()]:
        path.unlink()
    assert main(small(assets, tmp_path, "--retry_errors", "false")) == 0
    results = json.loads((tmp_path / "results" / "eval_Synthetic.json").read_text())["results"]
    assert len(results) == assets["n"]
    assert json.loads((tmp_path / "summary.json").read_text())["overall"]["n"] == assets["n"]


def test_resume_refuses_other_inputs(assets, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    bench = data / "eval_Synthetic.json"
    entries = json.loads(Path(assets["bench"]).read_text())[:2]
    bench.write_text(json.dumps(entries))
    media = str(Path(assets["bench"]).parent)
    out = tmp_path / "out"

    def run(*extra):
        args = small(assets, out, "--data.media_root", media, *extra)
        args[args.index(f"[{assets['bench']}]")] = f"[{bench}]"
        return main(args)

    assert run() == 0
    capsys.readouterr()
    # The same file edited in place is another benchmark.
    entries[0]["problem"] += " (edited)"
    bench.write_text(json.dumps(entries))
    assert run() == 1
    assert "different data.files" in error_line(capsys)
    # Another media root (e.g. a corrected one) is refused rather than mixed with the old records.
    entries[0]["problem"] = entries[0]["problem"].replace(" (edited)", "")
    bench.write_text(json.dumps(entries))
    assert run("--data.media_root", str(tmp_path)) == 1
    assert "different data.media_root" in error_line(capsys)
    assert run() == 0


def test_off_with_lite_is_labelled_as_pruned(assets, tmp_path):
    assert main(small(assets, tmp_path, "--model.controller.mode", "off", "--model.controller.prune_ratio", "0.5")) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "off" and summary["label"] == "off+lite0.5"
    assert "off+lite0.5" in (tmp_path / "summary.md").read_text()


def test_predict_output_has_nothing_a_user_cannot_act_on(assets, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vreason.cli", *small(assets, tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "| Synthetic |" in proc.stdout
    noise = [line for line in output.splitlines() if re.search(r"warn|deprecat|💡", line, re.IGNORECASE)]
    assert noise == []


# ---------------------------------------------------------------------------------------------
# What a new user meets


def user_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


class LightningConsole:
    """The lines Lightning's console logger prints (it writes to the real stderr, not capsys)."""

    def __init__(self):
        import logging

        self.lines: list[str] = []
        console = self

        class Handler(logging.Handler):
            def emit(self, record):
                console.lines.append(record.getMessage())

        self.handler, self.logger = Handler(), logging.getLogger("lightning.pytorch")

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def test_one_benchmark_path_needs_no_list(assets, tmp_path):
    from vreason.cli import build_cli

    args = small(assets, tmp_path)
    args[args.index(f"[{assets['bench']}]")] = assets["bench"]
    cli = build_cli(args[1:])
    assert cli.datamodule.files == [assets["bench"]]


def test_predict_help_describes_every_project_key():
    proc = subprocess.run([sys.executable, "-m", "vreason.cli", "predict", "--help"], capture_output=True, text=True,
                          env=user_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Each option's entry: its flag line, then indented text up to the next flag.
    entries = re.split(r"\n  (?=--)", proc.stdout)
    described = {}
    for entry in entries:
        flag = entry.split()[0]
        if flag.startswith(("--model.", "--data.", "--retry_errors")) and not flag.endswith("+"):
            text = " ".join(entry.split()[1:])
            text = re.sub(r"^[A-Z_]+(, --\S+ [A-Z_]+)?|^\{[^}]*\}|^\[ITEM,\.\.\.\](, \S+ \[ITEM,\.\.\.\])?", "", text)
            described[flag] = re.sub(r"\((required, )?type: .*\)$", "", text).strip()
    for key in ("--model.model_path", "--model.controller.mode", "--model.controller.adam_eps", "--model.decode.top_p",
                "--model.max_seconds_per_sample", "--data.files", "--data.num_frames", "--data.video_timeout",
                "--data.batch_size", "--data.template", "--retry_errors"):
        assert key in described, key
    missing = sorted(k for k, text in described.items() if len(text) < 8 and not k.endswith(("controller", "decode")))
    assert missing == [], missing
    assert "at the end of this help" in " ".join(proc.stdout.split("options:")[0].split())


@pytest.mark.parametrize("content, expected", [("{not json", "is not valid JSON"),
                                               ('{"problem": "a dict, not a list"}', "must hold a JSON list")])
def test_a_broken_benchmark_file_stops_the_run_before_the_model_loads(assets, tmp_path, capsys, content, expected):
    # The model folder does not exist: had the model loaded first, the error would be about it.
    bad = tmp_path / "eval_Broken.json"
    bad.write_text(content)
    args = small(assets, tmp_path / "out")
    args[args.index(f"[{assets['bench']}]")] = str(bad)
    args[args.index(assets["model"])] = str(tmp_path / "no-model-here")
    assert main(args) == 1
    line = error_line(capsys)
    assert expected in line and "no-model-here" not in line


def test_error_reasons_are_printed_with_counts_and_a_resume_says_what_is_left(assets, tmp_path, capsys):
    assert main(small(assets, tmp_path)) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "predictions" / "Synthetic.rank0.jsonl").read_text().splitlines()]
    errors = [r for r in records if r["error"]]
    assert errors, "the fixture's benchmark has a missing and a broken video"
    missing = sum(r["error"].startswith("media not found") for r in errors)
    assert "Errors, by reason:" in out and f"{missing:>6} × media not found: <path>" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sum(r["count"] for r in summary["error_reasons"]) == len(errors)
    counts = [r["count"] for r in summary["error_reasons"]]
    assert counts == sorted(counts, reverse=True)
    with LightningConsole() as console:
        assert main(small(assets, tmp_path)) == 0
    done = len(records) - len(errors)
    assert any(f"{done} samples done, {len(errors)} to run ({len(errors)} of them error samples run again)" in line
               for line in console.lines), console.lines


def test_predict_on_cpu_uses_one_thread_for_a_small_model_as_the_demo(assets, tmp_path, monkeypatch):
    import torch

    from vreason.trainer import choose_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(small(assets, tmp_path, "--data.files", f"[{assets['bench']}]")) == 0
        assert torch.get_num_threads() == 1
        # A large model keeps torch's choice; so does a user's OMP_NUM_THREADS.
        big = tmp_path / "big"
        big.mkdir()
        with open(big / "model.safetensors", "wb") as f:
            f.truncate(300 * 2**20)
        torch.set_num_threads(2)
        assert choose_cpu_threads(big) is None and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert choose_cpu_threads(assets["model"]) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_lightning_device_lines_at_most_once_and_no_empty_progress_bar(assets, tmp_path, capsys):
    from vreason.trainer import eval_trainer

    with LightningConsole() as console:
        eval_trainer(tmp_path / "a")
        eval_trainer(tmp_path / "b")
    assert sum(line.startswith("GPU available") for line in console.lines) <= 1, console.lines
    args = small(assets, tmp_path / "c")
    args[args.index("--trainer.enable_progress_bar") + 1] = "true"
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    bars = [part for part in re.split(r"[\r\n]", out) if "it/s]" in part or "?it/s" in part]
    assert bars and not [b for b in bars if "0/?" in b], bars
    assert "score=" in out


def test_the_readme_first_predict_command_runs_as_written(tmp_path, monkeypatch, capsys):
    import shlex

    from vreason.models.tiny import trained_path

    text = (REPO / "README.md").read_text()
    block = text.split("A first `vreason predict`, copy-paste", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = [shlex.split(line) for line in block.replace("\\\n", " ").strip().splitlines()]
    assert [c[:2] for c in joined] == [["vreason", "synth"], ["vreason", "predict"]], block
    monkeypatch.chdir(tmp_path)  # the command's relative paths land here
    synth, predict = joined
    assert main(synth[1:] + ["--n", "2"]) == 0  # fewer questions, same command
    predict = [str(trained_path()) if "trained_path()" in a else a for a in predict]
    assert main(predict[1:] + ["--model.decode.max_new_tokens", "8", "--trainer.enable_progress_bar", "false"]) == 0
    out = capsys.readouterr().out
    assert "| Synthetic | 2 |" in out
    assert (tmp_path / "runs" / "tiny-switch" / "summary.json").is_file()
