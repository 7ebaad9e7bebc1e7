"""`sdpo submit | status | events | cancel | adapter` as real processes against a real API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from service_fixtures import ROOT, Service

pytest_plugins = ["service_fixtures"]

PROBLEM = {
    "prompt": "Look up the table: a=?",
    "verifier": {"kind": "table", "cases": {"a": "1"}},
    "budget": {"max_attempts": 8, "max_seconds": 60},
}


def sdpo(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdpo_cli.main", *args],
        env=env,
        cwd=env.get("_CWD", ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_env(svc: Service, tmp: Path, **extra: str) -> dict[str, str]:
    """A fresh tenant's key in SDPO_API_KEY, the server in SDPO_SERVER, no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPO_")}
    env.update(
        SDPO_SERVER=svc.base_url,
        SDPO_API_KEY=svc.new_key(f"cli-{uuid.uuid4().hex[:8]}"),
        SDPO_CONFIG=str(tmp / "none.toml"),
        _CWD=str(tmp),
    )
    env.update(extra)
    return env


def write_problem(tmp: Path, problem: dict) -> str:
    path = tmp / "problem.json"
    path.write_text(json.dumps(problem))
    return str(path)


def test_submit_status_events_cancel(api_server: Service, tmp_path: Path) -> None:
    env = cli_env(api_server, tmp_path)
    r = sdpo("submit", write_problem(tmp_path, PROBLEM), env=env)
    assert r.returncode == 0, r.stderr
    pid = r.stdout.strip()
    assert pid.startswith("prb_") and "submitted" in r.stderr

    r = sdpo("status", pid, env=env)
    assert r.returncode == 0 and pid in r.stdout and "queued" in r.stdout
    r = sdpo("status", pid, "--json", env=env)
    assert json.loads(r.stdout)["status"] == "queued"

    r = sdpo("cancel", pid, env=env)
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
    r = sdpo("cancel", pid, env=env)
    assert r.returncode == 1 and "already finished" in r.stderr

    r = sdpo("events", pid, env=env)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["kind"] for e in lines] == ["status", "cancelled"] and r.returncode == 0
    r = sdpo("events", pid, "--after", lines[0]["id"], env=env)
    assert [json.loads(x)["kind"] for x in r.stdout.splitlines()] == ["cancelled"]

    r = sdpo("adapter", pid, "-o", str(tmp_path / "out"), env=env)
    assert r.returncode == 2 and "no_adapter" in r.stderr


def test_key_and_server_from_the_config_file(api_server: Service, tmp_path: Path) -> None:
    key = api_server.new_key("cli-config")
    config = tmp_path / "config.toml"
    config.write_text(f'server = "{api_server.base_url}"\napi_key = "{key}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPO_")}
    env.update(SDPO_CONFIG=str(config), _CWD=str(tmp_path))
    r = sdpo("submit", write_problem(tmp_path, PROBLEM), "--json", env=env)
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["id"]
    # XDG_CONFIG_HOME is the default place
    (tmp_path / "xdg" / "sdpo").mkdir(parents=True)
    config.rename(tmp_path / "xdg" / "sdpo" / "config.toml")
    env.pop("SDPO_CONFIG")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    assert sdpo("cancel", pid, env=env).returncode == 0


def test_errors_exit_2_with_a_message(api_server: Service, tmp_path: Path) -> None:
    env = cli_env(api_server, tmp_path, SDPO_API_KEY="sdpo_wrong")
    r = sdpo("status", "prb_" + "0" * 20, env=env)
    assert r.returncode == 2 and "SDPO_API_KEY" in r.stderr and "Traceback" not in r.stderr
    env = cli_env(api_server, tmp_path)
    r = sdpo("submit", write_problem(tmp_path, {**PROBLEM, "prompt": ""}), env=env)
    assert r.returncode == 2 and "field prompt" in r.stderr
    r = sdpo("status", "prb_" + "0" * 20, env=env)
    assert r.returncode == 2 and "not_found" in r.stderr
    r = sdpo("status", "x", "--server", "http://127.0.0.1:9", env=env)  # nothing listens
    assert r.returncode == 2 and "Connect" in r.stderr
    (tmp_path / "bad.json").write_text("{")
    r = sdpo("submit", str(tmp_path / "bad.json"), env=env)
    assert r.returncode == 2 and "bad.json" in r.stderr


@pytest.mark.slow
def test_submit_follow_solved_and_exhausted(sdpo_service: Service, tmp_path: Path) -> None:
    from sdpo_core.toy import HARD_SUITE, make_problem

    env = cli_env(sdpo_service, tmp_path)
    r = sdpo(
        "submit", write_problem(tmp_path, make_problem(7, 1)), "--follow", env=env, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "solved at attempt" in r.stdout and "step" in r.stderr + r.stdout
    pid = r.stdout.split()[0]
    assert json.loads(sdpo("status", pid, "--json", env=env).stdout)["status"] == "solved"

    hard = {**HARD_SUITE[1], "budget": {"max_attempts": 8, "max_seconds": 300}}
    hard["sdpo"] = {**hard.get("sdpo", {}), "samples_per_step": 4}
    r = sdpo("submit", write_problem(tmp_path, hard), "-f", "--json", env=env, timeout=600)
    final = json.loads(r.stdout.splitlines()[-1])
    assert (r.returncode, final["status"]) in {(1, "exhausted"), (0, "solved")}, r.stderr
    if final["status"] == "exhausted" and final["adapter_version"] >= 1:
        r = sdpo("adapter", final["id"], "-o", str(tmp_path / "out"), env=env)
        assert r.returncode == 0, r.stderr
        assert (Path(r.stdout.strip()) / "adapter_config.json").is_file()
    # the best attempt's adapter: attempts 1-4 came from the base model, 5-8 from adapter v1
    r = sdpo("adapter", final["id"], "--best", "-o", str(tmp_path / "best"), env=env)
    if final["best_attempt"] <= 4:
        assert r.returncode == 2 and "base_model" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
        info = json.loads((Path(r.stdout.strip()) / "best.json").read_text())
        assert info["attempt"] == final["best_attempt"] and info["adapter_version"] == 1
