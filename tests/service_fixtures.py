"""Shared fixtures for tests of the service (and of the SDK and dashboard built on it).

Everything is real: the Redis on 127.0.0.1:6379 (or SDPO_TEST_REDIS_URL) under a key prefix
unique to the test, or a private redis-server; the API and workers as separate processes.

Use them by importing into a test module:

    from service_fixtures import sdpo_service  # noqa: F401  (API + one toy worker)

    def test_x(sdpo_service):
        r = httpx.post(f"{sdpo_service.base_url}/v1/problems", json=...,
                       headers=sdpo_service.headers)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from service.local import RedisServer, free_port
from service.store import Store, connect

ROOT = Path(__file__).resolve().parents[1]
SHARED_REDIS_URL = os.environ.get("SDPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def toy_model_dir() -> Path:
    """The model workers load: SDPO_TEST_MODEL if set, else the bundled toy model."""
    from sdpo_core.toy import DEFAULT_MODEL_DIR

    return Path(os.environ.get("SDPO_TEST_MODEL") or DEFAULT_MODEL_DIR)


def toy_model_available() -> bool:
    return (toy_model_dir() / "config.json").exists()


def new_prefix() -> str:
    return f"sdpotest:{uuid.uuid4().hex[:10]}"


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (test clean-up)."""
    client = redis_sync.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    except redis_sync.ConnectionError:
        pass
    finally:
        client.close()


def create_api_key(url: str, prefix: str, tenant: str) -> str:
    """A fresh API key for `tenant` (what `sdpo keys create` does)."""

    async def go() -> str:
        store = Store(connect(url), prefix)
        try:
            return (await store.create_key(tenant))[1]
        finally:
            await store.redis.aclose()

    return asyncio.run(go())


def service_env(redis_url: str, prefix: str, checkpoint_dir: Path, **extra: Any) -> dict[str, str]:
    """Environment for an API or worker process: quick heartbeats, this Redis and prefix;
    SDPO_MODELS=toy, so an API accepts toy problems before a worker heartbeats (pass
    SDPO_MODELS="" for the models the live workers serve)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPO_")}
    env.update(
        REDIS_URL=redis_url,
        SDPO_KEY_PREFIX=prefix,
        SDPO_MODELS="toy",
        CHECKPOINT_DIR=str(checkpoint_dir),
        SDPO_HEARTBEAT_SECONDS="0.5",
        SDPO_HEARTBEAT_TIMEOUT="4",
        SDPO_SSE_HEARTBEAT_SECONDS="1",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Proc:
    """A child process with its log file."""

    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn(args: list[str], env: dict[str, str], log: Path) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    popen = subprocess.Popen(
        [sys.executable, *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
    )
    return Proc(popen, log)


def start_api(env: dict[str, str], log: Path, *, timeout: float = 30.0) -> tuple[Proc, str]:
    """`python -m service serve` (API only: REDIS_URL is set). Returns (process, base URL)."""
    port = free_port()
    env = {**env, "SDPO_HOST": "127.0.0.1", "SDPO_PORT": str(port)}
    proc = spawn(["-m", "service", "serve"], env, log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"API exited:\n{proc.tail()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"API did not come up:\n{proc.tail()}")


def start_worker(env: dict[str, str], log: Path, name: str, *extra: str) -> Proc:
    """`python -m service worker` on the bundled toy model."""
    args = ["-m", "service", "worker", "--name", name, "--model-name", "toy"]
    return spawn([*args, "--model", str(toy_model_dir()), *extra], env, log)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_worker_ready(
    base_url: str, name: str, headers: dict[str, str], timeout: float = 120.0
) -> None:
    """Until /readyz lists the worker (it heartbeats once its model is loaded); the list
    needs an API key (`headers`)."""

    def ready() -> bool:
        r = httpx.get(f"{base_url}/readyz", headers=headers, timeout=5)
        return any(w["name"] == name for w in r.json().get("workers") or [])

    wait_for(ready, timeout, f"worker {name} to be ready", 0.3)


def worker_metrics_port(base_url: str, name: str, headers: dict[str, str]) -> int:
    """The port a live worker serves its /metrics on (from /readyz, which needs a key)."""
    workers = httpx.get(f"{base_url}/readyz", headers=headers, timeout=5).json()["workers"]
    port = next(w["metrics_port"] for w in workers if w["name"] == name)
    assert isinstance(port, int), workers
    return port


def scrape(port: int) -> dict[str, float]:
    """A worker's /metrics over HTTP, parsed with prometheus_client's text parser:
    {sample name with its labels sorted, e.g. 'x_total{status="solved"}': value}."""
    return parse_exposition(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus exposition text, parsed with prometheus_client's parser: {sample name with
    its labels sorted: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@dataclass
class Service:
    """A running API (+ workers) and how to call it."""

    base_url: str
    api_key: str
    redis_url: str
    prefix: str
    env: dict[str, str]
    workdir: Path
    api: Proc
    workers: list[Proc] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def new_key(self, tenant: str) -> str:
        return create_api_key(self.redis_url, self.prefix, tenant)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, **{"timeout": 30, **kw})


def read_sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse an SSE response into dicts {id, event, data, comment}."""
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = event.get(name, "") + value if name == "data" else value


@pytest.fixture
def redis_url() -> str:
    """The shared Redis (.ci/run starts it; its absence fails the test)."""
    try:
        redis_sync.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1).ping()
    except redis_sync.ConnectionError:
        pytest.fail(f"no Redis at {SHARED_REDIS_URL}")
    return SHARED_REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone, deleted afterwards."""
    prefix = new_prefix()
    yield prefix
    drop_prefix(redis_url, prefix)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with append-only persistence, on a free port."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _service(tmp: Path, *, workers: int, **extra: Any) -> Iterator[Service]:
    try:
        redis_sync.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1).ping()
    except redis_sync.ConnectionError:
        pytest.fail(f"no Redis at {SHARED_REDIS_URL}")
    if workers and not toy_model_available():
        pytest.fail("the bundled toy model is missing (python -m sdpo_core.toy.pretrain)")
    prefix = new_prefix()
    env = service_env(SHARED_REDIS_URL, prefix, tmp / "checkpoints", **extra)
    api, base = start_api(env, tmp / "api.log")
    svc = Service(
        base, create_api_key(SHARED_REDIS_URL, prefix, "tenant-a"), SHARED_REDIS_URL, prefix,
        env, tmp, api,
    )  # fmt: skip
    try:
        for i in range(workers):
            name = f"w{i}-{prefix[-4:]}"
            svc.workers.append(start_worker(env, tmp / f"worker{i}.log", name))
            wait_worker_ready(base, name, svc.headers)
        yield svc
    finally:
        for w in svc.workers:
            w.stop()
        api.stop()
        drop_prefix(SHARED_REDIS_URL, prefix)


@pytest.fixture(scope="module")
def api_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The API alone (no worker) on the shared Redis, under its own prefix. A test module
    can set `service_env_extra = {...}` to add environment variables (e.g. limits)."""
    extra = {"SDPO_READY_REQUIRES_WORKERS": "false", **_module_env(request)}
    yield from _service(tmp_path_factory.mktemp("api"), workers=0, **extra)


@pytest.fixture(scope="module")
def sdpo_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The API and one worker on the bundled toy model, as real processes."""
    yield from _service(tmp_path_factory.mktemp("svc"), workers=1, **_module_env(request))


def _module_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return dict(getattr(request.module, "service_env_extra", {}))
