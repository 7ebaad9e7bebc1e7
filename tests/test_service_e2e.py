"""End to end over HTTP: a real API and a real worker on the toy model.

Submit a toy problem, follow its SSE stream to `solved`, page its attempts, download the
adapter of a run that took SDPO steps and load it with peft; cancel a running problem.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path

import pytest

from sdpo_core.contract import PAYLOADS, TERMINAL_EVENTS
from sdpo_core.toy import HARD_SUITE, make_problem
from service.store import Store, connect

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import (  # noqa: E402
    Service,
    read_sse,
    scrape,
    toy_model_dir,
    wait_for,
    worker_metrics_port,
)

pytestmark = pytest.mark.slow
# SDPO_MODELS unset: the API accepts the models its live workers serve (here: toy)
service_env_extra = {"SDPO_MODELS": ""}


def follow(svc: Service, pid: str, **params: str) -> list[dict]:
    """Every event of a problem's stream, until it ends."""
    with svc.client(timeout=600) as c:
        with c.stream("GET", f"/v1/problems/{pid}/events", params=params) as r:
            assert r.status_code == 200
            return [{**e, "data": json.loads(e["data"])} for e in read_sse(r) if "id" in e]


def check_log(events: list[dict], attempts: int) -> None:
    """Attempt indices 1..attempts, each once, in order; ids increasing; one terminal event;
    every event is a kind of the wire contract with its fields (sdpo_core/contract.py)."""
    for e in events:
        PAYLOADS[e["event"]].model_validate({**e["data"], "kind": e["event"]})
    idx = [e["data"]["index"] for e in events if e["event"] == "attempt"]
    assert idx == list(range(1, attempts + 1))
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    terminal = [e for e in events if e["event"] in TERMINAL_EVENTS]
    assert len(terminal) == 1 and terminal[0] is events[-1]


def test_submit_follow_to_solved(sdpo_service: Service) -> None:
    problem = make_problem(7, 1)
    name = f"w0-{sdpo_service.prefix[-4:]}"
    port = worker_metrics_port(sdpo_service.base_url, name, sdpo_service.headers)
    before = scrape(port)
    with sdpo_service.client() as c:
        r = c.post("/v1/problems", json=problem)
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
    events = follow(sdpo_service, pid)
    assert events[0]["event"] == "status" and events[0]["data"]["status"] == "queued"
    assert any(e["event"] == "status" and e["data"]["status"] == "running" for e in events)
    assert events[-1]["event"] == "solved", events[-1]
    solved = events[-1]["data"]
    with sdpo_service.client() as c:
        p = c.get(f"/v1/problems/{pid}").json()
        assert p["status"] == "solved" and p["solution"] == solved["solution"]
        assert p["solved_attempt"] == solved["attempt_index"] and p["best_score"] == 1.0
        assert p["started_at"] and p["finished_at"] and p["attempts"] == solved["attempts"]
        check_log(events, p["attempts"])
        # attempts, paged
        got, after = [], 0
        while after is not None:
            page = c.get(f"/v1/problems/{pid}/attempts", params={"after": after, "limit": 3})
            body = page.json()
            got += body["data"]
            after = body["next_cursor"]
        assert [a["index"] for a in got] == list(range(1, p["attempts"] + 1))
        winner = got[p["solved_attempt"] - 1]
        assert winner["passed"] and winner["text"] == p["solution"] and winner["score"] == 1.0
        assert all(a["feedback"] for a in got if not a["passed"])
        # resume from the middle: exactly the rest
        half = len(events) // 2
        rest = follow(sdpo_service, pid, last_event_id=events[half]["id"])
        assert [e["id"] for e in rest] == [e["id"] for e in events[half + 1 :]]
        metrics = c.get("/metrics").text
        assert 'sdpo_problems{status="queued"}' in metrics
        assert "sdpo_problems_created_total " in metrics
    # the worker's own /metrics (its process, its port) counted this run; the counter of
    # the terminal status moves just after the event is written
    solved_total = 'sdpo_problems_finished_total{status="solved"}'

    def finished() -> dict[str, float] | None:
        now = scrape(port)
        return now if now.get(solved_total, 0) > before.get(solved_total, 0) else None

    after = wait_for(finished, 10, "the worker to count the solved problem")

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert moved("sdpo_attempts_total") == p["attempts"]
    assert moved("sdpo_verifier_runs_total") == p["attempts"]
    assert moved("sdpo_attempts_passed_total") >= 1
    assert moved("sdpo_steps_total") == p["steps"]
    assert moved('sdpo_problems_finished_total{status="solved"}') == 1
    assert moved("sdpo_solve_seconds_count") == 1 and moved("sdpo_solve_seconds_sum") > 0
    assert moved("sdpo_step_seconds_count") == p["steps"]
    assert moved("sdpo_step_generate_seconds_count") == p["steps"]


