"""/v1/problems: submit, inspect, list, follow live (SSE), page attempts, cancel, download."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from sdpo_core.problem import ProblemError, ProblemSpec, parse_problem
from service.api.metrics import CANCELS, PROBLEMS_CREATED
from service.deps import HubDep, SettingsDep, StoreDep, TenantDep
from service.errors import ApiError
from service.models import (
    AttemptList,
    ErrorResponse,
    Problem,
    ProblemList,
    Status,
    attempt_from_record,
    problem_from_row,
)
from service.settings import Settings
from service.sse import parse_event_id
from service.store import Store, sha256

log = logging.getLogger("sdpo.service")
router = APIRouter(prefix="/v1/problems", tags=["problems"])

_SPEC_REF = "#/components/schemas/ProblemSpec"
PROBLEM_ID = r"^prb_[0-9a-f]{20}$"
MAX_JSON_DEPTH = 64  # nesting levels a submitted body may have


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """The model as JSON, skipping FastAPI's second validation of a returned model."""
    return Response(
        model.model_dump_json(), status_code=status, headers=headers, media_type="application/json"
    )


def _too_deep(value: Any, limit: int) -> bool:
    """True when `value` nests more than `limit` lists/objects (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _parse_submit(body: bytes) -> ProblemSpec:
    """Body -> spec (in a worker thread: compiling a verifier can take a while).
    Whatever the input, the outcome is a spec or an ApiError: never a 500."""
    try:
        data = json.loads(body)
    except RecursionError:
        msg = "body is not valid JSON: nested too deeply"
        raise ApiError(400, msg, code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, >4300-digit integers
        raise ApiError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
    if isinstance(data, dict):
        for name, value in data.items():
            if _too_deep(value, MAX_JSON_DEPTH - 1):
                raise ApiError(422, f"nested deeper than {MAX_JSON_DEPTH} levels", field=name)
    try:
        return parse_problem(data)
    except ProblemError as exc:
        raise ApiError(422, exc.message, field=exc.field) from None
    except (RecursionError, MemoryError, OverflowError, ValueError) as exc:
        name = type(exc).__name__
        raise ApiError(422, f"the problem spec cannot be checked ({name})") from None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request (bad JSON, bad cursor or event id).",
        401: "Missing, invalid or revoked API key.",
        404: "No such problem for this tenant.",
        409: "Conflict with the problem's state or an earlier request.",
        410: "The events after Last-Event-ID were trimmed; the message names the first left.",
        413: "Request body too large.",
        422: "Invalid field; `error.field` names it.",
        429: "Too many queued + running problems (or open streams) for this tenant.",
        503: "Queue full or storage unavailable; see Retry-After.",
    }
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


async def _owned(store: Store, pid: str, tenant: str) -> dict[str, str]:
    row = await store.get_problem(pid)
    if row is None or row.get("tenant") != tenant:
        raise ApiError(404, f"no problem {pid}", code="not_found")
    return row


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_limits(spec: ProblemSpec, s: Settings) -> None:
    def too_big(field: str, message: str) -> ApiError:
        return ApiError(422, message, code="limit_exceeded", field=field)

    if len(spec.prompt) > s.max_prompt_chars:
        raise too_big("prompt", f"prompt longer than {s.max_prompt_chars} characters")
    if spec.budget.max_attempts > s.max_budget_attempts:
        raise too_big("budget.max_attempts", f"at most {s.max_budget_attempts} attempts")
    if spec.budget.max_seconds > s.max_budget_seconds:
        raise too_big("budget.max_seconds", f"at most {s.max_budget_seconds:g} seconds")
    rank = spec.sdpo.lora_rank if "lora_rank" in spec.sdpo.model_fields_set else None
    if rank is not None and rank > s.max_lora_rank:  # the vLLM server could not load it
        raise too_big("sdpo.lora_rank", f"at most {s.max_lora_rank} (the server's max LoRA rank)")
    tests = getattr(spec.verifier, "tests", None) or getattr(spec.verifier, "cases", None)
    if tests is None:
        return
    name = "cases" if isinstance(tests, dict) else "tests"
    if len(tests) > s.max_tests:
        raise too_big(f"verifier.{name}", f"at most {s.max_tests} {name}")
    items = tests.items() if isinstance(tests, dict) else enumerate(tests)
    for key, value in items:
        shown = value.model_dump() if isinstance(value, BaseModel) else value
        if len(json.dumps([key, shown])) > s.max_test_bytes:
            raise too_big(f"verifier.{name}.{key}", f"over {s.max_test_bytes} bytes")


@router.post(
    "",
    status_code=201,
    response_model=Problem,
    summary="Submit a problem",
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **_errors(400, 401, 409, 413, 422, 429, 503),
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
    body = await _read_body(request, settings.max_body_bytes)
    spec = await asyncio.to_thread(_parse_submit, body)
    _check_limits(spec, settings)
    model = await _model_of(spec.model, store, settings)
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
    return _json(problem_from_row(row), 201, headers)


async def _model_of(asked: str | None, store: Store, settings: Settings) -> str:
    """The model a submit is queued for: SDPO_MODELS when set (the first is the default),
    else the models live workers serve (heartbeats of the last SDPO_MODELS_SEEN_SECONDS)."""
    if settings.models:
        accepted, where = settings.models, "SDPO_MODELS accepts"
    else:
        accepted = await store.served_models(settings.models_seen_seconds)
        where = "workers serve"
    if asked is None:
        if settings.models or len(accepted) == 1:
            return accepted[0]
        if not accepted:
            raise ApiError(
                422,
                "no worker has served a model yet; start one, or set SDPO_MODELS to "
                "queue problems before the workers come",
                field="model",
            )
        raise ApiError(422, f"name a model: {where} {accepted}", field="model")
    if asked not in accepted:
        raise ApiError(422, f"unknown model {asked!r}: {where} {accepted}", field="model")
    return asked


@router.get(
    "", response_model=ProblemList, summary="List problems", responses=_errors(400, 401, 422)
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
    return _json(ProblemList(data=[problem_from_row(r) for r in rows], next_cursor=nxt))


@router.get(
    "/{problem_id}",
    response_model=Problem,
    summary="Get a problem",
    responses=_errors(401, 404, 422),
)
async def get_problem(problem_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    return _json(problem_from_row(await _owned(store, problem_id, tenant)))


@router.post(
    "/{problem_id}/cancel",
    response_model=Problem,
    summary="Cancel a problem",
    responses={
        200: {"description": "Cancelled (it was queued)."},
        202: {"model": Problem, "description": "Running: the worker stops within one step."},
        **_errors(401, 404, 409, 422),
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
    return _json(problem_from_row(row), 202 if outcome == "requested" else 200)


@router.get(
    "/{problem_id}/attempts",
    response_model=AttemptList,
    summary="List attempts",
    responses=_errors(401, 404, 422),
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
    return _json(AttemptList(data=[attempt_from_record(r) for r in records], next_cursor=nxt))


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
        **_errors(400, 401, 404, 410, 422, 429),
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
    summary="Download the latest LoRA adapter",
    response_class=FileResponse,
    responses={
        200: {
            "description": "A tar.gz of the PEFT adapter directory (`adapter/`).",
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        },
        **_errors(401, 404, 422),
    },
)
async def download_adapter(problem_id: str, tenant: TenantDep, store: StoreDep) -> FileResponse:
    row = await _owned(store, problem_id, tenant)
    src = Path(row.get("checkpoint_dir") or "") / "adapter"
    if not row.get("checkpoint_dir") or not (src / "adapter_config.json").is_file():
        raise ApiError(404, "no adapter yet: no SDPO step has finished", code="no_adapter")
    path = await asyncio.to_thread(_archive, src)
    version = row.get("adapter_version") or "0"
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=f"{problem_id}-adapter-v{version}.tar.gz",
        background=BackgroundTask(os.unlink, path),
    )


def _archive(src: Path) -> str:
    """tar.gz of the adapter directory; retried if a checkpoint replaces it mid-read."""
    for attempt in range(5):
        fd, path = tempfile.mkstemp(suffix=".tar.gz")
        os.close(fd)
        try:
            with tarfile.open(path, "w:gz") as tar:
                tar.add(src, arcname="adapter")
            return path
        except FileNotFoundError:
            os.unlink(path)
            if attempt == 4:
                raise
    raise AssertionError("unreachable")
