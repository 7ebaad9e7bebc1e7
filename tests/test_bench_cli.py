"""`sdpo bench` as a user runs it (real subprocesses): a suite file on this machine or on a
service, report.json and the discovery@k PNG; a bad line is named and nothing runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_core.discovery_stats import summarise
from sdpo_core.toy import make_problem
from tests.conftest import REPO

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import Service  # noqa: E402

SDPO = [sys.executable, "-m", "sdpo_cli.main"]


def sdpo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SDPO, *args], cwd=REPO, capture_output=True, text=True, timeout=900, env=env
    )


def suite_file(path: Path, lines: list[str] | None = None) -> Path:
    if lines is None:
        problems = [
            make_problem(seed, keys, max_attempts=16) for seed, keys in ((42, 1), (9001, 6))
        ]
        for p in problems:
            p["sdpo"]["samples_per_step"] = 8
        lines = [json.dumps(p) for p in problems]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_line_is_named_and_nothing_runs(tmp_path: Path) -> None:
    good = json.dumps(make_problem(1, 2))
    bad = json.dumps({**make_problem(2, 2), "verifier": {"kind": "table", "cases": {}}})
    path = suite_file(tmp_path / "s.jsonl", [good, bad])
    proc = sdpo("bench", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"{path}:2: verifier.cases" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "report.json").exists()
    proc = sdpo("bench", str(path), "--methods", "sdpo,beam")
    assert proc.returncode == 2 and "--methods" in proc.stderr
    broken = suite_file(tmp_path / "b.jsonl", [good, "{oops"])
    proc = sdpo("bench", str(broken), "--format", "problems")
    assert proc.returncode == 2 and f"{broken}:2: not valid JSON" in proc.stderr


def check_report(out: Path, methods: list[str]) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "done" and report["total"] == report["done"] == 2 * len(methods)
    assert list(report["summary"]) == methods
    for method in methods:
        firsts = [r["solved_attempt"] for r in report["runs"] if r["method"] == method]
        assert report["summary"][method]["mean_attempts"] == pytest.approx(
            summarise(firsts, 16)["mean_attempts"]
        )
    assert (out / "discovery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


@pytest.mark.slow
def test_local_suite_writes_the_report_and_the_curves(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = sdpo("bench", str(suite_file(tmp_path / "s.jsonl")), "--methods",
                "sdpo,best_of_k,multi_turn", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = check_report(out, ["sdpo", "best_of_k", "multi_turn"])
    assert "ratio to sdpo" in proc.stdout and "report:" in proc.stdout
    # the easy problem is solved by every method; the hard one by none within 16 attempts
    assert [r["solved_attempt"] is not None for r in report["runs"]] == [True] * 3 + [False] * 3


@pytest.mark.slow
def test_remote_suite_runs_on_the_service(sdpo_service: Service, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "SDPO_API_KEY": sdpo_service.api_key, "HOME": str(tmp_path)}
    proc = sdpo("bench", str(suite_file(tmp_path / "s.jsonl")), "--methods", "sdpo,best_of_k",
                "--server", sdpo_service.base_url, "--out", str(out), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = check_report(out, ["sdpo", "best_of_k"])
    assert report["id"].startswith("ste_") and "submitted suite" in proc.stderr


@pytest.mark.slow
def test_local_bench_reproduces_the_discovery_benchmark(
    tmp_path: Path, runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sdpo bench` on this machine gives the first passes of benchmarks/discovery.py's SDPO
    runs for the same problems and seeds (one CPU thread each: deterministic)."""
    import os

    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from discovery import _with_budget, run_sdpo

    problems = [make_problem(seed, 3) for seed in (11, 21)]  # solved after SDPO steps, or not
    for p in problems:
        p["sdpo"]["samples_per_step"] = 8
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(_with_budget(p, 96, {})) + "\n" for p in problems))
    env = {**os.environ, "SDPO_CPU_THREADS": "1"}
    proc = sdpo("bench", str(path), "--methods", "sdpo", "--seeds", "2", "--out",
                str(tmp_path / "out"), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    got = {(r["problem"], r["seed"]): r["solved_attempt"] for r in report["runs"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = {
            (i, s): run_sdpo(runtime, p, s, 96, {})["first_pass"]
            for i, p in enumerate(problems)
            for s in range(2)
        }
    finally:
        torch.set_num_threads(threads)
    assert got == want
    assert sum(f is not None and f > 8 for f in want.values()) >= 1  # found after a step
