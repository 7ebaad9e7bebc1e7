"""`Client` and its `AsyncClient` twin: the same methods, blocking or awaitable.

Retries (with exponential backoff and jitter) happen only where a retry cannot do anything
twice: reads, submits that carry an Idempotency-Key, and any request whose connection was
never made. `events()` reconnects by itself with Last-Event-ID, so a dropped stream loses
and repeats nothing; it waits the server's SSE `retry:` time before reconnecting.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel

from sdpo_client._sse import SSEDecoder
from sdpo_client._tar import safe_extract
from sdpo_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    WaitTimeoutError,
    error_from_response,
    retry_after_seconds,
)
from sdpo_client.models import AnyEvent, Attempt, Problem, Status, Suite, parse_event

DEFAULT_SERVER = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})
# Transport errors raised before the request reached the server: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

ProblemInput = Mapping[str, Any] | BaseModel
AdapterWhich = Literal["latest", "best"]  # the adapter after the last step, or the best attempt's


class _Base:
    """Configuration and the decisions both clients share."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout: float,
        max_retries: int,
        max_retry_delay: float,
        stream_read_timeout: float,
        max_stream_reconnects: int,
    ) -> None:
        self.base_url = (base_url or os.environ.get("SDPO_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("SDPO_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_delay = max_retry_delay
        self.stream_read_timeout = stream_read_timeout
        self.max_stream_reconnects = max_stream_reconnects

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "sdpo-client/0.1", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `attempt` (0-based): Retry-After, else 0.5 * 2^n."""
        if retry_after is not None:
            return retry_after
        return min(self.max_retry_delay, 0.5 * 2**attempt) * random.uniform(0.75, 1.0)

    def _retry_status(self, response: httpx.Response, safe: bool, attempt: int) -> float | None:
        """Seconds to wait before retrying this error response, or None to raise it."""
        if not safe or attempt >= self.max_retries or response.status_code not in RETRY_STATUSES:
            return None
        delay = self._delay(attempt, retry_after_seconds(response))
        return delay if delay <= self.max_retry_delay else None

    def _retry_transport(self, exc: Exception, safe: bool, attempt: int) -> float | None:
        if attempt >= self.max_retries or not (safe or isinstance(exc, _NOT_SENT)):
            return None
        return self._delay(attempt)

    def _reconnect_delay(self, failures: int, retry_ms: int | None) -> float:
        """Seconds before reopening a dropped event stream: the server's `retry:` time (at
        most `max_retry_delay`), or the backoff after `failures` in a row if that is longer."""
        backoff = self._delay(failures)
        if retry_ms is None:
            return backoff
        return max(min(retry_ms / 1000, self.max_retry_delay), backoff)

    def _stream_closed_error(self, pid: str) -> APIConnectionError:
        return APIConnectionError(
            f"the event stream of problem {pid} closed {self.max_stream_reconnects + 1} "
            "times in a row without an event"
        )

    def _stream_timeout(self, deadline: float | None) -> httpx.Timeout:
        read = self.stream_read_timeout
        if deadline is not None:
            read = max(0.05, min(read, deadline - time.monotonic()))
        return httpx.Timeout(self.timeout, read=read)

    @staticmethod
    def _spec_json(problem: ProblemInput) -> dict[str, Any]:
        if isinstance(problem, BaseModel):
            return problem.model_dump(mode="json", exclude_none=True)
        return dict(problem)

    @classmethod
    def _suite_json(
        cls,
        problems: Iterable[ProblemInput],
        methods: Sequence[str] | None,
        seeds: int,
        name: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"problems": [cls._spec_json(p) for p in problems], "seeds": seeds}
        if methods is not None:
            body["methods"] = list(methods)
        if name is not None:
            body["name"] = name
        return body

    @staticmethod
    def _connection_error(exc: Exception) -> APIConnectionError:
        cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        return cls(f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _timed_out(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline


def _wait_error(pid: str, timeout: float | None) -> WaitTimeoutError:
    what = "suite" if pid.startswith("ste_") else "problem"
    return WaitTimeoutError(f"{what} {pid} did not finish within {timeout} s")


class _EventFollower:
    """The decisions of following one problem's event stream, without I/O: both clients run
    the same follower and only open connections, read lines and sleep in their own way.

    It resumes after the last event seen (Last-Event-ID), waits the server's `retry:` time
    (or the backoff) before reconnecting, gives up after `max_stream_reconnects` failures in
    a row, and raises WaitTimeoutError past the deadline."""

    def __init__(
        self,
        client: _Base,
        pid: str,
        after: str | None,
        deadline: float | None,
        timeout: float | None,
    ) -> None:
        self.client, self.pid, self.deadline, self.timeout = client, pid, deadline, timeout
        self.last, self.failures, self.got = after, 0, 0
        self.decoder = SSEDecoder()
        self.path = f"/v1/problems/{pid}/events"

    def open(self) -> dict[str, Any]:
        """Keyword arguments of the next connection's stream request."""
        self.got = 0
        headers = {"Accept": "text/event-stream"}
        if self.last:
            headers["Last-Event-ID"] = self.last
        return {"headers": headers, "timeout": self.client._stream_timeout(self.deadline)}

    def check_deadline(self, cause: BaseException | None = None) -> None:
        if self.client._timed_out(self.deadline):
            raise _wait_error(self.pid, self.timeout) from cause

    def refused(self, response: httpx.Response) -> float:
        """An error status on connecting: seconds to wait before retrying, or raise it."""
        delay = self.client._retry_status(response, True, self.failures)
        if delay is None:
            raise error_from_response(response)
        self.failures += 1
        return delay

    def connected(self) -> None:
        self.decoder.restart()

    def line(self, line: str) -> AnyEvent | None:
        """A line of the stream: the event it completes, if any."""
        self.check_deadline()
        msg = self.decoder.feed(line)
        if msg is None or msg.id is None:
            return None
        self.last, self.got, self.failures = msg.id, self.got + 1, 0
        return parse_event(msg.id, msg.event, msg.data)

    def dropped(self, exc: httpx.TransportError) -> float:
        """The connection failed: seconds to wait before reconnecting, or raise."""
        self.check_deadline(exc)
        if self.failures >= self.client.max_stream_reconnects:
            raise self.client._connection_error(exc) from exc
        delay = self.client._reconnect_delay(self.failures, self.decoder.retry_ms)
        self.failures += 1
        return delay

    def ended(self) -> bool:
        """The server closed the stream before the terminal event. True: the problem may be
        done (ask the server, then `ended_done`); False: reconnect after `reconnect_delay`."""
        self.check_deadline()
        return self.got == 0

    def closed_empty(self) -> None:
        """A stream that closed with no event, for a problem not done: count it."""
        if self.failures >= self.client.max_stream_reconnects:
            raise self.client._stream_closed_error(self.pid)
        self.failures += 1

    def reconnect_delay(self) -> float:
        return self.client._reconnect_delay(self.failures, self.decoder.retry_ms)


class Client(_Base):
    """A blocking client.

    >>> with Client("http://127.0.0.1:8000", api_key) as c:
    ...     p = c.submit(problem)
    ...     for event in c.events(p.id):
    ...         print(event.kind)

    `base_url` defaults to $SDPO_SERVER (else http://127.0.0.1:8000), `api_key` to $SDPO_API_KEY.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_retry_delay: float = 10.0,
        stream_read_timeout: float = 60.0,
        max_stream_reconnects: int = 5,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_delay=max_retry_delay,
            stream_read_timeout=stream_read_timeout,
            max_stream_reconnects=max_stream_reconnects,
        )
        self._http = http_client or httpx.Client(timeout=timeout)
        self._http.base_url = self.base_url
        self._http.headers.update(self._headers())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------- plumbing
    def _request(self, method: str, path: str, *, safe: bool, **kw: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                delay = self._retry_transport(exc, safe, attempt)
                if delay is None:
                    raise self._connection_error(exc) from exc
                time.sleep(delay)
                continue
            if response.status_code < 400:
                return response
            delay = self._retry_status(response, safe, attempt)
            if delay is None:
                raise error_from_response(response)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        return self._request("GET", path, safe=True, params=query).json()

    # ---------------------------------------------------------------- problems
    def submit(self, problem: ProblemInput, idempotency_key: str | None = None) -> Problem:
        """Queue a problem (a dict or model, e.g. from `sdpo_client.problems`).

        With an `idempotency_key` a retry returns the problem created the first time, so
        the SDK retries transient failures; without one it retries only unsent requests."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = self._request(
            "POST",
            "/v1/problems",
            safe=idempotency_key is not None,
            json=self._spec_json(problem),
            headers=headers,
        )
        return Problem.model_validate(r.json())

    def get(self, problem_id: str) -> Problem:
        return Problem.model_validate(self._get(f"/v1/problems/{problem_id}"))

    def list(self, status: Status | None = None, *, page_size: int = 50) -> Iterator[Problem]:
        """Your problems, newest first, fetched page by page as you iterate."""
        cursor = None
        while True:
            page = self._get("/v1/problems", status=status, limit=page_size, cursor=cursor)
            for row in page["data"]:
                yield Problem.model_validate(row)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, problem_id: str) -> Problem:
        """Cancel: a queued problem at once, a running one within one step.
        Raises ConflictError (`already_finished`) for a finished one."""
        r = self._request("POST", f"/v1/problems/{problem_id}/cancel", safe=False)
        return Problem.model_validate(r.json())

    def attempts(
        self, problem_id: str, *, after: int = 0, page_size: int = 100
    ) -> Iterator[Attempt]:
        """Attempt records in index order (those with index > `after`), page by page."""
        cursor: int | None = after
        while cursor is not None:
            page = self._get(f"/v1/problems/{problem_id}/attempts", after=cursor, limit=page_size)
            for row in page["data"]:
                yield Attempt.model_validate(row)
            cursor = page.get("next_cursor")

    def events(self, problem_id: str, after: str | None = None) -> Iterator[AnyEvent]:
        """The problem's events from the start (or after event id `after`), live, until the
        terminal one. A dropped connection is resumed with Last-Event-ID: nothing lost or
        repeated."""
        return self._events(problem_id, after, None, None)

    def _events(
        self, pid: str, after: str | None, deadline: float | None, timeout: float | None
    ) -> Iterator[AnyEvent]:
        f = _EventFollower(self, pid, after, deadline, timeout)
        while True:
            try:
                with self._http.stream("GET", f.path, **f.open()) as r:
                    if r.status_code >= 400:
                        r.read()
                        time.sleep(f.refused(r))
                        continue
                    f.connected()
                    for line in r.iter_lines():
                        if (event := f.line(line)) is not None:
                            yield event
                            if event.terminal:
                                return
            except httpx.TransportError as exc:
                time.sleep(f.dropped(exc))
                continue
            # A clean end without the terminal event: either we resumed after it (the server
            # ends such a stream at once) or something between us closed it: reconnect.
            if f.ended():
                if self.get(pid).done:
                    return
                f.closed_empty()
            time.sleep(f.reconnect_delay())

    def wait(self, problem_id: str, timeout: float | None = None) -> Problem:
        """Block until the problem finishes; return it. Raises WaitTimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        problem = self.get(problem_id)
        if not problem.done:
            for _ in self._events(problem_id, None, deadline, timeout):
                pass
            problem = self.get(problem_id)
        return problem

    # ---------------------------------------------------------------- suites
    def submit_suite(
        self,
        problems: Iterable[ProblemInput],
        *,
        methods: Sequence[str] | None = None,
        seeds: int = 1,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Suite:
        """Run every problem with every method (default: sdpo, best_of_k, multi_turn), `seeds`
        times; all or nothing is queued. Each run is an ordinary problem."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = self._suite_json(problems, methods, seeds, name)
        r = self._request(
            "POST", "/v1/suites", safe=idempotency_key is not None, json=body, headers=headers
        )
        return Suite.model_validate(r.json())

    def get_suite(self, suite_id: str) -> Suite:
        return Suite.model_validate(self._get(f"/v1/suites/{suite_id}"))

    def cancel_suite(self, suite_id: str) -> Suite:
        """Cancel every run of the suite that has not finished."""
        r = self._request("POST", f"/v1/suites/{suite_id}/cancel", safe=False)
        return Suite.model_validate(r.json())

    def wait_suite(self, suite_id: str, timeout: float | None = None, poll: float = 2.0) -> Suite:
        """Block until every run has finished; return the report. Raises WaitTimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (suite := self.get_suite(suite_id)).finished:
            if self._timed_out(deadline):
                raise _wait_error(suite_id, timeout)
            time.sleep(poll)
        return suite

    def download_adapter(
        self, problem_id: str, path: str | os.PathLike[str], *, which: AdapterWhich = "latest"
    ) -> Path:
        """Download the latest LoRA adapter (`which="best"`: the version that sampled the best
        attempt, with `best.json`) and extract it into directory `path`; returns the PEFT
        directory (`path/adapter`). NotFoundError: `no_adapter` before any step (best: before
        any attempt), `base_model` when the base model sampled the best attempt."""
        dest = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "adapter.tar.gz"
            for attempt in range(self.max_retries + 1):
                try:
                    url = f"/v1/problems/{problem_id}/adapter"
                    with self._http.stream("GET", url, params={"which": which}) as r:
                        if r.status_code >= 400:
                            r.read()
                            delay = self._retry_status(r, True, attempt)
                            if delay is None:
                                raise error_from_response(r)
                            time.sleep(delay)
                            continue
                        with archive.open("wb") as f:
                            for chunk in r.iter_bytes():
                                f.write(chunk)
                    break
                except httpx.TransportError as exc:
                    delay = self._retry_transport(exc, True, attempt)
                    if delay is None:
                        raise self._connection_error(exc) from exc
                    time.sleep(delay)
            safe_extract(archive, dest)
        return dest / "adapter"


class AsyncClient(_Base):
    """The awaitable twin of `Client`: the same methods; `list`, `attempts` and `events`
    are async iterators (`async for e in client.events(id)`)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_retry_delay: float = 10.0,
        stream_read_timeout: float = 60.0,
        max_stream_reconnects: int = 5,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_delay=max_retry_delay,
            stream_read_timeout=stream_read_timeout,
            max_stream_reconnects=max_stream_reconnects,
        )
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._http.base_url = self.base_url
        self._http.headers.update(self._headers())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------- plumbing
    async def _request(self, method: str, path: str, *, safe: bool, **kw: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                delay = self._retry_transport(exc, safe, attempt)
                if delay is None:
                    raise self._connection_error(exc) from exc
                await asyncio.sleep(delay)
                continue
            if response.status_code < 400:
                return response
            delay = self._retry_status(response, safe, attempt)
            if delay is None:
                raise error_from_response(response)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        return (await self._request("GET", path, safe=True, params=query)).json()

    # ---------------------------------------------------------------- problems
    async def submit(self, problem: ProblemInput, idempotency_key: str | None = None) -> Problem:
        """See `Client.submit`."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = await self._request(
            "POST",
            "/v1/problems",
            safe=idempotency_key is not None,
            json=self._spec_json(problem),
            headers=headers,
        )
        return Problem.model_validate(r.json())

    async def get(self, problem_id: str) -> Problem:
        return Problem.model_validate(await self._get(f"/v1/problems/{problem_id}"))

    async def list(
        self, status: Status | None = None, *, page_size: int = 50
    ) -> AsyncIterator[Problem]:
        """See `Client.list`."""
        cursor = None
        while True:
            page = await self._get("/v1/problems", status=status, limit=page_size, cursor=cursor)
            for row in page["data"]:
                yield Problem.model_validate(row)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def cancel(self, problem_id: str) -> Problem:
        """See `Client.cancel`."""
        r = await self._request("POST", f"/v1/problems/{problem_id}/cancel", safe=False)
        return Problem.model_validate(r.json())

    async def attempts(
        self, problem_id: str, *, after: int = 0, page_size: int = 100
    ) -> AsyncIterator[Attempt]:
        """See `Client.attempts`."""
        cursor: int | None = after
        while cursor is not None:
            path = f"/v1/problems/{problem_id}/attempts"
            page = await self._get(path, after=cursor, limit=page_size)
            for row in page["data"]:
                yield Attempt.model_validate(row)
            cursor = page.get("next_cursor")

    def events(self, problem_id: str, after: str | None = None) -> AsyncIterator[AnyEvent]:
        """See `Client.events`."""
        return self._events(problem_id, after, None, None)

    async def _events(
        self, pid: str, after: str | None, deadline: float | None, timeout: float | None
    ) -> AsyncIterator[AnyEvent]:
        f = _EventFollower(self, pid, after, deadline, timeout)
        while True:
            try:
                async with self._http.stream("GET", f.path, **f.open()) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        await asyncio.sleep(f.refused(r))
                        continue
                    f.connected()
                    async for line in r.aiter_lines():
                        if (event := f.line(line)) is not None:
                            yield event
                            if event.terminal:
                                return
            except httpx.TransportError as exc:
                await asyncio.sleep(f.dropped(exc))
                continue
            if f.ended():
                if (await self.get(pid)).done:
                    return
                f.closed_empty()
            await asyncio.sleep(f.reconnect_delay())

    async def wait(self, problem_id: str, timeout: float | None = None) -> Problem:
        """See `Client.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        problem = await self.get(problem_id)
        if not problem.done:
            async for _ in self._events(problem_id, None, deadline, timeout):
                pass
            problem = await self.get(problem_id)
        return problem

    # ---------------------------------------------------------------- suites
    async def submit_suite(
        self,
        problems: Iterable[ProblemInput],
        *,
        methods: Sequence[str] | None = None,
        seeds: int = 1,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Suite:
        """See `Client.submit_suite`."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = self._suite_json(problems, methods, seeds, name)
        r = await self._request(
            "POST", "/v1/suites", safe=idempotency_key is not None, json=body, headers=headers
        )
        return Suite.model_validate(r.json())

    async def get_suite(self, suite_id: str) -> Suite:
        return Suite.model_validate(await self._get(f"/v1/suites/{suite_id}"))

    async def cancel_suite(self, suite_id: str) -> Suite:
        """See `Client.cancel_suite`."""
        r = await self._request("POST", f"/v1/suites/{suite_id}/cancel", safe=False)
        return Suite.model_validate(r.json())

    async def wait_suite(
        self, suite_id: str, timeout: float | None = None, poll: float = 2.0
    ) -> Suite:
        """See `Client.wait_suite`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (suite := await self.get_suite(suite_id)).finished:
            if self._timed_out(deadline):
                raise _wait_error(suite_id, timeout)
            await asyncio.sleep(poll)
        return suite

    async def download_adapter(
        self, problem_id: str, path: str | os.PathLike[str], *, which: AdapterWhich = "latest"
    ) -> Path:
        """See `Client.download_adapter`."""
        dest = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "adapter.tar.gz"
            for attempt in range(self.max_retries + 1):
                try:
                    url = f"/v1/problems/{problem_id}/adapter"
                    async with self._http.stream("GET", url, params={"which": which}) as r:
                        if r.status_code >= 400:
                            await r.aread()
                            delay = self._retry_status(r, True, attempt)
                            if delay is None:
                                raise error_from_response(r)
                            await asyncio.sleep(delay)
                            continue
                        with archive.open("wb") as f:
                            async for chunk in r.aiter_bytes():
                                f.write(chunk)
                    break
                except httpx.TransportError as exc:
                    delay = self._retry_transport(exc, True, attempt)
                    if delay is None:
                        raise self._connection_error(exc) from exc
                    await asyncio.sleep(delay)
            await asyncio.to_thread(safe_extract, archive, dest)
        return dest / "adapter"


__all__ = ["DEFAULT_SERVER", "APIStatusError", "AsyncClient", "Client"]
