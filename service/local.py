"""`sdpo serve`: the API, plus, without REDIS_URL, a private Redis and one in-process worker.

Local mode keeps everything under SDPO_DATA_DIR (default ./sdpo-data): the Redis append-only
file in redis/, checkpoints in checkpoints/, and the API key in api-key (created on first
start, printed every start). A real redis-server binary is required (e.g. apt install redis).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis as redis_sync
import uvicorn

from service.app import create_app
from service.settings import Settings
from service.store import Store, connect

log = logging.getLogger("sdpo.local")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server with append-only persistence in `directory`."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = Path(directory).resolve()
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH: install Redis (apt install redis)")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis_sync.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except (redis_sync.ConnectionError, redis_sync.BusyLoadingError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        client.close()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM: Redis flushes the append-only file and exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def ensure_local_key(url: str, settings: Settings, path: Path) -> str:
    """The local API key: read from `path`, or created for tenant `local` and saved there."""
    redis = connect(url)
    store = Store(redis, settings.key_prefix)
    try:
        if path.exists():
            key = path.read_text().strip()
            if await store.tenant_for_key(key):
                return key
        _key_id, key = await store.create_key("local")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
    finally:
        await redis.aclose()


def serve(
    settings: Settings,
    *,
    model_path: str | None = None,
    engine: str = "hf",
    vllm_url: str | None = None,
) -> int:
    """Run the API; in local mode (no REDIS_URL) also a private Redis and one worker."""
    settings.check()
    if settings.redis_url:
        app = create_app(settings)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
        return 0

    data = settings.data_dir.resolve()
    settings = settings.model_copy(update={"data_dir": data})
    if not os.environ.get("CHECKPOINT_DIR"):
        settings = settings.model_copy(update={"checkpoint_dir": data / "checkpoints"})
    server = RedisServer(data / "redis").start()
    settings = settings.model_copy(update={"redis_url": server.url})
    try:
        return asyncio.run(_local_main(settings, model_path, engine, vllm_url))
    finally:
        server.stop()


async def _local_main(
    settings: Settings, model_path: str | None, engine: str, vllm_url: str | None
) -> int:
    from service.worker import Worker

    url = settings.redis_url or ""
    base = f"http://{settings.host}:{settings.port}"
    if settings.auth_enabled:
        key = await ensure_local_key(url, settings, settings.data_dir / "api-key")
        print(f"sdpo serve: API on {base}  (API key: {key})", flush=True)
    else:
        print(f"sdpo serve: API on {base}  (auth off, loopback only)", flush=True)
    print(f"sdpo serve: data in {settings.data_dir}", flush=True)
    worker = Worker(
        settings,
        model_path=model_path,
        model_name=settings.default_model,
        engine=engine,
        vllm_url=vllm_url,
        redis_url=url,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn re-raises these after it stops
        signal.signal(sig, lambda *_: worker.stop())
    worker_task = asyncio.create_task(worker.run())
    worker_task.add_done_callback(
        lambda t: (
            t.cancelled()
            or t.exception() is None
            or log.error("the local worker stopped: %r (the API keeps running)", t.exception())
        )
    )
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level="info"
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        worker.stop()
        try:
            await worker_task
        except Exception:  # already logged by the callback
            pass
    return 0
