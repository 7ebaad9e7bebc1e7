# syntax=docker/dockerfile:1
# A worker: `sdpo worker` (trainer + verifier sandbox). The same image runs on a GPU (the
# PyPI torch wheel brings its CUDA libraries; the NVIDIA container runtime brings the driver)
# and on CPU (the `cpu` compose profile). Build from the repository root:
#   docker build -f deploy/worker.Dockerfile -t sdpo-worker .
FROM python:3.11-slim-bookworm

# The sandbox runs untrusted code under the system python with unshare/setpriv/flock
# (util-linux, in the base image); it needs root (uid switching) and CAP_SYS_ADMIN.
# TOKENIZERS_PARALLELISM is no secret (DL3064 matches the word TOKEN).
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SDPO_SANDBOX_PYTHON=/usr/local/bin/python3 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sdpo_core ./sdpo_core
COPY service ./service
COPY sdpo_cli ./sdpo_cli
COPY clients ./clients
COPY deploy ./deploy
RUN pip install --no-cache-dir . ./clients/python \
    && chmod 0755 /app/deploy/worker-entrypoint.sh

HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "worker"]
ENTRYPOINT ["/app/deploy/worker-entrypoint.sh"]
CMD ["sdpo", "worker"]
