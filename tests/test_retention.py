"""Bounded Redis, on a private redis-server: finished problems expire after the retention
and memory returns to its baseline; a running problem's event log is trimmed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from service.local import RedisServer
from service.queue import Queue
from service.store import Store, connect

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import create_api_key, service_env, start_api, wait_for  # noqa: E402

RETENTION_S = 3
PREFIX = "sdpo"


def problem(i: int) -> dict:
    return {
        "prompt": f"Look up the table: a=? ({i})",
        "verifier": {"kind": "table", "cases": {"a": "1"}},
        "budget": {"max_attempts": 64},
    }


async def run_problem(url: str, pid: str, attempts: int, text: str) -> None:
    """What a worker writes for one problem, through the worker's own Store calls."""
    store = Store(connect(url), PREFIX, retention_s=RETENTION_S, events_maxlen=50)
    try:
        owner = "retention-test"
        entry = await store.redis.hget(store.problem_key(pid), "queue_entry")
        await store.transition(pid, "running", event="status", data={"status": "running"},
                               fields={"owner": owner, "worker": "t"})  # fmt: skip
        for i in range(1, attempts + 1):
            rec = {"index": i, "step": 0, "text": text, "passed": False, "score": 0.0,
                   "feedback": "Wrong Answer", "num_tokens": 3, "created_at": 0.0}  # fmt: skip
            await store.record(pid, owner=owner, counter="last_attempt_index", seq=i,
                               event="attempt", data={"index": i, "text": text}, record=rec,
                               score=0.0, fields={"attempts": i})  # fmt: skip
        await store.transition(pid, "exhausted", owner=owner, event="exhausted",
                               data={"reason": "max_attempts"})  # fmt: skip
        await Queue(store.redis, PREFIX, "toy").ack(entry)
    finally:
        await store.redis.aclose()


async def sweep(url: str) -> list[dict[str, str]]:
    store = Store(connect(url), PREFIX, retention_s=RETENTION_S)
    try:
        return await store.sweep()
    finally:
        await store.redis.aclose()


