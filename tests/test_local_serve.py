"""`sdpo serve` in local mode as real processes: one server per data directory, its private
Redis dies with it (even on kill -9), a survivor is shut down before the next start, a dead
Redis is restarted, and the data directory is private."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import ROOT, free_port, wait_for  # noqa: E402

from service.local import RedisServer  # noqa: E402


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPO_") and k != "REDIS_URL"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", SDPO_HEARTBEAT_SECONDS="0.5")
    env.pop("CHECKPOINT_DIR", None)
    return env


def serve(data: Path, port: int, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "service", "serve", "--data-dir", str(data), "--port", str(port)]
    return subprocess.Popen(
        args, env=_env(), cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT
    )


def up(base: str, proc: subprocess.Popen, log: Path) -> None:
    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 120, "sdpo serve to come up", 0.2)


def redis_pid(data: Path) -> int:
    """The private Redis's pid (0 while its pid file is being replaced)."""
    try:
        return int((data / "redis" / "redis.pid").read_text())
    except (OSError, ValueError):
        return 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped by its parent) counts as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def key_of(data: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {(data / 'api-key').read_text().strip()}"}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_kill_9_then_restart_keeps_data_and_one_redis(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = serve(data, port, log)
    procs = [first]
    try:
        up(base, first, log)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for p in (data / "redis" / "appendonlydir", data / "api-key"):
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
        h = key_of(data)
        pid = httpx.post(f"{base}/v1/problems", headers=h, json={
            "prompt": "a=?", "verifier": {"kind": "table", "cases": {"a": "1"}},
            "budget": {"max_attempts": 4}}).json()["id"]  # fmt: skip
        # local mode accepts its worker's model; the error names no setting the user never set
        r = httpx.post(f"{base}/v1/problems", headers=h, json={
            "prompt": "a=?", "verifier": {"kind": "table", "cases": {"a": "1"}},
            "model": "qwen3-8b"})  # fmt: skip
        err = r.json()["error"]
        assert r.status_code == 422 and err["field"] == "model", err
        assert "SDPO_MODELS" not in err["message"] and "['toy']" in err["message"], err

        # a second server on the same data directory is refused
        second = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--data-dir", str(data),
             "--port", str(free_port())],
            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2 and "another `sdpo serve`" in second.stderr, second.stderr

        # the private Redis dies: serve starts it again, nothing lost
        rpid = redis_pid(data)
        os.kill(rpid, signal.SIGKILL)
        wait_for(lambda: redis_pid(data) not in (0, rpid), 30, "a new redis-server")
        wait_for(lambda: httpx.get(f"{base}/readyz").json()["redis"], 30, "redis back")
        assert httpx.get(f"{base}/v1/problems/{pid}", headers=h).status_code == 200

        # kill -9 of serve: its Redis goes with it
        rpid = redis_pid(data)
        first.kill()
        first.wait()
        wait_for(lambda: not alive(rpid), 30, "the private redis-server to exit")

        # the next start works on the same data
        again = serve(data, port, log)
        procs.append(again)
        up(base, again, log)
        assert httpx.get(f"{base}/v1/problems/{pid}", headers=h).status_code == 200

        # one process: the API's /metrics has the in-process worker's metrics too
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{base}/metrics").text
        names = [f.name for f in text_string_to_metric_families(text)]
        assert len(names) == len(set(names)), names
        assert {"sdpo_http_requests", "sdpo_problems", "sdpo_attempts", "sdpo_steps"} <= set(names)
    finally:
        for p in procs:
            stop(p)


@pytest.mark.slow
def test_a_surviving_redis_is_shut_down_before_the_next_start(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    # A Redis left running in the data directory, as by a serve from before this fix.
    survivor = RedisServer(data / "redis").start()
    assert survivor.pidfile.exists()
    port = free_port()
    proc = serve(data, port, log)
    try:
        up(f"http://127.0.0.1:{port}", proc, log)
        wait_for(lambda: survivor.proc.poll() is not None, 30, "the survivor to be stopped")
        assert redis_pid(data) != survivor.proc.pid
        text = (data / "redis" / "redis.log").read_text(errors="replace")
        assert "Bad file format" not in text
        assert "left running" in log.read_text()
    finally:
        stop(proc)
        survivor.stop()
    assert not (data / "redis" / "redis.pid").exists()


@pytest.mark.slow
def test_serve_logs_one_line_per_event_and_no_library_noise(tmp_path: Path) -> None:
    """`sdpo serve` without --verbose: its CPU threads, a line when a problem starts and one
    when it ends; none of the libraries' warnings, log lines or progress bars."""
    data, log = tmp_path / "data", tmp_path / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = serve(data, port, log)
    try:
        up(base, proc, log)
        h = key_of(data)
        pid = httpx.post(f"{base}/v1/problems", headers=h, json={
            "prompt": "a=?", "verifier": {"kind": "table", "cases": {"a": "1"}},
            "budget": {"max_attempts": 4}}).json()["id"]  # fmt: skip

        def ended() -> str:
            status = httpx.get(f"{base}/v1/problems/{pid}", headers=h).json()["status"]
            return status if status in {"solved", "exhausted", "failed"} else ""

        status = wait_for(ended, 240, f"{pid} to end", 0.5)
        wait_for(lambda: f"{pid} {status}" in log.read_text(), 10, "the problem's last line")
    finally:
        stop(proc)
    text = log.read_text()
    for noise in ("Warning", "warnings.warn", "Loading weights", "Writing", "it/s", "Traceback",
                  "Started server process", "Waiting for application"):  # fmt: skip
        assert noise not in text, text
    assert f"sdpo serve: API on {base}" in text, text
    assert "loading the bundled toy model (hf engine, " in text and "CPU threads" in text, text
    assert f"running {pid}" in text, text
    assert sum(pid in line for line in text.splitlines()) == 2, text  # started, ended