def test_adapter_download_loads_with_peft(sdpo_service: Service, tmp_path: Path) -> None:
    problem = {**HARD_SUITE[0], "budget": {"max_attempts": 8, "max_seconds": 300}}
    problem["sdpo"] = {**problem.get("sdpo", {}), "samples_per_step": 4}
    with sdpo_service.client() as c:
        pid = c.post("/v1/problems", json=problem).json()["id"]
        events = follow(sdpo_service, pid)
        p = c.get(f"/v1/problems/{pid}").json()
        assert p["status"] in {"exhausted", "solved"}, p
        check_log(events, p["attempts"])
        steps = [e for e in events if e["event"] == "step"]
        assert steps, "a hard problem (p(pass) ~ 1e-6 per attempt) took no SDPO step"
        assert p["adapter_version"] == steps[-1]["data"]["adapter_version"] >= 1
        r = c.get(f"/v1/problems/{pid}/adapter")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/gzip"
        assert f"adapter-v{p['adapter_version']}" in r.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_config.json").exists()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(toy_model_dir()))
    model = PeftModel.from_pretrained(base, str(adapter))
    lora_b = [t for n, t in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(torch.count_nonzero(t) > 0 for t in lora_b)  # it learned something


def test_cancel_running_problem(sdpo_service: Service) -> None:
    problem = {**HARD_SUITE[1], "budget": {"max_attempts": 4000, "max_seconds": 600}}
    problem["sdpo"] = {**problem.get("sdpo", {}), "samples_per_step": 4}
    with sdpo_service.client(timeout=600) as c:
        pid = c.post("/v1/problems", json=problem).json()["id"]
        with c.stream("GET", f"/v1/problems/{pid}/events") as r:
            events = []
            for e in read_sse(r):
                if "id" not in e:
                    continue
                events.append(e)
                if e["event"] == "step" and len([x for x in events if x["event"] == "step"]) == 1:
                    cancel = c.post(f"/v1/problems/{pid}/cancel")
                    assert cancel.status_code == 202, cancel.text
                    assert cancel.json()["cancel_requested"] is True
                    steps_at_cancel = json.loads(e["data"])["step"]
        assert events[-1]["event"] == "cancelled"
        steps_after = [json.loads(e["data"])["step"] for e in events if e["event"] == "step"]
        assert max(steps_after) <= steps_at_cancel + 1  # stopped within one step
        p = c.get(f"/v1/problems/{pid}").json()
        assert p["status"] == "cancelled" and p["finished_at"]
        # the worker is free again: a small problem still gets solved
        pid2 = c.post("/v1/problems", json=make_problem(3, 1)).json()["id"]
    assert follow(sdpo_service, pid2)[-1]["event"] in {"solved", "exhausted"}


def test_a_model_no_worker_serves_is_refused_at_submit(sdpo_service: Service) -> None:
    """Without SDPO_MODELS the API accepts what live workers serve (their heartbeats)."""
    problem = make_problem(7, 1)
    with sdpo_service.client() as c:
        r = c.post("/v1/problems", json={**problem, "model": "qwen3-8b"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "model" and "workers serve ['toy']" in error["message"]
        r = c.post("/v1/problems", json={**problem, "model": None})  # the one served model
        assert r.status_code == 201 and r.json()["model"] == "toy", r.text
        c.post(f"/v1/problems/{r.json()['id']}/cancel")

        # a second model's worker heartbeats (as `sdpo worker` does): both are served, and
        # "model": null no longer says which
        async def heartbeat() -> None:
            store = Store(connect(sdpo_service.redis_url), sdpo_service.prefix)
            try:
                await store.heartbeat("other-host-1", {"model": "qwen3-8b"}, 4)
            finally:
                await store.redis.aclose()

        asyncio.run(heartbeat())
        r = c.post("/v1/problems", json={**problem, "model": None})
        assert r.status_code == 422, r.text
        assert "workers serve ['qwen3-8b', 'toy']" in r.json()["error"]["message"]
        r = c.post("/v1/problems", json={**problem, "model": "qwen3-8b"})
        assert r.status_code == 201 and r.json()["model"] == "qwen3-8b", r.text
        c.post(f"/v1/problems/{r.json()['id']}/cancel")


def test_the_worker_counts_verifier_errors(sdpo_service: Service) -> None:
    """A `python` verifier that raises fails each attempt; the worker's own /metrics says so."""
    port = worker_metrics_port(sdpo_service.base_url, f"w0-{sdpo_service.prefix[-4:]}",
                               sdpo_service.headers)  # fmt: skip
    before = scrape(port)
    problem = {
        "prompt": "Say anything.",
        "verifier": {"kind": "python", "source": "def verify(response):\n    raise ValueError"},
        "budget": {"max_attempts": 4, "max_seconds": 120},
        "sdpo": {"samples_per_step": 4, "max_new_tokens": 8},
        "model": "toy",
    }
    with sdpo_service.client() as c:
        r = c.post("/v1/problems", json=problem)
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
    events = follow(sdpo_service, pid)
    assert events[-1]["event"] == "exhausted", events[-1]
    done = 'sdpo_problems_finished_total{status="exhausted"}'
    after = wait_for(lambda: (m := scrape(port)).get(done, 0) > before.get(done, 0) and m, 10, done)
    errors = after["sdpo_verifier_errors_total"] - before["sdpo_verifier_errors_total"]
    assert errors == len([e for e in events if e["event"] == "attempt"]) == 4


@pytest.mark.parametrize("method", ["best_of_k", "multi_turn"])
def test_a_baseline_method_runs_as_a_problem(sdpo_service: Service, method: str) -> None:
    """A baseline is an ordinary problem: same events and statuses, no steps, no adapter."""
    problem = {**HARD_SUITE[0], "budget": {"max_attempts": 12, "max_seconds": 300}}
    problem["sdpo"] = {**problem.get("sdpo", {}), "samples_per_step": 4}
    problem["model"] = "toy"  # an earlier test makes the API see a second served model
    with sdpo_service.client() as c:
        pid = c.post("/v1/problems", json={**problem, "method": method}).json()["id"]
        events = follow(sdpo_service, pid)
        p = c.get(f"/v1/problems/{pid}").json()
        assert p["status"] == "exhausted" and p["attempts"] == 12, p
        assert p["spec"]["method"] == method
        check_log(events, 12)
        assert p["steps"] == 0 and p["adapter_version"] == 0
        assert not [e for e in events if e["event"] == "step"]
        assert c.get(f"/v1/problems/{pid}/adapter").status_code == 404
        bad = c.post("/v1/problems", json={**problem, "method": "beam"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "method"


def test_a_maximize_problem_reports_its_best_attempt(sdpo_service: Service) -> None:
    """A score objective over HTTP: the run goes to its budget; the resource names the best
    attempt (index, score, text) as the attempts show it."""
    problem = {**HARD_SUITE[0], "budget": {"max_attempts": 12, "max_seconds": 300}}
    problem["sdpo"] = {**problem.get("sdpo", {}), "samples_per_step": 4}
    problem["model"] = "toy"  # an earlier test makes the API see a second served model
    with sdpo_service.client() as c:
        r = c.post("/v1/problems", json={**problem, "objective": {"maximize": True}})
        pid = r.json()["id"]
        events = follow(sdpo_service, pid)
        p = c.get(f"/v1/problems/{pid}").json()
        assert p["status"] == "exhausted" and p["attempts"] == 12, p
        attempts = c.get(f"/v1/problems/{pid}/attempts", params={"limit": 50}).json()["data"]
        best = max(a["score"] for a in attempts)
        first = next(a for a in attempts if a["score"] == best)
        assert (p["best_score"], p["best_attempt"], p["best_solution"]) == (
            best, first["index"], first["text"])  # fmt: skip
        end = events[-1]["data"]
        assert end["best_attempt"] == first["index"] and end["best_score"] == best
