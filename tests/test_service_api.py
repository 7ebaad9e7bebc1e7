"""The REST API against a real uvicorn process and Redis (no worker needed)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import pytest

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import (  # noqa: E402
    ROOT,
    Service,
    create_api_key,
    read_sse,
    service_env,
    start_api,
)

# This module's API runs with small limits (read by the api_server fixture).
service_env_extra = {
    "SDPO_MAX_BODY_BYTES": "20000",
    "SDPO_MAX_PROMPT_CHARS": "1000",
    "SDPO_MAX_TESTS": "5",
    "SDPO_MAX_BUDGET_ATTEMPTS": "1000",
    "SDPO_MAX_ACTIVE_PER_TENANT": "3",
    "SDPO_RETRY_AFTER_SECONDS": "7",
}

PROBLEM = {
    "prompt": "Look up the table: a=?",
    "verifier": {"kind": "table", "cases": {"a": "1"}},
    "budget": {"max_attempts": 8, "max_seconds": 60},
}


def tenant(svc: Service) -> httpx.Client:
    """A client for a fresh tenant, so tests never see each other's problems."""
    key = svc.new_key(f"t-{uuid.uuid4().hex[:8]}")
    return httpx.Client(
        base_url=svc.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def assert_error(r: httpx.Response, status: int, code: str | None = None, field: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"}
    if code:
        assert err["code"] == code
    if field:
        assert err["field"] == field
    return err


def test_create_get_and_location(api_server: Service) -> None:
    with tenant(api_server) as c:
        r = c.post("/v1/problems", json=PROBLEM)
        assert r.status_code == 201, r.text
        p = r.json()
        assert r.headers["location"] == f"/v1/problems/{p['id']}"
        assert p["status"] == "queued" and p["attempts"] == 0 and p["model"] == "toy"
        assert p["spec"]["budget"]["max_attempts"] == 8
        got = c.get(r.headers["location"]).json()
        assert got["id"] == p["id"] and got["created_at"] == p["created_at"]


def test_validation_errors_name_the_field(api_server: Service) -> None:
    with tenant(api_server) as c:
        assert_error(c.post("/v1/problems", content=b"{nope"), 400, "invalid_json")
        assert_error(c.post("/v1/problems", json=[1]), 422, "invalid")
        assert_error(c.post("/v1/problems", json={**PROBLEM, "prompt": ""}), 422, field="prompt")
        bad = {**PROBLEM, "verifier": {"kind": "table", "cases": {"a b": "1"}}}
        assert_error(c.post("/v1/problems", json=bad), 422, field="verifier.cases")
        typo = {"kind": "table", "cases": {"a": "1"}, "max_feedback_chars": "abc"}
        bad = {**PROBLEM, "verifier": typo}
        assert_error(c.post("/v1/problems", json=bad), 422, field="verifier.max_feedback_chars")
        bad = {**PROBLEM, "budget": {"max_attempts": 0}}
        assert_error(c.post("/v1/problems", json=bad), 422, field="budget.max_attempts")
        bad = {**PROBLEM, "sdpo": {"lr": -1}}
        assert_error(c.post("/v1/problems", json=bad), 422, field="sdpo.lr")
        bad = {**PROBLEM, "sdpo": {"lora_rank": 128}}  # above SDPO_MAX_LORA_RANK (64)
        assert_error(c.post("/v1/problems", json=bad), 422, field="sdpo.lora_rank")
        bad = {**PROBLEM, "sdpo": {"lr": "abc"}}
        assert_error(c.post("/v1/problems", json=bad), 422, field="sdpo.lr")
        assert_error(c.post("/v1/problems", json={**PROBLEM, "extra": 1}), 422, field="extra")
        assert_error(c.post("/v1/problems", json={**PROBLEM, "model": "gpt"}), 422, field="model")
        assert_error(c.get("/v1/problems?limit=0"), 422, field="limit")
        assert_error(c.get("/v1/problems?status=done"), 422, field="status")
        assert_error(c.get("/v1/problems?cursor=xyz"), 422, field="cursor")


def test_limits(api_server: Service) -> None:
    with tenant(api_server) as c:
        big = {**PROBLEM, "prompt": "x" * 30_000}  # body over SDPO_MAX_BODY_BYTES=20000
        assert_error(c.post("/v1/problems", json=big), 413, "payload_too_large")
        long = {**PROBLEM, "prompt": "x" * 1_500}
        assert_error(c.post("/v1/problems", json=long), 422, "limit_exceeded", "prompt")
        many = {**PROBLEM, "verifier": {"kind": "table", "cases": {f"k{i}": "1" for i in range(6)}}}
        assert_error(c.post("/v1/problems", json=many), 422, "limit_exceeded", "verifier.cases")
        budget = {**PROBLEM, "budget": {"max_attempts": 5000}}
        assert_error(c.post("/v1/problems", json=budget), 422, field="budget.max_attempts")


def test_tenant_limit_429_with_retry_after(api_server: Service) -> None:
    with tenant(api_server) as c:
        for _ in range(3):  # SDPO_MAX_ACTIVE_PER_TENANT=3
            assert c.post("/v1/problems", json=PROBLEM).status_code == 201
        r = c.post("/v1/problems", json=PROBLEM)
        assert_error(r, 429, "too_many_active")
        assert r.headers["retry-after"] == "7"
        first = c.get("/v1/problems").json()["data"][-1]["id"]
        assert c.post(f"/v1/problems/{first}/cancel").status_code == 200
        assert c.post("/v1/problems", json=PROBLEM).status_code == 201  # a slot freed up


def test_auth(api_server: Service) -> None:
    base = api_server.base_url
    assert_error(httpx.post(f"{base}/v1/problems", json=PROBLEM), 401, "unauthorized")
    r = httpx.get(f"{base}/v1/problems", headers={"Authorization": "Bearer sdpo_nope_nope"})
    assert_error(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(f"{base}/v1/problems", headers={"Authorization": "Basic eDp5"}), 401)
    # keys revoke through the CLI
    key = create_api_key(api_server.redis_url, api_server.prefix, "revokee")
    h = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{base}/v1/problems", headers=h).status_code == 200
    out = subprocess.run(
        [sys.executable, "-m", "service", "keys", "revoke", key.split("_")[1]],
        env=api_server.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert_error(httpx.get(f"{base}/v1/problems", headers=h), 401)


def test_keys_create_cli(api_server: Service) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "cli-tenant"],
        env=api_server.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("sdpo_") and "cli-tenant" in out.stderr
    r = httpx.get(f"{api_server.base_url}/v1/problems", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json() == {"data": [], "next_cursor": None}


def test_other_tenants_problems_are_404(api_server: Service) -> None:
    with tenant(api_server) as alice, tenant(api_server) as bob:
        pid = alice.post("/v1/problems", json=PROBLEM).json()["id"]
        for path in ("", "/attempts", "/events", "/adapter", "/adapter?which=best"):
            assert_error(bob.get(f"/v1/problems/{pid}{path}"), 404, "not_found")
        assert_error(bob.post(f"/v1/problems/{pid}/cancel"), 404)
        assert_error(alice.get("/v1/problems/prb_00000000000000000000"), 404)
        assert bob.get("/v1/problems").json()["data"] == []


def test_adapter_which(api_server: Service) -> None:
    """?which=best: no_adapter before any attempt; another value is a 422 naming `which`."""
    with tenant(api_server) as c:
        pid = c.post("/v1/problems", json=PROBLEM).json()["id"]
        assert_error(c.get(f"/v1/problems/{pid}/adapter?which=best"), 404, "no_adapter")
        assert_error(c.get(f"/v1/problems/{pid}/adapter?which=latest"), 404, "no_adapter")
        assert_error(c.get(f"/v1/problems/{pid}/adapter?which=first"), 422, field="which")


def test_idempotency_key(api_server: Service) -> None:
    with tenant(api_server) as c:
        h = {"Idempotency-Key": "retry-1"}
        a = c.post("/v1/problems", json=PROBLEM, headers=h)
        b = c.post("/v1/problems", json=PROBLEM, headers=h)
        assert a.status_code == b.status_code == 201
        assert a.json()["id"] == b.json()["id"] and b.headers["idempotent-replayed"] == "true"
        assert len(c.get("/v1/problems").json()["data"]) == 1
        other = {**PROBLEM, "prompt": "different"}
        r = c.post("/v1/problems", json=other, headers=h)
        assert_error(r, 409, "idempotency_conflict", field="Idempotency-Key")
        long_key = {"Idempotency-Key": "k" * 300}  # one spelling of the field, whatever failed
        assert_error(
            c.post("/v1/problems", json=PROBLEM, headers=long_key), 422, field="Idempotency-Key"
        )


def test_cursor_pagination_and_status_filter(api_server: Service) -> None:
    key = api_server.new_key(f"t-{uuid.uuid4().hex[:8]}")
    # a tenant with room for 7 problems: this test's API allows 3 active, so cancel as we go
    with httpx.Client(
        base_url=api_server.base_url, headers={"Authorization": f"Bearer {key}"}
    ) as c:
        ids = []
        for i in range(7):
            pid = c.post("/v1/problems", json={**PROBLEM, "prompt": f"p{i}"}).json()["id"]
            ids.append(pid)
            if i < 5:
                assert c.post(f"/v1/problems/{pid}/cancel").json()["status"] == "cancelled"
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/problems", params=params).json()
            seen += [p["id"] for p in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]  # newest first, each once
        queued = c.get("/v1/problems", params={"status": "queued"}).json()
        assert [p["id"] for p in queued["data"]] == ids[:4:-1]
        page = c.get("/v1/problems", params={"status": "cancelled", "limit": 2}).json()
        assert [p["id"] for p in page["data"]] == ids[4:2:-1] and page["next_cursor"]


def test_cancel_queued_and_sse_resume(api_server: Service) -> None:
    with tenant(api_server) as c:
        pid = c.post("/v1/problems", json=PROBLEM).json()["id"]
        with c.stream("GET", f"/v1/problems/{pid}/events") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = read_sse(r)
            first = next(e for e in events if "id" in e)
            assert first["event"] == "status" and first["data"] == '{"status": "queued"}'
            ping = next(events)  # nothing else happens: a heartbeat comment
            assert ping == {"comment": "ping"}
        assert c.post(f"/v1/problems/{pid}/cancel").json()["status"] == "cancelled"
        assert_error(c.post(f"/v1/problems/{pid}/cancel"), 409, "already_finished")
        # resume after the first event: only the rest, then the stream ends
        for kw in ({"headers": {"Last-Event-ID": first["id"]}},
                   {"params": {"last_event_id": first["id"]}}):  # fmt: skip
            with c.stream("GET", f"/v1/problems/{pid}/events", **kw) as r:
                got = [e for e in read_sse(r) if "id" in e]
            assert [e["event"] for e in got] == ["cancelled"]
            assert got[0]["id"] > first["id"]
        # from the start: everything, in order, ending with the terminal event
        with c.stream("GET", f"/v1/problems/{pid}/events") as r:
            got = [e for e in read_sse(r) if "id" in e]
        assert [e["event"] for e in got] == ["status", "cancelled"]
        # resuming after the terminal event ends at once
        with c.stream(
            "GET", f"/v1/problems/{pid}/events", params={"last_event_id": got[-1]["id"]}
        ) as r:
            assert [e for e in read_sse(r) if "id" in e] == []
        assert_error(c.get(f"/v1/problems/{pid}/events", headers={"Last-Event-ID": "garbage"}), 400)
        assert c.get(f"/v1/problems/{pid}").json()["status"] == "cancelled"
        assert c.get(f"/v1/problems/{pid}/attempts").json() == {"data": [], "next_cursor": None}
        assert_error(c.get(f"/v1/problems/{pid}/adapter"), 404, "no_adapter")


def test_errors_everywhere_use_the_envelope(api_server: Service) -> None:
    base = api_server.base_url
    assert_error(httpx.get(f"{base}/nope"), 404)
    assert_error(httpx.delete(f"{base}/v1/problems", headers=api_server.headers), 405)


def test_health_ready_metrics_openapi(api_server: Service) -> None:
    base = api_server.base_url
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] is True
    text = httpx.get(f"{base}/metrics").text
    gauges = ('sdpo_problems{status="queued"}', 'sdpo_problems{status="running"}',
              "sdpo_queue_depth{", "sdpo_workers_live{", "sdpo_problems_created_total")  # fmt: skip
    for name in gauges:
        assert name in text, name
    # attempts, steps and their timings are the workers' own (each serves its /metrics)
    for name in ("sdpo_attempts_total", "sdpo_steps_total", "sdpo_solve_seconds"):
        assert name not in text, name
    # this API process's own HTTP metrics, by route template
    assert 'sdpo_http_requests_total{method="GET",route="/healthz",status="200"} ' in text
    assert 'sdpo_http_request_seconds_bucket{le="0.001",method="GET",route="/readyz"}' in text
    httpx.get(f"{base}/v1/problems/prb_00000000000000000000", headers=api_server.headers)
    text = httpx.get(f"{base}/metrics").text
    assert 'route="/v1/problems/{problem_id}",status="404"' in text
    spec = httpx.get(f"{base}/openapi.json").json()
    assert "ProblemSpec" in spec["components"]["schemas"]
    assert "/v1/problems/{problem_id}/events" in spec["paths"]


def test_readyz_needs_workers_and_auth_off_on_loopback_only(
    redis_url: str, key_prefix: str, tmp_path
) -> None:
    env = service_env(redis_url, key_prefix, tmp_path / "ck", SDPO_API_KEYS_REQUIRED="false",
                      SDPO_MAX_QUEUED="1")  # fmt: skip
    api, base = start_api(env, tmp_path / "api.log")
    try:
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        # auth off on loopback: no key needed; the tenant is `local`
        assert httpx.post(f"{base}/v1/problems", json=PROBLEM).status_code == 201
        # global queue cap: 503 with Retry-After
        r = httpx.post(f"{base}/v1/problems", json=PROBLEM)
        assert_error(r, 503, "queue_full")
        assert r.headers["retry-after"] == "30"
    finally:
        api.stop()
    out = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--host", "0.0.0.0", "--no-auth"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "loopback" in out.stderr


def test_openapi_types_the_verifier_and_sdpo_fields(api_server: Service) -> None:
    with tenant(api_server) as c:
        spec = c.get("/openapi.json").json()["components"]["schemas"]["ProblemSpec"]
    verifier = spec["properties"]["verifier"]
    kinds = set()
    for option in verifier["oneOf"]:
        for sub in option.get("oneOf", [option]):  # `tests` is itself a union by mode
            kinds.add(sub["properties"]["kind"]["const"])
            assert sub["additionalProperties"] is False
    assert kinds == {"table", "tests", "answer", "python"}
    assert "lr" in spec["properties"]["sdpo"]["properties"]


def test_an_obsolete_stats_hash_is_removed_on_start(tmp_path) -> None:
    """An earlier version kept counters in P:stats (Prometheus metrics replaced them)."""
    import redis as redis_sync
    from service_fixtures import SHARED_REDIS_URL, drop_prefix, new_prefix

    prefix = new_prefix()
    client = redis_sync.Redis.from_url(SHARED_REDIS_URL)
    client.hset(f"{prefix}:stats", "created", 3)
    env = service_env(
        SHARED_REDIS_URL, prefix, tmp_path / "ckpt", SDPO_READY_REQUIRES_WORKERS="false"
    )
    api, _ = start_api(env, tmp_path / "api.log")
    try:
        assert not client.exists(f"{prefix}:stats")
    finally:
        api.stop()
        drop_prefix(SHARED_REDIS_URL, prefix)
        client.close()