def test_memory_returns_to_baseline_after_retention(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    env = service_env(server.url, PREFIX, tmp_path / "ck", SDPO_RETENTION_SECONDS=str(RETENTION_S),
                      SDPO_EVENTS_MAXLEN="50", SDPO_MAX_ACTIVE_PER_TENANT="1000",
                      SDPO_READY_REQUIRES_WORKERS="false")  # fmt: skip
    api, base = start_api(env, tmp_path / "api.log")
    r = redis_sync.Redis.from_url(server.url)
    try:
        h = {"Authorization": f"Bearer {create_api_key(server.url, PREFIX, 'ret')}"}

        def cycle(n: int, attempts: int) -> list[str]:
            pids = []
            with httpx.Client(base_url=base, headers=h, timeout=30) as c:
                for i in range(n):
                    resp = c.post("/v1/problems", json=problem(i),
                                  headers={"Idempotency-Key": f"k{time.time()}-{i}"})  # fmt: skip
                    assert resp.status_code == 201, resp.text
                    pids.append(resp.json()["id"])
                    asyncio.run(run_problem(server.url, pids[-1], attempts, "x" * 500))
            return pids

        def forgotten() -> bool:
            asyncio.run(sweep(server.url))
            left = [*r.keys(f"{PREFIX}:problem:*"), *r.keys(f"{PREFIX}:idem:*")]
            # DBSIZE counts expired keys until Redis reclaims them (within a second or so)
            return not left and not r.zcard(f"{PREFIX}:finished") and r.dbsize() == len(r.keys())

        # Warm up with the same load twice (scripts loaded, counters, queue and Redis's own
        # tables grown to size), then take the baseline: what a steady state keeps.
        for _ in range(2):
            cycle(40, 120)
            wait_for(forgotten, 60, "the warm-up problems to be forgotten", 0.5)
        base_keys, base_mem = r.dbsize(), r.info("memory")["used_memory"]

        pids = cycle(40, 120)
        loaded_mem = r.info("memory")["used_memory"]
        assert loaded_mem > base_mem + 1_000_000  # ~40 x 120 attempt records of 500 bytes
        # each log was trimmed to about 50 events (+ less than one stream node), not 122
        assert all(r.xlen(f"{PREFIX}:events:{pid}") < 50 + 100 for pid in pids)
        assert all(r.llen(f"{PREFIX}:attempts:{pid}") == 120 for pid in pids)

        wait_for(forgotten, 60, "finished problems to be forgotten", 0.5)
        assert r.dbsize() == base_keys, sorted(k.decode() for k in r.keys("*"))
        mem = r.info("memory")["used_memory"]
        print(f"used_memory: baseline {base_mem}, loaded {loaded_mem}, after retention {mem}")
        # Redis's used_memory counter wanders by some 10-80 KB between two quiet moments (the
        # allocator's own figure does not): at least 95% of the growth must be gone.
        assert mem - base_mem < 0.05 * (loaded_mem - base_mem), (base_mem, loaded_mem, mem)
        # the tenant's listing is empty again
        assert httpx.get(f"{base}/v1/problems", headers=h).json()["data"] == []
    finally:
        r.close()
        api.stop()
        server.stop()


@pytest.mark.parametrize("retention", [7 * 86400])
def test_default_retention_is_seven_days(retention: int) -> None:
    from service.settings import Settings

    assert Settings().retention_seconds == retention


def test_a_full_redis_answers_503_and_workers_wait_for_room(tmp_path: Path) -> None:
    """Redis at its maxmemory with noeviction refuses writes: a submit gets 503 with
    Retry-After and says why (never a 500), reads still answer, and a worker's write waits
    until there is room again."""
    from service.worker import _retry

    server = RedisServer(tmp_path / "redis").start()
    env = service_env(server.url, PREFIX, tmp_path / "ck", SDPO_RETRY_AFTER_SECONDS="7",
                      SDPO_READY_REQUIRES_WORKERS="false")  # fmt: skip
    api, base = start_api(env, tmp_path / "api.log")
    r = redis_sync.Redis.from_url(server.url)
    try:
        h = {"Authorization": f"Bearer {create_api_key(server.url, PREFIX, 'full')}"}
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            first = c.post("/v1/problems", json=problem(0))
            assert first.status_code == 201, first.text
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", r.info("memory")["used_memory"] + 256 * 1024)
            filled = 0
            with pytest.raises(redis_sync.exceptions.OutOfMemoryError):
                while filled < 10_000:
                    r.set(f"fill:{filled}", b"x" * 16384)
                    filled += 1
            # Redis checks the limit as each command starts, counting that client's input
            # buffer: just under it, a small command may still pass. Over it, as a full
            # Redis stays under noeviction, every write is refused:
            r.config_set("maxmemory", r.info("memory")["used_memory"] - 64 * 1024)

            full = c.post("/v1/problems", json=problem(1))
            assert full.status_code == 503, full.text
            assert full.headers["Retry-After"] == "7"
            error = full.json()["error"]
            assert error["code"] == "storage_full" and "maxmemory" in error["message"]
            assert c.get(f"/v1/problems/{first.json()['id']}").status_code == 200  # reads work

            async def worker_write() -> None:
                redis = connect(server.url)
                try:
                    write = asyncio.create_task(_retry(redis.set, f"{PREFIX}:probe", "1"))
                    await asyncio.sleep(1.0)
                    assert not write.done()  # refused, retrying
                    await redis.delete(*[f"fill:{i}" for i in range(filled)])
                    await asyncio.wait_for(write, 30)
                finally:
                    await redis.aclose()

            asyncio.run(worker_write())
            assert c.post("/v1/problems", json=problem(2)).status_code == 201  # room again
    finally:
        r.close()
        api.stop()
        server.stop()


def test_served_models_are_those_heartbeated_within_the_window(
    redis_url: str, key_prefix: str
) -> None:
    async def go() -> tuple[list[str], list[str]]:
        store = Store(connect(redis_url), key_prefix)
        try:
            await store.heartbeat("w1", {"model": "toy"}, 4)
            await store.redis.zadd(store.key("models"), {"retired": time.time() - 7200})
            return await store.served_models(3600), await store.served_models(3 * 3600)
        finally:
            await store.redis.aclose()

    assert asyncio.run(go()) == (["toy"], ["retired", "toy"])
