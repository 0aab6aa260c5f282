#!/usr/bin/env bash
# The first run of this project on a GPU machine, in one call of under 10 minutes, with no
# package index: install the carried wheels this python lacks (.whl/, from fetch_wheels.sh),
# build vreason._C against the torch found there (for the GPU's own architecture), then
# `vreason doctor --device cuda`, the CUDA-marked tests, a sync-debug generation, the ops and
# generation benchmarks on the GPU, and on two GPUs or more a Lite run under `device_map auto`.
# Everything lands in one report, first_run.md (the full output beside it in first_run.log).
#
#   bash experiments/gpu/first_run.sh [REPORT_DIR]   # default: $OUT if set, else runs/gpu_first_run
#
# Without a GPU it runs the CPU parts (build with FORCE_CUDA=0, doctor and benchmarks on the CPU,
# shortened) and says so at the top of the report. Each step has its own time limit and the whole
# stays under BUDGET_S (default 570 s; BUILD_S, default 240 s on a GPU and 400 s on the CPU, caps
# the build); a step that fails is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
OUTDIR="${1:-${OUT:-runs/gpu_first_run}}"
mkdir -p "$OUTDIR"
REPORT="$OUTDIR/first_run.md"
LOG="$OUTDIR/first_run.log"
BUDGET_S="${BUDGET_S:-570}"
START=$(date +%s)
: >"$REPORT"
: >"$LOG"
export PYTHONUNBUFFERED=1 VREASON_NO_SKIP=0 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "$*" | tee -a "$REPORT"; }
# step NAME LIMIT_S CMD...: runs CMD within min(LIMIT_S, what the budget has left); the output
# goes to the log whole and to the report's code block (its last 50 lines).
step() {
  local name="$1" limit="$2" rc t0 left tmp
  shift 2
  left=$((BUDGET_S - ($(date +%s) - START)))
  [ "$limit" -gt "$left" ] && limit="$left"
  if [ "$limit" -lt 15 ]; then say ""; say "## $name: not run (the ${BUDGET_S} s budget is spent)"; return 124; fi
  t0=$(date +%s)
  tmp="$(mktemp)"
  timeout --kill-after=5 "$limit" "$@" >"$tmp" 2>&1
  rc=$?
  { echo "===== $name (rc $rc)"; cat "$tmp"; } >>"$LOG"
  say ""
  say "## $name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (rc $rc$([ "$rc" = 124 ] && echo ", over its ${limit} s"))"), $(($(date +%s) - t0)) s"
  { echo '```'; tail -n 50 "$tmp"; echo '```'; } >>"$REPORT"
  rm -f "$tmp"
  return "$rc"
}

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
say "# vreason: first GPU run, $(date -u '+%Y-%m-%d %H:%M UTC')"
say ""
if [ "$GPUS" -gt 0 ]; then
  DEVICE=cuda
  say "GPUs visible to torch: $GPUS."
else
  DEVICE=cpu
  say "**No GPU visible to torch: the CPU parts only** (CPU build, doctor and benchmarks on the CPU, shortened; the CUDA tests and the sync count skip)."
fi
say "python: $("$PY" -c 'import sys; print(sys.version.split()[0])'), torch: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1)"
command -v nvidia-smi >/dev/null && say "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -4 | tr '\n' ';')"

# 1. Wheels this python lacks or has at a version the project does not accept.
mapfile -t NEED < <("$PY" experiments/gpu/check_wheels.py --needed 2>>"$LOG")
if [ "${#NEED[@]}" -gt 0 ]; then
  step "install carried wheels (${NEED[*]##*/})" 60 \
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vreason-site "${NEED[@]}"
  export PYTHONPATH="/tmp/vreason-site:$PYTHONPATH"
else
  say ""; say "## carried wheels: none needed (every package is there at a supported version)"
fi

# 2. The extension, against this torch: the GPU's own architecture only (fast), CUDA required.
if [ "$DEVICE" = cuda ]; then
  ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')
  step "build vreason._C (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=$ARCH)" "${BUILD_S:-240}" env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" \
    CUDA_HOME="${CUDA_HOME:-$(bash cuda/find_cuda_home.sh)}" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
else
  step "build vreason._C (FORCE_CUDA=0)" "${BUILD_S:-400}" env FORCE_CUDA=0 MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
fi
BUILD=$?
if [ "$BUILD" != 0 ]; then say ""; say "The build failed: the remaining steps need vreason._C (see first_run.log)."; exit 1; fi

# 3. The checks and the measurements.
step "vreason doctor --device $DEVICE" 120 "$PY" -m vreason.cli doctor --device "$DEVICE"
step "CUDA-marked tests (tests/test_cuda.py, tests/test_ops.py -k cuda)" 150 \
  "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_ops.py -k "cuda or Cuda"
step "sync-debug generation (off vs switch, syncs per token)" 60 "$PY" experiments/gpu/sync_debug.py
if [ "$DEVICE" = cuda ]; then
  step "ops benchmark (--device cuda)" 60 "$PY" experiments/bench/ops.py --device cuda --repeats 20
  step "generation benchmark (--device cuda)" 180 "$PY" experiments/bench/generation.py --device cuda --new-tokens 32
else
  step "ops benchmark (cpu, 3 repeats)" 120 "$PY" experiments/bench/ops.py --device cpu --repeats 3
  step "generation benchmark (cpu, shortened: 4 tokens, 2 frames of 112 px)" 300 \
    "$PY" experiments/bench/generation.py --new-tokens 4 --frames 2 --side 112
fi

# 4. Two GPUs or more: a Lite run of the trained tiny model over the synthetic clips carried in
#    .whl/synthetic, its layers spread by device_map auto under a cap that forces a split.
if [ "$GPUS" -ge 2 ] && [ -f .whl/synthetic/eval_Synthetic.json ]; then
  step "Lite under device_map auto over $GPUS GPUs" 120 "$PY" -m vreason.cli predict \
    --model.model_path "$("$PY" -c 'from vreason.models.tiny import trained_path; print(trained_path())')" \
    --data.files "[.whl/synthetic/eval_Synthetic.json]" --model.device_map auto --model.max_memory 3MB \
    --model.controller.mode switch --model.controller.prune_ratio 0.5 --trainer.accelerator gpu \
    --trainer.enable_progress_bar false --trainer.default_root_dir /tmp/vreason-lite-device-map
else
  say ""; say "## Lite under device_map auto: not run ($GPUS GPU(s) visible$([ -f .whl/synthetic/eval_Synthetic.json ] || echo ', no .whl/synthetic: run fetch_wheels.sh'))"
fi
say ""
say "done in $(($(date +%s) - START)) s; full output: $LOG"
