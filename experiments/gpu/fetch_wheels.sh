#!/usr/bin/env bash
# Downloads the wheels of experiments/gpu/wheels.txt (python 3.12, x86-64 Linux; no dependencies:
# each one is named there) into the git-ignored .whl/, writes a small synthetic benchmark into
# .whl/synthetic/ (the GPU image cannot write clips: no imageio-ffmpeg there), then checks that
# every requirement resolves against the image's package list (check_wheels.py).
#
#   bash experiments/gpu/fetch_wheels.sh        # then carry .whl with the first GPU run
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
mkdir -p .whl
grep -v '^\s*#' experiments/gpu/wheels.txt | sed 's/#.*//' | xargs -r \
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl
rm -rf .whl/synthetic
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m vreason.cli synth --out .whl/synthetic --n 8 --seed 2 >/dev/null
ls -la .whl
"$PY" experiments/gpu/check_wheels.py
