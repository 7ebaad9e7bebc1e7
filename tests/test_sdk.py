"""The Python SDK (clients/python) against a real API, Redis and toy worker.

Fast tests use the API alone (problems stay queued); slow ones a worker on the toy model.
The reconnect test puts a real TCP proxy between the SDK and the API that cuts the
connection in the middle of an SSE message, several times, and checks that the SDK's event
sequence equals an uncut read of the same stream: nothing lost, nothing repeated.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import inspect
import io
import itertools
import json
import pickle
import socket
import threading
import time
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
import sdpo_client
from sdpo_client import (
    AsyncClient,
    AttemptEvent,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SolvedEvent,
    StatusEvent,
    ValidationError,
    problems,
)
from sdpo_client.models import parse_event
from service_fixtures import ROOT, Service, read_sse

pytest_plugins = ["service_fixtures"]

service_env_extra = {"SDPO_MAX_ACTIVE_PER_TENANT": "3", "SDPO_RETRY_AFTER_SECONDS": "7"}

QUEUED = problems.from_table("Look up the table: a=?", {"a": "1"}, max_attempts=8, max_seconds=60)


def tenant_client(svc: Service, cls: type = Client, **kw) -> Client | AsyncClient:
    """A client for a fresh tenant, so tests never see each other's problems."""
    return cls(svc.base_url, svc.new_key(f"t-{uuid.uuid4().hex[:8]}"), **kw)


# ------------------------------------------------------------------ API only (fast)
def test_submit_get_list_cancel_idempotency(api_server: Service) -> None:
    with tenant_client(api_server) as c:
        p = c.submit(QUEUED, idempotency_key="k-1")
        assert p.status == "queued" and p.model == "toy" and p.spec.budget.max_attempts == 8
        assert c.submit(QUEUED, idempotency_key="k-1").id == p.id  # replayed, not created
        with pytest.raises(ConflictError) as e:
            c.submit({**QUEUED, "prompt": "other"}, idempotency_key="k-1")
        assert e.value.code == "idempotency_conflict"
        q = c.submit(QUEUED)
        assert c.get(p.id).id == p.id
        cancelled = c.cancel(p.id)
        assert cancelled.status == "cancelled" and cancelled.done and not cancelled.solved
        with pytest.raises(ConflictError) as e:
            c.cancel(p.id)
        assert e.value.code == "already_finished" and e.value.status_code == 409
        r = c.submit(QUEUED)
        # list pages through everything, newest first
        assert [x.id for x in c.list(page_size=1)] == [r.id, q.id, p.id]
        assert [x.id for x in c.list(status="cancelled")] == [p.id]
        events = list(c.events(p.id))
        assert [e.kind for e in events] == ["status", "cancelled"]
        assert isinstance(events[0], StatusEvent) and events[0].status == "queued"
        assert list(c.events(p.id, after=events[0].id)) == events[1:]
        assert list(c.events(p.id, after=events[-1].id)) == []  # after the end: nothing
        assert c.wait(p.id, timeout=5).status == "cancelled"
        assert list(c.attempts(p.id)) == []
        with pytest.raises(NotFoundError) as e:
            c.download_adapter(q.id, "unused")
        assert e.value.code == "no_adapter"


def test_auth_failures(api_server: Service) -> None:
    for key in ("sdpo_not_a_key", ""):
        with Client(api_server.base_url, key) as c:
            with pytest.raises(AuthenticationError) as e:
                c.get("prb_" + "0" * 20)
            assert e.value.status_code == 401 and e.value.code == "unauthorized"
            with pytest.raises(AuthenticationError):
                c.submit(QUEUED)
            with pytest.raises(AuthenticationError):
                next(iter(c.events("prb_" + "0" * 20)))


