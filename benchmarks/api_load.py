"""API load: submit and status latency at 50 concurrent clients, and 500 concurrent SSE
subscribers following one problem's event stream (lost events must be 0).

Everything is real and on loopback: a private redis-server (append-only, as in local mode),
the API as its own uvicorn process, and the clients in this process (httpx, asyncio). The SSE
events are written through the same Store calls a worker makes.

    .venv/bin/python benchmarks/api_load.py            # -> benchmarks/results/api_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from service_fixtures import create_api_key, service_env, start_api  # noqa: E402

from service.local import RedisServer  # noqa: E402
from service.store import Store, connect  # noqa: E402

PROBLEM = {
    "prompt": "Look up the table: a=? b=?",
    "verifier": {"kind": "table", "cases": {"a": "1", "b": "2"}},
    "budget": {"max_attempts": 64, "max_seconds": 600},
}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


def summary(lat: list[float], wall: float, errors: int) -> dict:
    return {
        "requests": len(lat),
        "errors": errors,
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(lat) * 1000, 2),
        "throughput_rps": round(len(lat) / wall, 1),
    }


async def hammer(
    base: str, headers: dict, clients: int, per_client: int, make_request
) -> tuple[list[float], float, int, list]:
    """`clients` concurrent loops, each sending `per_client` requests."""
    lat: list[float] = []
    results: list = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as c:

        async def loop(i: int) -> None:
            nonlocal errors
            for j in range(per_client):
                t0 = time.perf_counter()
                r = await make_request(c, i, j)
                lat.append(time.perf_counter() - t0)
                if r.status_code >= 400:
                    errors += 1
                else:
                    results.append(r)

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return lat, wall, errors, results


async def sse_phase(
    base: str, headers: dict, url: str, prefix: str, subscribers: int, n_events: int, rate: float
) -> dict:
    """`subscribers` clients follow one problem while a writer logs `n_events` attempts."""
    limits = httpx.Limits(max_connections=subscribers + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(300, connect=60)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=timeout
    ) as c:
        pid = (await c.post("/v1/problems", json=PROBLEM)).json()["id"]
        connected = 0
        all_connected = asyncio.Event()
        delays: list[float] = []

        async def subscriber() -> dict:
            nonlocal connected
            seen: list[int] = []
            ids: list[str] = []
            terminal = False
            async with c.stream("GET", f"/v1/problems/{pid}/events") as r:
                event, data, eid = None, None, None
                async for line in r.aiter_lines():
                    if line.startswith("id:"):
                        eid = line[4:]
                    elif line.startswith("event:"):
                        event = line[7:]
                    elif line.startswith("data:"):
                        data = line[6:]
                    elif line == "" and event:
                        ids.append(eid)
                        if event == "status" and not seen and len(ids) == 1:
                            connected += 1
                            if connected == subscribers:
                                all_connected.set()
                        elif event == "attempt":
                            d = json.loads(data)
                            seen.append(d["index"])
                            delays.append(time.time() - d["text_ts"])
                        elif event == "solved":
                            terminal = True
                        event = data = None
            return {"indices": seen, "ids": ids, "terminal": terminal}

        tasks = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
        t_connect = time.perf_counter()
        await asyncio.wait_for(all_connected.wait(), 300)
        connect_s = time.perf_counter() - t_connect

        redis = connect(url)
        store = Store(redis, prefix)
        owner = "bench-writer"
        await store.transition(pid, "running", event="status", data={"status": "running"},
                               fields={"owner": owner, "worker": "bench"})  # fmt: skip
        t0 = time.perf_counter()
        for i in range(1, n_events + 1):
            data = {"index": i, "step": 0, "text_ts": time.time(), "text": "a=1 b=3",
                    "verdict": {"passed": False, "score": 0.5, "feedback": "Wrong Answer"},
                    "num_tokens": 6}  # fmt: skip
            rec = {"index": i, "step": 0, "text": "a=1 b=3", "passed": False, "score": 0.5,
                   "feedback": "Wrong Answer", "num_tokens": 6,
                   "created_at": time.time()}  # fmt: skip
            await store.record(pid, owner=owner, counter="last_attempt_index", seq=i,
                               event="attempt", data=data, record=rec, score=0.5)  # fmt: skip
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        await store.transition(pid, "solved", owner=owner, event="solved",
                               data={"attempt_index": n_events},
                               fields={"solution": "x"})  # fmt: skip
        write_s = time.perf_counter() - t0
        results = await asyncio.wait_for(asyncio.gather(*tasks), 600)
        drain_s = time.perf_counter() - t0
        await redis.aclose()

    expected = list(range(1, n_events + 1))
    lost = sum(len(set(expected) - set(r["indices"])) for r in results)
    dup = sum(len(r["indices"]) - len(set(r["indices"])) for r in results)
    out_of_order = sum(r["indices"] != sorted(r["indices"]) for r in results)
    return {
        "subscribers": subscribers,
        "events_per_subscriber": n_events,
        "write_rate_eps": rate,
        "events_delivered": sum(len(r["indices"]) for r in results),
        "lost_events": lost,
        "duplicate_events": dup,
        "out_of_order_streams": out_of_order,
        "streams_ended_on_terminal": sum(r["terminal"] for r in results),
        "connect_all_s": round(connect_s, 2),
        "write_s": round(write_s, 2),
        "all_drained_s": round(drain_s, 2),
        "delivery_latency_p50_ms": round(pct(delays, 50) * 1000, 1),
        "delivery_latency_p99_ms": round(pct(delays, 99) * 1000, 1),
        "fanout_events_per_s": round(sum(len(r["indices"]) for r in results) / drain_s, 1),
    }


async def run(args: argparse.Namespace, base: str, headers: dict, url: str, prefix: str) -> dict:
    async def submit(c: httpx.AsyncClient, i: int, j: int) -> httpx.Response:
        return await c.post("/v1/problems", json={**PROBLEM, "metadata": {"c": i, "j": j}})

    lat, wall, err, created = await hammer(base, headers, args.clients, args.requests, submit)
    ids = [r.json()["id"] for r in created]
    res = {"submit": summary(lat, wall, err)}
    print("submit", res["submit"], flush=True)

    async def status(c: httpx.AsyncClient, i: int, j: int) -> httpx.Response:
        return await c.get(f"/v1/problems/{random.choice(ids)}")

    lat, wall, err, _ = await hammer(base, headers, args.clients, args.requests * 2, status)
    res["status"] = summary(lat, wall, err)
    print("status", res["status"], flush=True)

    res["sse"] = await sse_phase(
        base, headers, url, prefix, args.subscribers, args.events, args.rate
    )
    print("sse", res["sse"], flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=40, help="submits per client (status: 2x)")
    p.add_argument("--subscribers", type=int, default=500)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--rate", type=float, default=50.0, help="events written per second")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/api_load.json"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sdpo-load-"))
    server = RedisServer(tmp / "redis").start()
    prefix = "load"
    env = service_env(server.url, prefix, tmp / "ck", SDPO_MAX_ACTIVE_PER_TENANT=10**7,
                      SDPO_MAX_QUEUED=10**7, SDPO_SSE_HEARTBEAT_SECONDS=15)  # fmt: skip
    api, base = start_api(env, tmp / "api.log")
    headers = {"Authorization": f"Bearer {create_api_key(server.url, prefix, 'load')}"}
    try:
        res = asyncio.run(run(args, base, headers, server.url, prefix))
    finally:
        api.stop()
        server.stop()
    res["setup"] = {
        "clients": args.clients,
        "api": "1 uvicorn process (python -m service serve)",
        "redis": "private redis-server on loopback, appendonly everysec",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "clients, API and Redis share the same CPUs",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
