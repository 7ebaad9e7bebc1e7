"""Typed models of the service's resources and of each SSE event type."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Status = Literal["queued", "running", "solved", "exhausted", "cancelled", "failed"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"solved", "exhausted", "cancelled", "failed"})


class _Model(BaseModel):
    # Unknown fields from a newer service are kept, not rejected.
    model_config = ConfigDict(extra="allow")


class Budget(_Model):
    max_attempts: int = 512
    max_seconds: float = 3600.0


class ProblemSpec(_Model):
    """What was submitted: the prompt, the verifier spec, the budget and SDPO overrides."""

    prompt: str
    verifier: dict[str, Any]
    budget: Budget = Field(default_factory=Budget)
    sdpo: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Problem(_Model):
    """A submitted problem and its progress (GET /v1/problems/{id})."""

    id: str
    status: Status
    model: str
    attempts: int
    steps: int
    best_score: float | None = None
    solved_attempt: int | None = None
    solution: str | None = None
    error: str | None = None
    exhausted_reason: Literal["max_attempts", "max_seconds"] | None = None
    adapter_version: int = 0
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    spec: ProblemSpec

    @property
    def done(self) -> bool:
        """True once the problem is solved, exhausted, cancelled or failed."""
        return self.status in TERMINAL_STATUSES

    @property
    def solved(self) -> bool:
        return self.status == "solved"


class Verdict(_Model):
    """The verifier's judgement of one attempt."""

    passed: bool
    score: float
    feedback: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class Attempt(_Model):
    """One attempt record (GET /v1/problems/{id}/attempts)."""

    index: int
    step: int
    text: str
    passed: bool
    score: float
    feedback: str
    num_tokens: int
    created_at: datetime

    @property
    def verdict(self) -> Verdict:
        return Verdict(passed=self.passed, score=self.score, feedback=self.feedback)


# ------------------------------------------------------------------------ events
class _Event(_Model):
    id: str = Field(..., description="The SSE event id (a Redis stream id); resume after it.")

    @property
    def terminal(self) -> bool:
        """True for the event that ends the stream (solved, exhausted, cancelled, failed)."""
        return getattr(self, "kind", "") in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with `kind` (what `sdpo_cli.progress.ProgressDisplay` consumes)."""
        return self.model_dump(mode="json")


class StatusEvent(_Event):
    kind: Literal["status"] = "status"
    status: Status
    worker: str | None = None
    resumed: bool | None = None
    reason: str | None = None


class AttemptEvent(_Event):
    kind: Literal["attempt"] = "attempt"
    index: int
    step: int
    text: str
    verdict: Verdict
    num_tokens: int


class StepEvent(_Event):
    kind: Literal["step"] = "step"
    step: int
    attempts: int
    adapter_version: int
    metrics: dict[str, Any] = Field(default_factory=dict)


class SolvedEvent(_Event):
    kind: Literal["solved"] = "solved"
    attempt_index: int
    solution: str
    attempts: int
    steps: int
    seconds: float


class ExhaustedEvent(_Event):
    kind: Literal["exhausted"] = "exhausted"
    reason: Literal["max_attempts", "max_seconds"]
    attempts: int
    steps: int
    seconds: float
    best_score: float


class CancelledEvent(_Event):
    kind: Literal["cancelled"] = "cancelled"
    attempts: int = 0
    steps: int = 0


class FailedEvent(_Event):
    kind: Literal["failed"] = "failed"
    error: str | None = None
    attempts: int = 0
    steps: int = 0


class UnknownEvent(_Event):
    """An event type this SDK version does not know; `data` holds its payload."""

    kind: str
    data: Any = None


Event = Annotated[
    Union[  # noqa: UP007 (pydantic discriminated unions want typing.Union on 3.10)
        StatusEvent,
        AttemptEvent,
        StepEvent,
        SolvedEvent,
        ExhaustedEvent,
        CancelledEvent,
        FailedEvent,
    ],
    Field(discriminator="kind"),
]
AnyEvent = Union[Event, UnknownEvent]  # noqa: UP007
_EVENT = TypeAdapter(Event)
_KNOWN = {"status", "attempt", "step", "solved", "exhausted", "cancelled", "failed"}


def parse_event(event_id: str, name: str, data: str) -> AnyEvent:
    """One SSE message (`id:`, `event:`, `data:`) as its typed event."""
    payload = json.loads(data) if data else {}
    if name not in _KNOWN or not isinstance(payload, dict):
        return UnknownEvent(id=event_id, kind=name, data=payload)
    return _EVENT.validate_python({**payload, "id": event_id, "kind": name})
