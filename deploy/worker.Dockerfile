# syntax=docker/dockerfile:1
# A worker: `sdpo worker` (trainer + verifier sandbox). The same image runs on a GPU (the
# PyPI torch wheel brings its CUDA libraries; the NVIDIA container runtime brings the driver)
# and on CPU (the `cpu` compose profile). Build from the repository root:
#   docker build -f deploy/worker.Dockerfile -t sdpo-worker .
FROM python:3.11-slim-bookworm

# The verifier sandbox needs root (uid switching) and CAP_SYS_ADMIN (namespaces, mounts); the
# entrypoint prepares its cgroups (SDPO_SANDBOX_CGROUP_INIT). Untrusted code runs under
# /opt/sdpo-sandbox: the image's python plus deploy/sandbox-requirements.txt, nothing else.
# TOKENIZERS_PARALLELISM is no secret (DL3064 matches the word TOKEN).
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SDPO_SANDBOX_PYTHON=/opt/sdpo-sandbox/bin/python3 \
    SDPO_SANDBOX_CGROUP_INIT=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY deploy/sandbox-requirements.txt ./deploy/
RUN python -m venv --without-pip /opt/sdpo-sandbox \
    && pip install --no-cache-dir --python /opt/sdpo-sandbox/bin/python3 \
        -r deploy/sandbox-requirements.txt
COPY pyproject.toml README.md ./
COPY sdpo_core ./sdpo_core
COPY sdpo_sandbox ./sdpo_sandbox
COPY service ./service
COPY sdpo_cli ./sdpo_cli
COPY clients ./clients
COPY deploy ./deploy
# ".[worker]" is this package with its worker extra (torch ...), not a name on PyPI.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[worker]" ./clients/python \
    && chmod 0755 /app/deploy/worker-entrypoint.sh

HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "worker"]
ENTRYPOINT ["/app/deploy/worker-entrypoint.sh"]
CMD ["sdpo", "worker"]
