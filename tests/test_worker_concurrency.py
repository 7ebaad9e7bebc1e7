"""A worker running several problems at once (`sdpo worker --concurrency K`), with real
processes: /readyz shows its capacity and active problems; a SIGKILL with K problems in
flight hands all K to another worker, which resumes each from its checkpoint with every
attempt counted once; cancelling one problem and another failing leave their neighbour
running to its end."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import (  # noqa: E402
    create_api_key,
    drop_prefix,
    new_prefix,
    scrape,
    service_env,
    start_api,
    start_worker,
    toy_model_available,
    wait_for,
    wait_worker_ready,
    worker_metrics_port,
)
from test_service_crash import assert_clean_log, events_of, get, hard_problem  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not toy_model_available(), reason="the toy model is not built yet"),
]


def worker_info(base: str, h: dict, name: str) -> dict | None:
    workers = httpx.get(f"{base}/readyz", headers=h, timeout=5).json().get("workers") or []
    return next((w for w in workers if w["name"] == name), None)


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_concurrency_must_be_a_positive_number(command: str) -> None:
    import subprocess
    import sys

    for bad in ("0", "-1", "many"):
        r = subprocess.run(
            [sys.executable, "-m", "service", command, "--concurrency", bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr
        assert "--concurrency" in r.stderr and "a whole number from 1 to 256" in r.stderr


def test_sigkill_with_three_in_flight_hands_all_three_over(tmp_path: Path, redis_url: str) -> None:
    prefix = new_prefix()
    env = service_env(redis_url, prefix, tmp_path / "ck")
    api, base = start_api(env, tmp_path / "api.log")
    h = {"Authorization": f"Bearer {create_api_key(redis_url, prefix, 'multi')}"}
    a, b = f"a-{prefix[-4:]}", f"b-{prefix[-4:]}"
    first = start_worker(env, tmp_path / "a.log", a, "--concurrency", "3")
    second = None
    try:
        wait_worker_ready(base, a, h)
        pids = [
            httpx.post(f"{base}/v1/problems", json=hard_problem(i, 40), headers=h).json()["id"]
            for i in (2, 3, 4)
        ]
        # all three run at once on the one worker, each past a checkpointed step
        info = wait_for(
            lambda: (w := worker_info(base, h, a)) and w["active_problems"] == 3 and w,
            300,
            "three active problems",
        )
        assert info["capacity"] == 3 and info["busy"]
        port = worker_metrics_port(base, a, h)
        wait_for(lambda: all(get(base, h, p)["steps"] >= 1 for p in pids), 300, "a step each", 0.05)
        metrics = scrape(port)
        assert metrics["sdpo_worker_capacity"] == 3
        assert metrics["sdpo_worker_active_problems"] == 3
        for phase in ("generation", "training", "export"):
            assert metrics[f'sdpo_worker_phase_busy_seconds_total{{phase="{phase}"}}'] > 0
        first.signal(signal.SIGKILL)
        first.popen.wait(10)
        second = start_worker(env, tmp_path / "b.log", b, "--concurrency", "3")
        for pid in pids:
            events = events_of(base, h, pid)
            p = get(base, h, pid)
            assert p["status"] in {"solved", "exhausted"}, p
            assert_clean_log(events, p)
            resumed = [e for e in events if e["event"] == "status" and e["data"].get("resumed")]
            assert resumed and resumed[-1]["data"]["worker"] == b, pid
    finally:
        for w in (first, second):
            if w:
                w.stop()
        api.stop()
        drop_prefix(redis_url, prefix)


def test_cancel_one_and_a_failure_leave_the_neighbour_running(
    tmp_path: Path, redis_url: str
) -> None:
    prefix = new_prefix()
    env = service_env(redis_url, prefix, tmp_path / "ck")
    api, base = start_api(env, tmp_path / "api.log")
    h = {"Authorization": f"Bearer {create_api_key(redis_url, prefix, 'multi')}"}
    name = f"c-{prefix[-4:]}"
    worker = start_worker(env, tmp_path / "c.log", name, "--concurrency", "3")
    try:
        wait_worker_ready(base, name, h)
        cancelled = hard_problem(2, 400)
        too_long = hard_problem(3, 40)
        too_long["sdpo"]["max_new_tokens"] = 32768  # beyond the toy model's window
        neighbour = hard_problem(4, 40)
        ids = [
            httpx.post(f"{base}/v1/problems", json=p, headers=h).json()["id"]
            for p in (cancelled, too_long, neighbour)
        ]
        wait_for(lambda: get(base, h, ids[0])["steps"] >= 1, 300, "a step of the first")
        r = httpx.post(f"{base}/v1/problems/{ids[0]}/cancel", headers=h, timeout=30)
        assert r.status_code in (200, 202), r.text
        statuses = {
            pid: wait_for(
                lambda pid=pid: (
                    (p := get(base, h, pid))["status"]
                    in {"solved", "exhausted", "failed", "cancelled"}
                    and p
                ),
                300,
                f"{pid} to end",
            )
            for pid in ids
        }
        assert statuses[ids[0]]["status"] == "cancelled"
        assert statuses[ids[1]]["status"] == "failed"
        assert "context window" in statuses[ids[1]]["error"]
        assert statuses[ids[2]]["status"] in {"solved", "exhausted"}
        assert_clean_log(events_of(base, h, ids[2]), statuses[ids[2]])
        assert statuses[ids[2]]["worker"] == name  # the dashboard and the API name it
    finally:
        worker.stop()
        api.stop()
        drop_prefix(redis_url, prefix)
