"""Crash safety with real processes: SIGKILL a worker mid-problem, SIGTERM hand-back, and a
Redis restart (append-only file) under a running problem."""

from __future__ import annotations

import json
import signal
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
    drop_prefix,
    new_prefix,
    read_sse,
    scrape,
    service_env,
    start_api,
    start_worker,
    toy_model_available,
    wait_for,
    wait_worker_ready,
    worker_metrics_port,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not toy_model_available(), reason="the toy model is not built yet"),
]


def hard_problem(i: int, attempts: int, per_step: int = 4) -> dict:
    problem = {**HARD_SUITE[i], "budget": {"max_attempts": attempts, "max_seconds": 900}}
    problem["sdpo"] = {**problem.get("sdpo", {}), "samples_per_step": per_step}
    return problem


def events_of(base: str, headers: dict, pid: str, timeout: float = 600) -> list[dict]:
    with httpx.stream(
        "GET", f"{base}/v1/problems/{pid}/events", headers=headers, timeout=timeout
    ) as r:
        return [{**e, "data": json.loads(e["data"])} for e in read_sse(r) if "id" in e]


def get(base: str, headers: dict, pid: str) -> dict:
    return httpx.get(f"{base}/v1/problems/{pid}", headers=headers, timeout=30).json()


def assert_clean_log(events: list[dict], problem: dict) -> None:
    idx = [e["data"]["index"] for e in events if e["event"] == "attempt"]
    assert idx == list(range(1, len(idx) + 1)), idx  # no index twice, none missing
    assert len(idx) == problem["attempts"] <= problem["spec"]["budget"]["max_attempts"]
    assert events[-1]["event"] in {"solved", "exhausted"}


def test_sigkill_worker_another_claims_and_finishes(tmp_path: Path, redis_url: str) -> None:
    prefix = new_prefix()
    env = service_env(redis_url, prefix, tmp_path / "ck")
    api, base = start_api(env, tmp_path / "api.log")
    h = {"Authorization": f"Bearer {create_api_key(redis_url, prefix, 'crash')}"}
    workers = {
        n: start_worker(env, tmp_path / f"{n}.log", n)
        for n in (f"a-{prefix[-4:]}", f"b-{prefix[-4:]}")
    }
    try:
        for n in workers:
            wait_worker_ready(base, n, h)
        ports = {n: worker_metrics_port(base, n, h) for n in workers}
        assert len(set(ports.values())) == 2, ports  # two workers on one host: two ports
        r = httpx.post(f"{base}/v1/problems", json=hard_problem(2, 24), headers=h)
        pid = r.json()["id"]

        # kill the worker running it once a step is checkpointed and more attempts are logged
        def progressed() -> dict | None:
            p = get(base, h, pid)
            return p if p["steps"] >= 1 and p["attempts"] > 4 else None

        p = wait_for(progressed, 300, "a step and more attempts", 0.05)
        victim = _worker_of(redis_url, prefix, pid)
        workers[victim].signal(signal.SIGKILL)
        workers[victim].popen.wait(10)
        killed_at = p["attempts"]
        events = events_of(base, h, pid)
        p = get(base, h, pid)
        assert p["status"] in {"solved", "exhausted"}, p
        assert_clean_log(events, p)
        resumed = [e for e in events if e["event"] == "status" and e["data"].get("resumed")]
        assert resumed and resumed[0]["data"]["worker"] != victim
        assert p["attempts"] >= killed_at
        # the survivor counts what it wrote, not the attempts it replayed from the checkpoint
        (survivor,) = set(workers) - {victim}
        after_resume = events[events.index(resumed[0]) :]
        written = sum(e["event"] == "attempt" for e in after_resume)
        done = f'sdpo_problems_finished_total{{status="{p["status"]}"}}'
        counted = wait_for(lambda: (m := scrape(ports[survivor])).get(done) and m, 10, done)
        assert counted["sdpo_attempts_total"] == written
    finally:
        for w in workers.values():
            w.stop()
        api.stop()
        drop_prefix(redis_url, prefix)


def _worker_of(redis_url: str, prefix: str, pid: str) -> str:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.hget(f"{prefix}:problem:{pid}", "worker")
    finally:
        client.close()


def test_sigterm_hands_problem_back(tmp_path: Path, redis_url: str) -> None:
    prefix = new_prefix()
    env = service_env(redis_url, prefix, tmp_path / "ck")
    api, base = start_api(env, tmp_path / "api.log")
    h = {"Authorization": f"Bearer {create_api_key(redis_url, prefix, 'term')}"}
    w1 = start_worker(env, tmp_path / "w1.log", f"t1-{prefix[-4:]}")
    w2 = None
    try:
        wait_worker_ready(base, f"t1-{prefix[-4:]}", h)
        pid = httpx.post(f"{base}/v1/problems", json=hard_problem(3, 16), headers=h).json()["id"]
        wait_for(lambda: get(base, h, pid)["steps"] >= 1, 300, "one step")
        w1.signal(signal.SIGTERM)
        assert w1.popen.wait(120) == 0
        p = get(base, h, pid)
        assert p["status"] == "queued", p  # handed back, not lost and not failed
        w2 = start_worker(env, tmp_path / "w2.log", f"t2-{prefix[-4:]}")
        events = events_of(base, h, pid)
        p = get(base, h, pid)
        assert_clean_log(events, p)
        back = [e for e in events if e["event"] == "status" and e["data"].get("reason")]
        assert back and back[0]["data"] == {"status": "queued", "reason": "worker_shutdown"}
    finally:
        for w in (w1, w2):
            if w:
                w.stop()
        api.stop()
        drop_prefix(redis_url, prefix)


def test_redis_restart_loses_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    prefix = "sdpo"
    env = service_env(server.url, prefix, tmp_path / "ck")
    api, base = start_api(env, tmp_path / "api.log")
    h = {"Authorization": f"Bearer {create_api_key(server.url, prefix, 'persist')}"}
    worker = start_worker(env, tmp_path / "w.log", "persist-w")
    try:
        wait_worker_ready(base, "persist-w", h)
        first = httpx.post(f"{base}/v1/problems", json=hard_problem(4, 16), headers=h).json()["id"]
        second = httpx.post(f"{base}/v1/problems", json=hard_problem(5, 8), headers=h).json()["id"]
        wait_for(lambda: get(base, h, first)["attempts"] >= 4, 300, "attempts")
        time.sleep(1.2)  # appendfsync everysec
        before = httpx.get(f"{base}/v1/problems/{first}/attempts", headers=h).json()["data"]
        server.stop()
        time.sleep(2)
        r = httpx.get(f"{base}/v1/problems/{first}", headers=h)
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        server = RedisServer(tmp_path / "redis", port=server.port).start()
        # the API and the worker reconnect by themselves; both problems finish
        for pid in (first, second):
            events = events_of(base, h, pid)
            p = get(base, h, pid)
            assert_clean_log(events, p)
        after = httpx.get(f"{base}/v1/problems/{first}/attempts", headers=h).json()["data"]
        assert after[: len(before)] == before
        listed = httpx.get(f"{base}/v1/problems", headers=h).json()["data"]
        assert {p["id"] for p in listed} == {first, second}
    finally:
        worker.stop()
        api.stop()
        server.stop()
