"""/v1/suites: a set of problems run with several methods and seeds, each (problem, method,
seed) an ordinary problem, and the discovery report computed from them as they finish."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from sdpo_core.contract import METHODS, Method, SuiteReport, SuiteRun
from sdpo_core.discovery_stats import suite_report, suite_runs
from sdpo_core.problem import ProblemSpec
from service.api.intake import check_limits, json_body, problem_spec, queue_model, read_body
from service.api.responses import error_responses, json_response
from service.deps import SettingsDep, StoreDep, TenantDep
from service.errors import ApiError
from service.settings import Settings
from service.store import Store, sha256

router = APIRouter(prefix="/v1/suites", tags=["suites"])
SUITE_ID = r"^ste_[0-9a-f]{20}$"
MAX_SEEDS = 16


class SuiteSubmit(BaseModel):
    """A suite: every problem runs with every method, `seeds` times (seeds 0..seeds-1 added
    to the problem's own sdpo.seed)."""

    model_config = ConfigDict(extra="forbid")

    problems: Annotated[
        list[dict[str, Any]],
        WithJsonSchema(
            {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/ProblemSpec"}}
        ),
    ] = Field(..., min_length=1, description="Problem objects, as POST /v1/problems takes.")
    methods: list[Method] = Field(
        default_factory=lambda: list(METHODS), min_length=1, description="Methods to compare."
    )
    seeds: int = Field(1, ge=1, le=MAX_SEEDS, description="Runs of each (problem, method).")
    name: str | None = Field(None, max_length=200)


class Suite(SuiteReport):
    created_at: datetime


def parse_suite(body: bytes) -> tuple[SuiteSubmit, list[ProblemSpec]]:
    """Body -> the suite and its problems' specs, or an ApiError naming the field (a bad
    problem as `problems.INDEX.FIELD`). Nothing is submitted unless all of it is valid."""
    data = json_body(body)
    if not isinstance(data, dict):
        raise ApiError(422, "a suite must be a JSON object")
    try:
        submit = SuiteSubmit.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(422, err["msg"], field=field) from None
    if len(set(submit.methods)) != len(submit.methods):
        raise ApiError(422, "each method at most once", field="methods")
    specs = [problem_spec(p, f"problems.{i}.") for i, p in enumerate(submit.problems)]
    return submit, specs


def _check(submit: SuiteSubmit, specs: list[ProblemSpec], settings: Settings) -> None:
    total = len(specs) * len(submit.methods) * submit.seeds
    if total > settings.max_active_per_tenant:
        raise ApiError(
            422,
            f"a suite of {total} runs ({len(specs)} problems x {len(submit.methods)} methods x "
            f"{submit.seeds} seeds) exceeds the {settings.max_active_per_tenant} queued or "
            "running problems a tenant may have",
            code="limit_exceeded",
            field="problems",
        )
    for i, spec in enumerate(specs):
        try:
            check_limits(spec, settings)
        except ApiError as exc:
            exc.field = f"problems.{i}.{exc.field}" if exc.field else f"problems.{i}"
            raise
    asked = {spec.model for spec in specs}
    if len(asked) > 1:
        i = next(i for i, s in enumerate(specs) if s.model != specs[0].model)
        raise ApiError(422, "a suite runs on one model", field=f"problems.{i}.model")


@router.post(
    "",
    status_code=201,
    response_model=Suite,
    summary="Submit a suite",
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **error_responses(400, 401, 409, 413, 422, 429, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SuiteSubmit"}}
            },
        }
    },
)
async def create_suite(
    request: Request,
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="A retry with the same key returns the same suite, never a second one.",
        ),
    ] = None,
) -> Response:
    """Queue every (problem, method, seed) as a problem, all or none."""
    body = await read_body(request, settings.max_body_bytes)
    submit, specs = await asyncio.to_thread(parse_suite, body)
    _check(submit, specs, settings)
    model = await queue_model(specs[0].model, store, settings)
    runs = [
        (r.model_dump(mode="json"), place)
        for r, place in suite_runs(specs, submit.methods, submit.seeds)
    ]
    body_hash = sha256(json.dumps([r for r, _ in runs], sort_keys=True))
    meta = {"name": submit.name, "methods": submit.methods, "seeds": submit.seeds}
    outcome, sid, stored_hash = await store.create_suite(
        tenant=tenant,
        model=model,
        suite={**meta, "problems": len(specs)},
        runs=runs,
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
            f"the suite's {len(runs)} runs do not fit: at most "
            f"{settings.max_active_per_tenant} queued or running problems per tenant",
            code="too_many_active",
            headers=retry,
        )
    if outcome == "queue_full":
        raise ApiError(503, "the queue is full, retry later", code="queue_full", headers=retry)
    headers = {"Location": f"/v1/suites/{sid}"}
    if outcome == "existing":
        if stored_hash != body_hash:
            raise ApiError(
                409,
                "Idempotency-Key was already used with a different body",
                code="idempotency_conflict",
                field="Idempotency-Key",
            )
        headers["Idempotent-Replayed"] = "true"
    return json_response(await _report(store, await _owned(store, sid, tenant)), 201, headers)


async def _owned(store: Store, sid: str, tenant: str) -> dict[str, str]:
    row = await store.get_suite(sid)
    if row is None or row.get("tenant") != tenant:
        raise ApiError(404, f"no suite {sid}", code="not_found")
    return row


async def _report(store: Store, row: dict[str, str]) -> Suite:
    """The suite's report from its problems' current state (nothing cached: a worker crash
    or a Redis restart loses nothing the problems keep)."""
    meta = json.loads(row["suite"])
    places = json.loads(row["runs"])
    states = await store.suite_runs([p["problem_id"] for p in places])
    runs = []
    for place, state in zip(places, states, strict=True):
        if state is None:
            runs.append(SuiteRun(**place, status="expired"))
            continue
        solved = state.get("solved_attempt")
        runs.append(
            SuiteRun(
                **place,
                status=state["status"],
                attempts=int(float(state.get("attempts") or 0)),
                solved_attempt=int(float(solved)) if solved else None,
            )
        )
    report = suite_report(
        runs,
        id=row["id"],
        name=meta.get("name"),
        model=row["model"],
        methods=meta["methods"],
        seeds=meta["seeds"],
        problems=meta["problems"],
        cancel_requested=row.get("cancel_requested") == "1",
    )
    if report.status == "done":
        await store.finish_suite(row["id"])
    created = datetime.fromtimestamp(float(row["created_at"]), UTC)
    return Suite(**report.model_dump(), created_at=created)


@router.get(
    "/{suite_id}",
    response_model=Suite,
    summary="Get a suite and its report",
    responses=error_responses(401, 404, 422),
)
async def get_suite(suite_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    return json_response(await _report(store, await _owned(store, suite_id, tenant)))


@router.post(
    "/{suite_id}/cancel",
    response_model=Suite,
    summary="Cancel a suite's problems",
    responses=error_responses(401, 404, 422),
)
async def cancel_suite(suite_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    """Cancel every run not finished yet: queued ones at once, running ones within a step."""
    row = await _owned(store, suite_id, tenant)
    await store.finish_suite(suite_id, cancel=True)
    for place in json.loads(row["runs"]):
        await store.cancel(place["problem_id"])  # 'terminal' / 'missing' are fine here
    return json_response(await _report(store, await _owned(store, suite_id, tenant)))
