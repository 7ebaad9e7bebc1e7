"""Container health checks (stdlib + the installed service package; no curl in the images).

    python deploy/healthcheck.py url http://127.0.0.1:8000/healthz   # 200 within 5 s
    python deploy/healthcheck.py worker   # a worker on this host heartbeats in Redis

`worker` reads REDIS_URL, SDPO_KEY_PREFIX and SDPO_HEARTBEAT_TIMEOUT like the worker does.
Exit 0 = healthy, 1 = not.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.request


def check_url(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def check_worker() -> bool:
    from service.settings import Settings
    from service.store import Store, connect

    settings = Settings.from_env()

    async def go() -> bool:
        store = Store(
            connect(settings.redis_url or "redis://127.0.0.1:6379/0"), settings.key_prefix
        )
        try:
            workers = await store.live_workers(settings.heartbeat_timeout)
        finally:
            await store.redis.aclose()
        return any(w.get("host") == socket.gethostname() for w in workers)

    try:
        return asyncio.run(go())
    except Exception as exc:  # Redis away: unhealthy
        print(f"healthcheck: {exc}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "url":
        return 0 if check_url(argv[1]) else 1
    if argv == ["worker"]:
        return 0 if check_worker() else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