def test_not_found_and_other_tenants(api_server: Service) -> None:
    with tenant_client(api_server) as a, tenant_client(api_server) as b:
        pid = a.submit(QUEUED).id
        for client, missing in ((a, "prb_" + "0" * 20), (b, pid)):
            with pytest.raises(NotFoundError) as e:
                client.get(missing)
            assert e.value.code == "not_found"
        a.cancel(pid)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"prompt": ""}, "prompt"),
        ({"budget": {"max_attempts": 0}}, "budget.max_attempts"),
        ({"verifier": {"kind": "table", "cases": {}}}, "verifier.cases"),
        ({"verifier": {"kind": "nope"}}, "verifier.kind"),
        ({"model": "no-such-model"}, "model"),
    ],
)
def test_validation_error_names_the_field(api_server: Service, change: dict, field: str) -> None:
    with tenant_client(api_server) as c:
        with pytest.raises(ValidationError) as e:
            c.submit({**QUEUED, **change})
    assert e.value.status_code == 422 and e.value.field == field, e.value


def test_rate_limit_has_retry_after_and_is_not_retried(api_server: Service) -> None:
    with tenant_client(api_server) as c:
        ids = [c.submit(QUEUED).id for _ in range(3)]
        with pytest.raises(RateLimitError) as e:
            c.submit(QUEUED, idempotency_key="over-the-limit")
        assert e.value.retry_after == 7 and e.value.code == "too_many_active"
        assert len(list(c.list())) == 3
        c.cancel(ids[0])
        c.submit(QUEUED, idempotency_key="over-the-limit")  # room again


def test_async_client_is_a_twin(api_server: Service) -> None:
    public = {n for n, _ in inspect.getmembers(Client) if not n.startswith("_")}
    assert public == {n for n, _ in inspect.getmembers(AsyncClient) if not n.startswith("_")}

    key = api_server.new_key(f"t-{uuid.uuid4().hex[:8]}")

    async def go() -> None:
        async with AsyncClient(api_server.base_url, key) as c:
            p = await c.submit(QUEUED, idempotency_key="a-1")
            assert (await c.submit(QUEUED, idempotency_key="a-1")).id == p.id
            assert (await c.get(p.id)).status == "queued"
            assert [x.id async for x in c.list(status="queued")] == [p.id]
            assert (await c.cancel(p.id)).status == "cancelled"
            assert [e.kind async for e in c.events(p.id)] == ["status", "cancelled"]
            assert (await c.wait(p.id, timeout=5)).status == "cancelled"
            assert [a async for a in c.attempts(p.id)] == []
            with pytest.raises(ValidationError):
                await c.submit({**QUEUED, "prompt": ""})
        async with AsyncClient(api_server.base_url, "bad") as bad:
            with pytest.raises(AuthenticationError):
                await bad.get(p.id)

    asyncio.run(go())


def test_wait_times_out(api_server: Service) -> None:
    with tenant_client(api_server) as c:
        pid = c.submit(QUEUED).id  # no worker: stays queued
        with pytest.raises(sdpo_client.WaitTimeoutError):
            c.wait(pid, timeout=1.5)
        c.cancel(pid)


# ------------------------------------------------------------------ retry policy
def test_retries_only_where_safe() -> None:
    """Reads and idempotent submits are retried on 503; a plain submit is sent once. (A
    transport stub: this checks the SDK's policy, not the service.)"""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) % 2:  # every other request fails
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {}})
        return httpx.Response(200, json={"data": [], "next_cursor": None})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client("http://sdpo.test", "k", http_client=http) as c:
        assert list(c.list()) == []
        assert calls == ["GET", "GET"]
        calls.clear()
        with pytest.raises(sdpo_client.ServiceUnavailableError) as e:
            c.submit(QUEUED)
        assert calls == ["POST"] and e.value.retry_after == 0
        calls.clear()
        with pytest.raises(Exception):  # noqa: B017 (the 200 body is not a problem)
            c.submit(QUEUED, idempotency_key="x")
        assert calls == ["POST", "POST"]


def _problem_json(pid: str, status: str) -> dict:
    now = "2026-01-01T00:00:00Z"
    return {"id": pid, "status": status, "model": "toy", "attempts": 0, "steps": 0,
            "created_at": now, "updated_at": now, "spec": QUEUED}  # fmt: skip


