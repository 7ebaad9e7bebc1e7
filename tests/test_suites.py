"""Suites over HTTP (real API, worker and Redis): each (problem, method, seed) runs as an
ordinary problem; the report aggregates them as they finish; a bad or too large suite is
refused whole, naming the field; cancel reaches every run."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sdpo_client import Client

from sdpo_core.discovery_stats import summarise
from sdpo_core.toy import make_problem

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import Service, wait_for  # noqa: E402

pytestmark = pytest.mark.slow
service_env_extra = {"SDPO_MAX_ACTIVE_PER_TENANT": "12"}


def toy(seed: int, keys: int, attempts: int) -> dict:
    data = make_problem(seed, keys, max_attempts=attempts)
    data["sdpo"]["samples_per_step"] = 4
    return data


def tenant(svc: Service) -> tuple[httpx.Client, str]:
    key = svc.new_key(f"t-{uuid.uuid4().hex[:8]}")
    client = httpx.Client(
        base_url=svc.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    return client, key


def error(r: httpx.Response, status: int, field: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field, r.text
    return r.json()["error"]["message"]


def test_a_bad_or_too_large_suite_is_refused_whole(sdpo_service: Service) -> None:
    c, _ = tenant(sdpo_service)
    good, bad = toy(1, 2, 8), {**toy(2, 2, 8), "verifier": {"kind": "table", "cases": {"a b": 1}}}
    error(c.post("/v1/suites", json={"problems": [good, bad]}), 422, "problems.1.verifier.cases")
    error(c.post("/v1/suites", json={"problems": [good], "methods": ["beam"]}), 422, "methods.0")
    dup = {"problems": [good], "methods": ["sdpo", "sdpo"]}
    error(c.post("/v1/suites", json=dup), 422, "methods")
    big = {"problems": [good] * 5, "methods": ["sdpo", "best_of_k", "multi_turn"]}
    assert "15 runs" in error(c.post("/v1/suites", json=big), 422, "problems")
    error(c.post("/v1/suites", json={"problems": []}), 422, "problems")
    error(c.post("/v1/suites", json={"problems": [good], "seeds": 0}), 422, "seeds")
    assert c.get("/v1/problems").json()["data"] == []  # nothing was submitted
    assert c.get("/v1/suites/ste_00000000000000000000").status_code == 404


def test_suite_runs_as_problems_and_reports_discovery(sdpo_service: Service) -> None:
    _, key = tenant(sdpo_service)
    problems = [toy(42, 1, 8), toy(9001, 6, 8)]  # an easy one and a hard one
    with Client(sdpo_service.base_url, key) as client:
        suite = client.submit_suite(
            problems, methods=["sdpo", "best_of_k"], name="smoke", idempotency_key="k1"
        )
        assert suite.total == 4 and suite.problems == 2 and suite.name == "smoke"
        again = client.submit_suite(
            problems, methods=["sdpo", "best_of_k"], name="smoke", idempotency_key="k1"
        )
        assert again.id == suite.id  # a retry never submits twice
        report = client.wait_suite(suite.id, timeout=600, poll=0.5)
        assert report.status == "done" and report.done == 4
        found: dict[str, list[int | None]] = {"sdpo": [], "best_of_k": []}
        for run in report.runs:
            p = client.get(run.problem_id)
            assert p.suite == suite.id and p.spec.method == run.method
            assert p.spec.sdpo["seed"] == run.seed == 0
            assert run.status == p.status and run.solved_attempt == p.solved_attempt
            found[run.method].append(p.solved_attempt)
        for method, firsts in found.items():
            summary = report.summary[method]
            assert summary.runs == summary.finished == 2
            want = summarise(firsts, 8)
            assert summary.mean_attempts == pytest.approx(want["mean_attempts"])
            assert summary.discovery_at_k == pytest.approx(want["discovery_at_k"])
        ratio = report.summary["best_of_k"].mean_attempts / report.summary["sdpo"].mean_attempts
        assert report.summary["best_of_k"].ratio_to_sdpo == pytest.approx(ratio)
        assert [row.problem for row in report.table] == [0, 1]


def test_limits_hold_for_the_whole_suite_and_cancel_reaches_every_run(
    sdpo_service: Service,
) -> None:
    c, key = tenant(sdpo_service)
    slow = toy(9001, 6, 100_000)
    with Client(sdpo_service.base_url, key) as client:
        first = client.submit_suite([slow] * 3, methods=["sdpo", "best_of_k", "multi_turn"])
        assert first.total == 9
        second = c.post(
            "/v1/suites", json={"problems": [slow] * 2, "methods": ["sdpo", "best_of_k"]}
        )
        assert second.status_code == 429, second.text  # 9 + 4 > 12: refused whole
        assert len(c.get("/v1/problems", params={"limit": 100}).json()["data"]) == 9
        cancelled = client.cancel_suite(first.id)
        assert cancelled.cancel_requested
        report = client.wait_suite(first.id, timeout=300, poll=0.5)
        assert {r.status for r in report.runs} == {"cancelled"}
    wait_for(lambda: not c.get("/v1/problems", params={"status": "running"}).json()["data"],
             60, "the cancelled run to stop")  # fmt: skip
