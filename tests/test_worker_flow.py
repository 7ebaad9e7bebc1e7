"""The worker with real processes: its wall-clock budget stands still while Redis is away,
and a cancel (a flag its heartbeat reads) ends a running problem."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from sdpo_core.toy import HARD_SUITE
from service.local import RedisServer

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import (  # noqa: E402
    create_api_key,
    read_sse,
    service_env,
    start_api,
    start_worker,
    toy_model_available,
    wait_for,
    wait_worker_ready,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not toy_model_available(), reason="the toy model is not built yet"),
]

OUTAGE_S = 30.0


def get(base: str, h: dict, pid: str) -> dict:
    return httpx.get(f"{base}/v1/problems/{pid}", headers=h, timeout=30).json()


def test_budget_stands_still_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    prefix = "sdpo"
    env = service_env(server.url, prefix, tmp_path / "ck")
    api, base = start_api(env, tmp_path / "api.log")
    h = {"Authorization": f"Bearer {create_api_key(server.url, prefix, 'outage')}"}
    worker = start_worker(env, tmp_path / "w.log", "outage-w")
    try:
        wait_worker_ready(base, "outage-w", h)
        problem = {**HARD_SUITE[6], "budget": {"max_attempts": 100_000, "max_seconds": 10}}
        pid = httpx.post(f"{base}/v1/problems", json=problem, headers=h).json()["id"]
        wait_for(lambda: get(base, h, pid)["attempts"] >= 1, 300, "the first attempt")
        server.stop()
        time.sleep(OUTAGE_S)  # three times the budget
        server = RedisServer(tmp_path / "redis", port=server.port).start()
        with httpx.stream("GET", f"{base}/v1/problems/{pid}/events", headers=h, timeout=600) as r:
            events = [e for e in read_sse(r) if "id" in e]
        last = events[-1]
        assert last["event"] == "exhausted", last
        data = json.loads(last["data"])
        assert data["reason"] == "max_seconds"
        # The run's clock stood still during the outage: it ended after about its budget of
        # solving, not at the first look after Redis came back (which would read >= 30 s).
        assert data["seconds"] < OUTAGE_S, data
    finally:
        worker.stop()
        api.stop()
        server.stop()
