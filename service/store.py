"""Redis data model: problems, per-tenant index, event log, attempts, API keys, workers.

Keys (P = SDPO_KEY_PREFIX):
    P:problem:{id}            hash    the problem resource (spec, status, counters, owner ...)
    P:tenant:{t}:problems     zset    every problem of a tenant; all scores 0, ids sort by time
    P:tenant:{t}:active       set     the tenant's queued + running problems (per-tenant limit)
    P:queued                  set     every queued problem (global queue cap, queue depth)
    P:events:{id}             stream  the event log; entry ids are the SSE event ids; trimmed
                                      to about SDPO_EVENTS_MAXLEN entries
    P:attempts:{id}           list    attempt records; position i holds attempt i + 1
    P:finished                zset    finished problems by finish time, for the retention sweep
    P:queue:{model}           stream  the work queue of a model (see service/queue.py)
    P:idem:{t}:{sha256(key)}  string  "{problem id} {sha256(body)}" for 24 h (at most retention)
    P:apikey:{sha256(key)}    hash    tenant, key_id, created_at
    P:apikey_id:{key_id}      string  sha256(key), to revoke by id
    P:keys:revoked            channel sha256(key) of each revoked key (API key caches listen)
    P:workers                 zset    worker name -> last heartbeat (unix seconds)
    P:worker:{name}           hash    model, host, pid, current problem, metrics port
    P:models                  zset    model -> last heartbeat of a worker serving it

Every multi-key change is one Lua script, so a crash never leaves half a transition.
A finished problem's hash, events and attempts expire SDPO_RETENTION_SECONDS after it
finished; `sweep()` then drops it from its tenant's index (and workers delete its adapter).
Worker writes carry an owner token: a worker whose problem was reclaimed cannot write.
Counters and histograms are not kept here: each process has its own (prometheus_client).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sdpo_core.contract import TERMINAL_EVENTS as TERMINAL_EVENTS  # re-exported
from sdpo_core.contract import TERMINAL_STATUSES
from service.settings import Settings

TERMINAL = TERMINAL_STATUSES  # of the wire contract (sdpo_core/contract.py)
IDEMPOTENCY_TTL = 24 * 3600
# A Store built without them (tests, tools) keeps what the settings' defaults say.
DEFAULT_RETENTION: float = Settings.model_fields["retention_seconds"].default
DEFAULT_EVENTS_MAXLEN: int = Settings.model_fields["events_maxlen"].default


def connect(
    url: str, *, retries: int = 3, max_connections: int = 10_000, **kwargs: Any
) -> aioredis.Redis:
    """An asyncio Redis client that reconnects by itself. A command retries `retries` times
    (backoff 50 ms .. 1 s), then raises: the API answers 503, workers retry on their own.

    The socket timeout (60 s) must exceed the longest blocking read (SSE heartbeat period)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=2,
        socket_timeout=60,
        max_connections=max_connections,
        socket_keepalive=True,
        health_check_interval=15,
        **kwargs,
    )


def _id_key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms or 0), int(seq or 0)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_problem_id() -> str:
    """`prb_` + 12 hex digits of milliseconds + 8 random: unique and sortable by time."""
    return f"prb_{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


_LUA_COMMON = """
local function hset_pairs(key, argv, first, n)
  for i = first, first + 2 * n - 1, 2 do redis.call('HSET', key, argv[i], argv[i + 1]) end
  return first + 2 * n
end
local terminal = {solved = true, exhausted = true, cancelled = true, failed = true}
local function xadd(key, name, data)
  return redis.call('XADD', key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', name, 'data', data)
end
-- problem, events, attempts, finished zset: expire the first three after the retention
local function retire(pkey, ekey, akey, fkey, now)
  local row = redis.call('HMGET', pkey, 'id', 'tenant', 'checkpoint_dir')
  redis.call('ZADD', fkey, now, cjson.encode(row))
  for _, k in ipairs({pkey, ekey, akey}) do redis.call('EXPIRE', k, RETENTION) end
end
"""

