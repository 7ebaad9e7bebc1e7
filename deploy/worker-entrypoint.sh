#!/bin/sh
# Entrypoint of the GPU worker: take one GPU that no other worker on this host holds, then
# run the command. Each replica of `docker compose up --scale worker=N` sees every GPU and
# locks one (flock on $SDPO_GPU_LOCK_DIR/gpuK, a volume shared by the replicas); the lock
# lives as long as the worker process. SDPO_WORKER_GPUS ("0 1 2") limits the candidates.
# Without nvidia-smi (CPU) or with CUDA_VISIBLE_DEVICES already set it just runs the command.
set -eu

# The verifier sandbox gives each slot a cgroup (memory and process limits per run) under
# /sys/fs/cgroup/sdpo-sandbox. In a container with its own cgroup namespace (Docker's default on
# cgroup v2) the root cgroup holds our processes, and v2 lets no cgroup with processes delegate
# controllers: move them into a leaf first and enable memory and pids for the children. Docker
# mounts the cgroup file system read-only; CAP_SYS_ADMIN (which the sandbox needs anyway) lets
# us remount it. Only in the image (SDPO_SANDBOX_CGROUP_INIT=1), never on a host's own root
# cgroup. Without it the sandbox warns and limits memory per process (docs/verifiers.md).
if [ "${SDPO_SANDBOX_CGROUP_INIT:-0}" = 1 ] && [ -f /sys/fs/cgroup/cgroup.controllers ] \
    && [ "$(cat /proc/self/cgroup)" = "0::/" ]; then
    mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
    if mkdir -p /sys/fs/cgroup/worker 2>/dev/null; then
        for pid in $(cat /sys/fs/cgroup/cgroup.procs); do
            echo "$pid" >/sys/fs/cgroup/worker/cgroup.procs 2>/dev/null || true
        done
        echo "+memory +pids" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
            || echo "worker-entrypoint: cannot delegate the memory and pids controllers" >&2
    else
        echo "worker-entrypoint: /sys/fs/cgroup is read-only; sandbox runs get no cgroup" >&2
    fi
fi
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
