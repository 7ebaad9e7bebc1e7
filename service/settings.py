"""Service settings, read from environment variables (each with a documented default).

Variable (default): meaning

    REDIS_URL ((none)): Redis URL; `sdpo serve` without it = local mode
    SDPO_KEY_PREFIX (sdpo): prefix of every Redis key
    SDPO_HOST / SDPO_PORT (127.0.0.1 / 8000): where the API listens
    SDPO_API_KEYS_REQUIRED (true): false turns auth off (loopback only)
    SDPO_MODELS (toy): model names accepted; the first is the default
    CHECKPOINT_DIR (./sdpo-data/checkpoints): shared directory for per-problem checkpoints
    SDPO_DATA_DIR (./sdpo-data): local mode: Redis data, checkpoints, API key
    SDPO_MAX_BODY_BYTES (1048576): request body cap (413)
    SDPO_MAX_PROMPT_CHARS (32768): prompt length cap (422)
    SDPO_MAX_TESTS (256): tests/cases per verifier (422)
    SDPO_MAX_TEST_BYTES (65536): JSON size of one test (422)
    SDPO_MAX_BUDGET_ATTEMPTS (100000): cap on budget.max_attempts (422)
    SDPO_MAX_BUDGET_SECONDS (86400): cap on budget.max_seconds (422)
    SDPO_MAX_ACTIVE_PER_TENANT (16): queued + running problems per tenant (429)
    SDPO_MAX_QUEUED (1000): queued problems in all (503)
    SDPO_RETRY_AFTER_SECONDS (30): Retry-After on 429 / 503
    SDPO_HEARTBEAT_SECONDS (2): worker heartbeat period
    SDPO_HEARTBEAT_TIMEOUT (30): a problem is reclaimed after this lapse
    SDPO_MAX_DELIVERIES (5): a problem that killed this many workers fails
    SDPO_SSE_HEARTBEAT_SECONDS (15): SSE heartbeat comment period
    SDPO_READY_REQUIRES_WORKERS (true): /readyz fails while no worker is alive
    SDPO_MAX_STREAMS_PER_TENANT (64): open SSE streams per tenant and API process (429)
    SDPO_RETENTION_SECONDS (604800): finished problems (record, events, attempts, adapter)
        are deleted this long after they finish
    SDPO_EVENTS_MAXLEN (10000): a running problem's event log keeps about this many events
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field


def _env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _bool(value: str | None) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    """Everything the API, the workers and local mode read from the environment."""

    redis_url: str | None = None
    key_prefix: str = "sdpo"
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_required: bool = True
    models: list[str] = Field(default_factory=lambda: ["toy"])
    data_dir: Path = Path("sdpo-data")
    checkpoint_dir: Path = Path("sdpo-data/checkpoints")
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 32768
    max_tests: int = 256
    max_test_bytes: int = 65536
    max_budget_attempts: int = 100_000
    max_budget_seconds: float = 86400.0
    max_active_per_tenant: int = 16
    max_queued: int = 1000
    retry_after_seconds: int = 30
    heartbeat_seconds: float = 2.0
    heartbeat_timeout: float = 30.0
    max_deliveries: int = 5
    sse_heartbeat_seconds: float = 15.0
    ready_requires_workers: bool = True
    max_streams_per_tenant: int = 64
    retention_seconds: float = 7 * 86400.0
    events_maxlen: int = 10_000

    @property
    def default_model(self) -> str:
        return self.models[0]

    @property
    def auth_enabled(self) -> bool:
        """Auth is off only when the operator asks for it and the API is on loopback."""
        return self.api_keys_required or not is_loopback(self.host)

    def check(self) -> None:
        """Refuse configurations that would expose an unauthenticated API."""
        if not self.api_keys_required and not is_loopback(self.host):
            raise ValueError(
                f"SDPO_API_KEYS_REQUIRED=false is allowed only on loopback, not on {self.host}"
            )

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("SDPO_DATA_DIR", "sdpo-data"))
        e = _env
        return cls(
            redis_url=e("REDIS_URL", None),
            key_prefix=e("SDPO_KEY_PREFIX", "sdpo"),
            host=e("SDPO_HOST", "127.0.0.1"),
            port=int(e("SDPO_PORT", "8000")),
            api_keys_required=_bool(e("SDPO_API_KEYS_REQUIRED", "true")),
            models=[m.strip() for m in e("SDPO_MODELS", "toy").split(",") if m.strip()],
            data_dir=data_dir,
            checkpoint_dir=Path(e("CHECKPOINT_DIR", str(data_dir / "checkpoints"))),
            max_body_bytes=int(e("SDPO_MAX_BODY_BYTES", str(1 << 20))),
            max_prompt_chars=int(e("SDPO_MAX_PROMPT_CHARS", "32768")),
            max_tests=int(e("SDPO_MAX_TESTS", "256")),
            max_test_bytes=int(e("SDPO_MAX_TEST_BYTES", "65536")),
            max_budget_attempts=int(e("SDPO_MAX_BUDGET_ATTEMPTS", "100000")),
            max_budget_seconds=float(e("SDPO_MAX_BUDGET_SECONDS", "86400")),
            max_active_per_tenant=int(e("SDPO_MAX_ACTIVE_PER_TENANT", "16")),
            max_queued=int(e("SDPO_MAX_QUEUED", "1000")),
            retry_after_seconds=int(e("SDPO_RETRY_AFTER_SECONDS", "30")),
            heartbeat_seconds=float(e("SDPO_HEARTBEAT_SECONDS", "2")),
            heartbeat_timeout=float(e("SDPO_HEARTBEAT_TIMEOUT", "30")),
            max_deliveries=int(e("SDPO_MAX_DELIVERIES", "5")),
            sse_heartbeat_seconds=float(e("SDPO_SSE_HEARTBEAT_SECONDS", "15")),
            ready_requires_workers=_bool(e("SDPO_READY_REQUIRES_WORKERS", "true")),
            max_streams_per_tenant=int(e("SDPO_MAX_STREAMS_PER_TENANT", "64")),
            retention_seconds=float(e("SDPO_RETENTION_SECONDS", str(7 * 86400))),
            events_maxlen=int(e("SDPO_EVENTS_MAXLEN", "10000")),
        )


@lru_cache
def get_settings() -> Settings:
    """The process's settings (a FastAPI dependency; tests build apps with their own)."""
    return Settings.from_env()