# Creates n problems at once (a submit: one; a suite: its runs, and the suite's hash), all
# or none, within the tenant's and the queue's limits.
# KEYS: tenant index, tenant active, queued set, queue, idem key or "", suite key or "",
#       then for each problem: its hash, its events
# ARGV: max_active, max_queued, idem value, status event data, now, n, suite id or "",
#       suite n fields, suite field/value * n, then for each problem: id, n fields,
#       field/value * n
# Returns {'created', ''}, {'existing', idem value}, {'tenant_limit', ''} or {'queue_full', ''}.
_CREATE = (
    _LUA_COMMON
    + """
if KEYS[5] ~= '' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {'existing', existing} end
end
local n = tonumber(ARGV[6])
if redis.call('SCARD', KEYS[2]) + n > tonumber(ARGV[1]) then return {'tenant_limit', ''} end
if redis.call('SCARD', KEYS[3]) + n > tonumber(ARGV[2]) then return {'queue_full', ''} end
local pos = 9 + 2 * tonumber(ARGV[8])
if KEYS[6] ~= '' then hset_pairs(KEYS[6], ARGV, 9, tonumber(ARGV[8])) end
for j = 1, n do
  local pkey, ekey = KEYS[5 + 2 * j], KEYS[6 + 2 * j]
  local id = ARGV[pos]
  pos = hset_pairs(pkey, ARGV, pos + 2, tonumber(ARGV[pos + 1]))
  redis.call('ZADD', KEYS[1], 0, id)
  redis.call('SADD', KEYS[2], id)
  redis.call('SADD', KEYS[3], id)
  xadd(ekey, 'status', ARGV[4])
  local entry = redis.call('XADD', KEYS[4], '*', 'problem', id)
  redis.call('HSET', pkey, 'queue_entry', entry)
end
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[3], 'EX', IDEM_TTL) end
return {'created', ''}
"""
)

# KEYS: problem, tenant active, queued set, events, attempts, finished
# ARGV: owner ('' = no check), new status, event name ('' = none), event data, now,
#       n, field/value * n
# Returns 'ok', 'missing', 'not_owner' or 'terminal'.
_TRANSITION = (
    _LUA_COMMON
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 'missing' end
if terminal[cur] then return 'terminal' end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'not_owner' end
local id = redis.call('HGET', KEYS[1], 'id')
local nxt = ARGV[2]
hset_pairs(KEYS[1], ARGV, 7, tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'status', nxt, 'updated_at', ARGV[5])
if nxt == 'queued' then redis.call('SADD', KEYS[3], id) else redis.call('SREM', KEYS[3], id) end
if terminal[nxt] then
  redis.call('SREM', KEYS[2], id)
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[5], 'owner', '')
end
if ARGV[3] ~= '' then xadd(KEYS[4], ARGV[3], ARGV[4]) end
if terminal[nxt] then retire(KEYS[1], KEYS[4], KEYS[5], KEYS[6], ARGV[5]) end
return 'ok'
"""
)

# KEYS: problem, events, attempts list
# ARGV: owner, counter field, seq, event name, event data, list record ('' = none),
#       score ('' = none), now, n, field/value * n
# Returns 'ok' ('cancel_requested' when a cancel waits for the run), 'dup', 'missing',
# 'not_owner' or 'terminal'.
_RECORD = (
    _LUA_COMMON
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 'missing' end
if terminal[cur] then return 'terminal' end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'not_owner' end
local seq = tonumber(ARGV[3])
if seq <= (tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0) then return 'dup' end
redis.call('HSET', KEYS[1], ARGV[2], seq, 'updated_at', ARGV[8])
hset_pairs(KEYS[1], ARGV, 10, tonumber(ARGV[9]))
if ARGV[7] ~= '' then  -- the best attempt: the highest score, the first of equals
  local best = tonumber(redis.call('HGET', KEYS[1], 'best_score'))
  if best == nil or tonumber(ARGV[7]) > best then
    redis.call('HSET', KEYS[1], 'best_score', ARGV[7], 'best_attempt', seq,
               'best_solution', cjson.decode(ARGV[6]).text or '')
  end
end
if ARGV[6] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[6]) end
xadd(KEYS[2], ARGV[4], ARGV[5])
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel_requested' end
return 'ok'
"""
)

# KEYS: problem, tenant active, queued set, events, attempts, finished, queue
# ARGV: now, cancelled event data, group. Returns 'cancelled', 'requested', 'terminal' or 'missing'.
_CANCEL = (
    _LUA_COMMON
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 'missing' end
if cur == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[1])
  return 'requested'
