#!/usr/bin/env bash
# Distributed training with torchrun, like MMPretrain's tools/dist_train.sh.
#   bash tools/dist_train.sh CONFIG GPUS [train.py arguments]
# GPUS is the number of processes on this node. Multi-node: set NNODES,
# NODE_RANK, MASTER_ADDR and PORT. On a machine without CUDA the processes
# run on the CPU and galddc_mm switches the backend to gloo.

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
