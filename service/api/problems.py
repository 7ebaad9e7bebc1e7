"""/v1/problems: submit, inspect, list, follow live (SSE), page attempts, cancel, download."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from sdpo_core.best_adapter import read_best_adapter
from service.api.adapter_archive import archive_adapter
from service.api.intake import check_limits, parse_submit, queue_model, read_body
from service.api.metrics import CANCELS, PROBLEMS_CREATED
from service.api.responses import error_responses, json_response
from service.deps import HubDep, SettingsDep, StoreDep, TenantDep
from service.errors import ApiError
from service.models import (
    AttemptList,
    Problem,
    ProblemList,
    Status,
    attempt_from_record,
    problem_from_row,
)
from service.sse import parse_event_id
from service.store import Store, sha256

log = logging.getLogger("sdpo.service")
router = APIRouter(prefix="/v1/problems", tags=["problems"])

PROBLEM_ID = r"^prb_[0-9a-f]{20}$"


async def _owned(store: Store, pid: str, tenant: str) -> dict[str, str]:
    row = await store.get_problem(pid)
    if row is None or row.get("tenant") != tenant:
        raise ApiError(404, f"no problem {pid}", code="not_found")
    return row


@router.post(
    "",
    status_code=201,
    response_model=Problem,
    summary="Submit a problem",
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **error_responses(400, 401, 409, 413, 422, 429, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ProblemSpec"}}
            },
        }
    },
)
async def create_problem(
    request: Request,
    response: Response,
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="A retry with the same key returns the same problem, never a second one.",
        ),
    ] = None,
) -> Response:
    """Queue a problem (the JSON that `sdpo solve` reads) for a worker of its model."""
    body = await read_body(request, settings.max_body_bytes)
    spec = await asyncio.to_thread(parse_submit, body)
    check_limits(spec, settings)
    model = await queue_model(spec.model, store, settings)
    spec_json = spec.model_dump(mode="json")
    body_hash = sha256(json.dumps(spec_json, sort_keys=True))
    outcome, pid, stored_hash = await store.create_problem(
        tenant=tenant,
        model=model,
        spec=spec_json,
        checkpoint_root=str(settings.checkpoint_dir.resolve()),
        max_active=settings.max_active_per_tenant,
        max_queued=settings.max_queued,
        idempotency_key=idempotency_key,
        body_hash=body_hash,
    )
    retry = {"Retry-After": str(settings.retry_after_seconds)}
    if outcome == "tenant_limit":
        raise ApiError(
            429,
            f"at most {settings.max_active_per_tenant} queued or running problems per tenant",
            code="too_many_active",
            headers=retry,
        )
    if outcome == "queue_full":
        raise ApiError(503, "the queue is full, retry later", code="queue_full", headers=retry)
    headers = {"Location": f"/v1/problems/{pid}"}
    if outcome == "created":
        PROBLEMS_CREATED.inc()
    if outcome == "existing":
        if stored_hash != body_hash:
            raise ApiError(
                409,
                "Idempotency-Key was already used with a different body",
                code="idempotency_conflict",
                field="Idempotency-Key",
            )
        headers["Idempotent-Replayed"] = "true"
    row = await store.get_problem(pid)
    if row is None:  # an idempotency key outlived its problem
        raise ApiError(409, "Idempotency-Key refers to a deleted problem", code="conflict")
    return json_response(problem_from_row(row), 201, headers)


@router.get(
    "",
    response_model=ProblemList,
    summary="List problems",
    responses=error_responses(400, 401, 422),
)
async def list_problems(
    tenant: TenantDep,
    store: StoreDep,
    status: Annotated[Status | None, Query(description="Only problems in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(pattern=PROBLEM_ID, description="`next_cursor` of the previous page.")
    ] = None,
) -> Response:
    """The caller's problems, newest first."""
    rows, nxt = await store.list_problems(tenant, status=status, cursor=cursor, limit=limit)
    return json_response(ProblemList(data=[problem_from_row(r) for r in rows], next_cursor=nxt))