end
if cur ~= 'queued' then return 'terminal' end
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested', '1',
           'updated_at', ARGV[1], 'finished_at', ARGV[1])
redis.call('SREM', KEYS[2], id)
redis.call('SREM', KEYS[3], id)
xadd(KEYS[4], 'cancelled', ARGV[2])
local entry = redis.call('HGET', KEYS[1], 'queue_entry')
if entry then
  redis.call('XACK', KEYS[7], ARGV[3], entry)
  redis.call('XDEL', KEYS[7], entry)
end
retire(KEYS[1], KEYS[4], KEYS[5], KEYS[6], ARGV[1])
return 'cancelled'
"""
)


class Store:
    """Async access to everything the service keeps in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "sdpo",
        *,
        retention_s: float = DEFAULT_RETENTION,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.retention_s = retention_s
        self.events_maxlen = events_maxlen
        retention = max(1, math.ceil(retention_s))
        consts = {
            "EVENTS_MAXLEN": str(max(1, int(events_maxlen))),
            "IDEM_TTL": str(min(IDEMPOTENCY_TTL, retention)),
            "RETENTION": str(retention),
        }

        def script(text: str) -> Any:
            for name, value in consts.items():
                text = text.replace(name, value)
            return redis.register_script(text)

        self._create = script(_CREATE)
        self._transition = script(_TRANSITION)
        self._record = script(_RECORD)
        self._cancel = script(_CANCEL)

    # ------------------------------------------------------------------ keys
    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def problem_key(self, pid: str) -> str:
        return self.key("problem", pid)

    def events_key(self, pid: str) -> str:
        return self.key("events", pid)

    def attempts_key(self, pid: str) -> str:
        return self.key("attempts", pid)

    def queue_key(self, model: str) -> str:
        return self.key("queue", model)

    def _active_key(self, tenant: str) -> str:
        return self.key("tenant", tenant, "active")

    def suite_key(self, sid: str) -> str:
        return self.key("suite", sid)

    def _index_key(self, tenant: str) -> str:
        return self.key("tenant", tenant, "problems")

    # -------------------------------------------------------------- problems
    def _problem_fields(
        self, pid: str, tenant: str, model: str, spec: dict[str, Any], root: str, now: str
    ) -> dict[str, str]:
        return {
            "id": pid,
            "tenant": tenant,
            "model": model,
            "status": "queued",
            "spec": json.dumps(spec),
            "created_at": now,
            "updated_at": now,
            "attempts": "0",
            "steps": "0",
            "adapter_version": "0",
            "checkpoint_dir": f"{root.rstrip('/')}/{pid}",
            "deliveries": "0",
        }

    async def create_problem(
        self,
        *,
        tenant: str,
        model: str,
        spec: dict[str, Any],
        checkpoint_root: str,
        max_active: int,
        max_queued: int,
        idempotency_key: str | None = None,
        body_hash: str = "",
    ) -> tuple[str, str, str]:
        """Create and enqueue a problem. Returns (outcome, problem id, stored body hash);
        outcome is 'created', 'existing' (same idempotency key), 'tenant_limit' or 'queue_full'."""
        pid = new_problem_id()
        now = f"{time.time():.6f}"
        rows = [self._problem_fields(pid, tenant, model, spec, checkpoint_root, now)]
        return await self._create_all(
            tenant, model, rows, max_active, max_queued, idempotency_key, f"{pid} {body_hash}"
        )

    async def create_suite(
        self,
        *,
        tenant: str,
        model: str,
        suite: dict[str, Any],
        runs: list[tuple[dict[str, Any], dict[str, Any]]],
        checkpoint_root: str,
        max_active: int,
        max_queued: int,
        idempotency_key: str | None = None,
        body_hash: str = "",
    ) -> tuple[str, str, str]:
        """Create a suite and enqueue its runs (each (spec, its place in the suite) an ordinary
        problem), all or none. Returns (outcome, suite id, stored body hash) as create_problem."""
        sid = new_problem_id().replace("prb_", "ste_", 1)
        now = f"{time.time():.6f}"
        rows, listed = [], []
        for spec, place in runs:
            pid = new_problem_id()
            row = self._problem_fields(pid, tenant, model, spec, checkpoint_root, now)
            rows.append({**row, "suite": sid})
            listed.append({**place, "problem_id": pid})
        fields = {
            "id": sid,
            "tenant": tenant,
            "model": model,
            "created_at": now,
            "suite": json.dumps(suite),
            "runs": json.dumps(listed),
        }
        return await self._create_all(
            tenant,
            model,
            rows,
            max_active,
            max_queued,
            idempotency_key,
            f"{sid} {body_hash}",
            suite_fields=fields,
        )

    async def _create_all(
        self,
        tenant: str,
        model: str,
        rows: list[dict[str, str]],
        max_active: int,
        max_queued: int,
        idempotency_key: str | None,
        idem_value: str,
        suite_fields: dict[str, str] | None = None,
    ) -> tuple[str, str, str]:
        idem_key = self.key("idem", tenant, sha256(idempotency_key)) if idempotency_key else ""
        sid = suite_fields["id"] if suite_fields else ""
        keys = [
            self._index_key(tenant),
            self._active_key(tenant),
            self.key("queued"),
            self.queue_key(model),
            idem_key,
            self.suite_key(sid) if sid else "",
        ]
        args: list[Any] = [
            max_active,
            max_queued,
            idem_value,
            json.dumps({"status": "queued"}),
            rows[0]["created_at"],
            len(rows),
            sid,
            len(suite_fields or {}),
            *(x for kv in (suite_fields or {}).items() for x in kv),
        ]
        for row in rows:
            keys += [self.problem_key(row["id"]), self.events_key(row["id"])]
            args += [row["id"], len(row), *(x for kv in row.items() for x in kv)]
        outcome, value = await self._create(keys=keys, args=args)
        created_id, _, stored_hash = (value if outcome == "existing" else idem_value).partition(" ")
        return outcome, created_id, stored_hash

    async def drop_obsolete(self) -> None:
        """Delete keys an earlier version wrote and nothing reads (P:stats, a counters
        hash that Prometheus metrics replaced)."""
        await self.redis.delete(self.key("stats"))

    async def get_suite(self, sid: str) -> dict[str, str] | None:
        data = await self.redis.hgetall(self.suite_key(sid))
        return data or None

    async def suite_runs(self, pids: list[str]) -> list[dict[str, str] | None]:
        """Each run's status and counters (None: its problem expired after the retention)."""
        fields = ("status", "attempts", "solved_attempt")
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.hmget(self.problem_key(pid), fields)
            rows = await pipe.execute()
        return [dict(zip(fields, r, strict=True)) if r[0] else None for r in rows]

    async def finish_suite(self, sid: str, *, cancel: bool = False) -> None:
        """Mark a cancel, or start a finished suite's retention clock (once)."""
        if cancel:
            await self.redis.hset(self.suite_key(sid), "cancel_requested", "1")
        else:
            await self.redis.expire(
                self.suite_key(sid), max(1, math.ceil(self.retention_s)), nx=True
            )

    async def get_problem(self, pid: str) -> dict[str, str] | None:
        data = await self.redis.hgetall(self.problem_key(pid))
        return data or None

    async def list_problems(
        self, tenant: str, *, status: str | None, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, str]], str | None]:
        """A page of the tenant's problems, newest first. Returns (problems, next cursor)."""
        index = self._index_key(tenant)
        out: list[dict[str, str]] = []
        start = f"({cursor}" if cursor else "+"
        for _ in range(20):  # scan at most 20 batches per page when filtering
            batch = await self.redis.zrange(
                index, start, "-", desc=True, bylex=True, offset=0, num=max(limit, 50)
            )
            if not batch:
                return out, None
            async with self.redis.pipeline(transaction=False) as pipe:
                for pid in batch:
                    pipe.hgetall(self.problem_key(pid))
                rows = await pipe.execute()
            gone = [pid for pid, row in zip(batch, rows, strict=True) if not row]
            if gone:  # expired after the retention; the sweep may not have run yet
                await self.redis.zrem(index, *gone)
            for pid, row in zip(batch, rows, strict=True):
                start = f"({pid}"
                if row and (status is None or row.get("status") == status):
                    out.append(row)
                    if len(out) == limit:
                        more = await self.redis.zrange(
                            index, start, "-", desc=True, bylex=True, offset=0, num=1
                        )
                        return out, (pid if more else None)
        return out, start[1:]

    async def cancel(self, pid: str) -> str:
        """Cancel a problem: 'cancelled' (was queued), 'requested' (running: the worker
        stops within one step), 'terminal' or 'missing'."""
        row = await self.redis.hmget(
            self.problem_key(pid), ["tenant", "attempts", "steps", "model"]
        )
        tenant, attempts, steps, model = row
        if tenant is None:
            return "missing"
        data = json.dumps({"attempts": int(attempts or 0), "steps": int(steps or 0)})
        return await self._cancel(
            keys=[*self._status_keys(pid, tenant), self.queue_key(model or "")],
            args=[f"{time.time():.6f}", data, "workers"],
        )

    def _status_keys(self, pid: str, tenant: str) -> list[str]:
        """KEYS[1..6] of the scripts that change a problem's status (cancel, transition)."""
        return [
            self.problem_key(pid),
            self._active_key(tenant),
            self.key("queued"),
            self.events_key(pid),
            self.attempts_key(pid),
            self.key("finished"),
        ]

    async def cancel_requested(self, pid: str) -> bool:
        return await self.redis.hget(self.problem_key(pid), "cancel_requested") == "1"

    async def transition(
        self,
        pid: str,
        status: str,
        *,
        owner: str = "",
        event: str = "",
        data: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> str:
        """Move a problem to `status` (setting `fields`, logging `event`) unless it is
        terminal or (with `owner`) owned by someone else."""
        tenant = await self.redis.hget(self.problem_key(pid), "tenant")
        if tenant is None:
            return "missing"
        fields = {k: ("" if v is None else str(v)) for k, v in (fields or {}).items()}
        return await self._transition(
            keys=self._status_keys(pid, tenant),
            args=[
                owner,
                status,
                event,
                json.dumps(data or {}),
                f"{time.time():.6f}",
                len(fields),
                *[x for kv in fields.items() for x in kv],
            ],
        )

    async def record(
        self,
        pid: str,
        *,
        owner: str,
        counter: str,
        seq: int,
        event: str,
        data: dict[str, Any],
        record: dict[str, Any] | None = None,
        score: float | None = None,
        fields: dict[str, Any] | None = None,
    ) -> str:
        """Log an attempt or step event once: dropped ('dup') if `seq` <= the `counter` field.
        'cancel_requested' tells the writer, at once, that the run should stop."""
        fields = {k: str(v) for k, v in (fields or {}).items()}
        return await self._record(
            keys=[
                self.problem_key(pid),
                self.events_key(pid),
                self.attempts_key(pid),
            ],
            args=[
                owner,
                counter,
                seq,
                event,
                json.dumps(data),
                json.dumps(record) if record is not None else "",
                "" if score is None else repr(float(score)),
                f"{time.time():.6f}",
                len(fields),
                *[x for kv in fields.items() for x in kv],
            ],
        )

    async def attempts(self, pid: str, *, after: int, limit: int) -> tuple[list[dict], int | None]:
        """Attempt records with index > after. Returns (records, next cursor or None)."""
        key = self.attempts_key(pid)
        raw = await self.redis.lrange(key, after, after + limit - 1)
        records = [json.loads(r) for r in raw]
        total = await self.redis.llen(key)
        nxt = after + len(records)
        return records, (nxt if nxt < total and records else None)

    # ---------------------------------------------------------------- events
    async def read_events(
        self, pid: str, after: str, *, block_ms: int | None, count: int = 100
    ) -> list[tuple[str, str, str]]:
        """Events after stream id `after`, as (id, event, data); blocks up to block_ms."""
        resp = await self.redis.xread({self.events_key(pid): after}, count=count, block=block_ms)
        out = []
        for _stream, entries in resp or []:
            for eid, fields in entries:
                out.append((eid, fields.get("event", "message"), fields.get("data", "{}")))
        return out

    async def first_event_after_trim(self, pid: str, after: str) -> str | None:
        """When the log was trimmed and events after `after` may be gone: the first id
        still kept. None when nothing after `after` was dropped. (Only trimming removes
        events, so an `after` older than the first kept entry of a trimmed log is behind.)"""
        try:
            info = await self.redis.xinfo_stream(self.events_key(pid))
        except ResponseError:  # no stream
            return None
        first = info.get("first-entry")
        if not first or int(info.get("entries-added") or 0) <= int(info.get("length") or 0):
            return None
        return first[0] if _id_key(after) < _id_key(first[0]) else None

    async def sweep(self, *, now: float | None = None, limit: int = 500) -> list[dict[str, str]]:
        """Forget problems that finished more than the retention ago: drop them from their
        tenant's index and delete what is left of their keys. Returns the swept problems
        ({id, tenant, checkpoint_dir}); each is returned to one caller only."""
        cutoff = (now if now is not None else time.time()) - self.retention_s
        members = await self.redis.zrangebyscore(
            self.key("finished"), "-inf", cutoff, start=0, num=limit
        )
        swept = []
        for member in members:
            if not await self.redis.zrem(self.key("finished"), member):
                continue  # another sweeper took it
            pid, tenant, ckdir = [*json.loads(member), None, None, None][:3]
            if not isinstance(pid, str):
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                if isinstance(tenant, str):
                    pipe.zrem(self._index_key(tenant), pid)
                pipe.delete(self.problem_key(pid), self.events_key(pid), self.attempts_key(pid))
                await pipe.execute()
            swept.append({"id": pid, "tenant": tenant or "", "checkpoint_dir": ckdir or ""})
        return swept

    # -------------------------------------------------------------- API keys
    async def create_key(self, tenant: str) -> tuple[str, str]:
        """A new API key for `tenant`. Returns (key id, key); only the hash is stored."""
        key_id = secrets.token_hex(6)
        key = f"sdpo_{key_id}_{secrets.token_urlsafe(24)}"
        digest = sha256(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.key("apikey", digest),
                mapping={"tenant": tenant, "key_id": key_id, "created_at": f"{time.time():.0f}"},
            )
            pipe.set(self.key("apikey_id", key_id), digest)
            await pipe.execute()
        return key_id, key

    async def tenant_for_key(self, key: str) -> str | None:
        return await self.redis.hget(self.key("apikey", sha256(key)), "tenant")

    async def revoke_key(self, key_or_id: str) -> bool:
        """Revoke by key id or by the key itself. True when a key was revoked."""
        if key_or_id.startswith("sdpo_"):
            key_or_id = key_or_id.split("_")[1]
        digest = await self.redis.get(self.key("apikey_id", key_or_id))
        if digest is None:
            return False
        await self.redis.delete(self.key("apikey", digest), self.key("apikey_id", key_or_id))
        await self.redis.publish(self.key("keys", "revoked"), digest)  # API processes' caches
        return True

    async def list_keys(self) -> list[dict[str, str]]:
        out = []
        async for k in self.redis.scan_iter(match=self.key("apikey_id", "*"), count=500):
            digest = await self.redis.get(k)
            row = await self.redis.hgetall(self.key("apikey", digest)) if digest else {}
            if row:
                out.append(row)
        return sorted(out, key=lambda r: r.get("created_at", ""))

    # --------------------------------------------------------------- workers
    async def heartbeat(self, name: str, info: dict[str, Any], ttl: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.key("workers"), {name: time.time()})
            if info.get("model"):
                pipe.zadd(self.key("models"), {str(info["model"]): time.time()})
            pipe.hset(self.key("worker", name), mapping={k: str(v) for k, v in info.items()})
            pipe.expire(self.key("worker", name), max(1, math.ceil(ttl * 4)))
            await pipe.execute()

    async def served_models(self, within: float) -> list[str]:
        """Models a worker served in the last `within` seconds, sorted."""
        since = time.time() - within
        return sorted(await self.redis.zrange(self.key("models"), since, "+inf", byscore=True))

    async def remove_worker(self, name: str) -> None:
        await self.redis.zrem(self.key("workers"), name)
        await self.redis.delete(self.key("worker", name))

    async def live_workers(self, timeout: float) -> list[dict[str, str]]:
        names = await self.redis.zrange(
            self.key("workers"), time.time() - timeout, "+inf", byscore=True
        )
        out = []
        for name in names:
            info = await self.redis.hgetall(self.key("worker", name))
            out.append({"name": name, **info})
        return out
