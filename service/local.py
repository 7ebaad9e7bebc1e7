"""`sdpo serve`: the API, plus, without REDIS_URL, a private Redis and one in-process worker.

Local mode keeps everything under SDPO_DATA_DIR (default ./sdpo-data): the Redis append-only
file in redis/, checkpoints in checkpoints/, and the API key in api-key (created on first
start, printed every start). A real redis-server binary is required (e.g. apt install redis).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import redis as redis_sync
import uvicorn

from service.app import create_app
from service.settings import Settings
from service.store import Store, connect

log = logging.getLogger("sdpo.local")
_PR_SET_PDEATHSIG = 1
try:  # looked up here, not in the forked child (no dlopen/dlsym between fork and exec)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the pid file catches a survivor
    _PRCTL = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    """uvloop + httptools, no access log: the least CPU per request (see api_load.py).
    uvicorn's loggers follow the process's logging as the entry point set it (its startup
    and shutdown lines only with --verbose, its errors always), not a config of its own."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=None,
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700; an existing directory we own is made 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o700)
    return path


def _child_setup() -> None:
    """In the forked Redis: files 0600/0700, and SIGTERM when `sdpo serve` dies (even -9)."""
    os.umask(0o077)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class DataDirLock:
    """One `sdpo serve` per data directory: an exclusive flock on DATA_DIR/serve.lock."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "serve.lock"
        self.file: IO[str] | None = None

    def acquire(self) -> DataDirLock:
        f = open(self.path, "a+")  # held open (locked) until release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise RuntimeError(
                    f"another `sdpo serve` (pid {holder}) uses {self.path.parent}; "
                    "stop it or pick another --data-dir"
                ) from None
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the lock
            self.file = None


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RedisServer:
    """A private redis-server with append-only persistence in `directory`.

    Its pid is kept in `directory/redis.pid`; `start()` first shuts down a server left
    running there (by a `sdpo serve` killed with -9), so two servers never share one
    append-only directory. The child gets SIGTERM when its parent dies and runs with
    umask 077."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = Path(directory).resolve()
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.pidfile = self.dir / "redis.pid"

    def _stop_stale(self, timeout: float = 20.0) -> None:
        """SIGTERM (then SIGKILL) a redis-server whose pid file is here and which runs here."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            cwd, exe = None, b""  # gone, or not ours to inspect
        if cwd != self.dir or b"redis" not in exe:
            self.pidfile.unlink(missing_ok=True)
            return
        log.warning("stopping the redis-server (pid %d) left running in %s", pid, self.dir)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not stop redis-server {pid} in {self.dir}")
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)

    def spawn(self) -> None:
        """Start the process (no wait). Call from a thread that outlives it (the parent-death
        signal follows the thread that forked)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH: install Redis (apt install redis)")
        private_dir(self.dir)
        self._stop_stale()
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_child_setup
        )
        tmp = self.pidfile.with_suffix(".pid.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.proc.pid}\n")
        os.replace(tmp, self.pidfile)

    def ping(self) -> bool:
        client = redis_sync.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis_sync.ConnectionError, redis_sync.BusyLoadingError, redis_sync.TimeoutError):
            return False
        finally:
            client.close()

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        self.pidfile.unlink(missing_ok=True)


async def supervise(server: RedisServer, period: float = 0.5) -> None:
    """Restart the private Redis (same port, same data) whenever it dies."""
    while True:
        await asyncio.sleep(period)
        if server.alive():
            continue
        code = server.proc.returncode if server.proc else None
        log.error("the private redis-server exited (code %s); restarting it", code)
        try:
            server.spawn()  # on the event loop's thread: the one that lives as long as serve
        except (OSError, RuntimeError) as exc:
            log.error("could not restart redis-server: %s", exc)
            continue
        for _ in range(400):
            if await asyncio.to_thread(server.ping) or not server.alive():
                break
            await asyncio.sleep(0.05)


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
        auth = "" if settings.auth_enabled else "  (auth off, loopback only)"
        print(f"sdpo serve: API on http://{settings.host}:{settings.port}{auth}", flush=True)
        uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()
        return 0

    data = private_dir(settings.data_dir.resolve())
    settings = settings.model_copy(update={"data_dir": data})
    if not settings.models:  # accept its worker's model at once, before it has loaded
        from service.worker import model_name_for

        settings = settings.model_copy(update={"models": [model_name_for(model_path)]})
    if not settings.checkpoint_dir_given:
        settings = settings.model_copy(update={"checkpoint_dir": data / "checkpoints"})
    private_dir(settings.checkpoint_dir)
    try:
        lock = DataDirLock(data).acquire()
    except RuntimeError as exc:
        print(f"sdpo serve: {exc}", file=sys.stderr)
        return 2
    server = RedisServer(data / "redis")
    try:
        server.start()
        settings = settings.model_copy(update={"redis_url": server.url})
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_local_main(settings, server, model_path, engine, vllm_url))
    finally:
        server.stop()
        lock.release()


async def _local_main(
    settings: Settings,
    server: RedisServer,
    model_path: str | None,
    engine: str,
    vllm_url: str | None,
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
        metrics_port=0,  # its metrics are on the API's /metrics: same process
        concurrency=settings.worker_concurrency,
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
    watchdog = asyncio.create_task(supervise(server))
    try:
        app = create_app(settings, metric_registries=[worker.metrics.registry])
        await uvicorn.Server(uvicorn_config(app, settings)).serve()
    finally:
        watchdog.cancel()
        worker.stop()
        try:
            await worker_task
        except Exception:  # already logged by the callback
            pass
    return 0
