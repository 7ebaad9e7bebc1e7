"""Service settings, read from environment variables (each with a documented default).

Variable (default): meaning

    REDIS_URL ((none)): Redis URL; `sdpo serve` without it = local mode
    SDPO_REDIS_PASSWORD ((none)): password for REDIS_URL (unless the URL has one)
    SDPO_KEY_PREFIX (sdpo): prefix of every Redis key
    SDPO_HOST / SDPO_PORT (127.0.0.1 / 8000): where the API listens
    SDPO_API_KEYS_REQUIRED (true): false turns auth off (loopback only)
    SDPO_MODELS ((served)): model names accepted, the first the default; unset: the models
        whose workers heartbeated in the last SDPO_MODELS_SEEN_SECONDS (local mode: its worker's)
    SDPO_MODELS_SEEN_SECONDS (3600): how long a model stays accepted after its last worker's
        last heartbeat (so restarts and upgrades do not refuse submits), when SDPO_MODELS is unset
    CHECKPOINT_DIR (./sdpo-data/checkpoints): shared directory for per-problem checkpoints
    SDPO_DATA_DIR (./sdpo-data): local mode: Redis data, checkpoints, API key
    SDPO_MAX_BODY_BYTES (1048576): request body cap (413)
    SDPO_MAX_PROMPT_CHARS (32768): prompt length cap (422)
    SDPO_MAX_TESTS (256): tests/cases per verifier (422)
    SDPO_MAX_TEST_BYTES (65536): JSON size of one test (422)
    SDPO_MAX_BUDGET_ATTEMPTS (100000): cap on budget.max_attempts (422)
    SDPO_MAX_BUDGET_SECONDS (86400): cap on budget.max_seconds (422)
    SDPO_MAX_LORA_RANK (64): cap on sdpo.lora_rank (422); the vLLM server's --max-lora-rank
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
    SDPO_WORKER_CONCURRENCY (1): problems a worker runs at once on its one model (`sdpo
        worker --concurrency`, `sdpo serve --concurrency`); docs/deploy.md says how to choose
    SDPO_WORKER_SCHEDULE (auto): several problems on the vllm engine: lockstep (they generate
        together, then each trains), overlap (one trains while others generate); auto:
        overlap. The hf engine is always lock-step
    SDPO_WORKER_METRICS_HOST (127.0.0.1): where a worker serves its /metrics
    SDPO_WORKER_METRICS_PORT (9410): a worker's /metrics port, or the next free one above
        it (several workers on one host); 0: not served
    SDPO_CPU_THREADS ((free cores)): torch CPU threads of `sdpo solve`, `bench`, `serve` and
        `worker`; unset: the cores this process may run on less the current load, within its
        cgroup's CPU limit, at least 1
    SDPO_VLLM_PYTHON ((.venv-vllm)): the vLLM environment's interpreter, for a vLLM server
        the worker starts itself (engine vllm without a URL); unset: the checkout's .venv-vllm
    VLLM_API_KEY ((none)): the key sent to the vLLM server on /v1/* (when it requires one)
    SDPO_SANDBOX, SDPO_SANDBOX_* : the verifier sandbox (`sandbox`, the sdpo_sandbox package's
        SandboxSettings; docs/verifiers.md lists them)
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sdpo_sandbox import SandboxError, SandboxSettings


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the API, the workers and local mode read from the environment.

    One declaration per variable: `SDPO_<FIELD>` unless an alias says otherwise; a `.env`
    file in the working directory is read too (the environment wins).
    """

    model_config = SettingsConfigDict(
        env_prefix="SDPO_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
    )

    _checkpoint_dir_given: bool = PrivateAttr(False)
    _models_given: bool = PrivateAttr(False)

    redis_url: str | None = Field(None, validation_alias=AliasChoices("redis_url", "REDIS_URL"))
    redis_password: str | None = None
    key_prefix: str = "sdpo"
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_required: bool = True
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    models_seen_seconds: float = Field(3600.0, gt=0)
    data_dir: Path = Path("sdpo-data")
    checkpoint_dir: Path | None = Field(
        None, validation_alias=AliasChoices("checkpoint_dir", "CHECKPOINT_DIR")
    )
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 32768
    max_tests: int = 256
    max_test_bytes: int = 65536
    max_budget_attempts: int = 100_000
    max_budget_seconds: float = 86400.0
    max_lora_rank: int = 64
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
    worker_concurrency: int = Field(1, ge=1, le=256)
    worker_schedule: Literal["auto", "lockstep", "overlap"] = "auto"
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(9410, ge=0, le=65535)
    cpu_threads: int | None = Field(None, ge=1, le=1024)
    vllm_python: Path | None = None
    vllm_api_key: str | None = Field(
        None, validation_alias=AliasChoices("vllm_api_key", "VLLM_API_KEY")
    )
    # Nested, under its own documented names (SDPO_SANDBOX=mode, SDPO_SANDBOX_<FIELD>): the
    # value the environment gives `sandbox` itself is SDPO_SANDBOX, the mode, so the model
    # is read whole from the environment (NoDecode keeps that string from being parsed).
    sandbox: Annotated[SandboxSettings, NoDecode] = Field(default_factory=SandboxSettings.from_env)

    @field_validator("sandbox", mode="before")
    @classmethod
    def _sandbox_from_env(cls, value: object) -> object:
        if isinstance(value, str):  # SDPO_SANDBOX is set: the nested model reads it too
            try:
                return SandboxSettings.from_env()
            except SandboxError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @property
    def models_given(self) -> bool:
        """SDPO_MODELS was set (local mode otherwise accepts its own worker's model)."""
        return self._models_given

    @property
    def checkpoint_dir_given(self) -> bool:
        """CHECKPOINT_DIR was set (local mode otherwise keeps checkpoints in its data dir)."""
        return self._checkpoint_dir_given

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        self._checkpoint_dir_given = self.checkpoint_dir is not None
        self._models_given = bool(self.models)
        if self.checkpoint_dir is None:
            self.checkpoint_dir = self.data_dir / "checkpoints"
        if self.redis_password and self.redis_url:
            url = urlsplit(self.redis_url)
            if url.password is None:  # the URL's own password wins
                user = quote(url.username or "", safe="")
                auth = f"{user}:{quote(self.redis_password, safe='')}@"
                url = url._replace(netloc=auth + url.netloc.rpartition("@")[2])
                self.redis_url = urlunsplit(url)
        return self

    @property
    def default_model(self) -> str | None:
        """SDPO_MODELS' first, or None (then the served models decide)."""
        return self.models[0] if self.models else None

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
        """The environment's (and `.env`'s) settings."""
        return cls()


@lru_cache
def get_settings() -> Settings:
    """The process's settings (a FastAPI dependency; tests build apps with their own)."""
    return Settings.from_env()
