#!/usr/bin/env bash
# The paper's table for one model on one machine: off, switch and switch+Lite at 16 and 32 frames.
#
#   MODEL=7b GPUS=1 experiments/scripts/run_paper.sh      # one GPU, one process
#   MODEL=7b GPUS=8 experiments/scripts/run_paper.sh      # 8 GPUs: DDP, each rank a shard of the samples
#
# Variables: MODEL (3b|7b|32b), GPUS (default 1), MODES (default "off switch switch_lite"),
# FRAMES (default "16 32"), RUNS (output folder, default runs), EXTRA (more vreason flags, e.g.
# "--model.model_path /data/Qwen2.5-VL-7B-Instruct --data.media_root /data/video-r1").
# A run that stops (preemption, a crash) resumes when the same line is run again. The 72B model
# does not fit one GPU: see experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:?set MODEL to 3b, 7b or 32b}
GPUS=${GPUS:-1}
MODES=${MODES:-off switch switch_lite}
FRAMES=${FRAMES:-16 32}
RUNS=${RUNS:-runs}
C=experiments/configs
STRATEGY=auto
[ "$GPUS" -gt 1 ] && STRATEGY=ddp
for frames in $FRAMES; do
  for mode in $MODES; do
    root="$RUNS/qwen2.5-vl-$MODEL/$mode-${frames}f"
    echo "== $root"
    # shellcheck disable=SC2086
    vreason predict -c $C/base.yaml -c $C/models/qwen2.5-vl-$MODEL.yaml -c $C/modes/$mode.yaml -c $C/frames/$frames.yaml \
      --trainer.accelerator gpu --trainer.devices "$GPUS" --trainer.strategy $STRATEGY \
      --trainer.default_root_dir "$root" ${EXTRA:-}
  done
done
python experiments/scripts/paper_table.py "$RUNS"/qwen2.5-vl-"$MODEL"/*/summary.json \
  --out "$RUNS/qwen2.5-vl-$MODEL/table.md" --figure "$RUNS/qwen2.5-vl-$MODEL/entropy_curves.png"
