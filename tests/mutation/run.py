"""Mutation check: every curated mutant (`mutants.py`) must be killed by its tests.

    python tests/mutation/run.py            # all mutants (what CI runs)
    python tests/mutation/run.py NAME ...   # only these
    python tests/mutation/run.py --list
    python tests/mutation/run.py --skip-baseline   # CI: the suite has just passed on this tree

vreason/, tests/ and pyproject.toml are copied once to a temporary folder (the built
`vreason/_C*.so` with them), which goes first on PYTHONPATH. First the unmutated copy must pass
every selected test with no skip; then, one at a time, each mutant's text replacement is applied
to the copy, its tests run with `-x -q`, and the file is restored.

Exit status 1 when a mutant survives (its tests pass), when its `old` text is missing or not
unique (the code changed under the list: update the mutant), when a mutant breaks the import
or collection instead of a test (a kill that says nothing), or when the unmutated copy fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PYTEST_TIMEOUT_S = 240


def copy_repo(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(REPO / "vreason", dest / "vreason", ignore=ignore)
    shutil.copytree(REPO / "tests", dest / "tests", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    if not list((dest / "vreason").glob("_C*.so")):
        raise SystemExit("mutation check: vreason/_C*.so is not built (pip install --no-build-isolation -e .)")


def run_pytest(root: Path, tests: list[str], no_skip: bool) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           # A skip is a failure in the baseline, and never counts as a kill of a mutant.
           "VREASON_NO_SKIP": "1" if no_skip else "0"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                           *tests], cwd=root, env=env, capture_output=True, text=True, timeout=PYTEST_TIMEOUT_S)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0].split(" ", 1)[1]
    return "?"


def check_imports_from(root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", "import vreason, vreason.ops; print(vreason.__file__)"],
                         cwd=root, env=env, capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip().startswith(str(root)):
        raise SystemExit(f"mutation check: the copy is not what gets imported: {out.stdout}{out.stderr}")


def apply(root: Path, mutant: Mutant) -> str | None:
    """Write the mutated file; return its original text, or None if `old` is not found exactly once."""
    path = root / mutant.path
    text = path.read_text() if path.is_file() else ""
    if text.count(mutant.old) != 1:
        return None
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not run the unmutated tests first (only right after the whole suite passed "
                             "on this tree with skips failing, as in CI)")
    args = parser.parse_args(argv)
    names = {m.name for m in MUTANTS}
    if len(names) != len(MUTANTS):
        raise SystemExit("mutation check: two mutants share a name")
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:40s} {m.path:28s} {' '.join(m.tests)}")
        return 0
    unknown = set(args.names) - names
    if unknown:
        raise SystemExit(f"mutation check: unknown mutants {sorted(unknown)}")
    selected = [m for m in MUTANTS if not args.names or m.name in args.names]

    start = time.perf_counter()
    failures = []
    with tempfile.TemporaryDirectory(prefix="vreason-mutants-") as tmp:
        root = Path(tmp)
        copy_repo(root)
        check_imports_from(root)
        if not args.skip_baseline:
            baseline = sorted({t for m in selected for t in m.tests})
            rc, out, seconds = run_pytest(root, baseline, no_skip=True)
            print(f"baseline (unmutated, {len(baseline)} selections): rc={rc} {seconds:.1f}s", flush=True)
            if rc != 0:
                print(out[-4000:])
                print("mutation check: the unmutated copy fails its tests (or skips one): fix that first")
                return 1
        for m in selected:
            original = apply(root, m)
            if original is None:
                failures.append(f"{m.name}: text not found exactly once in {m.path}: update the mutant")
                print(f"STALE    {m.name:40s} {m.path}: {m.old!r} not found exactly once", flush=True)
                continue
            try:
                rc, out, seconds = run_pytest(root, list(m.tests), no_skip=False)
            except subprocess.TimeoutExpired:
                rc, out, seconds = -1, "timed out", float(PYTEST_TIMEOUT_S)
            finally:
                (root / m.path).write_text(original)
            if rc == 1:
                print(f"killed   {m.name:40s} {seconds:5.1f}s by {first_failure(out)}", flush=True)
            elif rc == 0:
                failures.append(f"{m.name}: survived {' '.join(m.tests)}")
                print(f"SURVIVED {m.name:40s} {seconds:5.1f}s ({m.why})", flush=True)
            else:
                failures.append(f"{m.name}: pytest exit {rc} (import/collection error or timeout), not a test failure")
                print(f"BROKEN   {m.name:40s} pytest exit {rc}:\n{out[-2000:]}", flush=True)
    print(f"mutation check: {len(selected) - len(failures)}/{len(selected)} mutants killed "
          f"in {time.perf_counter() - start:.0f}s")
    for f in failures:
        print(f"  {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
