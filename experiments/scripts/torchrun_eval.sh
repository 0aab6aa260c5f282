#!/usr/bin/env bash
# Several nodes without SLURM: run this on every node with the same MASTER_ADDR; torchrun starts
# one process per GPU and Lightning takes the ranks from torchrun's environment.
# The output folder must be on a file system every node sees.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 GPUS=8 experiments/scripts/torchrun_eval.sh \
#       -c experiments/configs/models/qwen2.5-vl-7b.yaml -c experiments/configs/modes/off.yaml \
#       -c experiments/configs/frames/16.yaml --trainer.default_root_dir /shared/runs/7b-off-16f
set -euo pipefail
cd "$(dirname "$0")/../.."
NNODES=${NNODES:-1}
GPUS=${GPUS:-8}
torchrun --nnodes "$NNODES" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$GPUS" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  -m vreason.cli predict -c experiments/configs/base.yaml "$@" \
  --trainer.accelerator gpu --trainer.strategy ddp --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS"
