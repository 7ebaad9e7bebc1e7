"""Live event streams: one Redis reader per followed problem and API process.

Every subscriber of a problem shares one blocking XREAD loop (a `_Feed`), which keeps the
latest events in memory. A subscriber first catches up from its `Last-Event-ID` with
XRANGE pages, then follows the feed; one that falls behind the feed's memory catches up
from Redis again. Ids are compared as (ms, seq), so nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.store import TERMINAL, TERMINAL_EVENTS, Store

log = logging.getLogger("sdpo.service")

Event = tuple[str, str, str]  # (stream id, event name, data)
_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_U64 = 1 << 64
_FEED_EVENTS = 1000  # events a feed keeps in memory
_PAGE = 200


def parse_event_id(text: str) -> tuple[int, int] | None:
    """(ms, seq) of a Redis stream id `ms-seq` (ASCII digits, each part below 2**64)."""
    if not _ID.fullmatch(text):
        return None
    ms, seq = (int(p) for p in text.split("-"))
    return (ms, seq) if ms < _U64 and seq < _U64 else None


def _key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class _Feed:
    """The shared reader of one problem's event stream, and its latest events."""

    start: str  # the feed has every event after this id (those it still keeps)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=_FEED_EVENTS))
    pushed: int = 0  # events ever pushed; events[i] is number pushed - len(events) + i
    subscribers: int = 0
    done: bool = False  # the terminal event was read
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    @property
    def first(self) -> int:
        return self.pushed - len(self.events)

    def position_after(self, eid: str) -> int | None:
        """Number of the first kept event after `eid`; None if some may have been dropped."""
        pos = _key(eid)
        if self.first == 0:
            if pos < _key(self.start):
                return None
        elif pos < _key(self.events[0][0]):
            return None
        n = self.pushed
        for i in range(len(self.events) - 1, -1, -1):  # usually 0 or 1 steps back
            if _key(self.events[i][0]) <= pos:
                break
            n -= 1
        return n

    def push(self, events: list[Event]) -> None:
        self.events.extend(events)
        self.pushed += len(events)
        if any(name in TERMINAL_EVENTS for _, name, _ in events):
            self.done = True
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class EventHub:
    """The SSE side of one API process."""

    def __init__(self, store: Store, heartbeat_s: float) -> None:
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.block_ms = int(min(heartbeat_s, 50.0) * 1000)  # below the Redis socket timeout
        self.feeds: dict[str, _Feed] = {}
        self.streams: dict[str, int] = {}  # open streams per tenant

    def open_streams(self, tenant: str) -> int:
        return self.streams.get(tenant, 0)

    async def _feed(self, pid: str) -> _Feed:
        feed = self.feeds.get(pid)
        if feed is None:
            last = await self.store.redis.xrevrange(self.store.events_key(pid), count=1)
            feed = _Feed(start=last[0][0] if last else "0-0")
            if pid not in self.feeds:  # (another subscriber may have won the race)
                self.feeds[pid] = feed
                feed.task = asyncio.create_task(self._read(pid, feed))
            feed = self.feeds[pid]
        feed.subscribers += 1
        return feed

    def _release(self, pid: str, feed: _Feed) -> None:
        feed.subscribers -= 1
        if feed.subscribers <= 0 and self.feeds.get(pid) is feed:
            del self.feeds[pid]
            if feed.task is not None:
                feed.task.cancel()

    async def _read(self, pid: str, feed: _Feed) -> None:
        after = feed.start
        while not feed.done:
            try:
                events = await self.store.read_events(pid, after, block_ms=self.block_ms)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("SSE %s: redis unavailable (%s); retrying", pid, exc)
                await asyncio.sleep(1.0)
                continue
            if events:
                after = events[-1][0]
                feed.push(events)

    async def _page(self, pid: str, after: str) -> list[Event]:
        if _key(after) == (_U64 - 1, _U64 - 1):
            return []  # the largest id: nothing can follow (and "(" of it is an error)
        rows = await self.store.redis.xrange(
            self.store.events_key(pid), min=f"({after}", count=_PAGE
        )
        return [(eid, f.get("event", "message"), f.get("data", "{}")) for eid, f in rows]

    async def stream(self, pid: str, after: str, tenant: str) -> AsyncIterator[bytes]:
        """The SSE body: events after `after` until the terminal one, with `: ping`s."""
        self.streams[tenant] = self.streams.get(tenant, 0) + 1
        try:
            yield b"retry: 2000\n\n"
            async for chunk in self._follow(pid, after):
                yield chunk
        finally:
            self.streams[tenant] -= 1
            if not self.streams[tenant]:
                del self.streams[tenant]

    async def _follow(self, pid: str, after: str) -> AsyncIterator[bytes]:
        feed = await self._feed(pid)
        try:
            while True:
                try:
                    status = await self.store.redis.hget(self.store.problem_key(pid), "status")
                    caught_up = False
                    while not caught_up:  # catch up from Redis
                        page = await self._page(pid, after)
                        for eid, name, data in page:
                            after = eid
                            yield f"id: {eid}\nevent: {name}\ndata: {data}\n\n".encode()
                            if name in TERMINAL_EVENTS:
                                return
                        caught_up = len(page) < _PAGE
                    if status is None or status in TERMINAL:
                        return  # resumed after the terminal event (or the problem is gone)
                except (RedisConnectionError, RedisTimeoutError):
                    yield b": redis unavailable, retrying\n\n"
                    await asyncio.sleep(1.0)
                    continue
                pos = feed.position_after(after)
                while pos is not None and pos >= feed.first:  # follow the shared reader
                    while pos < feed.pushed and pos >= feed.first:
                        eid, name, data = feed.events[pos - feed.first]
                        pos += 1
                        if _key(eid) <= _key(after):
                            continue  # read from Redis while catching up, before the feed had it
                        after = eid
                        yield f"id: {eid}\nevent: {name}\ndata: {data}\n\n".encode()
                        if name in TERMINAL_EVENTS:
                            return
                    if pos < feed.pushed:
                        break  # fell behind what the feed keeps: catch up from Redis
                    changed = feed.changed
                    try:
                        await asyncio.wait_for(changed.wait(), self.heartbeat_s)
                    except TimeoutError:
                        yield b": ping\n\n"
                        break  # re-check the status and Redis now and then
        finally:
            self._release(pid, feed)
