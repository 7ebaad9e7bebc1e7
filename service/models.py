"""Pydantic response models: the schema of every answer in the OpenAPI document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from sdpo_core.contract import ExhaustedReason, Status

# A stored spec is served as stored: it was validated at submit and is never validated again
# (that would compile a python verifier's source on every GET). In the OpenAPI document the
# app replaces this marked schema by a reference to ProblemSpec.
STORED_SPEC_MARK = "x-sdpo-stored-spec"
StoredSpec = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "title": "Spec", STORED_SPEC_MARK: True})
]


class ErrorBody(BaseModel):
    code: str = Field(..., description="Machine-readable error code, e.g. `invalid`, `not_found`.")
    message: str = Field(..., description="What went wrong, for humans.")
    field: str | None = Field(None, description="Dotted path of the offending field, if any.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Problem(BaseModel):
    """A submitted problem and its progress."""

    id: str
    status: Status
    model: str
    attempts: int = Field(..., description="Attempts so far (each counted once).")
    steps: int = Field(..., description="SDPO steps done.")
    best_score: float | None = Field(
        None,
        description="Best verifier score so far (tests: the fraction passed; a python "
        "verifier's own score).",
    )
    best_attempt: int | None = Field(None, description="Index of the best attempt so far.")
    best_solution: str | None = Field(None, description="The best attempt's text.")
    solved_attempt: int | None = Field(None, description="Index of the first passing attempt.")
    solution: str | None = Field(None, description="The passing attempt's text.")
    error: str | None = None
    exhausted_reason: ExhaustedReason | None = None
    adapter_version: int = Field(..., description="Version of the latest LoRA adapter (0: none).")
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    suite: str | None = Field(None, description="The suite this problem is a run of, if any.")
    worker: str | None = Field(
        None, description="The worker that runs it (or ran it last); none before it starts."
    )
    spec: StoredSpec


class ProblemList(BaseModel):
    data: list[Problem]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class AttemptRecord(BaseModel):
    index: int = Field(..., description="1-based attempt index.")
    step: int = Field(..., description="SDPO step whose rollout batch produced it (0-based).")
    text: str
    passed: bool
    score: float
    feedback: str
    num_tokens: int
    created_at: datetime


class AttemptList(BaseModel):
    data: list[AttemptRecord]
    next_cursor: int | None = Field(None, description="Pass as `after` for the next page.")


class Health(BaseModel):
    status: Literal["ok"]


class WorkerInfo(BaseModel):
    name: str
    model: str | None = None
    host: str | None = None
    busy: bool = Field(False, description="Running a problem now.")
    capacity: int | None = Field(
        None, description="Problems it runs at once (its SDPO_WORKER_CONCURRENCY)."
    )
    active_problems: int = Field(0, description="Problems it is running now.")
    metrics_port: int | None = Field(None, description="Where the worker serves /metrics.")


class Ready(BaseModel):
    status: Literal["ready", "not_ready"]
    redis: bool
    live_workers: int = Field(0, description="Workers whose heartbeat is fresh.")
    busy_workers: int = Field(0, description="Of those, workers running a problem.")
    workers: list[WorkerInfo] | None = Field(
        None, description="The live workers; only for a request with a valid API key."
    )


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _int(value: str | None) -> int | None:
    return int(float(value)) if value not in (None, "") else None


def problem_from_row(row: dict[str, str]) -> Problem:
    """Build the resource from its Redis hash."""
    best = row.get("best_score")
    return Problem(
        id=row["id"],
        status=row["status"],  # type: ignore[arg-type]
        model=row["model"],
        attempts=_int(row.get("attempts")) or 0,
        steps=_int(row.get("steps")) or 0,
        best_score=float(best) if best not in (None, "") else None,
        best_attempt=_int(row.get("best_attempt")),
        best_solution=row.get("best_solution") or None,
        solved_attempt=_int(row.get("solved_attempt")),
        solution=row.get("solution") or None,
        error=row.get("error") or None,
        exhausted_reason=row.get("exhausted_reason") or None,  # type: ignore[arg-type]
        adapter_version=_int(row.get("adapter_version")) or 0,
        cancel_requested=row.get("cancel_requested") == "1",
        created_at=_ts(row["created_at"]),  # type: ignore[arg-type]
        updated_at=_ts(row.get("updated_at") or row["created_at"]),  # type: ignore[arg-type]
        started_at=_ts(row.get("started_at")),
        finished_at=_ts(row.get("finished_at")),
        suite=row.get("suite") or None,
        worker=row.get("worker") or None,
        spec=json.loads(row["spec"]),
    )


def attempt_from_record(rec: dict) -> AttemptRecord:
    return AttemptRecord(**{**rec, "created_at": _ts(str(rec["created_at"]))})
