"""Hostile input against a real API process: always a 4xx on a kept-alive connection, never
a 500; streams that end when they should; nothing shown to callers without a key."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid

import httpx
import pytest

pytest_plugins = ["service_fixtures"]
pytest.register_assert_rewrite("service_fixtures")  # before importing it
from service_fixtures import Service, read_sse  # noqa: E402

from service.store import Store, connect  # noqa: E402

service_env_extra = {
    "SDPO_SSE_HEARTBEAT_SECONDS": "30",  # a stream that waits a heartbeat times the client out
    "SDPO_EVENTS_MAXLEN": "10",
    "SDPO_MAX_STREAMS_PER_TENANT": "2",
}

PROBLEM = {
    "prompt": "Look up the table: a=?",
    "verifier": {"kind": "table", "cases": {"a": "1"}},
    "budget": {"max_attempts": 8, "max_seconds": 60},
}


def tenant_key(svc: Service) -> str:
    return svc.new_key(f"t-{uuid.uuid4().hex[:8]}")


class RawConnection:
    """One keep-alive HTTP/1.1 connection, to see that the server never drops it."""

    def __init__(self, base_url: str, key: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.host = f"{host}:{port}"
        self.key = key
        self.buf = b""

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the keep-alive connection"
            self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection mid-body"
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def nested(depth: int) -> dict:
    root: dict = {}
    node = root
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


HOSTILE = [
    # (name, body, status, field)
    ("4301-digit integer", b'{"prompt": "x", "seed": ' + b"9" * 4301 + b"}", 400, None),
    ("JSON nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("metadata nested 300 deep", json.dumps({**PROBLEM, "metadata": nested(300)}).encode(),
     422, "metadata"),
    ("python source: MemoryError in compile()",
     json.dumps({**PROBLEM, "verifier": {"kind": "python",
                 "source": "x = " + "-" * 60000 + "1"}}).encode(), 422, "verifier.source"),
    ("python source: RecursionError in compile()",
     json.dumps({**PROBLEM, "verifier": {"kind": "python",
                 "source": "x=" + "+".join(["1"] * 40000)}}).encode(), 422, "verifier.source"),
    ("python source over the cap",
     json.dumps({**PROBLEM, "verifier": {"kind": "python",
                 "source": "#" * 200_000}}).encode(), 422, "verifier.source"),
    ("regex: OverflowError in re.compile",
     json.dumps({**PROBLEM, "verifier": {"kind": "answer", "match": "regex",
                 "expected": "a{1,4294967296}"}}).encode(), 422, "verifier.expected"),
    ("regex: RecursionError in re.compile",
     json.dumps({**PROBLEM, "verifier": {"kind": "answer", "match": "regex",
                 "expected": "(" * 10000 + ")" * 10000}}).encode(), 422, "verifier.expected"),
]  # fmt: skip


def test_hostile_bodies_get_4xx_on_a_kept_alive_connection(api_server: Service) -> None:
    conn = RawConnection(api_server.base_url, tenant_key(api_server))
    try:
        for name, body, status, field in HOSTILE:
            got, headers, raw = conn.post("/v1/problems", body)
            assert got == status, (name, got, raw[:300])
            assert headers.get("connection", "").lower() != "close", name
            err = json.loads(raw)["error"]
            if field:
                assert err["field"] == field, (name, err)
        # and the same connection still serves a good request
        got, _, raw = conn.post("/v1/problems", json.dumps(PROBLEM).encode())
        assert got == 201, raw
    finally:
        conn.close()


def test_stored_specs_are_served_as_stored(api_server: Service) -> None:
    """GET never validates the stored spec again (it was checked at submit): a spec that
    would no longer pass is still served, so a costly one cannot stall the API."""
    key = tenant_key(api_server)
    h = {"Authorization": f"Bearer {key}"}
    source = "def verify(response):\n    return True\n" + "x = 1\n" * 15000
    body = {**PROBLEM, "verifier": {"kind": "python", "source": source}}
    r = httpx.post(f"{api_server.base_url}/v1/problems", json=body, headers=h, timeout=60)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]

    async def corrupt() -> None:
        store = Store(connect(api_server.redis_url), api_server.prefix)
        try:
            spec = json.loads(await store.redis.hget(store.problem_key(pid), "spec"))
            spec["verifier"]["source"] = "this is not python ("
            await store.redis.hset(store.problem_key(pid), "spec", json.dumps(spec))
        finally:
            await store.redis.aclose()

    asyncio.run(corrupt())
    got = httpx.get(f"{api_server.base_url}/v1/problems/{pid}", headers=h, timeout=30)
    assert got.status_code == 200 and got.json()["spec"]["verifier"]["source"].startswith("this")
    listed = httpx.get(f"{api_server.base_url}/v1/problems", headers=h, timeout=30).json()
    assert [p["id"] for p in listed["data"]] == [pid]


@pytest.mark.parametrize(
    "bad",
    ["1-0\n", "1-0 ", "١٢-0", "18446744073709551616-0", "1-18446744073709551616", "1", "-1-0"],
)
def test_bad_last_event_id_is_400(api_server: Service, bad: str) -> None:
    key = tenant_key(api_server)
    h = {"Authorization": f"Bearer {key}"}
    pid = httpx.post(f"{api_server.base_url}/v1/problems", json=PROBLEM, headers=h).json()["id"]
    r = httpx.get(
        f"{api_server.base_url}/v1/problems/{pid}/events",
        params={"last_event_id": bad},
        headers=h,
        timeout=10,
    )
    assert r.status_code == 400, (bad, r.status_code, r.text[:200])
    assert r.json()["error"]["code"] == "bad_event_id"


def test_largest_event_id_is_accepted_and_terminal_resume_ends_at_once(
    api_server: Service,
) -> None:
    key = tenant_key(api_server)
    h = {"Authorization": f"Bearer {key}"}
    base = api_server.base_url
    pid = httpx.post(f"{base}/v1/problems", json=PROBLEM, headers=h).json()["id"]
    assert httpx.post(f"{base}/v1/problems/{pid}/cancel", headers=h).status_code == 200
    # The heartbeat is 30 s and the client waits 10 s at most: the stream must end by itself.
    with httpx.stream("GET", f"{base}/v1/problems/{pid}/events", headers=h, timeout=10) as r:
        events = [e for e in read_sse(r) if "event" in e]
    assert [e["event"] for e in events] == ["status", "cancelled"]
    for after in (events[-1]["id"], "18446744073709551615-18446744073709551615"):
        hdr = {**h, "Last-Event-ID": after}
        with httpx.stream("GET", f"{base}/v1/problems/{pid}/events", headers=hdr, timeout=10) as r:
            assert r.status_code == 200
            assert [e for e in read_sse(r) if "event" in e] == []


def test_trimmed_events_answer_410_with_the_first_available_id(api_server: Service) -> None:
    key = tenant_key(api_server)
    h = {"Authorization": f"Bearer {key}"}
    base = api_server.base_url
    pid = httpx.post(f"{base}/v1/problems", json=PROBLEM, headers=h).json()["id"]

    async def write(n: int) -> list[str]:
        store = Store(connect(api_server.redis_url), api_server.prefix, events_maxlen=10)
        try:
            owner = "hostile-writer"
            await store.transition(pid, "running", event="status", data={"status": "running"},
                                   fields={"owner": owner, "worker": "test"})  # fmt: skip
            for i in range(1, n + 1):
                await store.record(pid, owner=owner, counter="last_attempt_index", seq=i,
                                   event="attempt", data={"index": i})  # fmt: skip
            rows = await store.redis.xrange(store.events_key(pid))
            return [eid for eid, _ in rows]
        finally:
            await store.redis.aclose()

    kept = asyncio.run(write(400))
    assert 10 <= len(kept) < 400  # trimmed (approximately: whole stream nodes at a time)
    hdr = {**h, "Last-Event-ID": "1-0"}
    r = httpx.get(f"{base}/v1/problems/{pid}/events", headers=hdr, timeout=10)
    assert r.status_code == 410, r.text
    err = r.json()["error"]
    assert err["code"] == "events_gone" and kept[0] in err["message"]
    # resuming from a kept id is fine: the rest follows, in order, once
    hdr = {**h, "Last-Event-ID": kept[-3]}
    with httpx.stream("GET", f"{base}/v1/problems/{pid}/events", headers=hdr, timeout=10) as r:
        assert r.status_code == 200
        got = []
        for e in read_sse(r):
            if "event" in e:
                got.append(e["id"])
            if len(got) == 2:
                break
    assert got == kept[-2:]


def test_open_streams_are_capped_per_tenant(api_server: Service) -> None:
    key = tenant_key(api_server)
    h = {"Authorization": f"Bearer {key}"}
    base = api_server.base_url
    pid = httpx.post(f"{base}/v1/problems", json=PROBLEM, headers=h).json()["id"]
    url = f"{base}/v1/problems/{pid}/events"
    with httpx.Client(headers=h, timeout=10) as c:
        with c.stream("GET", url) as one, c.stream("GET", url) as two:
            readers = [read_sse(r) for r in (one, two)]  # kept: a dropped one closes its stream
            for r, events in zip((one, two), readers, strict=True):
                assert r.status_code == 200
                next(events)  # the stream is open on the server
            r = c.get(url)
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_streams"
            other = {"Authorization": f"Bearer {tenant_key(api_server)}"}
            assert c.get(f"{base}/v1/problems", headers=other).status_code == 200
        # closed streams free their places
        for _ in range(50):
            with c.stream("GET", url) as r:
                if r.status_code == 200:
                    break
            asyncio.run(asyncio.sleep(0.1))
        assert r.status_code == 200


def test_readyz_shows_counts_only_without_a_key(api_server: Service) -> None:
    base = api_server.base_url
    anon = httpx.get(f"{base}/readyz").json()
    assert anon["workers"] is None and isinstance(anon["live_workers"], int)
    keyed = httpx.get(
        f"{base}/readyz", headers={"Authorization": f"Bearer {tenant_key(api_server)}"}
    )
    assert isinstance(keyed.json()["workers"], list)
    bad = httpx.get(f"{base}/readyz", headers={"Authorization": "Bearer sdpo_nope_x"}).json()
    assert bad["workers"] is None


def test_docs_are_served_without_a_cdn(api_server: Service) -> None:
    base = api_server.base_url
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{base}{page}").text
        assert not re.search(r"(src|href)=['\"]?(https?:)?//", html), html
        for asset in re.findall(r"(?:src|href)=['\"]?(/docs-assets/[^'\" >]+)", html):
            r = httpx.get(f"{base}{asset}")
            assert r.status_code == 200 and len(r.content) > 100, asset