def test_events_reconnect_after_the_servers_retry_time() -> None:
    """A stream closed without its terminal event is reopened with Last-Event-ID only after
    the `retry:` time the server sent (SSE's reconnection time), by both twins; a `retry`
    value that is not ASCII digits is ignored. (A transport stub: the SDK's policy.)"""
    opened: list[tuple[float, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        opened.append((time.monotonic(), request.headers.get("Last-Event-ID")))
        if len(opened) % 2:  # the first connection: one event, then a clean close
            body = "retry: 400\n\nretry: \u00b2\n\n"  # a superscript 2 is no ASCII digit
            body += 'id: 1-0\nevent: status\ndata: {"status": "running"}\n\n'
        else:
            body = 'id: 2-0\nevent: cancelled\ndata: {"attempts": 0, "steps": 0}\n\n'
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, text=body)

    with Client("http://sdpo.test", "k", http_client=httpx.Client(
            transport=httpx.MockTransport(handler))) as c:  # fmt: skip
        kinds = [e.kind for e in c.events("p1")]
    assert kinds == ["status", "cancelled"]
    (t0, first), (t1, resumed) = opened
    assert first is None and resumed == "1-0"
    assert t1 - t0 >= 0.4, t1 - t0

    async def go() -> list[str]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient("http://sdpo.test", "k", http_client=http) as ac:
            return [e.kind async for e in ac.events("p1")]

    opened.clear()
    assert asyncio.run(go()) == ["status", "cancelled"]
    (t0, _), (t1, resumed) = opened
    assert resumed == "1-0" and t1 - t0 >= 0.4, t1 - t0


def test_events_stream_closed_without_events_backs_off_and_gives_up() -> None:
    """A stream that keeps closing without an event (the problem still running) is not
    reopened in a busy loop: each reconnect waits, and after `max_stream_reconnects` in a
    row the SDK raises APIConnectionError."""
    streams: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            streams.append(time.monotonic())
            if len(streams) > 20:  # the SDK never gave up: end the test, do not hang
                return httpx.Response(404, json={"error": {"code": "not_found"}})
            return httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                                  text="retry: 100\n\n: ping\n\n")  # fmt: skip
        return httpx.Response(200, json=_problem_json("p1", "running"))

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client("http://sdpo.test", "k", http_client=http, max_stream_reconnects=3) as c:
        with pytest.raises(sdpo_client.APIConnectionError, match="4 times in a row"):
            list(c.events("p1"))
    assert len(streams) == 4
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(streams))


