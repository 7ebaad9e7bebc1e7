# syntax=docker/dockerfile:1
# The API: `sdpo serve` with REDIS_URL set (API only). Build from the repository root:
#   docker build -f deploy/api.Dockerfile -t sdpo-api .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sdpo_core ./sdpo_core
COPY sdpo_sandbox ./sdpo_sandbox
COPY service ./service
COPY sdpo_cli ./sdpo_cli
COPY clients ./clients
COPY deploy ./deploy
RUN pip install --no-cache-dir . ./clients/python \
    && useradd --system --uid 10001 --home-dir /app sdpo

USER 10001
EXPOSE 8000
ENV SDPO_HOST=0.0.0.0 SDPO_PORT=8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "url", "http://127.0.0.1:8000/healthz"]
CMD ["sdpo", "serve"]
