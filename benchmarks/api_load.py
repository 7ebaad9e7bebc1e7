"""API load, as ratios to a baseline measured in the same run.

The baseline is a bare FastAPI endpoint doing one Redis HGETALL, served the same way as the
API (uvicorn with uvloop and httptools, no access log). wrk (a compiled load generator:
`apt-get install wrk`) drives both with 50 keep-alive connections, so the client is not the
bottleneck; the script prints the API's status and submit p99 over the baseline's p99, and
the API process's CPU time per status request (from /proc). Then 500 SSE subscribers follow
one problem while a writer logs attempts through the worker's Store calls: lost, duplicated
and out-of-order events must be 0, and the subscribers share one Redis reader.

Everything is real and on loopback: a private redis-server (append-only, as in local mode),
the API and the baseline as their own processes.

    nice -n 10 .venv/bin/python benchmarks/api_load.py     # -> benchmarks/results/api_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from service_fixtures import create_api_key, free_port, service_env, start_api  # noqa: E402

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


BASELINE_APP = """
import os
import redis.asyncio as aioredis
from fastapi import FastAPI

app = FastAPI()
redis = aioredis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
KEY = os.environ["BASELINE_KEY"]


@app.get("/baseline")
async def baseline() -> dict:
    return await redis.hgetall(KEY)
"""


def start_baseline(tmp: Path, redis_url: str, key: str) -> tuple[subprocess.Popen, str]:
    """The bare endpoint, as its own uvicorn process configured like the API."""
    (tmp / "baseline_app.py").write_text(BASELINE_APP)
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
            "warning"]  # fmt: skip
    env = {**os.environ, "REDIS_URL": redis_url, "BASELINE_KEY": key}
    proc = subprocess.Popen(args, cwd=tmp, env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/baseline", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the baseline server did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, *, clients: int, seconds: float, headers: dict[str, str],
        body: str | None = None, pid: int | None = None, threads: int = 2) -> dict:  # fmt: skip
    """Run wrk against `url`; latency percentiles, throughput, errors (and the CPU time the
    process `pid` spent per request)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    lua = ['wrk.headers["Content-Type"] = "application/json"']
    lua += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if body is not None:
        lua += ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lua.append("""done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"p50_ms\\": %f, \\"p99_ms\\": %f, \\"mean_ms\\": %f, ",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.mean / 1000))
  io.write(string.format("\\"requests\\": %d, \\"non_2xx\\": %d, \\"errors\\": %d}\\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end""")
    script.write_text("\n".join(lua) + "\n")
    args = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds:g}s", "--timeout",
            "30s", "-s", str(script), url]  # fmt: skip
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    script.unlink()
    res = json.loads(out.split("JSON ", 1)[1])
    res["throughput_rps"] = round(res["requests"] / seconds, 1)
    if pid:
        res["server_cpu_ms_per_request"] = round(1000 * cpu / max(1, res["requests"]), 3)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}


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
        blocked = [c for c in await redis.client_list() if c.get("cmd") == "xread"]
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
        "redis_readers_blocked_in_xread": len(blocked),
        "connect_all_s": round(connect_s, 2),
        "write_s": round(write_s, 2),
        "all_drained_s": round(drain_s, 2),
        "delivery_latency_p50_ms": round(pct(delays, 50) * 1000, 1),
        "delivery_latency_p99_ms": round(pct(delays, 99) * 1000, 1),
        "fanout_events_per_s": round(sum(len(r["indices"]) for r in results) / drain_s, 1),
    }


def http_phases(args: argparse.Namespace, api_base: str, api_pid: int, baseline: str,
                baseline_pid: int, headers: dict, pid: str) -> dict:  # fmt: skip
    """Status, submit and the baseline, each `args.seconds` under `args.clients` connections."""
    kw = {"clients": args.clients, "seconds": args.seconds}
    res = {
        "baseline": wrk(f"{baseline}/baseline", headers={}, pid=baseline_pid, **kw),
        "status": wrk(f"{api_base}/v1/problems/{pid}", headers=headers, pid=api_pid, **kw),
        "submit": wrk(
            f"{api_base}/v1/problems", headers=headers, pid=api_pid, body=json.dumps(PROBLEM), **kw
        ),
    }
    for name, r in res.items():
        print(name, r, flush=True)
    b = res["baseline"]
    res["ratios"] = {
        "status_p99_over_baseline_p99": round(res["status"]["p99_ms"] / b["p99_ms"], 2),
        "submit_p99_over_baseline_p99": round(res["submit"]["p99_ms"] / b["p99_ms"], 2),
        "status_rps_over_baseline_rps": round(
            res["status"]["throughput_rps"] / b["throughput_rps"], 2
        ),
        "status_server_cpu_ms_per_request": res["status"]["server_cpu_ms_per_request"],
        "baseline_server_cpu_ms_per_request": b["server_cpu_ms_per_request"],
    }
    print("ratios", res["ratios"], flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0, help="per HTTP phase")
    p.add_argument("--subscribers", type=int, default=500)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--rate", type=float, default=50.0, help="events written per second")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/api_load.json"))
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("api_load.py needs wrk (a compiled load generator): apt-get install wrk")

    tmp = Path(tempfile.mkdtemp(prefix="sdpo-load-"))
    server = RedisServer(tmp / "redis").start()
    prefix = "load"
    env = service_env(server.url, prefix, tmp / "ck", SDPO_MAX_ACTIVE_PER_TENANT=10**7,
                      SDPO_MAX_QUEUED=10**7, SDPO_SSE_HEARTBEAT_SECONDS=15,
                      SDPO_MAX_STREAMS_PER_TENANT=args.subscribers + 10)  # fmt: skip
    api, base = start_api(env, tmp / "api.log")
    headers = {"Authorization": f"Bearer {create_api_key(server.url, prefix, 'load')}"}
    pid = httpx.post(f"{base}/v1/problems", json=PROBLEM, headers=headers).json()["id"]
    baseline, baseline_url = start_baseline(tmp, server.url, f"{prefix}:problem:{pid}")
    try:
        res = http_phases(args, base, api.popen.pid, baseline_url, baseline.pid, headers, pid)
        res["sse"] = asyncio.run(
            sse_phase(base, headers, server.url, prefix, args.subscribers, args.events, args.rate)
        )
        print("sse", res["sse"], flush=True)
    finally:
        baseline.terminate()
        baseline.wait()
        api.stop()
        server.stop()
    res["setup"] = {
        "clients": args.clients,
        "seconds_per_phase": args.seconds,
        "load_generator": "wrk, 2 threads, keep-alive connections",
        "api": "1 uvicorn process (python -m service serve): uvloop, httptools, no access log",
        "baseline": "bare FastAPI endpoint, one HGETALL of the same problem hash, same uvicorn",
        "redis": "private redis-server on loopback, appendonly everysec",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "load generator, API and Redis share the same CPUs: read the ratios",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
