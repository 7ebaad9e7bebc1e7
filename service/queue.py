"""The work queue: one Redis stream per model, read by the consumer group `workers`.

A worker reads a new entry with XREADGROUP; the entry stays pending until the worker
acks it (the problem finished) or hands it back (XACK + XADD, on shutdown). While it
runs the problem, the worker's heartbeat re-claims its own entry (XCLAIM JUSTID resets
the idle time), so an entry idle longer than the heartbeat timeout belongs to a dead
worker: the next worker to ask takes it over with XAUTOCLAIM and resumes from the
checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

GROUP = "workers"

# KEYS: problem, queued set, events, queue.
# ARGV: owner, entry id, problem id, now, event data, group.
# Hands a running problem back: status queued, entry re-added at the tail. Returns the new
# entry id, or '' when the caller no longer owns the problem (then only the entry is acked).
_REQUEUE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local status = redis.call('HGET', KEYS[1], 'status')
redis.call('XACK', KEYS[4], ARGV[6], ARGV[2])
redis.call('XDEL', KEYS[4], ARGV[2])
if status ~= 'running' or owner ~= ARGV[1] then return '' end
local entry = redis.call('XADD', KEYS[4], '*', 'problem', ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'worker', '',
           'queue_entry', entry, 'updated_at', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], '*', 'event', 'status', 'data', ARGV[5])
return entry
"""


@dataclass(frozen=True)
class Entry:
    entry_id: str
    problem_id: str
    claimed: bool  # taken over from a dead worker


class Queue:
    """The queue of one model."""

    def __init__(self, redis: aioredis.Redis, prefix: str, model: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.model = model
        self.key = f"{prefix}:queue:{model}"
        self._requeue = redis.register_script(_REQUEUE)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim_stale(self, consumer: str, min_idle_s: float) -> Entry | None:
        """Take over one entry whose worker stopped heart-beating."""
        try:
            _next, entries, _deleted = await self.redis.xautoclaim(
                self.key, GROUP, consumer, int(min_idle_s * 1000), start_id="0-0", count=1
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return None
        for eid, fields in entries:
            if fields:
                return Entry(eid, fields["problem"], True)
            await self.ack(eid)  # deleted meanwhile
        return None

    async def read(self, consumer: str, block_s: float) -> Entry | None:
        """The next new entry, waiting up to block_s."""
        try:
            resp = await self.redis.xreadgroup(
                GROUP, consumer, {self.key: ">"}, count=1, block=int(block_s * 1000)
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # Redis restarted without the stream
            return None
        for _stream, entries in resp or []:
            for eid, fields in entries:
                return Entry(eid, fields["problem"], False)
        return None

    async def touch(self, consumer: str, entry_id: str) -> bool:
        """Reset the idle time of our own pending entry (the heartbeat). False if lost."""
        got = await self.redis.xclaim(self.key, GROUP, consumer, 0, [entry_id], justid=True)
        return bool(got)

    async def deliveries(self, entry_id: str) -> int:
        rows = await self.redis.xpending_range(self.key, GROUP, entry_id, entry_id, 1)
        return int(rows[0]["times_delivered"]) if rows else 0

    async def ack(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.key, GROUP, entry_id)
            pipe.xdel(self.key, entry_id)
            await pipe.execute()

    async def requeue(
        self,
        *,
        problem_key: str,
        queued_key: str,
        events_key: str,
        entry: Entry,
        owner: str,
        now: float,
    ) -> str:

        return await self._requeue(
            keys=[problem_key, queued_key, events_key, self.key],
            args=[
                owner,
                entry.entry_id,
                entry.problem_id,
                f"{now:.6f}",
                json.dumps({"status": "queued", "reason": "worker_shutdown"}),
                GROUP,
            ],
        )

    async def depth(self) -> tuple[int, int]:
        """(waiting, pending): entries not yet delivered, and delivered but not acked."""
        try:
            groups = await self.redis.xinfo_groups(self.key)
        except ResponseError:
            return 0, 0
        for g in groups:
            if g["name"] == GROUP:
                lag = g.get("lag")
                pending = int(g.get("pending", 0))
                if lag is None:
                    lag = max(0, await self.redis.xlen(self.key) - pending)
                return int(lag), pending
        return 0, 0