# ------------------------------------------------------------------ problem builders
def _lcb_compress(tests: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


LCB_STDIN = {
    "question_title": "Sum",
    "question_content": "Read a and b; print a + b.",
    "platform": "atcoder",
    "question_id": "abc001_a",
    "starter_code": "",
    "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
    "private_test_cases": _lcb_compress(
        [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]
    ),
    "metadata": "{}",
}
LCB_FUNCTIONAL = {
    "question_title": "Two Sum",
    "question_content": "Return indices of two numbers adding up to target.",
    "platform": "leetcode",
    "question_id": "1",
    "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",  # noqa: E501
    "public_test_cases": json.dumps(
        [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"}]
    ),
    "private_test_cases": "",
    "metadata": json.dumps({"func_name": "twoSum"}),
}
HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": 'def total(xs):\n    """Sum."""\n',
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n",
    "entry_point": "total",
}


def test_builders_agree_with_the_server_converters() -> None:
    from sdpo_core.verifiers.converters import humaneval_problem, livecodebench_problem

    for record in (LCB_STDIN, LCB_FUNCTIONAL):
        for private in (True, False):
            ours = problems.from_livecodebench(record, include_private=private, timeout_s=3)
            assert ours == livecodebench_problem(record, include_private=private, timeout_s=3)
    assert problems.from_humaneval(HUMANEVAL) == humaneval_problem(HUMANEVAL)
    built = problems.from_livecodebench(LCB_STDIN, max_attempts=9, sdpo={"lora_rank": 8})
    assert built["budget"] == {"max_attempts": 9} and built["metadata"]["source"] == "livecodebench"
    evil = base64.b64encode(zlib.compress(pickle.dumps(Path("/etc")))).decode()
    with pytest.raises(pickle.UnpicklingError):
        problems.from_livecodebench({**LCB_STDIN, "private_test_cases": evil})


def three_words(response):
    words = response.split()
    if len(words) != 3:
        return False, f"Expected exactly 3 words, got {len(words)}."
    return True


def test_every_builder_is_accepted_by_the_server_schema() -> None:
    from sdpo_core.problem import parse_problem

    specs = [
        problems.from_table("t", {"a": 1, "b": "2"}, max_attempts=5),
        problems.from_answer("2+2?", "4", match="numeric", max_seconds=30),
        problems.from_io_tests("sum", [("1 2\n", "3\n"), {"input": "2 2", "output": "4"}]),
        problems.from_io_tests("f", [("[1]", "1")], mode="functional", fn_name="f"),
        problems.from_asserts("tot", HUMANEVAL["test"], entry_point="total"),
        problems.from_verifier_function("Say three words.", three_words, model="toy"),
        problems.from_livecodebench(LCB_FUNCTIONAL),
        problems.from_humaneval(HUMANEVAL, metadata={"tag": "x"}),
    ]
    for spec in specs:
        parse_problem(json.loads(json.dumps(spec)))
    source = specs[5]["verifier"]["source"]
    scope: dict = {}
    exec(source, scope)  # the shipped source defines verify() and behaves like the function
    assert scope["verify"]("one two three") is True
    assert scope["verify"]("one")[0] is False
    with pytest.raises(ValueError):
        problems.from_verifier_function("x", lambda r: True)


def test_client_package_imports_no_server_code() -> None:
    for path in (ROOT / "clients").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"sdpo_core", "service", "sdpo_cli"}, path


# ------------------------------------------------------------------ with a worker (slow)
class CuttingProxy:
    """A TCP proxy to `upstream` that, on each of its first `cuts` connections, forwards the
    response only up to the middle of SSE message number `after` + 1 and then drops the
    connection (both sockets closed, as a dying network or proxy would)."""

    def __init__(self, upstream: str, after: int, cuts: int) -> None:
        url = httpx.URL(upstream)
        self.target = (url.host, url.port)
        self.after, self.cuts_left, self.cut_count = after, cuts, 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                cut = self.cuts_left > 0
                self.cuts_left -= cut
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, cut), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, cut: bool) -> None:
        seen = 0
        try:
            while data := src.recv(65536):
                if cut:
                    pos = 0
                    while (pos := data.find(b"\nevent: ", pos) + 1) > 0:
                        seen += 1
                        if seen == self.after + 1:  # half of this message, then drop
                            dst.sendall(data[: pos + len("event: ")])
                            self.cut_count += 1
                            raise ConnectionAbortedError
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.server.close()


@pytest.mark.slow
def test_stream_to_solved_wait_and_attempts(sdpo_service: Service) -> None:
    from sdpo_core.toy import make_problem

    with tenant_client(sdpo_service) as c:
        p = c.submit(make_problem(7, 1), idempotency_key="solve-me")
        events = list(c.events(p.id))
        assert isinstance(events[-1], SolvedEvent), events[-1]
        kinds = [e.kind for e in events]
        assert kinds[0] == "status" and "attempt" in kinds
        attempts = [e for e in events if isinstance(e, AttemptEvent)]
        assert [a.index for a in attempts] == list(range(1, len(attempts) + 1))
        final = c.wait(p.id, timeout=60)
        assert final.solved and final.solution == events[-1].solution
        assert final.solved_attempt == events[-1].attempt_index
        records = list(c.attempts(p.id, page_size=2))
        assert [r.index for r in records] == [a.index for a in attempts]
        assert records[final.solved_attempt - 1].verdict.passed
        assert attempts[0].verdict.score == records[0].score

    async def go() -> None:
        async with AsyncClient(sdpo_service.base_url, c.api_key) as ac:
            assert (await ac.wait(p.id)).solution == final.solution
            assert [e async for e in ac.events(p.id)] == events

    asyncio.run(go())


@pytest.mark.slow
def test_reconnect_mid_stream_loses_and_repeats_nothing(sdpo_service: Service) -> None:
    from sdpo_core.toy import make_problem

    with tenant_client(sdpo_service) as direct:
        pid = direct.submit(make_problem(11, 2)).id
        proxy = CuttingProxy(sdpo_service.base_url, after=2, cuts=4)
        try:
            with Client(proxy.url, direct.api_key, max_stream_reconnects=8) as c:
                got = list(c.events(pid))
        finally:
            proxy.close()
        assert proxy.cut_count >= 2, "the stream was never cut"
        assert got[-1].terminal
        # the same stream read whole, without the proxy
        with httpx.Client(base_url=sdpo_service.base_url, headers={
            "Authorization": f"Bearer {direct.api_key}"}, timeout=60) as h:  # fmt: skip
            with h.stream("GET", f"/v1/problems/{pid}/events") as r:
                raw = [e for e in read_sse(r) if "id" in e]
        assert [e.id for e in got] == [e["id"] for e in raw]
        assert [e.kind for e in got] == [e["event"] for e in raw]
        assert got == [parse_event(e["id"], e["event"], e["data"]) for e in raw]


@pytest.mark.slow
def test_download_the_best_attempts_adapter(sdpo_service: Service, tmp_path: Path) -> None:
    """which="best": the adapter version that sampled the best attempt, with best.json naming
    the attempt; this problem's best came from adapter v1 when measured."""
    from sdpo_core.toy import make_problem

    problem = {**make_problem(9001, 4, max_attempts=40), "objective": {"maximize": True}}
    problem["sdpo"] = {**problem["sdpo"], "samples_per_step": 8}
    with tenant_client(sdpo_service) as c:
        pid = c.submit(problem).id
        final = c.wait(pid, timeout=600)
        assert final.status == "exhausted" and final.best_attempt is not None
        step = {a.index: a.step for a in c.attempts(pid)}[final.best_attempt]
        adapter = c.download_adapter(pid, tmp_path / "best", which="best")
        info = json.loads((adapter / "best.json").read_text())
        assert info == {
            "attempt": final.best_attempt,
            "score": final.best_score,
            "adapter_version": step,
        }
        assert step >= 1 and (adapter / "adapter_config.json").is_file()
        assert any(adapter.glob("*.safetensors"))
        latest = c.download_adapter(pid, tmp_path / "latest")
        assert not (latest / "best.json").exists()


@pytest.mark.slow
def test_cancel_running_and_download_adapter(sdpo_service: Service, tmp_path: Path) -> None:
    from sdpo_core.toy import HARD_SUITE

    problem = {**HARD_SUITE[1], "budget": {"max_attempts": 4000, "max_seconds": 600}}
    problem["sdpo"] = {**problem.get("sdpo", {}), "samples_per_step": 4}
    with tenant_client(sdpo_service) as c:
        pid = c.submit(problem).id
        for event in c.events(pid):
            if event.kind == "step":
                running = c.cancel(pid)
                assert running.cancel_requested and running.status == "running"
                break
        final = c.wait(pid, timeout=300)
        assert final.status == "cancelled" and final.adapter_version >= 1
        adapter = c.download_adapter(pid, tmp_path / "out")
        assert adapter == tmp_path / "out" / "adapter"
        assert (adapter / "adapter_config.json").is_file()
        assert any(adapter.glob("*.safetensors"))


@pytest.mark.slow
def test_docs_sdk_examples(sdpo_service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of docs/sdk.md, in order, in one namespace."""
    import re

    text = (ROOT / "docs" / "sdk.md").read_text()
    # each block padded to its line in the file, so inspect.getsource finds functions there
    blocks = [
        "\n" * text[: m.start(1)].count("\n") + m[1]
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]
    assert len(blocks) >= 5
    monkeypatch.setenv("SDPO_SERVER", sdpo_service.base_url)
    monkeypatch.setenv("SDPO_API_KEY", sdpo_service.new_key(f"docs-{uuid.uuid4().hex[:6]}"))
    scope: dict = {"__name__": "docs_sdk"}
    shown = 0
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(ROOT / "docs" / "sdk.md"), "exec"), scope)
        printed = out.getvalue()
        # what the docs say a line prints: the parts around each … appear in order
        for claim in re.findall(r"# prints: (.*?)(?: \(.*\))?$", block, re.M):
            pattern = ".*?".join(re.escape(part.strip()) for part in claim.split("…"))
            assert re.search(pattern, printed), f"docs/sdk.md claims {claim!r}; printed {printed!r}"
            shown += 1
    assert shown >= 3
    scope["client"].close()
