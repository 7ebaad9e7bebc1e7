#!/bin/sh
# Entrypoint of the GPU worker: take one GPU that no other worker on this host holds, then
# run the command. Each replica of `docker compose up --scale worker=N` sees every GPU and
# locks one (flock on $SDPO_GPU_LOCK_DIR/gpuK, a volume shared by the replicas); the lock
# lives as long as the worker process. SDPO_WORKER_GPUS ("0 1 2") limits the candidates.
# Without nvidia-smi (CPU) or with CUDA_VISIBLE_DEVICES already set it just runs the command.
set -eu
if [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    locks="${SDPO_GPU_LOCK_DIR:-/locks}"
    mkdir -p "$locks"
    gpus="${SDPO_WORKER_GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader)}"
    for gpu in $gpus; do
        exec 9>"$locks/gpu$gpu"
        if flock -n 9; then
            CUDA_VISIBLE_DEVICES="$gpu"
            export CUDA_VISIBLE_DEVICES
            echo "worker-entrypoint: using GPU $gpu" >&2
            break
        fi
        exec 9>&-
    done
    if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
        echo "worker-entrypoint: every GPU in [$gpus] is taken by another worker" >&2
        exit 1
    fi
fi
exec "$@"