@router.get(
    "/{problem_id}",
    response_model=Problem,
    summary="Get a problem",
    responses=error_responses(401, 404, 422),
)
async def get_problem(problem_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    return json_response(problem_from_row(await _owned(store, problem_id, tenant)))


@router.post(
    "/{problem_id}/cancel",
    response_model=Problem,
    summary="Cancel a problem",
    responses={
        200: {"description": "Cancelled (it was queued)."},
        202: {"model": Problem, "description": "Running: the worker stops within one step."},
        **error_responses(401, 404, 409, 422),
    },
)
async def cancel_problem(
    problem_id: str, response: Response, tenant: TenantDep, store: StoreDep
) -> Response:
    await _owned(store, problem_id, tenant)
    outcome = await store.cancel(problem_id)
    if outcome == "missing":
        raise ApiError(404, f"no problem {problem_id}")
    if outcome == "terminal":
        raise ApiError(409, "the problem already finished", code="already_finished")
    CANCELS.labels(outcome).inc()
    row = await store.get_problem(problem_id)
    if row is None:  # expired meanwhile
        raise ApiError(404, f"no problem {problem_id}")
    return json_response(problem_from_row(row), 202 if outcome == "requested" else 200)


@router.get(
    "/{problem_id}/attempts",
    response_model=AttemptList,
    summary="List attempts",
    responses=error_responses(401, 404, 422),
)
async def list_attempts(
    problem_id: str,
    tenant: TenantDep,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=10**9, description="Attempts with index > after.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Attempt records in index order (text, verdict, feedback)."""
    await _owned(store, problem_id, tenant)
    records, nxt = await store.attempts(problem_id, after=after, limit=limit)
    return json_response(
        AttemptList(data=[attempt_from_record(r) for r in records], next_cursor=nxt)
    )


_SSE_DOC = """Server-Sent Events. Each event has `id:` (the Redis stream entry id),
`event:` (`status`, `attempt`, `step`, `solved`, `exhausted`, `cancelled`, `failed`) and a
one-line JSON `data:`. Reconnect with `Last-Event-ID` (header or `last_event_id` query
parameter) to resume with nothing lost or repeated. `: ping` comments are heartbeats.
The stream ends after a terminal event (`solved`, `exhausted`, `cancelled`, `failed`)."""


@router.get(
    "/{problem_id}/events",
    summary="Follow a problem live (SSE)",
    description=_SSE_DOC,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An event stream.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(400, 401, 404, 410, 422, 429),
    },
)
async def problem_events(
    problem_id: str,
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    hub: HubDep,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=64)
    ] = None,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> StreamingResponse:
    await _owned(store, problem_id, tenant)
    after = last_event_id_header or last_event_id or "0-0"
    if parse_event_id(after) is None:
        raise ApiError(
            400,
            "Last-Event-ID must be an event id like 1712345678901-0",
            code="bad_event_id",
            field="Last-Event-ID",
        )
    if after != "0-0":
        first = await store.first_event_after_trim(problem_id, after)
        if first is not None:
            raise ApiError(
                410,
                f"events after {after} were dropped (the log keeps the latest "
                f"{settings.events_maxlen}); the first available id is {first}: "
                "fetch the problem and attempts, then follow from there",
                code="events_gone",
                field="Last-Event-ID",
            )
    if hub.open_streams(tenant) >= settings.max_streams_per_tenant:
        raise ApiError(
            429,
            f"at most {settings.max_streams_per_tenant} open event streams per tenant",
            code="too_many_streams",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    return StreamingResponse(
        hub.stream(problem_id, after, tenant),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{problem_id}/adapter",
    summary="Download the latest LoRA adapter, or the one that sampled the best attempt",
    response_class=FileResponse,
    responses={
        200: {
            "description": "A tar.gz of the PEFT adapter directory (`adapter/`); with "
            "`which=best` it also holds `best.json` (the attempt's index, its score and the "
            "adapter version).",
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(401, 404, 422),
    },
)
async def download_adapter(
    problem_id: str,
    tenant: TenantDep,
    store: StoreDep,
    which: Annotated[
        Literal["latest", "best"],
        Query(
            description="latest: the adapter after the last SDPO step; best: the adapter "
            "version that sampled the best attempt (`best_attempt`)."
        ),
    ] = "latest",
) -> FileResponse:
    row = await _owned(store, problem_id, tenant)
    if which == "best":
        src, version = _best_adapter(row.get("checkpoint_dir"))
        name = f"{problem_id}-best-adapter-v{version}.tar.gz"
    else:
        src = Path(row.get("checkpoint_dir") or "") / "adapter"
        if not row.get("checkpoint_dir") or not (src / "adapter_config.json").is_file():
            raise ApiError(404, "no adapter yet: no SDPO step has finished", code="no_adapter")
        name = f"{problem_id}-adapter-v{row.get('adapter_version') or '0'}.tar.gz"
    path = await asyncio.to_thread(archive_adapter, src)
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=name,
        background=BackgroundTask(os.unlink, path),
    )


def _best_adapter(checkpoint_dir: str | None) -> tuple[Path, int]:
    """best_adapter/ of a run and its version; 404 when there is none to give."""
    found = read_best_adapter(checkpoint_dir) if checkpoint_dir else None
    if found is None:
        raise ApiError(404, "no best attempt yet: no attempt has been verified", code="no_adapter")
    src, info = found
    if info["adapter_version"] == 0:
        raise ApiError(
            404,
            f"the best attempt ({info['attempt']}, score {info['score']}) was sampled from the "
            "base model (adapter version 0): there is no adapter to download",
            code="base_model",
        )
    return src, int(info["adapter_version"])
